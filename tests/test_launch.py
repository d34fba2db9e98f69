"""Slurm resources and launch commands from a run's resources (pure; tests/test_slurm.py runs them on a cluster)."""

from __future__ import annotations

import pytest

from peftlab.launch import PRESETS, SLURM_KEYS, Resources, ResourcesError, for_stage, launcher, resolve, slurm_resources


def test_presets_and_overrides():
    assert resolve("1gpu") == PRESETS["1gpu"]
    assert resolve({"preset": "4gpu", "gpu_model": "a100"}) == Resources(
        gpus=4, cpus_per_gpu=8, mem_mb=256000, runtime=1440, gpu_model="a100"
    )
    assert resolve({"mem_mb": 500}, base=PRESETS["tiny"]) == Resources(threads=1, mem_mb=500, runtime=30)  # keys over the level above
    assert resolve({"preset": "tiny"}, base=PRESETS["4gpu"]) == PRESETS["tiny"]  # a preset replaces the level above
    site = {"h100x8": Resources(gpus=8, cpus_per_gpu=12, mem_mb=900000, gpu_model="h100")}
    assert resolve("h100x8", presets=site).gpus == 8
    with pytest.raises(ResourcesError, match="unknown preset '8gpu'; allowed: tiny, cpu, 1gpu, 4gpu, 2x4gpu$"):
        resolve("8gpu")
    with pytest.raises(ResourcesError, match="unknown key\\(s\\) 'gpu'; allowed: preset, gpus, nodes"):
        resolve({"gpu": 2})


def test_one_node_asks_for_gpus_and_scales_memory_and_runtime_with_the_attempt():
    r = Resources(gpus=2, cpus_per_gpu=4, mem_mb=1000, runtime=10, gpu_model="fake", partition="gpu")
    first = {"mem_mb": 1000, "runtime": 10, "cpus_per_task": 8, "slurm_partition": "gpu", "gpu": 2, "gpu_model": "fake"}
    assert slurm_resources(r, 1) == first
    assert slurm_resources(r, 2) == {**first, "mem_mb": 2000, "runtime": 20}
    assert slurm_resources(Resources(threads=2)) == {"mem_mb": 4000, "runtime": 60, "cpus_per_task": 2}  # no GPU asked


def test_several_nodes_take_the_mpi_path_with_gpus_per_node():
    assert slurm_resources(PRESETS["2x4gpu"]) == {
        "mem_mb": 256000,
        "runtime": 1440,
        "cpus_per_task": 32,
        "gres": "gpu:4",  # per node; --gpus would be the job's total
        "tasks_per_gpu": 0,  # else the plugin turns tasks=2 into --ntasks-per-gpu=2
        "nodes": 2,
        "tasks": 2,
        "mpi": "srun",
    }
    assert slurm_resources(Resources(nodes=3, gpus=8, gpu_model="h100", constraint="ib"))["gres"] == "gpu:h100:8"
    assert slurm_resources(Resources(nodes=2))["nodes"] == 2 and "gres" not in slurm_resources(Resources(nodes=2))


def test_stages_evaluation_uses_one_gpu_and_merging_none():
    r = PRESETS["2x4gpu"]
    assert for_stage(r, "train") == r
    assert (for_stage(r, "evaluate").nodes, for_stage(r, "evaluate").gpus, for_stage(r, "evaluate").cpus_per_task) == (1, 1, 8)
    assert (for_stage(r, "merge").gpus, for_stage(r, "merge").cpus_per_task) == (0, 8)
    assert for_stage(PRESETS["cpu"], "merge") == PRESETS["cpu"]


def test_launch_follows_from_the_resources():
    assert launcher(Resources(), "train") == "python -m peftlab.train"
    assert launcher(Resources(gpus=1), "train") == "python -m peftlab.train"
    assert launcher(PRESETS["4gpu"], "train") == "torchrun --standalone --nproc-per-node=4 -m peftlab.train"
    multi = launcher(Resources(nodes=2), "train")
    assert multi.startswith(': "${SLURM_JOB_ID:?a multi-node run needs a Slurm allocation')
    assert 'srun --jobid="$SLURM_JOB_ID" --nodes=2 --ntasks=2 --ntasks-per-node=1 torchrun --nnodes=2 --nproc-per-node=1' in multi
    assert '--rdzv-backend=c10d --rdzv-id="$SLURM_JOB_ID" --rdzv-endpoint="$(scontrol show hostnames' in multi
    assert multi.endswith(':$((20000 + SLURM_JOB_ID % 20000))" -m peftlab.train')
    assert "--nproc-per-node=4" in launcher(PRESETS["2x4gpu"], "train")


def test_every_key_slurm_resources_sets_is_one_the_rules_declare():
    shapes = [
        Resources(),
        PRESETS["4gpu"],
        PRESETS["2x4gpu"],
        Resources(nodes=2, gpus=2, gpu_model="a100", constraint="ib", partition="gpu", qos="long"),
    ]
    assert set().union(*(slurm_resources(r) for r in shapes)) <= set(SLURM_KEYS)
