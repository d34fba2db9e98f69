"""What a run keeps on disk (the `outputs` section): kept checkpoints that evaluate reads, the settings' validation, and
what each stage's fingerprint reads of it.

Merging's save | check | none | auto is tested beside the other merge checks, in test_failures.py.
"""

from __future__ import annotations

import dataclasses
import json

import datasets
import pytest
import torch
import yaml

from conftest import ROOT, load_test_config
from peftlab import artifacts, evaluate, numerics
from peftlab import spec as spec_module
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
        artifacts.write_json(
            tmp_path / "spec.json", spec.to_dict()
        )  # as docs/config.md's command, with the run's spec file
        adapter, out = record["checkpoints"][0]["adapter"], tmp_path / "step4"
        args = ["--spec", str(tmp_path / "spec.json"), "--adapter", adapter, "--out", f"{out}.json"]
        evaluate.main([*args, "--predictions", f"{out}.jsonl"])
        result, predictions = (
            artifacts.read_json(tmp_path / "step4.json"),
            artifacts.read_jsonl(tmp_path / "step4.jsonl"),
        )
        assert 0.0 <= result["metrics"]["exact_match"] <= 1.0 and len(predictions) == result["examples"]
        assert (
            result["metrics"]["eval_loss"]
            != evaluate.evaluate(spec, str(tmp_path / "adapter"))[0]["metrics"]["eval_loss"]
        )


def config_with(**outputs) -> dict:
    cfg = load_test_config()
    cfg["outputs"] = outputs
    return cfg


def test_checkpoints_every_n_must_be_saved_steps():
    with pytest.raises(
        ConfigError, match=r"outputs.checkpoints: every 30 steps is not a multiple of training.save_steps \(20\)"
    ):
        plan(config_with(checkpoints=30))
    with pytest.raises(ConfigError, match=r"outputs.checkpoints"):
        plan(config_with(checkpoints="all"))
    with pytest.raises(ConfigError, match=r"outputs.merge.*'keep'.*auto"):
        plan(config_with(merge="keep"))
    assert {r["outputs"]["checkpoints"] for r in plan(config_with(checkpoints=40)).runs.values()} == {40}


def test_outputs_reach_the_stage_that_reads_them_and_no_other(in_tiny, monkeypatch):
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
    # a key added to the spec since the last release (spec.ADDED_KEYS) counts only when it leaves its default:
    # a spec written before it existed, and one at its default, hash alike; one that sets it does not
    monkeypatch.setattr(spec_module, "ADDED_KEYS", ("outputs.checkpoints",))
    old = json.loads(json.dumps(spec))
    del old["outputs"]["checkpoints"]
    assert fingerprint(old, "train_run") == fingerprint(spec, "train_run") != fingerprint(kept, "train_run")


def test_the_cost_plan_from_compute_counts_flops_tokens_and_disk(tmp_path, monkeypatch, capsys):
    """No finished run: training time is tokens x 4N (PEFT) over peak x MFU; parameters are counted as training counts
    them."""
    from peftlab import cost, methods
    from peftlab.methods import targets
    from peftlab.models import load_model
    from peftlab.spec import RunSpec

    cfg = load_test_config()
    cfg["sweep"] = [b for b in cfg["sweep"] if b["task"] == "sentiment"]  # MiniLM: a packaged model, nothing to build
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    result = cost.cost(tmp_path / "c.yaml", peak_tflops=2.0, mfu=0.5)
    assert result["measured"] == {} and len(result["runs"]) == 2
    c = result["runs"]["sentiment/minilm/lora/r8-s1"]
    spec = RunSpec.from_dict(cost.plan(cfg, tmp_path / "c.yaml").runs[c.run_id])
    base = load_model(spec.model, spec.task)
    real = methods.attach(
        base, spec.peft, methods.Context("SEQ_CLS", 1, targets.resolve(base, spec.peft.target_modules, None))
    )
    assert c.total_params == sum(p.numel() for p in load_model(spec.model, spec.task).parameters())
    assert c.trainable_params == sum(p.numel() for p in real.parameters() if p.requires_grad)
    # 40 steps x 16 examples x max_length 32 (no tokenised data yet: an upper bound, marked estimated)
    assert (c.train_tokens, c.tokens_estimated, c.source) == (40 * 16 * 32, True, "compute")
    assert c.seconds["train_run"] == pytest.approx(c.train_tokens * 4 * c.total_params / (2e12 * 0.5))
    assert (c.adapter_bytes, c.merged_bytes, c.checkpoint_bytes) == (
        4 * c.trainable_params,
        4 * c.total_params,
        0,
    )  # auto: saved below 1B
    assert "2 runs:" in cost.report(result, validate=False)
    # docs/cost-plan.md's command for another device: its peak and MFU from the command line
    cost.main([str(tmp_path / "c.yaml"), "--peak-tflops", "312", "--mfu", "0.35", "--json"])
    seconds = json.loads(capsys.readouterr().out)["runs"][c.run_id]["seconds"]["train_run"]
    assert seconds == pytest.approx(c.train_tokens * 4 * c.total_params / (312e12 * 0.35))


