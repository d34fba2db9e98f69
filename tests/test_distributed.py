"""One global batch, however it is split: by gradient accumulation, or over processes (torchrun, gloo on CPU).

The tiny Llama has no dropout, so a split batch must give the single batch's losses.
tests/test_slurm.py checks the same over two Slurm nodes.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab import artifacts, launch
from peftlab.train import train

STEPS = {"max_steps": 6, "logging_steps": 1, "save_steps": 100, "learning_rate": 0.003, "check_reload": False}


def losses(record: dict) -> list[float]:
    return [e["loss"] for e in record["losses"]]


def run(spec, tmp_path: Path, name: str) -> dict:
    return train(spec, tmp_path / name / "adapter", tmp_path / name / "train.json", tmp_path / name / "checkpoints")


@pytest.mark.parametrize("task", ["sentiment", "arith"])  # a per-batch mean (classification), a per-token mean (sft)
def test_gradient_accumulation_trains_like_the_global_batch(in_tiny, tmp_path, task):
    whole = run(in_tiny("lora", task=task, batch_size=8, grad_accum=1, **STEPS), tmp_path, "whole")
    split = run(in_tiny("lora", task=task, batch_size=4, grad_accum=2, **STEPS), tmp_path, "split")
    assert whole["steps"] == split["steps"] == 6
    assert losses(split) == pytest.approx(losses(whole), abs=1e-4)


def test_two_processes_train_like_one_with_the_global_batch(in_tiny, tmp_path):
    one = run(in_tiny("lora", task="sentiment", batch_size=8, **STEPS), tmp_path, "one")

    spec = dataclasses.replace(
        in_tiny("lora", task="sentiment", batch_size=4, **{**STEPS, "check_reload": True}), world_size=2
    )
    artifacts.write_json(tmp_path / "two.json", spec.to_dict())
    resources = launch.Resources(gpus=2, cpus_per_gpu=1)  # no CUDA here: two CPU processes, gloo
    assert resources.world_size == spec.world_size
    cmd = (
        f"{launch.launcher(resources, 'train')} --spec {tmp_path}/two.json --adapter {tmp_path}/two/adapter "
        f"--record {tmp_path}/two/train.json --checkpoints {tmp_path}/two/ck --threads 2"
    )
    assert cmd.startswith("torchrun --standalone --nproc-per-node=2 -m peftlab.train ")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    two = artifacts.read_json(tmp_path / "two" / "train.json")
    assert (two["world_size"], two["backend"], len(two["hosts"])) == (2, "gloo", 2)
    assert two["steps"] == one["steps"] == 6 and two["examples"] == one["examples"]
    assert losses(two) == pytest.approx(losses(one), abs=1e-3)
    assert two["reload_max_abs_diff"] <= 1e-5  # the first process saved an adapter that reloads
    assert not (tmp_path / "two" / "ck").exists()


def test_a_run_started_with_the_wrong_number_of_processes_fails_before_training(in_tiny, tmp_path):
    spec = dataclasses.replace(in_tiny("lora"), world_size=2)
    with pytest.raises(RuntimeError, match="started as 1 process\\(es\\), but its resources give a world size of 2"):
        run(spec, tmp_path, "x")
    assert not (tmp_path / "x").exists()


def test_packed_batches_train_like_padded_ones(in_tiny, tmp_path):
    """Padding-free batches (DataCollatorWithFlattening): attention stays within each example, so the losses match."""
    padded = in_tiny("lora", task="arith", batch_size=8, **STEPS)
    packed = dataclasses.replace(padded, task=dataclasses.replace(padded.task, packing=True))
    a, b = run(padded, tmp_path, "padded"), run(packed, tmp_path, "packed")
    assert losses(b) == pytest.approx(losses(a), abs=1e-4)
