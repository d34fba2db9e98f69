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
    return proc.returncode == 0 and {"n1", "n2"} <= set(states) and not any("drain" in s or "down" in s for s in states.values())


@pytest.fixture(scope="module")
def cluster():
    started = False
    if not cluster_is_up():
        if os.geteuid() != 0:
            if os.environ.get("PEFTLAB_REQUIRE_SLURM") == "1":
                pytest.fail("no Slurm test cluster, and not root to start one: run `sudo tests/slurm/start.sh`")
            pytest.skip("no Slurm test cluster: run `sudo tests/slurm/start.sh` (it installs Debian's slurm packages if missing)")
        proc = subprocess.run(["bash", str(ROOT / "tests/slurm/start.sh")], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        started = True
    yield
    if started:
        subprocess.run(["bash", str(ROOT / "tests/slurm/stop.sh")], timeout=120)


def slurm_snakemake(workdir: Path, config: Path, *args: str, limit: int = 900) -> subprocess.CompletedProcess:
    cmd = ["timeout", "-k", "30", str(limit), sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
    cmd += ["--directory", str(workdir), "--configfile", str(config), "--verbose"]
    cmd += ["--profile", str(ROOT / "profiles" / "slurm"), "--workflow-profile", str(ROOT / "tests" / "slurm" / "profile"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 124, f"snakemake ran past {limit} s:\n{proc.stderr[-5000:]}"
    return proc


def sbatch_calls(proc: subprocess.CompletedProcess, rule: str, run_id: str) -> list[str]:
    """The resource flags of each sbatch call for `rule` on `run_id`: what follows the job's --comment, less -D <workdir>."""
    comment = f"rule_{rule}_wildcards_{run_id.replace('/', '_')}"
    flags = re.findall(rf"^sbatch call: sbatch .* --comment {re.escape(comment)} (.*?) --wrap=", proc.stdout + proc.stderr, re.M)
    return [" ".join(re.sub(r"-D \S+", "", f).split()) for f in flags]


def failed_jobs(workdir: Path) -> str:
    """The logs of the jobs that failed, for an assertion message: the plugin deletes those of jobs that succeeded."""
    logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    return "\n".join(f"--- {p.relative_to(workdir)}\n{p.read_text()[-3000:]}" for p in logs) or "no failed job left a log"


def write_config(workdir: Path, **changes) -> Path:
    raw = load_yaml(CONFIG)
    raw.update(changes)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


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
    assert (work / "results/default/tables/summary.md").read_text().count(RUN) == 4
    out = proc.stdout + proc.stderr
    assert "Error in rule" not in out, failed_jobs(work)  # no job needed its retry
    # every job ran under Slurm but the localrules (tables, spec_write) and `all`: generate, build, tokenise, 4 x train/evaluate/merge
    assert len(re.findall(r"^sbatch call: ", out, re.M)) == 15
    # 15 spec files written on the submitting host: one per generate, build and tokenise job, three per run
    assert "32 of 32 steps (100%) done" in out


def test_sbatch_flags_follow_each_runs_resources(matrix):
    _, proc = matrix
    cpu_rule = "-p cpu -t 30 --mem 1500 --ntasks=1 --cpus-per-task=1"  # the profile's default-resources, no GPU
    assert sbatch_calls(proc, "data_tokenize", RUN) == [cpu_rule]
    assert sbatch_calls(proc, "train_run", f"{RUN}/one-process") == ["-p cpu -t 10 --mem 1500 --ntasks=1 --cpus-per-task=1"]
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
        name: artifacts.read_json(work / "results/default/runs" / RUN / name / "train.json") for name in ("one-process", "gpu2", "nodes2")
    }
    assert (record["one-process"]["world_size"], record["one-process"]["backend"]) == (1, None)
    assert (record["nodes2"]["world_size"], record["nodes2"]["backend"], sorted(record["nodes2"]["hosts"])) == (2, "gloo", ["n1", "n2"])
    assert (record["gpu2"]["world_size"], len(set(record["gpu2"]["hosts"]))) == (2, 1)  # two processes on one node
    one = [e["loss"] for e in record["one-process"]["losses"]]
    assert len(one) == 8
    for name in "nodes2", "gpu2":
        assert [e["loss"] for e in record[name]["losses"]] == pytest.approx(one, abs=1e-3), name


def test_a_failed_run_is_detected_leaves_nothing_finished_and_the_others_go_on(matrix):
    work, _ = matrix
    data = work / "small"
    data.mkdir()
    rows = "".join(f'{{"text": "fine {i}", "label": {i % 2}}}\n' for i in range(20))
    (data / "train.jsonl").write_text(rows)
    (data / "eval.jsonl").write_text(rows)
    raw = load_yaml(CONFIG)
    raw["tasks"]["small"] = {
        "type": "classification",
        "data": {"files": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")}},
    }
    # 50 examples from a 20-row file: only the training job can know, and it exits 1
    config = write_config(
        work,
        tasks=raw["tasks"],
        experiments=[{"name": "too-big", "task": "small", "training": {"train_size": 50}}, {"name": "other", "common": {"seed": 2}}],
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
    assert (work / "results/default/runs" / RUN / "other" / "eval.json").exists()  # --keep-going (the profile's): the other run finished
    assert (work / "results/default/runs" / RUN / "other" / "merge_check.json").exists()


def test_a_run_killed_for_memory_succeeds_on_its_retry_with_twice_the_memory(matrix):
    work, _ = matrix
    # a training job peaks at about 750 MB here: Slurm kills the first attempt at 450 MB (OverMemoryKill), the second has 900
    config = write_config(work, experiments=[{"name": "small-mem", "resources": {"mem_mb": 450}, "common": {"seed": 3}}])
    proc = slurm_snakemake(work, config, "--retries", "1", f"results/default/runs/{RUN}/small-mem/train.json")
    assert proc.returncode == 0, proc.stderr[-8000:]
    assert sbatch_calls(proc, "train_run", f"{RUN}/small-mem") == [
        "-p cpu -t 10 --mem 450 --ntasks=1 --cpus-per-task=1",
        "-p cpu -t 20 --mem 900 --ntasks=1 --cpus-per-task=1",
    ]
    assert "Error in rule train_run" in proc.stdout + proc.stderr  # what the matrix test looks for: a retried job says so
    logs = list((work / ".snakemake/slurm_logs/rule_train_run").glob("*small-mem/*.log"))
    assert any("exceeded memory limit" in p.read_text() for p in logs), [p.read_text()[-2000:] for p in logs]
    assert artifacts.read_json(work / "results/default/runs" / RUN / "small-mem" / "train.json")["steps"] == 8
