"""What a run keeps on disk (the `outputs` section): kept checkpoints that evaluate reads, the settings' validation, and what each stage's fingerprint reads of it.

Merging's save | check | none | auto is tested beside the other merge checks, in test_failures.py.
"""

from __future__ import annotations

import dataclasses
import json

import datasets
import pytest
import torch
import yaml

from conftest import load_test_config
from peftlab import artifacts, evaluate, numerics
from peftlab.checkpoints import kept_steps
from peftlab.compute import logits
from peftlab.config import ConfigError, plan
from peftlab.models import RUN_FILE, load_tokenizer, load_trained, probe_batch
from peftlab.spec import OutputsSpec, fingerprint
from peftlab.train import train


def test_kept_steps_none_last_and_every_n():
    steps = [2, 4, 6, 8, 10]
    assert kept_steps(steps, "none") == set()
    assert kept_steps(steps, "last") == {10}
    assert kept_steps(steps, 4) == {4, 8, 10}  # every 4 steps, and the last
    assert kept_steps(steps, 4, best=6) == {4, 6, 8, 10}  # while training, the best evaluated one too
    assert kept_steps([], 4) == set()


@pytest.mark.slow
@pytest.mark.parametrize(("keep", "steps"), [("none", []), ("last", [10]), (4, [4, 8, 10])])
def test_checkpoints_are_kept_as_asked_and_evaluate_reads_them(in_tiny, tmp_path, keep, steps):
    # PiSSA: its checkpoints hold an adapter relative to a changed base; the kept adapters must not
    spec = in_tiny("pissa", max_steps=10, save_steps=2, logging_steps=2, learning_rate=1e-2)
    spec = dataclasses.replace(spec, outputs=OutputsSpec(checkpoints=keep))
    folder = tmp_path / "ckpt"
    record = train(spec, tmp_path / "adapter", tmp_path / "train.json", folder)
    assert [c["step"] for c in record["checkpoints"]] == steps
    assert record["adapter_bytes"] == artifacts.disk_bytes(tmp_path / "adapter") > 0
    if not steps:
        assert not folder.exists() and record["checkpoint_bytes"] == 0
        return
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == sorted(f"checkpoint-{s}" for s in steps)
    assert record["checkpoint_bytes"] == artifacts.disk_bytes(folder) > 0
    tokenizer = load_tokenizer(spec.model)
    probe = probe_batch(datasets.load_from_disk(spec.data_dir)["eval"], tokenizer, spec.task)
    final = logits(load_trained(spec, tmp_path / "adapter", tokenizer), probe)
    by_step = {}
    for kept in record["checkpoints"]:
        assert artifacts.read_json(f"{kept['adapter']}/{RUN_FILE}")["step"] == kept["step"]
        by_step[kept["step"]] = logits(load_trained(spec, kept["adapter"], tokenizer), probe)
    # the last checkpoint is the run's own adapter, converted the same way
    assert numerics.max_abs_diff(by_step[10], final) <= numerics.tolerance(final, numerics.RELOAD_ULPS)
    if 4 in by_step:  # an earlier step is another model, and evaluate reads it like a run's adapter
        assert not torch.allclose(by_step[4], final, atol=1e-3)
        artifacts.write_json(tmp_path / "spec.json", spec.to_dict())  # as README's command, with the run's spec file
        evaluate.main(
            ["--spec", str(tmp_path / "spec.json"), "--adapter", record["checkpoints"][0]["adapter"], "--out", str(tmp_path / "step4.json")]
        )
        result, predictions = artifacts.read_json(tmp_path / "step4.json"), artifacts.read_jsonl(tmp_path / "predictions.jsonl")
        assert 0.0 <= result["metrics"]["exact_match"] <= 1.0 and len(predictions) == result["examples"]
        assert result["metrics"]["eval_loss"] != evaluate.evaluate(spec, str(tmp_path / "adapter"))[0]["metrics"]["eval_loss"]


def config_with(**outputs) -> dict:
    cfg = load_test_config()
    cfg["outputs"] = outputs
    return cfg


def test_checkpoints_every_n_must_be_saved_steps():
    with pytest.raises(ConfigError, match=r"outputs.checkpoints: every 30 steps is not a multiple of training.save_steps \(20\)"):
        plan(config_with(checkpoints=30))
    with pytest.raises(ConfigError, match=r"outputs.checkpoints"):
        plan(config_with(checkpoints="all"))
    with pytest.raises(ConfigError, match=r"outputs.merge.*'keep'.*auto"):
        plan(config_with(merge="keep"))
    assert {r["outputs"]["checkpoints"] for r in plan(config_with(checkpoints=40)).runs.values()} == {40}


def test_outputs_reach_the_stage_that_reads_them_and_no_other(in_tiny):
    spec = in_tiny("lora").to_dict()
    assert spec["outputs"] == {"merge": "auto", "checkpoints": "none"}
    merge_mode = json.loads(json.dumps(spec))
    merge_mode["outputs"]["merge"] = "check"
    assert fingerprint(merge_mode, "merge_run") != fingerprint(spec, "merge_run")
    assert fingerprint(merge_mode, "train_run") == fingerprint(spec, "train_run")
    assert fingerprint(merge_mode, "evaluate_run") == fingerprint(spec, "evaluate_run")
    kept = json.loads(json.dumps(spec))
    kept["outputs"]["checkpoints"] = "last"
    assert fingerprint(kept, "train_run") != fingerprint(spec, "train_run")
    assert fingerprint(kept, "merge_run") == fingerprint(spec, "merge_run")
    # a spec written before the section existed trains as it did: checkpoints at its default hashes as its absence
    old = json.loads(json.dumps(spec))
    del old["outputs"]
    assert fingerprint(old, "train_run") == fingerprint(spec, "train_run")


def test_the_cost_plan_from_compute_counts_flops_tokens_and_disk(tmp_path, monkeypatch):
    """No finished run: training time is tokens x 4N (PEFT) over peak x MFU; parameters are counted as training counts them."""
    from peftlab import methods, plan
    from peftlab.methods import targets
    from peftlab.models import load_model
    from peftlab.spec import RunSpec

    cfg = load_test_config()
    cfg["sweep"] = [b for b in cfg["sweep"] if b["task"] == "sentiment"]  # MiniLM: a packaged model, nothing to build
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    result = plan.cost(tmp_path / "c.yaml", peak_tflops=2.0, mfu=0.5)
    assert result["measured"] == {} and len(result["runs"]) == 2
    c = result["runs"]["sentiment/minilm/lora/r8-s1"]
    spec = RunSpec.from_dict(plan.plan(cfg, tmp_path / "c.yaml").runs[c.run_id])
    base = load_model(spec.model, spec.task)
    real = methods.attach(base, spec.peft, methods.Context("SEQ_CLS", 1, targets.resolve(base, spec.peft.target_modules, None)))
    assert c.total_params == sum(p.numel() for p in load_model(spec.model, spec.task).parameters())
    assert c.trainable_params == sum(p.numel() for p in real.parameters() if p.requires_grad)
    # 40 steps x 16 examples x max_length 32 (no tokenised data yet: an upper bound, marked estimated)
    assert (c.train_tokens, c.tokens_estimated, c.source) == (40 * 16 * 32, True, "compute")
    assert c.seconds["train_run"] == pytest.approx(c.train_tokens * 4 * c.total_params / (2e12 * 0.5))
    assert (c.adapter_bytes, c.merged_bytes, c.checkpoint_bytes) == (4 * c.trainable_params, 4 * c.total_params, 0)  # auto: saved below 1B
    assert "2 runs:" in plan.report(result, validate=False)
