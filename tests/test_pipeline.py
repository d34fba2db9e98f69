"""The whole DAG on config/test.yaml, through Snakemake, in a temporary directory.

One module-scoped run (about two minutes on 2 cores); each test reads its outputs.
"""

from __future__ import annotations

from dataclasses import replace

import datasets
import pandas as pd
import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from conftest import load_test_config, planned_jobs, snakemake
from peftlab import artifacts
from peftlab.config import plan
from peftlab.models import load_model, load_tokenizer
from peftlab.spec import RunSpec
from peftlab.train import logits, probe_batch

pytestmark = pytest.mark.slow
RUNS = plan(load_test_config())[1]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    plan_ = snakemake(work, "-n")
    assert plan_.returncode == 0, plan_.stdout + plan_.stderr
    proc = snakemake(work, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return work, planned_jobs(plan_)


def test_plan_tokenises_once_per_task_and_model(done):
    _, jobs = done
    assert jobs["train_run"] == len(RUNS) == 9
    assert jobs["data_tokenize"] == 2 < jobs["train_run"]
    assert jobs["evaluate_run"] == jobs["merge_run"] == 9 and jobs["model_build"] == 1


@pytest.mark.parametrize("run_id", sorted(RUNS))
def test_run(done, run_id):
    work, _ = done
    run = work / "results/test/runs" / run_id
    train, ev = artifacts.read_json(run / "train.json"), artifacts.read_json(run / "eval.json")
    spec = artifacts.read_json(work / "results/test/specs/train_run" / f"{run_id}.json")
    assert train["spec"] == spec == ev["spec"]
    assert train["git_commit"] and train["versions"]["peft"] and train["peak_memory"]["cpu_rss_mb"] > 0

    # learning: the loss falls
    losses = [x["loss"] for x in train["losses"]]
    assert len(losses) >= 4 and sum(losses[-2:]) / 2 < losses[0] * 0.9, losses

    # metrics in range
    m = ev["metrics"]
    if spec["task"]["type"] == "classification":
        assert 0.5 < m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1
    else:
        assert 0 <= m["exact_match"] <= 1 and m["perplexity"] == pytest.approx(2.718281828 ** m["eval_loss"], rel=1e-6)
        assert m["eval_loss"] < train["losses"][0]["loss"]

    # the trainer's own reload check, onto an untouched base
    assert train["reload_max_abs_diff"] <= 1e-5

    # independently: adapter on an untouched base == merged model
    check = artifacts.read_json(run / "merge_check.json")
    if spec["peft"]["type"] == "prompt_tuning":
        assert check["mergeable"] is False and "virtual tokens" in check["reason"]
        assert (run / "merged/NOT_MERGED.txt").exists()
        return
    assert check["max_abs_logit_diff"] <= 1e-4
    typed = RunSpec.from_dict(spec)
    model = replace(typed.model, path=str(work / typed.model.path)) if typed.model.build else typed.model
    tok = load_tokenizer(model)
    probe = probe_batch(datasets.load_from_disk(work / typed.data_dir)["eval"], tok, typed.task)
    adapter_model = PeftModel.from_pretrained(load_model(model, typed.task, tok), run / "adapter")
    auto = AutoModelForSequenceClassification if spec["task"]["type"] == "classification" else AutoModelForCausalLM
    merged = auto.from_pretrained(run / "merged", dtype=torch.float32)
    assert (logits(adapter_model, probe) - logits(merged, probe)).abs().max().item() <= 1e-4


def test_tables_list_every_run(done):
    work, _ = done
    tables = work / "results/test/tables"
    summary = pd.read_csv(tables / "summary.csv")
    assert sorted(summary["run_id"]) == sorted(RUNS)
    md = (tables / "summary.md").read_text()
    assert all(run_id in md for run_id in RUNS)
    grouped = pd.read_csv(tables / "summary_grouped.csv")
    lora = grouped[(grouped["task"] == "arith") & (grouped["method"] == "lora")].iloc[0]
    assert lora["seeds"] == 2 and lora["exact_match_std"] >= 0 and 0 < lora["trainable_pct"] < 100
    assert "\\begin{tabular}" in (tables / "summary.tex").read_text()
    for png in ("metrics.png", "loss.png"):
        assert (tables / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_left_to_do_and_no_checkpoints_left(done):
    work, _ = done
    proc = snakemake(work, "-n")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr
    assert not any((work / "results/test/checkpoints").rglob("checkpoint-*"))


def test_tables_target_trains_nothing(done):
    work, _ = done
    (work / "results/test/tables/summary.md").unlink()
    proc = snakemake(work, "--cores", "1", "tables")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc) == {"tables": 1}
    assert all(run_id in (work / "results/test/tables/summary.md").read_text() for run_id in RUNS)


def test_one_run_target_reruns_exactly_that_run(done):
    work, _ = done
    target = "results/test/runs/arith/tiny-llama/lora/r8-s2/eval.json"
    proc = snakemake(work, "-n", "--forcerun", "train_run", "--", target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc) == {"train_run": 1, "evaluate_run": 1}
    assert "wildcards: run_id=arith/tiny-llama/lora/r8-s2" in proc.stdout


def test_editing_one_run_reruns_only_that_run(done, tmp_path):
    work, _ = done
    raw = load_test_config()
    assert raw["sweep"][2]["method"] == "ia3"
    raw["sweep"][2]["training"]["learning_rate"] = 0.05
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(raw))
    proc = snakemake(work, "-n", config=tmp_path / "edited.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc)
    assert jobs["train_run"] == 1 and jobs["evaluate_run"] == 1 and jobs["merge_run"] == 1, jobs
    assert "wildcards: run_id=arith/tiny-llama/ia3/s1" in proc.stdout
    # put the spec back so later dry runs see the original matrix
    assert snakemake(work, "-n").returncode == 0


def test_resources_rerun_a_run_only_when_they_change_its_world_size(done, tmp_path):
    """Memory, time and partition are not results: raising them reruns nothing; more processes change the global batch."""
    work, _ = done
    raw = load_test_config()
    raw["resources"] = {"mem_mb": 32000, "runtime": 600, "partition": "long", "threads": 2}
    (tmp_path / "bigger.yaml").write_text(yaml.safe_dump(raw))
    proc = snakemake(work, "-n", config=tmp_path / "bigger.yaml")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    raw["sweep"][2]["resources"] = {"gpus": 2}  # the ia3 run, now on two processes
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(raw))
    proc = snakemake(work, "-n", config=tmp_path / "two.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc)["train_run"] == 1 and "wildcards: run_id=arith/tiny-llama/ia3/s1" in proc.stdout
    assert snakemake(work, "-n").returncode == 0  # put the spec back
