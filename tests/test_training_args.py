"""The PEFT Playground's training knobs: in-training evaluation with best-model selection,
`training.extra` TrainingArguments, and the command that prints each run's TrainingArguments."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import subprocess
import sys

import datasets
import pyarrow
import pytest

from conftest import ROOT, load_test_config
from peftlab import evaluate, merge, tasks, trainers
from peftlab.config import ConfigError, plan
from peftlab.dataset import holdout
from peftlab.models import load_tokenizer, load_trained
from peftlab.spec import RunSpec
from peftlab.train import train


def test_in_training_evaluation_keeps_the_best_checkpoint(in_tiny, tmp_path):
    """Every 4 steps the task's own evaluation runs (exact match by generation, eval loss); with
    load_best_model_at_end the saved adapter is the best evaluation's. `greater_is_better: true` on
    eval_loss keeps the *worst* loss, which on a falling loss is an early checkpoint, not the last step:
    the kept adapter must reproduce that evaluation's loss, and differ from the last one's."""
    spec = in_tiny(
        "lora",
        max_steps=12,
        batch_size=16,
        learning_rate=5e-3,
        logging_steps=4,
        save_steps=4,
        eval_steps=4,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=True,
    )
    record = train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "ckpt")
    history = record["evaluations"]
    assert [e["step"] for e in history] == [4, 8, 12]
    assert all({"eval_loss", "eval_exact_match", "eval_perplexity"} <= set(e) for e in history)
    losses = [e["eval_loss"] for e in history]
    assert losses[-1] < losses[0], losses  # training works, so the worst is early
    worst = max(history, key=lambda e: e["eval_loss"])
    assert record["best"] == {"checkpoint_step": worst["step"], "value": worst["eval_loss"]}
    assert worst["step"] != 12

    tokenizer = load_tokenizer(spec.model)
    kept = load_trained(spec, tmp_path / "adapter", tokenizer)
    # evaluated on the validation share held out of the training split, never on the evaluation split
    validation = holdout(
        datasets.load_from_disk(spec.data_dir)["train"], spec.training.validation_share, spec.training.validation_seed
    )[1]
    assert record["validation"] == {"split": "train", "held_out": len(validation), "used_for": "in-training evaluation"}
    assert record["examples"] == len(datasets.load_from_disk(spec.data_dir)["train"]) - len(validation)
    again = tasks.of(spec.task).evaluate(spec.task, kept, tokenizer, validation)["eval_loss"]
    assert again == pytest.approx(worst["eval_loss"], rel=1e-4)  # float32 sums in another order: well within 1e-4
    assert abs(again - losses[-1]) > 1e-3 * abs(losses[-1])


def test_choosing_the_best_checkpoint_never_opens_the_evaluation_split(in_tiny, tmp_path):
    """The evaluation split's data file is replaced by bytes that fail to load: a run that evaluates while it
    trains and keeps its best checkpoint trains regardless; the evaluation step, which alone reads it, fails."""
    spec = in_tiny("lora", max_steps=4, logging_steps=2, save_steps=2, eval_steps=2, load_best_model_at_end=True)
    data_dir = tmp_path / "data"
    shutil.copytree(spec.data_dir, data_dir)
    for arrow in (data_dir / "eval").glob("*.arrow"):
        arrow.write_bytes(b"this file must never be read while training")
    spec = dataclasses.replace(spec, data_dir=str(data_dir))
    record = train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "ckpt")
    assert [e["step"] for e in record["evaluations"]] == [2, 4] and record["best"]["checkpoint_step"] in (2, 4)
    assert record["validation"]["split"] == "train" and record["validation"]["held_out"] > 0
    merge.merge(spec, str(tmp_path / "adapter"), tmp_path / "merged")  # its probe batch is training rows too
    with pytest.raises(pyarrow.ArrowInvalid):  # the poisoned file does fail whoever opens it
        evaluate.evaluate(spec, str(tmp_path / "adapter"))


@pytest.mark.parametrize(
    "training,message",
    [
        (
            {"extra": {"learning_rate": 0.1}},
            r"training.extra.learning_rate: set by training.learning_rate; set it there",
        ),
        (
            {"extra": {"optimm": "adafactor"}},
            r"training.extra.optimm: not an argument of transformers' TrainingArguments; did you mean optim\?",
        ),
        ({"load_best_model_at_end": True}, r"training.load_best_model_at_end: needs training.eval_steps"),
        (
            {"eval_steps": 10, "save_steps": 25, "load_best_model_at_end": True},
            r"training.save_steps: 25 must be a multiple of eval_steps 10",
        ),
        (
            {"eval_steps": 10, "metric_for_best_model": "bleu"},
            r"training.metric_for_best_model: 'bleu' is not reported for sft tasks; allowed: exact_match",
        ),
    ],
)
def test_training_knobs_are_checked_when_the_config_is_read(training, message):
    raw = load_test_config()
    raw["training"] = {**raw.get("training", {}), **training}
    with pytest.raises(ConfigError, match=message):
        plan(raw)


def test_extra_reaches_the_training_arguments_and_the_dry_run_prints_them(tmp_path):
    raw = load_test_config()
    raw["training"] = {**raw.get("training", {}), "extra": {"optim": "adafactor", "adam_beta2": 0.95}, "eval_steps": 10}
    run = RunSpec.from_dict(plan(raw).runs["arith/tiny-llama/lora/r8-s1"])
    args = trainers.arguments(run, "out")
    assert (args["optim"], args["adam_beta2"]) == ("adafactor", 0.95)
    assert (args["eval_strategy"], args["metric_for_best_model"], args["greater_is_better"]) == (
        "steps",
        "eval_exact_match",
        True,
    )

    config = tmp_path / "knobs.yaml"
    config.write_text(json.dumps(raw))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "peftlab.config",
            str(config),
            "--training-args",
            "--only",
            "arith/tiny-llama/lora/r8-s1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout)
    resolved = printed["arith/tiny-llama/lora/r8-s1"]
    assert (
        resolved["optim"] == "adafactor"
        and resolved["adam_beta2"] == 0.95
        and resolved["learning_rate"] == run.training.learning_rate
    )
    assert resolved["per_device_train_batch_size"] == run.training.batch_size and resolved["eval_steps"] == 10
    assert resolved["output_dir"].endswith("checkpoints/arith/tiny-llama/lora/r8-s1")


def test_every_argument_peftlab_sets_is_named_in_from_spec():
    for run in plan(load_test_config()).runs.values():
        spec = copy.deepcopy(run)
        spec["training"].update(eval_steps=5)
        assert set(trainers.arguments(RunSpec.from_dict(spec), "out")) <= set(trainers.FROM_SPEC)
