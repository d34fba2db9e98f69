"""The workflow through a real Slurm cluster: tests/slurm/start.sh's two nodes with two fake GPUs each.

Every call is `snakemake --profile profiles/slurm --workflow-profile tests/slurm/profile`
(the test cluster's partition names and fast status checks over the shipped profile),
wrapped in `timeout -k`: the plugin can wait forever on a job it cannot see.

Without a cluster these tests start one when run as root (installing Debian's slurm
packages if missing) and stop it afterwards; otherwise they are skipped, unless
PEFTLAB_REQUIRE_SLURM=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from peftlab import artifacts
from peftlab.config import load_yaml, plan

pytestmark = pytest.mark.slurm
CONFIG = ROOT / "tests" / "slurm" / "config.yaml"
RUN = "sentiment/tiny-llama"


def cluster_is_up() -> bool:
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    states = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
    return (
        proc.returncode == 0
        and {"n1", "n2"} <= set(states)
        and not any("drain" in s or "down" in s for s in states.values())
    )


@pytest.fixture(scope="module")
def cluster():
    started = False
    if not cluster_is_up():
        if os.geteuid() != 0:
            if os.environ.get("PEFTLAB_REQUIRE_SLURM") == "1":
                pytest.fail("no Slurm test cluster, and not root to start one: run `sudo tests/slurm/start.sh`")
            pytest.skip(
                "no Slurm test cluster: run `sudo tests/slurm/start.sh` (it installs Debian's slurm packages if "
                "missing)"
            )
        proc = subprocess.run(["bash", str(ROOT / "tests/slurm/start.sh")], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        started = True
    yield
    if started:
        subprocess.run(["bash", str(ROOT / "tests/slurm/stop.sh")], timeout=120)


def slurm_snakemake(workdir: Path, config: Path, *args: str, limit: int = 900) -> subprocess.CompletedProcess:
    cmd = ["timeout", "-k", "30", str(limit), sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow/Snakefile")]
    cmd += ["--directory", str(workdir), "--configfile", str(config), "--verbose"]
    cmd += [
        "--profile",
        str(ROOT / "profiles" / "slurm"),
        "--workflow-profile",
        str(ROOT / "tests" / "slurm" / "profile"),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 124, f"snakemake ran past {limit} s:\n{proc.stderr[-5000:]}"
    return proc


def sbatch_calls(proc: subprocess.CompletedProcess, rule: str, run_id: str) -> list[str]:
    """The resource flags of each sbatch call for `rule` on `run_id`: what follows the job's --comment, less -D
    <workdir>."""
    comment = f"rule_{rule}_wildcards_{run_id.replace('/', '_')}"
    flags = re.findall(
        rf"^sbatch call: sbatch .* --comment {re.escape(comment)} (.*?) --wrap=", proc.stdout + proc.stderr, re.M
    )
    return [" ".join(re.sub(r"-D \S+", "", f).split()) for f in flags]


def failed_jobs(workdir: Path) -> str:
    """The logs of the jobs that failed, for an assertion message: the plugin deletes those of jobs that succeeded."""
    logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    return (
        "\n".join(f"--- {p.relative_to(workdir)}\n{p.read_text()[-3000:]}" for p in logs) or "no failed job left a log"
    )


def write_config(workdir: Path, **changes) -> Path:
    raw = load_yaml(CONFIG)
    raw.update(changes)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def with_small_task(workdir: Path) -> dict:
    """The test config's tasks plus `small`: 20 rows, so a run with train_size 50 fails in its training job."""
    data = workdir / "small"
    data.mkdir()
    rows = "".join(f'{{"text": "fine {i}", "label": {i % 2}}}\n' for i in range(20))
    (data / "train.jsonl").write_text(rows)
    (data / "eval.jsonl").write_text(rows)
    tasks = load_yaml(CONFIG)["tasks"]
    tasks["small"] = {
        "type": "classification",
        "data": {"files": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")}},
    }
    return tasks


@pytest.fixture(scope="module")
def matrix(cluster, tmp_path_factory):
    """The Slurm test matrix, run once: (workdir, snakemake's output)."""
    work = tmp_path_factory.mktemp("slurm")
    proc = slurm_snakemake(work, CONFIG)
    assert proc.returncode == 0, proc.stderr[-8000:] + failed_jobs(work)
    return work, proc


def test_the_matrix_completes_through_slurm(matrix):
    work, proc = matrix
    runs = plan(load_yaml(CONFIG)).runs
    assert len(runs) == 4
    for run_id in runs:
        for f in "adapter/adapter_config.json", "train.json", "eval.json", "merge_check.json", "merged/config.json":
            assert (work / "results/default/runs" / run_id / f).exists(), f"{run_id}/{f}"
    summary = pd.read_csv(
        work / "results/default/tables/summary.csv"
    )  # every run, with its health (8 steps learn nothing here)
    assert sorted(summary["run_id"]) == sorted(runs) and summary["health"].notna().all()
    assert all(run_id in (work / "results/default/tables/summary.md").read_text() for run_id in runs)
    out = proc.stdout + proc.stderr
    assert "Error in rule" not in out, failed_jobs(work)  # no job needed its retry
    # every job ran under Slurm but the tables (a localrule) and `all`: generate, build, tokenise, 4 x
    # train/evaluate/merge
    assert len(re.findall(r"^sbatch call: ", out, re.M)) == 15
    # no job per spec file: each of the 15 jobs wrote its own, on its node
    assert "17 of 17 steps (100%) done" in out


def test_sbatch_flags_follow_each_runs_resources(matrix):
    _, proc = matrix
    cpu_rule = "-p cpu -t 30 --mem 1500 --ntasks=1 --cpus-per-task=1"  # the profile's default-resources, no GPU
    assert sbatch_calls(proc, "data_tokenize", RUN) == [cpu_rule]
    assert sbatch_calls(proc, "train_run", f"{RUN}/one-process") == [
        "-p cpu -t 10 --mem 1500 --ntasks=1 --cpus-per-task=1"
    ]
    assert sbatch_calls(proc, "train_run", f"{RUN}/gpu1") == ["-p gpu -t 10 --mem 1500 --cpus-per-task=1 --gpus=fake:1"]
    assert sbatch_calls(proc, "train_run", f"{RUN}/gpu2") == ["-p gpu -t 10 --mem 3000 --cpus-per-task=2 --gpus=2"]
    assert sbatch_calls(proc, "train_run", f"{RUN}/nodes2") == [
        "-p gpu -t 10 --mem 1500 --nodes=2 --ntasks=2 --cpus-per-task=1 --gres=gpu:fake:1"
    ]
    # evaluation: one process, one GPU at most; merging: no GPU
    assert sbatch_calls(proc, "evaluate_run", f"{RUN}/gpu2") == ["-p gpu -t 10 --mem 3000 --cpus-per-task=1 --gpus=1"]
    assert sbatch_calls(proc, "merge_run", f"{RUN}/nodes2") == ["-p gpu -t 10 --mem 1500 --ntasks=1 --cpus-per-task=1"]


def test_two_nodes_train_like_one_process_with_the_same_global_batch(matrix):
    work, _ = matrix
    record = {
        name: artifacts.read_json(work / "results/default/runs" / RUN / name / "train.json")
        for name in ("one-process", "gpu2", "nodes2")
    }
    assert (record["one-process"]["world_size"], record["one-process"]["backend"]) == (1, None)
    assert (record["nodes2"]["world_size"], record["nodes2"]["backend"], sorted(record["nodes2"]["hosts"])) == (
        2,
        "gloo",
        ["n1", "n2"],
    )
    assert (record["gpu2"]["world_size"], len(set(record["gpu2"]["hosts"]))) == (2, 1)  # two processes on one node
    one = [e["loss"] for e in record["one-process"]["losses"]]
    assert len(one) == 8
    for name in "nodes2", "gpu2":
        assert [e["loss"] for e in record[name]["losses"]] == pytest.approx(one, abs=1e-3), name


def test_a_failed_run_is_detected_leaves_nothing_finished_and_the_others_go_on(matrix):
    work, _ = matrix
    # 50 examples from a 20-row file: only the training job can know, and it exits 1
    config = write_config(
        work,
        tasks=with_small_task(work),
        experiments=[
            {"name": "too-big", "task": "small", "training": {"train_size": 50}},
            {"name": "other", "common": {"seed": 2}},
        ],
    )
    proc = slurm_snakemake(work, config, "--retries", "0")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(r"SLURM-job '\d+' failed, SLURM status is: 'FAILED'", out), out[-5000:]
    assert len(sbatch_calls(proc, "train_run", "small/tiny-llama/too-big")) == 1
    failed = work / "results/default/runs/small/tiny-llama/too-big"
    assert not failed.exists() or not [p.name for p in failed.iterdir()], "a failed run left files in its run folder"
    assert (
        "train_size=50 but the training split has only 20"
        in (work / "results/default/logs/train_run/small/tiny-llama/too-big.log").read_text()
    )
    assert (
        work / "results/default/runs" / RUN / "other" / "eval.json"
    ).exists()  # --keep-going (the profile's): the other run finished
    assert (work / "results/default/runs" / RUN / "other" / "merge_check.json").exists()


def test_a_run_killed_for_memory_succeeds_on_its_retry_with_twice_the_memory(matrix):
    work, _ = matrix
    # a training job peaks at about 750 MB here: Slurm kills the first attempt at 450 MB (OverMemoryKill), the second
    # has 900
    config = write_config(
        work, experiments=[{"name": "small-mem", "resources": {"mem_mb": 450}, "common": {"seed": 3}}]
    )
    proc = slurm_snakemake(work, config, "--retries", "1", f"results/default/runs/{RUN}/small-mem/train.json")
    assert proc.returncode == 0, proc.stderr[-8000:]
    assert sbatch_calls(proc, "train_run", f"{RUN}/small-mem") == [
        "-p cpu -t 10 --mem 450 --ntasks=1 --cpus-per-task=1",
        "-p cpu -t 20 --mem 900 --ntasks=1 --cpus-per-task=1",
    ]
    assert (
        "Error in rule train_run" in proc.stdout + proc.stderr
    )  # what the matrix test looks for: a retried job says so
    logs = list((work / ".snakemake/slurm_logs/rule_train_run").glob("*small-mem/*.log"))
    assert any("exceeded memory limit" in p.read_text() for p in logs), [p.read_text()[-2000:] for p in logs]
    assert artifacts.read_json(work / "results/default/runs" / RUN / "small-mem" / "train.json")["steps"] == 8


# profiles/slurm/config.yaml's packing block, as flags: 2 runs with the same resources per sbatch
# call, one job at a time inside it, each asking for what one run asks (1000 MB, 1 CPU)
PACKED = [
    "--group-components", "run=2",
    "--resources", "mem_mb=1000", "cpus_per_task=1",
    "--set-resource-scopes", "mem_mb=local", "cpus_per_task=local",
    "--keep-incomplete",
]  # fmt: skip


def packed_calls(proc: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    """(group, resource flags) of each sbatch call that packs runs: a group per resource class,
    run-<partition>-<GPUs>-<digest>."""
    calls = re.findall(
        r"^sbatch call: .* --comment rule_(run-\S+?)_evaluate_run_merge_run_train_run (.*?) --wrap=",
        proc.stdout + proc.stderr,
        re.M,
    )
    return [(group, " ".join(re.sub(r"-D \S+", "", flags).split())) for group, flags in calls]


def test_packed_runs_share_sbatch_calls_and_a_failed_run_keeps_the_others(cluster, tmp_path):
    good = [f"s{seed}" for seed in (1, 2, 3)]
    config = write_config(
        tmp_path,
        tasks=with_small_task(tmp_path),
        resources={"preset": "tiny", "mem_mb": 1000, "runtime": 10},
        # too-big fails at its first step (50 examples of 20)
        experiments=[
            *({"name": n, "common": {"seed": int(n[1:])}} for n in good),
            {"name": "too-big", "task": "small", "training": {"train_size": 50}},
        ],
    )
    proc = slurm_snakemake(tmp_path, config, "--retries", "0", *PACKED)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0  # too-big failed
    packed = [flags for _, flags in packed_calls(proc)]
    assert len(packed) == 2, out[-5000:]  # 4 runs, 2 per call: ceil(4 / 2) sbatch calls for every run stage
    assert all(" --mem 1000 " in f" {flags} " and "--cpus-per-task=1" in flags for flags in packed), (
        packed
    )  # one run's share
    assert not sbatch_calls(proc, "train_run", f"{RUN}/s1")  # no run stage went alone
    runs = tmp_path / "results/default/runs"
    assert not (runs / "small/tiny-llama/too-big/train.json").exists()
    assert "Removing output files of failed job" not in out  # --keep-incomplete; peftlab's outputs are atomic
    # the group without too-big finished both its runs; the run packed with it finished what it
    # ran before the failure stopped the group (jobs run one at a time in there), and kept it
    assert sum((runs / RUN / n / "merge_check.json").exists() for n in good) >= 2
    trained = {
        n: (runs / RUN / n / "train.json").stat().st_mtime for n in good if (runs / RUN / n / "train.json").exists()
    }
    for name in trained:
        assert (runs / RUN / name / "adapter/adapter_model.safetensors").exists(), name

    # without the failing run, the next call finishes the rest and retrains nothing it kept
    again = slurm_snakemake(tmp_path, config, "--retries", "0", "--config", "exclude=too-big", *PACKED)
    assert again.returncode == 0, again.stderr[-5000:] + failed_jobs(tmp_path)
    for name in good:
        record = artifacts.read_json(runs / RUN / name / "train.json")
        assert record["steps"] == 8 and record["spec"] == artifacts.read_json(
            tmp_path / f"results/default/specs/train_run/{RUN}/{name}.json"
        )
        assert artifacts.read_json(runs / RUN / name / "eval.json")["spec"]["run_id"] == f"{RUN}/{name}"
        assert (runs / RUN / name / "merged/config.json").exists()
    assert {n: (runs / RUN / n / "train.json").stat().st_mtime for n in trained} == trained


def test_a_mixed_matrix_packs_each_resource_class_apart(matrix):
    """CPU runs, GPU runs on the second partition and a two-node run, packed: no grouping error, and no sbatch call
    mixes them."""
    work, _ = matrix  # its data, model and tokens: only run jobs are submitted here
    gpu = {"gpus": 1, "gpu_model": "fake", "cpus_per_gpu": 1, "partition": "gpu"}
    experiments = [{"name": f"pack-cpu{seed}", "common": {"seed": seed}} for seed in (11, 12)]
    experiments += [{"name": f"pack-gpu{seed}", "common": {"seed": seed}, "resources": gpu} for seed in (13, 14)]
    experiments += [
        {"name": "pack-nodes2", "common": {"seed": 15}, "training": {"batch_size": 4}, "resources": {**gpu, "nodes": 2}}
    ]
    config = write_config(work, experiments=experiments)
    caps = [
        "--resources",
        "mem_mb=1500",
        "cpus_per_task=1",
        "gpu=1",
        "--set-resource-scopes",
        "mem_mb=local",
        "cpus_per_task=local",
        "gpu=local",
    ]
    proc = slurm_snakemake(work, config, "--retries", "0", "--group-components", "run=2", *caps)
    assert proc.returncode == 0, proc.stderr[-8000:] + failed_jobs(work)
    packed = dict(packed_calls(proc))
    # one call per resource class, its two runs' six jobs one after another (6 x 10 min); the two-node run alone
    assert sorted(packed.values()) == [
        "-p cpu -t 60 --mem 1500 --ntasks=1 --cpus-per-task=1",
        "-p gpu -t 60 --mem 1500 --cpus-per-task=1 --gpus=fake:1",
    ], packed
    assert sbatch_calls(proc, "train_run", f"{RUN}/pack-nodes2") == [
        "-p gpu -t 10 --mem 1500 --nodes=2 --ntasks=2 --cpus-per-task=1 --gres=gpu:fake:1"
    ]
    assert (
        len(re.findall(r"^sbatch call: ", proc.stdout + proc.stderr, re.M)) == 5
    )  # 2 packed, and the two-node run's train, evaluate, merge
    for name in (e["name"] for e in experiments):
        for f in "train.json", "eval.json", "merge_check.json":
            assert (work / "results/default/runs" / RUN / name / f).exists(), f"{name}/{f}"
