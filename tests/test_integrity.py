"""Every recorded number comes from its recorded settings: checkpoints tied to their training
settings, one trainer per run, divergence stopped, tolerances that hold on any CPU, valid JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from peftlab import artifacts, checkpoints, merge, methods, models, numerics, train
from peftlab.spec import fingerprint

# --- tolerances -------------------------------------------------------------------------


def test_tolerances_scale_with_the_logits_and_never_pass_nan():
    small, large = torch.tensor([0.3, -0.2]), torch.tensor([20.0, -35.0])
    assert numerics.tolerance(small, 256) == pytest.approx(256 * numerics.EPS)  # |logits| < 1: an absolute floor
    assert numerics.tolerance(large, 256) == pytest.approx(256 * numerics.EPS * 35)
    # the PiSSA reload seen on an AVX512-BF16 CPU (1.13e-05, logits of about 15) passes; a wrong reload (0.3) does not
    assert numerics.within(1.13e-5, numerics.tolerance(torch.tensor([15.0]), numerics.RELOAD_ULPS))
    assert not numerics.within(0.3, numerics.tolerance(torch.tensor([15.0]), numerics.RELOAD_ULPS))
    assert not numerics.within(math.nan, 1.0) and not numerics.within(math.inf, 1.0)
    assert math.isnan(numerics.max_abs_diff(torch.tensor([1.0, math.nan]), torch.tensor([1.0, 2.0])))


def test_every_json_written_is_valid_json(tmp_path):
    artifacts.write_json(tmp_path / "m.json", {"pearson": float("nan"), "loss": [1.0, float("inf")], "ok": 0.5})

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=refuse) == {"pearson": None, "loss": [1.0, None], "ok": 0.5}


# --- the checkpoint folder ---------------------------------------------------------------


def test_a_second_trainer_on_a_run_refuses_and_a_dead_ones_lock_is_taken_over(tmp_path):
    folder = tmp_path / "checkpoints"
    with checkpoints.claimed(folder, "abc"):
        with pytest.raises(
            checkpoints.CheckpointsInUse, match=r"checkpoints is in use by another trainer \(pid \d+ on "
        ):
            with checkpoints.claimed(folder, "abc"):
                pass
        # another process, too
        code = (
            "from peftlab import checkpoints; from pathlib import Path\nwith "
            f"checkpoints.claimed(Path({str(folder)!r}), 'abc'): pass"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0 and "CheckpointsInUse" in proc.stderr
    # a LOCK file left by a process killed with -9 holds no lock: the next trainer takes it over
    code = (
        "import os\nfrom peftlab import checkpoints; from pathlib import Path\nwith "
        f"checkpoints.claimed(Path({str(folder)!r}), 'abc'): os._exit(9)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert (folder / "LOCK").read_text().startswith("pid ")
    with checkpoints.claimed(folder, "abc"):
        pass


def test_checkpoints_of_other_training_settings_are_discarded(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    with checkpoints.claimed(folder, "old"):
        (folder / "checkpoint-40").mkdir()
    with checkpoints.claimed(folder, "old"):  # same settings: kept
        assert (folder / "checkpoint-40").exists()
    with checkpoints.claimed(folder, "new"):
        assert not (folder / "checkpoint-40").exists()
    assert "discarding 1 checkpoint item(s)" in caplog.text and "fingerprint old, now new" in caplog.text


def test_fingerprints_ignore_only_what_a_stage_does_not_read(in_tiny):
    spec = in_tiny("lora").to_dict()
    edited = json.loads(json.dumps(spec))
    edited["task"]["max_new_tokens"] += 1
    edited["training"]["logging_steps"] += 1
    edited["wandb"]["mode"] = "online"
    assert fingerprint(edited, "train_run") == fingerprint(spec, "train_run")
    assert fingerprint(edited, "evaluate_run") != fingerprint(spec, "evaluate_run")  # max_new_tokens
    edited["training"]["learning_rate"] *= 10
    assert fingerprint(edited, "train_run") != fingerprint(spec, "train_run")


# --- training ---------------------------------------------------------------------------


@pytest.mark.slow
def test_divergence_stops_training_with_the_step_and_the_last_finite_loss(in_tiny, tmp_path):
    spec = in_tiny("lora", learning_rate=1e37, max_steps=40, logging_steps=2, save_steps=1000)
    with pytest.raises(
        train.Diverged,
        match=r"training diverged: (loss|grad_norm) is (nan|inf) at step \d+; (the last finite loss was .* at step "
        r"\d+|no loss)",
    ):
        train.train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "checkpoints")
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "train.json").exists()


@pytest.mark.slow
def test_a_tiny_epoch_count_still_records_its_loss(in_tiny, tmp_path):
    spec = in_tiny("lora", max_steps=None, epochs=0.01, logging_steps=10, save_steps=1000)
    record = train.train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "checkpoints")
    assert record["steps"] == 1 and len(record["losses"]) == 1
    assert record["train_loss"] == record["first_loss"] == record["final_loss"] and math.isfinite(record["train_loss"])


@pytest.mark.slow
@pytest.mark.numerics
def test_a_run_that_failed_after_training_resumes_its_final_checkpoint_without_training_past_it(
    in_tiny, tmp_path, monkeypatch
):
    spec = in_tiny("lora", max_steps=30, save_steps=10, logging_steps=4, batch_size=8)
    straight = train.train(spec, tmp_path / "a", tmp_path / "a.json", tmp_path / "a-ckpt")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:
        m.setattr(methods, "save", broken)  # fails after training, before the adapter exists
        with pytest.raises(RuntimeError, match="disk full"):
            train.train(spec, tmp_path / "b", tmp_path / "b.json", tmp_path / "b-ckpt")
    assert (tmp_path / "b-ckpt/checkpoint-30/trainer_state.json").exists()
    again = train.train(spec, tmp_path / "b", tmp_path / "b.json", tmp_path / "b-ckpt")
    assert again["resumed_from"].endswith("checkpoint-30") and again["steps"] == 30
    assert again["losses"] == straight["losses"] and again["train_loss"] == pytest.approx(
        straight["train_loss"], rel=1e-6
    )
    a = safetensors.torch.load_file(tmp_path / "a/adapter_model.safetensors")
    b = safetensors.torch.load_file(tmp_path / "b/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_evaluate_and_merge_follow_the_adapters_training_and_refuse_an_adapter_of_other_settings(in_tiny, tmp_path):
    """Downstream trusts what it consumes: a stage's spec file is not rewritten when only training keys
    change (spec.NOT_READ), so evaluate and merge take the training settings from the adapter itself,
    and refuse it only when it disagrees on a key they read too."""
    spec = in_tiny("lora", max_steps=4, save_steps=1000)
    train.train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "ckpt")
    recorded = artifacts.read_json(tmp_path / "adapter" / models.RUN_FILE)
    assert recorded["spec"] == spec.to_dict() and recorded["fingerprint"] == fingerprint(spec.to_dict(), "train_run")

    # the spec files of evaluate and merge as they stood before the learning rate was edited
    old = in_tiny("lora", max_steps=4, save_steps=1000, learning_rate=spec.training.learning_rate / 10)
    old = old.__class__.from_dict({**old.to_dict(), "task": {**old.to_dict()["task"], "max_new_tokens": 5}})
    followed = models.trained_spec(old, tmp_path / "adapter", "evaluate_run")
    assert followed.training == spec.training  # the adapter's rate, not the stale file's
    assert followed.task.max_new_tokens == 5  # evaluation's own key
    check = merge.merge(old, str(tmp_path / "adapter"), tmp_path / "merged")
    assert check["spec"]["training"]["learning_rate"] == spec.training.learning_rate
    assert check["trained_fingerprint"] == recorded["fingerprint"]

    # a key both read (the rank): refused, naming it
    other = in_tiny("lora", max_steps=4, save_steps=1000)
    other = other.__class__.from_dict({**other.to_dict(), "peft": {**other.to_dict()["peft"], "r": 4}})
    with pytest.raises(
        models.StaleAdapter, match=r"was trained from other settings than merge_run reads \(peft.r: 8 -> 4\)"
    ):
        merge.merge(other, str(tmp_path / "adapter"), tmp_path / "merged2")
    assert not (tmp_path / "merged2").exists()
    with pytest.raises(models.StaleAdapter, match=r"peft.r: 8 -> 4"):
        models.trained_spec(other, tmp_path / "adapter", "evaluate_run")


@pytest.mark.slow
def test_merging_a_broken_adapter_says_the_adapter_is_broken(in_tiny, tmp_path):
    spec = in_tiny("lora", max_steps=2, save_steps=1000, check_reload=False)
    train.train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "ckpt")
    weights = safetensors.torch.load_file(tmp_path / "adapter/adapter_model.safetensors")
    safetensors.torch.save_file(
        {k: torch.full_like(v, float("nan")) for k, v in weights.items()},
        tmp_path / "adapter/adapter_model.safetensors",
    )
    with pytest.raises(
        merge.MergeMismatch, match=r"the adapter model itself gives non-finite logits .* the adapter is broken"
    ):
        merge.merge(spec, str(tmp_path / "adapter"), tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
