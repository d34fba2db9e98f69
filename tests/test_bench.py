"""The throughput benchmark runs end to end (tiny settings); it is a benchmark, so no speed is asserted."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_throughput_benchmark_prints_both_rates_and_their_ratio():
    args = ["--steps", "3", "--batch", "2", "--hidden", "32", "--layers", "1", "--rounds", "1", "--threads", "1"]
    proc = subprocess.run([sys.executable, str(ROOT / "bench/throughput.py"), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rates = [float(x) for x in re.findall(r"^\w.*?:\s+(\d+) real tokens/s", proc.stdout, re.M)]
    ratio = float(re.search(r"ratio peftlab / baseline: ([\d.]+)x", proc.stdout)[1])
    assert len(rates) == 2 and all(r > 0 for r in rates)
    assert ratio == pytest.approx(rates[1] / rates[0], rel=0.01)
