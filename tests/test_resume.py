"""A run killed mid-training resumes from its last checkpoint and ends with the same adapter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from peftlab import artifacts

pytestmark = pytest.mark.slow


def train_cmd(spec_path: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "peftlab.train",
        "--spec",
        str(spec_path),
        "--adapter",
        str(out / "adapter"),
        "--record",
        str(out / "train.json"),
        "--checkpoints",
        str(out / "checkpoints"),
        "--threads",
        "1",
    ]


def adapter_weights(out: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(out / "adapter" / "adapter_model.safetensors")


@pytest.mark.parametrize("method", ["lora", "pissa"])
def test_kill_and_resume_gives_the_same_adapter(in_tiny, tmp_path, method):
    spec = in_tiny(method, max_steps=120, save_steps=20, batch_size=8).to_dict()
    spec["peft"]["lora_dropout"] = 0.1  # dropout draws random numbers: the RNG state must resume too
    spec_path = tmp_path / "spec.json"
    artifacts.write_json(spec_path, spec)
    env = {**os.environ, "WANDB_MODE": "disabled"}

    straight = tmp_path / "straight"
    subprocess.run(train_cmd(spec_path, straight), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(spec_path, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints/checkpoint-40/trainer_state.json").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "train.json").exists() and not (killed / "adapter").exists()

    subprocess.run(train_cmd(spec_path, killed), check=True, env=env, capture_output=True)
    record = artifacts.read_json(killed / "train.json")
    assert record["resumed_from"] and int(record["resumed_from"].rsplit("-", 1)[1]) >= 40
    assert record["steps"] == 120
    assert not (killed / "checkpoints").exists()

    a, b = adapter_weights(straight), adapter_weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    straight_losses = artifacts.read_json(straight / "train.json")["losses"]
    assert [x["loss"] for x in record["losses"]] == pytest.approx([x["loss"] for x in straight_losses], abs=1e-5)