# The README demo (config/config.yaml) as it finished on a 2-core CPU: seconds of train_run,
# evaluate_run and merge_run per run (Snakemake's benchmarks), and train.json's tokens_seen.
# The seeds differ by 3 tokens: a free line through them had a slope of seconds per 3 tokens.
DEMO_SECONDS = {
    "sentiment/minilm/lora/r8-s1": (35.78, 22.62, 9.2),
    "sentiment/minilm/lora/r8-s2": (27.34, 26.16, 8.56),
    "sentiment/minilm/dora/r8-s1": (34.5, 11.43, 9.25),
    "sentiment/minilm/dora/r8-s2": (41.34, 14.1, 12.8),
    "sentiment/minilm/pissa/r8-s1": (50.17, 13.34, 18.34),
    "sentiment/minilm/pissa/r8-s2": (55.14, 14.11, 17.26),
    "sentiment/minilm/ia3/s1": (37.62, 12.19, 7.19),
    "sentiment/minilm/ia3/s2": (38.58, 26.03, 10.41),
    "arith/tiny-llama/lora/r8-s1": (17.49, 10.2, 7.76),
    "arith/tiny-llama/lora/r8-s2": (18.65, 11.2, 7.58),
    "arith/tiny-llama/dora/r8-s1": (38.15, 19.94, 7.68),
    "arith/tiny-llama/dora/r8-s2": (33.9, 18.71, 16.24),
    "arith/tiny-llama/pissa/r8-s1": (16.43, 13.67, 13.21),
    "arith/tiny-llama/pissa/r8-s2": (20.07, 20.23, 6.96),
    "arith/tiny-llama/ia3/s1": (18.75, 10.32, 8.02),
    "arith/tiny-llama/ia3/s2": (24.81, 10.4, 9.91),
}
DEMO_TOKENS = {"sentiment": {"s1": 18625, "s2": 18620}, "arith": {"s1": 227731, "s2": 227734}}


def finished_demo(tmp_path, slower: dict[str, float] | None = None):
    """config/config.yaml in tmp_path with every run finished as DEMO_SECONDS says, `slower` runs that many times
    slower."""
    from peftlab import paths

    (tmp_path / "config.yaml").write_text((ROOT / "config/config.yaml").read_text())  # its matrix: results/default
    for run_id, seconds in DEMO_SECONDS.items():
        factor = (slower or {}).get(run_id, 1.0)
        for stage, s in zip(("train_run", "evaluate_run", "merge_run"), seconds):
            bench = tmp_path / paths.benchmark("results/default", stage, run_id)
            bench.parent.mkdir(parents=True, exist_ok=True)
            bench.write_text(f"s\th:m:s\n{s * factor}\t0:00:00\n")
        record = tmp_path / paths.train_record("results/default", run_id)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"tokens_seen": DEMO_TOKENS[run_id.split("/")[0]][run_id[-2:]]}))
    return tmp_path / "config.yaml"


def test_the_cost_plan_line_never_extrapolates_a_slope_from_runs_of_equal_length():
    """The demo's cause: the free line through two seeds 3 tokens apart, its intercept clipped to 0, predicted 2.7 h for
    45 s."""
    from peftlab.cost import fit

    a, b = fit([(227731, 17.49), (227734, 18.65)])
    assert 17.49 <= a + b * 227733 <= 18.65
    assert a + b * 2 * 227733 <= 2 * 18.65  # twice the work: at most twice the time
    assert fit([(100, 10.0), (200, 15.0), (300, 20.0)]) == pytest.approx((5.0, 0.05))  # a clean line: fitted as it is
    assert fit([(0, 3.0), (0, 5.0)]) == (4.0, 0.0)  # no work to scale by: the mean


def test_the_cost_plan_predicts_every_run_of_the_demo_within_a_factor_of_two(tmp_path, monkeypatch, capsys):
    """Leave one out over the finished demo: judged run by run, not on the matrix's total, and passes (exit 0)."""
    from peftlab import cost

    config = finished_demo(tmp_path)
    monkeypatch.chdir(tmp_path)
    cost.main([str(config), "--validate"])  # no SystemExit: every run within FAIL_FACTOR
    out = capsys.readouterr().out
    assert "100% of runs within 2x of their prediction" in out and "FAILED" not in out
    whole = cost.cost(config)  # every run from all finished ones: the plan's own prediction for the matrix
    predicted = {k: sum(c.seconds.values()) for k, c in whole["runs"].items()}
    assert all(c.source == "measured" for c in whole["runs"].values())
    for run_id, seconds in DEMO_SECONDS.items():
        assert 0.5 <= predicted[run_id] / sum(seconds) <= 2, (run_id, predicted[run_id], seconds)


def test_the_cost_plan_check_fails_on_a_run_five_times_slower_than_predicted(tmp_path, monkeypatch, capsys):
    """A run planted 5x slower than its peers: --validate names it, and exits 1."""
    from peftlab import cost

    planted = "arith/tiny-llama/dora/r8-s1"
    config = finished_demo(tmp_path, slower={planted: 5.0})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cost.main([str(config), "--validate"])
    assert e.value.code != 0 and planted in str(e.value.code)
    result = cost.cost(config, leave_one_out=True)
    v = cost.validation(result["runs"], result["measured"])
    assert v["runs"][planted]["off"] > 4 and v["runs"][planted]["measured"] > 4 * v["runs"][planted]["predicted"]
    assert planted in v["failed"] and set(v["failed"]) <= {
        planted,
        "arith/tiny-llama/dora/r8-s2",
    }  # and its one peer, predicted from it
    assert "FAILED: 2 run(s) off by more than 3x" in capsys.readouterr().out
