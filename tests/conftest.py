"""Shared fixtures: a tiny Llama and tokenised data, built with the package's own functions."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peftlab import artifacts, dataset
from peftlab.config import plan
from peftlab.spec import ModelSpec, RunSpec, TaskSpec

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# Files whose tests share something a second worker would disturb run in one worker, as one file: the Slurm tests'
# test cluster, and test_distributed's torchrun process groups (two started at once on one machine can collide).
SAME_WORKER = {"tests/test_distributed.py": "tests/test_slurm.py"}


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with SAME_WORKER's files together and the files handed out in the collection's order (the
    longest first, below) rather than pytest-xdist's (the most tests first)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid):
            scope = super()._split_scope(nodeid)
            return SAME_WORKER.get(scope, scope)

    config.option.loadscopereorder = False
    return Scheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """The files with Slurm tests first, then those with slow tests (whole pipelines), then the rest, each file's tests
    in their own order: with two workers the longest files start first, so neither worker is left with one at the
    end."""
    rank = {}
    for item in items:
        r = 0 if item.get_closest_marker("slurm") else 1 if item.get_closest_marker("slow") else 2
        rank[item.path] = min(rank.get(item.path, 2), r)
    items.sort(key=lambda item: rank[item.path])


def pytest_configure(config):
    """The README's test command runs the suite in two pytest-xdist workers, one test file each at a time (`-n 2 --dist
    loadfile`), so a file's finished pipeline matrix (a module-scoped fixture) is built once, and the Slurm tests share
    their test cluster in one worker. Each worker's in-process torch takes one thread of the two cores, not both."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def snakemake(workdir: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    """Run this repository's workflow in `workdir` with config/test.yaml (or `config`), and its default profile
    (named, as Snakemake finds it by itself only from the repository root or beside the Snakefile)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow/Snakefile"), "--directory", str(workdir)]
    cmd += ["--workflow-profile", str(ROOT / "profiles/default")]
    cmd += ["--configfile", str(config or ROOT / "config" / "test.yaml"), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=2400
    )  # the pipeline fixture: about 15 minutes on 2 cores


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The 'Job stats' table of a dry run: {rule: count}."""
    block = (proc.stdout + proc.stderr).split("Job stats:")[1].split("\ntotal")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def load_test_config() -> dict:
    with open(ROOT / "config" / "test.yaml") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Build the test config's tiny Llama and tokenise its arith task under a temp `results/`.

    Returns (workdir, runs) where runs are the resolved specs of config/test.yaml,
    whose relative paths resolve inside workdir.
    """
    from peftlab.models import load_tokenizer
    from peftlab.tiny import build_tiny

    work = tmp_path_factory.mktemp("tiny")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        raw = load_test_config()
        raw["tasks"]["arith"]["data"]["num_train"] = 600
        raw["tasks"]["sentiment"]["data"].update(num_train=64, num_eval=16)
        raw["models"]["tiny-llama"]["build"]["pretrain_steps"] = 60
        _, runs, specs, _, root = plan(raw, "config/test.yaml")
        for task in "arith", "sentiment":
            Path(f"{root}/raw/{task}").mkdir(parents=True)
            dataset.generate(specs["data_generate"][task]["data"], Path(f"{root}/raw/{task}"))
        model_spec = specs["model_build"]["tiny-llama"]
        Path(model_spec["path"]).mkdir(parents=True)
        build_tiny(model_spec, Path(model_spec["path"]))
        tokenize = specs["data_tokenize"]
        tokenize["sentiment/tiny-llama"] = {
            "task": tokenize["sentiment/minilm"]["task"],
            "model": tokenize["arith/tiny-llama"]["model"],
        }
        for key in "arith/tiny-llama", "sentiment/minilm", "sentiment/tiny-llama":
            task = TaskSpec.from_dict(tokenize[key]["task"])
            tok = load_tokenizer(ModelSpec.from_dict(tokenize[key]["model"]))
            dataset.tokenize(task, tok, dataset.load_raw(task)).save_to_disk(f"{root}/data/{key}")
            artifacts.write_json(f"{root}/data/{key}/meta.json", {})
    finally:
        os.chdir(cwd)
    return work, runs


@pytest.fixture
def in_tiny(tiny, monkeypatch):
    """Run the test inside the tiny workdir; yields a function giving a run's spec for `method`.

    `model` picks the test config's arith task on the tiny Llama or its sentiment task on
    MiniLM; `task="sentiment"` puts the tiny Llama on sentiment (no dropout anywhere).
    """
    work, runs = tiny
    monkeypatch.chdir(work)
    base_run = {"tiny-llama": "arith/tiny-llama/lora/r8-s1", "minilm": "sentiment/minilm/lora/r8-s1"}

    def spec(
        method: str = "lora",
        model: str = "tiny-llama",
        options: dict | None = None,
        task: str | None = None,
        **training,
    ) -> RunSpec:
        s = copy.deepcopy(runs[base_run[model]])
        if task is not None and task != s["task"]["name"]:
            s["task"] = copy.deepcopy(next(r["task"] for r in runs.values() if r["task"]["name"] == task))
            s["data_dir"] = s["data_dir"].rsplit("/data/", 1)[0] + f"/data/{task}/{model}"
        s["peft"]["type"] = method
        s["peft"]["options"] = options or {}
        s["run_id"] = f"{s['task']['name']}/{model}/{method}/test"
        s["training"].update(training)
        return RunSpec.from_dict(s)

    return spec
