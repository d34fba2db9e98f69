"""Slurm resources and launch commands from a run's resources (pure; tests/test_slurm.py runs them on a cluster)."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import replace

import pytest

from conftest import ROOT
from peftlab.launch import PRESETS, SLURM_KEYS, Resources, ResourcesError, for_stage, launcher, resolve, slurm_resources


def test_presets_and_overrides():
    assert resolve("1gpu") == PRESETS["1gpu"]
    assert resolve({"preset": "4gpu", "gpu_model": "a100"}) == Resources(
        gpus=4, cpus_per_gpu=8, mem_mb=256000, runtime=1440, gpu_model="a100"
    )
    assert resolve({"mem_mb": 500}, base=PRESETS["tiny"]) == Resources(
        threads=1, mem_mb=500, runtime=30
    )  # keys over the level above
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
    assert (for_stage(r, "evaluate").nodes, for_stage(r, "evaluate").gpus, for_stage(r, "evaluate").cpus_per_task) == (
        1,
        1,
        8,
    )
    assert (for_stage(r, "merge").gpus, for_stage(r, "merge").cpus_per_task) == (0, 8)
    assert for_stage(PRESETS["cpu"], "merge") == PRESETS["cpu"]


def test_launch_follows_from_the_resources():
    assert launcher(Resources(), "train") == "python -m peftlab.train"
    assert launcher(Resources(gpus=1), "train") == "python -m peftlab.train"
    assert launcher(PRESETS["4gpu"], "train") == "torchrun --standalone --nproc-per-node=4 -m peftlab.train"
    multi = launcher(Resources(nodes=2), "train")
    assert multi.startswith(': "${SLURM_JOB_ID:?a multi-node run needs a Slurm allocation')
    assert 'srun --jobid="$SLURM_JOB_ID" --nodes=2 --ntasks=2 --ntasks-per-node=1 bash -c ' in multi
    assert "--nproc-per-node=4" in launcher(PRESETS["2x4gpu"], "train")


def test_each_node_starts_torchrun_with_the_first_node_serving_the_rendezvous(tmp_path):
    """The multi-node command run by bash, with an srun that starts its tasks as Slurm does
    (SLURM_JOB_NODELIST and SLURM_NODEID set, nothing else of Slurm's) and a torchrun that
    prints its arguments: each node's torchrun gets the same endpoint, only node 0 hosts it,
    and the stage's arguments arrive whole."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    fakes = {
        # srun --jobid=J --nodes=N --ntasks=N --ntasks-per-node=1 CMD...: one task per node, in order
        "srun": 'shift 4; for i in 0 1; do SLURM_JOB_NODELIST="gpu[07-08]" SLURM_NODEID=$i "$@"; done',
        "scontrol": '[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"',
        "torchrun": 'printf "%s|" "$@"; echo',
    }
    for name, body in fakes.items():
        (bin_ / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_ / name).chmod(0o755)
    command = launcher(PRESETS["2x4gpu"], "train") + " --spec 'a b.json' --threads 8"
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "SLURM_JOB_ID": "123"}
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    common = "--nnodes=2|--nproc-per-node=4|--rdzv-backend=c10d|--rdzv-id=123|--rdzv-endpoint=gpu07:20123"
    assert proc.stdout.splitlines() == [
        f"{common}|--rdzv-conf=is_host={host}|-m|peftlab.train|--spec|a b.json|--threads|8|" for host in (1, 0)
    ]
    unset = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env={"PATH": env["PATH"]})
    assert unset.returncode != 0 and "a multi-node run needs a Slurm allocation" in unset.stderr


def test_every_key_slurm_resources_sets_is_one_the_rules_declare():
    shapes = [
        Resources(),
        PRESETS["4gpu"],
        PRESETS["2x4gpu"],
        Resources(nodes=2, gpus=2, gpu_model="a100", constraint="ib", partition="gpu", qos="long"),
    ]
    assert set().union(*(slurm_resources(r) for r in shapes)) <= set(SLURM_KEYS)


def test_rule_resources_are_constants_where_every_run_agrees():
    """Snakemake inspects each resource function per job it plans: only memory and runtime (which grow with
    the attempt) and keys the runs disagree on are functions; keys no run sets are left out."""
    from types import SimpleNamespace

    from peftlab.launch import rule_resources, rule_threads

    by_run = {"a": Resources(threads=2), "b": Resources(threads=2, partition="long")}
    train = rule_resources(by_run, "train")
    assert set(train) == {"mem_mb", "runtime", "cpus_per_task", "slurm_partition"}  # no GPU key: no run asks for one
    assert train["cpus_per_task"] == 2
    a, b = SimpleNamespace(run_id="a"), SimpleNamespace(run_id="b")
    assert (train["slurm_partition"](a), train["slurm_partition"](b)) == (None, "long")
    assert (train["mem_mb"](a, 1), train["mem_mb"](a, 2), train["runtime"](b, 3)) == (4000, 8000, 180)
    for key, value in train.items():  # the same values as slurm_resources, job by job
        for wc, r in ((a, by_run["a"]), (b, by_run["b"])):
            got = value(wc, 2) if key in ("mem_mb", "runtime") else value(wc) if callable(value) else value
            assert got == slurm_resources(r, 2).get(key), (key, wc.run_id)
    assert rule_threads(by_run, "train") == 2
    mixed = {"a": Resources(gpus=2, cpus_per_gpu=3), "b": Resources(threads=1)}
    assert rule_threads(mixed, "train")(a) == 6 and rule_threads(mixed, "evaluate")(a) == 3
    assert rule_resources(mixed, "merge")["cpus_per_task"](a) == 3  # merging: no GPU, one GPU's cores
    assert "gpu" not in rule_resources(mixed, "merge")


