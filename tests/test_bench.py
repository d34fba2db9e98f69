"""The throughput benchmark runs end to end (tiny settings); it is a benchmark, so no speed is asserted."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_throughput_benchmark_prints_every_trainers_rate_and_the_ratios():
    args = ["--steps", "3", "--batch", "2", "--hidden", "32", "--layers", "1", "--rounds", "1", "--threads", "1"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench/throughput.py"), *args], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rates = dict(re.findall(r"^(.+?):\s+(\d+) real tokens/s", proc.stdout, re.M))
    rates = {name: float(rate) for name, rate in rates.items()}
    assert len(rates) == 7 and all(r > 0 for r in rates.values()), proc.stdout
    assert (
        sum(name.startswith("TRL SFTTrainer") for name in rates) == 4
    )  # padded, group_by_length, padding_free, packing
    # the settings each trainer ran with, read back: no gradient checkpointing (TRL's default), float32 on a CPU
    table = [
        line.strip("|").split("|")
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and "trainer" not in line
    ]
    ran_with = {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in table}
    assert set(ran_with) == set(rates) and all(
        row[0] == "False" and row[1] == "float32" for row in ran_with.values()
    ), ran_with
    ours = max((name for name in rates if name.startswith("peftlab")), key=rates.get)
    alike = [name for name in rates if name.startswith("TRL") and ran_with[name] == ran_with[ours]]
    assert (
        len(alike) >= 3
    )  # padded, group_by_length, padding_free share peftlab's settings; packing's batch is its bins
    for name in rates:
        if name.startswith("TRL") and name not in alike:
            assert f"not compared: {name} differs from {ours} in" in proc.stdout
    ratio = float(re.search(r"^ratio peftlab's best / TRL's best: ([\d.]+)x", proc.stdout, re.M)[1])
    assert ratio == pytest.approx(
        rates[ours] / max(rates[n] for n in alike), rel=0.01, abs=0.006
    )  # printed to two decimals


def test_load_memory_benchmark_loads_both_dtypes_and_prints_the_ratios():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench/load_memory.py"), "--hidden", "64", "--layers", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = dict(re.findall(r"^(float32|bfloat16) +: held .*weights +([\d.]+) MiB \(torch\.\1\)$", proc.stdout, re.M))
    assert float(rows["bfloat16"]) == pytest.approx(
        float(rows["float32"]) / 2, rel=1e-3
    )  # the weights really are 16-bit
    assert re.search(r"^ratio bfloat16 / float32 held: [\d.]+x$", proc.stdout, re.M)


def test_tracking_benchmark_prints_both_rates_the_overhead_and_the_layer_timings():
    args = [
        "--steps",
        "4",
        "--batch",
        "2",
        "--hidden",
        "32",
        "--layers",
        "1",
        "--rounds",
        "1",
        "--threads",
        "1",
        "--layer",
        "128",
        "--rank",
        "4",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench/tracking.py"), *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rates = [float(x) for x in re.findall(r"^tracking .*?:\s+(\d+) real tokens/s", proc.stdout, re.M)]
    assert len(rates) == 2 and all(r > 0 for r in rates)
    ratio = float(re.search(r"^ratio on / off: ([\d.]+)x", proc.stdout, re.M)[1])
    assert ratio == pytest.approx(rates[1] / rates[0], rel=0.01)
    assert "spectral records at steps [0, 4], gradient records at steps [1, 4]" in proc.stdout  # it really tracked
    dense, low = map(
        float, re.search(r"128x128 layer at rank 4: dense ([\d.]+) ms, low-rank ([\d.]+) ms", proc.stdout).groups()
    )
    assert dense > 0 and low > 0
