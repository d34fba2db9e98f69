"""Slurm resources and launch commands from a run's resources (pure; the cluster tests run them)."""

from __future__ import annotations

import pytest

from peftlab.launch import PRESETS, Resources, command, resolve, slurm_resources


def test_presets_and_overrides():
    assert resolve("1gpu") == PRESETS["1gpu"]
    assert resolve({"preset": "4gpu", "gpu_model": "a100"}) == Resources(
        gpus=4, cpus_per_gpu=8, mem_mb=256000, runtime=1440, gpu_model="a100"
    )
    assert resolve({"mem_mb": 500}, base=PRESETS["tiny"]).mem_mb == 500
    with pytest.raises(ValueError, match="unknown resources preset '8gpu'; allowed: tiny, cpu, 1gpu, 4gpu, 2x4gpu"):
        resolve("8gpu")


def test_slurm_resources_scale_memory_and_runtime_with_the_attempt():
    r = Resources(gpus=2, cpus_per_gpu=4, mem_mb=1000, runtime=10, gpu_model="fake")
    assert slurm_resources(r, 1) == {"mem_mb": 1000, "runtime": 10, "cpus_per_task": 8, "gpu": 2, "gpu_model": "fake"}
    assert slurm_resources(r, 2) == {"mem_mb": 2000, "runtime": 20, "cpus_per_task": 8, "gpu": 2, "gpu_model": "fake"}
    assert slurm_resources(Resources(threads=2)) == {"mem_mb": 4000, "runtime": 60, "cpus_per_task": 2}  # no GPU asked


def test_multi_node_takes_the_mpi_path_one_task_per_node():
    res = slurm_resources(PRESETS["2x4gpu"])
    assert (res["nodes"], res["tasks"], res["mpi"], res["gpu"]) == (2, 2, "srun", 4)


def test_launch_follows_from_the_resources():
    args = ["--spec", "results/specs/runs/a b.json"]
    assert command(Resources(), "train", args) == "python -m peftlab.train --spec 'results/specs/runs/a b.json'"
    assert command(PRESETS["4gpu"], "train", args) == (
        "torchrun --standalone --nproc-per-node=4 -m peftlab.train --spec 'results/specs/runs/a b.json'"
    )
    multi = command(Resources(nodes=2), "train", args)
    assert 'srun --jobid="$SLURM_JOB_ID" --nodes=2 --ntasks=2 --ntasks-per-node=1 torchrun --nnodes=2 --nproc-per-node=1' in multi
    assert '--rdzv-backend=c10d --rdzv-id="$SLURM_JOB_ID" --rdzv-endpoint="$RDZV_HOST:29500"' in multi
    assert multi.startswith('RDZV_HOST=$(scontrol show hostnames "$(squeue -h -j "$SLURM_JOB_ID" -o %N)" | head -n 1) && ')
