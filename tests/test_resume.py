"""A run killed mid-training resumes from its last checkpoint and ends with the same adapter and the same tracking
history."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
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


def kill_after(cmd: list[str], marker: Path, env: dict) -> None:
    """Start a training command and kill it with SIGKILL once `marker` exists."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.numerics
@pytest.mark.parametrize("method", ["lora", "pissa"])
def test_kill_and_resume_gives_the_same_adapter(in_tiny, tmp_path, method):
    spec = in_tiny(method, max_steps=120, save_steps=20, batch_size=8).to_dict()
    spec["peft"]["lora_dropout"] = 0.1  # dropout draws random numbers: the RNG state must resume too
    spec["tracker"].update(spectral_log_frequency=20, gradient_log_frequency=30)  # records before and after the kill
    spec_path = tmp_path / "spec.json"
    artifacts.write_json(spec_path, spec)
    env = {**os.environ, "WANDB_MODE": "disabled"}

    straight = tmp_path / "straight"
    subprocess.run(train_cmd(spec_path, straight), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    kill_after(train_cmd(spec_path, killed), killed / "checkpoints/checkpoint-40/trainer_state.json", env)
    assert not (killed / "train.json").exists() and not (killed / "adapter").exists()

    subprocess.run(train_cmd(spec_path, killed), check=True, env=env, capture_output=True)
    record = artifacts.read_json(killed / "train.json")
    assert record["resumed_from"] and int(record["resumed_from"].rsplit("-", 1)[1]) >= 40
    assert record["steps"] == 120
    assert not (killed / "checkpoints").exists()

    a, b = adapter_weights(straight), adapter_weights(killed)
    assert a.keys() == b.keys()
    differ = [key for key in a if not torch.equal(a[key], b[key])]
    assert not differ, (
        f"resumed weights differ from the straight run's in {differ}"
    )  # bit for bit, not within a tolerance

    assert artifacts.read_json(killed / "tracking/tracking.json")["resumed_at"] >= 40
    for name, steps in (("spectral", list(range(0, 121, 20))), ("gradients", [1, 30, 60, 90, 120])):
        s, k = (pd.read_parquet(run / f"tracking/{name}.parquet") for run in (straight, killed))
        assert sorted(s["step"].unique()) == sorted(k["step"].unique()) == steps
        keys = [c for c in s.columns if c != "value"]
        joined = s.merge(k, on=keys, how="outer", suffixes=("_straight", "_killed"), validate="one_to_one")
        assert joined[["value_straight", "value_killed"]].notna().all().all(), "a record is missing from one history"
        # the same weights give the same records, to the scale of each quantity (condition numbers amplify the SVD's
        # rounding)
        scale = joined["value_straight"].abs().clip(lower=1.0) * joined["quantity"].map(
            lambda q: 1e-2 if q == "condition_number" else 1e-4
        )
        assert ((joined["value_straight"] - joined["value_killed"]).abs() <= scale).all(), joined.loc[
            (joined["value_straight"] - joined["value_killed"]).abs() > scale
        ]
    straight_losses = artifacts.read_json(straight / "train.json")["losses"]
    assert [x["loss"] for x in record["losses"]] == pytest.approx([x["loss"] for x in straight_losses], abs=1e-5)
    # the record covers every step, not only those after the resume
    assert record["train_loss"] == pytest.approx(artifacts.read_json(straight / "train.json")["train_loss"], rel=1e-5)


@pytest.mark.numerics
def test_a_run_killed_and_restarted_with_another_learning_rate_trains_from_scratch(in_tiny, tmp_path):
    """The old checkpoints belong to the old setting: resuming them would record 3e-4 for weights trained at 3e-3."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    first = in_tiny("lora", max_steps=60, save_steps=20, batch_size=8, learning_rate=3e-3).to_dict()
    second = in_tiny("lora", max_steps=60, save_steps=20, batch_size=8, learning_rate=3e-4).to_dict()
    artifacts.write_json(tmp_path / "first.json", first)
    artifacts.write_json(tmp_path / "second.json", second)

    run = tmp_path / "run"
    kill_after(train_cmd(tmp_path / "first.json", run), run / "checkpoints/checkpoint-20/trainer_state.json", env)
    proc = subprocess.run(train_cmd(tmp_path / "second.json", run), env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "discarding" in proc.stderr
        and "written from other training settings" in proc.stderr
        and "resuming" not in proc.stderr
    )
    record = artifacts.read_json(run / "train.json")
    assert record["resumed_from"] is None and record["spec"]["training"]["learning_rate"] == 3e-4

    straight = tmp_path / "straight"
    subprocess.run(train_cmd(tmp_path / "second.json", straight), check=True, env=env, capture_output=True)
    a, b = adapter_weights(straight), adapter_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