def test_packing_groups_runs_by_their_resources():
    """`--group-components run=N` packs runs per resource class: only runs with equal resources share a group (an sbatch
    call)."""
    from peftlab.launch import pack_groups

    cpu, gpu = Resources(threads=1, mem_mb=1000), Resources(gpus=1, gpu_model="a100", partition="gpu")
    groups = pack_groups(
        {
            "a": cpu,
            "b": Resources(threads=1, mem_mb=1000),
            "g": gpu,
            "h": replace(gpu, mem_mb=8000),
            "n": PRESETS["2x4gpu"],
        }
    )
    assert groups["a"] == groups["b"]  # identical resources share
    assert len({groups["a"], groups["g"], groups["h"]}) == 3  # any difference (here memory) parts them
    assert re.fullmatch(r"run-default-cpu-[0-9a-f]{8}", groups["a"]) and re.fullmatch(
        r"run-gpu-1gpu-[0-9a-f]{8}", groups["g"]
    )
    assert groups["n"] is None  # a multi-node run is submitted alone
    assert pack_groups({"x": cpu}) == {"x": groups["a"]}  # the same name from any matrix: a digest, not an order


def test_packing_refuses_groups_that_mix_resources_and_runs_over_the_caps():
    from peftlab.launch import check_packing

    runs = {"t/m/a": Resources(threads=1, mem_mb=1000), "t/m/g": Resources(gpus=2, cpus_per_gpu=1, mem_mb=1000)}
    check_packing(runs, {}, {"mem_mb": 1000, "cpus_per_task": 2, "gpu": 2})
    with pytest.raises(
        ResourcesError, match=r"`groups:` \(--groups\) puts evaluate_run, train_run .* `group-components: \[run=N\]`"
    ):
        check_packing(runs, {"train_run": "run", "evaluate_run": "run"}, {})
    with pytest.raises(
        ResourcesError, match=r"run t/m/g: its train job asks for gpu=2 \(cap 1\), more than .* raise the cap"
    ):
        check_packing(runs, {}, {"gpu": 1})
    runs["t/m/b"] = runs["t/m/a"]
    with pytest.raises(
        ResourcesError,
        match=r"run t/m/a and 1 more run\(s\) with its resources: its train job asks for mem_mb=1000 \(cap 500\)",
    ):
        check_packing(runs, {}, {"mem_mb": 500})


def test_packed_evaluation_and_merging_leave_the_gpu_model_to_training():
    """In one group, evaluation and merging run side by side: Snakemake refuses a string resource (the GPU model) that
    only one asks for."""
    from types import SimpleNamespace

    from peftlab.launch import rule_resources

    runs, wc = {"a": Resources(gpus=1, gpu_model="a100", partition="gpu")}, SimpleNamespace(run_id="a")
    assert rule_resources(runs, "evaluate")["gpu_model"](wc) == "a100"
    assert rule_resources(runs, "evaluate", lambda: True)["gpu_model"](wc) is None  # Snakemake drops a None resource
    assert "gpu_model" not in rule_resources(runs, "merge", lambda: True)  # merging asks for no GPU anyway
    assert rule_resources(runs, "train", lambda: True)["gpu_model"] == "a100"
    assert rule_resources(runs, "evaluate", lambda: True)["slurm_partition"] == "gpu"


def test_a_packed_plan_refuses_the_groups_flag_and_runs_over_the_caps(tmp_path):
    """The Slurm test matrix (CPU, GPU, two-node runs) plans packed; the refusals come before any job runs."""
    from conftest import ROOT, snakemake

    config = ROOT / "tests/slurm/config.yaml"
    assert snakemake(tmp_path, "-n", "--group-components", "run=2", config=config).returncode == 0
    proc = snakemake(tmp_path, "-n", "--groups", "train_run=run", "evaluate_run=run", "merge_run=run", config=config)
    assert (
        proc.returncode != 0
        and "`groups:` (--groups) puts evaluate_run, merge_run, train_run of every run in one group" in proc.stdout
    )
    proc = snakemake(tmp_path, "-n", "--group-components", "run=2", "--resources", "gpu=1", config=config)
    assert proc.returncode != 0 and "its train job asks for gpu=2 (cap 1)" in proc.stdout


@pytest.mark.parametrize("own", [True, False], ids=["a machine with its own slurm.conf", "a machine without"])
def test_the_test_cluster_leaves_etc_slurm_as_it_found_it(tmp_path, own):
    """tests/slurm/start.sh links /etc/slurm's config to the test cluster's, and stop.sh must undo it exactly:
    a link left to a stopped controller makes every later `snakemake` wait in the slurm plugin's probes."""
    etc, state = tmp_path / "etc-slurm", tmp_path / "state"
    etc.mkdir()
    (etc / "plugstack.conf").write_text("the machine's own\n")
    if own:
        (etc / "slurm.conf").write_text("ClusterName=site\n")
    before = {p.name: p.read_text() for p in etc.iterdir()}
    script = ROOT / "tests/slurm/etc.sh"
    subprocess.run(["bash", str(script), "link", str(state), str(etc)], check=True)
    assert os.readlink(etc / "slurm.conf") == str(state / "slurm.conf") and os.readlink(etc / "gres.conf") == str(
        state / "gres.conf"
    )
    subprocess.run(["bash", str(script), "restore", str(state), str(etc)], check=True)
    assert not any(p.is_symlink() for p in etc.iterdir())
    assert {p.name: p.read_text() for p in etc.iterdir()} == before
    for script_name in ("start.sh", "stop.sh"):  # both go through etc.sh, so this is what they do
        assert "etc.sh" in (ROOT / "tests/slurm" / script_name).read_text()
