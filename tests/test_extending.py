"""Adding a task type or a metric takes its own file and one registry row, nothing else.

The task type below is this file's own: a prompt -> response type that also scores each answer by
the share of the reference's characters it matches in place (`char_match`). It is registered by
one row in peftlab.tasks.TASK_TYPES, and its metric by one row in peftlab.metrics.METRICS; no other
file of the package names either. A config validates with it, a real tiny run trains and evaluates
with it, and the tables compare runs by its metric with the metric's own direction, range and
per-example test.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from conftest import load_test_config
from peftlab import artifacts, evaluate, metrics, tables, tasks, train
from peftlab.matrix import plan
from peftlab.schema import ConfigError
from peftlab.spec import TaskSpec
from peftlab.tasks.sft import Sft


def char_match(prediction: str, reference: str) -> float:
    return sum(a == b for a, b in zip(prediction, reference)) / max(len(reference), 1)


class CharMatch(Sft):
    name = "char_match"
    summary = "sft, also scored by the share of the reference's characters the answer matches in place"

    def metric_names(self, task):
        return [*super().metric_names(task), "char_match"]

    def default_metric(self, task):
        return "char_match"

    def evaluate(self, task, model, tokenizer, ds):
        out = super().evaluate(task, model, tokenizer, ds)
        for row in out["predictions"]:
            row["char_match"] = char_match(row["prediction"], row["reference"])
        out["char_match"] = sum(r["char_match"] for r in out["predictions"]) / max(len(out["predictions"]), 1)
        return out


CHAR_MATCH = metrics.Metric(
    "char_match", "character match", bounds=metrics.SHARE, per_example=metrics.column("char_match")
)


@pytest.fixture
def registered(monkeypatch):
    """The two rows: the task type's and the metric's."""
    monkeypatch.setitem(tasks.TASK_TYPES, CharMatch.name, CharMatch())
    monkeypatch.setitem(metrics.METRICS, CHAR_MATCH.name, CHAR_MATCH)


def config_with_the_new_type() -> dict:
    raw = load_test_config()
    raw["tasks"]["arith"]["type"] = "char_match"
    return raw


def test_without_its_row_the_type_is_refused_naming_the_registered_ones():
    with pytest.raises(
        ConfigError,
        match=r"tasks.arith.type: 'char_match' is not one of \['classification', 'sft', 'lm', 'seq2seq', 'rlvr'\]",
    ):
        plan(config_with_the_new_type())


def test_with_its_row_a_config_validates_and_plans_its_runs(registered):
    runs = plan(config_with_the_new_type()).runs
    arith = [r for r in runs.values() if r["task"]["name"] == "arith"]
    assert arith and all(r["task"]["type"] == "char_match" for r in arith)
    assert tasks.main_metric(TaskSpec.from_dict(arith[0]["task"])) == "char_match"


def _records(root, metric: str, per_method: dict[str, list[list[float]]]):
    """Runs of one task whose main metric is `metric`: per method, per seed, each example's score."""
    base = next(r for r in plan(config_with_the_new_type()).runs.values() if r["task"]["name"] == "arith")
    dirs = []
    for method, seeds in per_method.items():
        for seed, scores in enumerate(seeds, start=1):
            spec = copy.deepcopy(base)
            spec["peft"]["type"], spec["training"]["seed"] = method, seed
            spec["run_id"] = f"arith/tiny-llama/{method}/r8-s{seed}"
            run = root / "runs" / spec["run_id"]
            run.mkdir(parents=True)
            artifacts.write_json(
                run / "train.json",
                {
                    "run_id": spec["run_id"],
                    "spec": spec,
                    "examples": 10,
                    "trainable_params": 10,
                    "trainable_share": 0.1,
                    "losses": [],
                }
                | {"first_loss": 1.0, "final_loss": 0.5, "tokens_per_s": None, "wall_time_s": 1.0},
            )
            artifacts.write_json(run / "eval.json", {"spec": spec, "metrics": {metric: sum(scores) / len(scores)}})
            artifacts.write_jsonl(
                run / "predictions.jsonl", [{"id": i, "split": "eval", metric: s} for i, s in enumerate(scores)]
            )
            artifacts.write_json(run / "merge_check.json", {"mergeable": True, "max_abs_logit_diff": 0.0})
            dirs.append(run)
    return dirs


def test_the_tables_compare_by_the_new_metric_with_its_own_row(registered, tmp_path):
    high = [[0.9, 0.8, 1.0, 0.95, 0.9, 0.85, 1.0, 0.9], [0.95, 0.9, 0.9, 1.0, 0.85, 0.9, 0.95, 1.0], [0.9] * 8]
    low = [[0.1, 0.2, 0.0, 0.1, 0.3, 0.2, 0.1, 0.0], [0.2, 0.1, 0.1, 0.0, 0.2, 0.3, 0.1, 0.1], [0.1] * 8]
    root = tmp_path / "results/m"
    tables.build(_records(root, "char_match", {"lora": low, "dora": high}), root / "tables", reference="lora")
    task = pd.read_csv(root / "tables/tasks/arith.csv").set_index("method")
    assert task.loc["dora", "best"] and not task.loc["lora", "best"]  # higher is better: its row says so
    assert task.loc["dora", "ci95_high"] <= 1.0  # clipped to its range [0, 1]
    assert task.loc["dora", "example_test"].startswith(
        "paired permutation"
    )  # its per-example column, each example once
    assert "## arith: char_match" in (root / "tables/summary.md").read_text()

    # the same runs under a lower-is-better row: the best mark turns over
    metrics.METRICS["char_match"] = metrics.Metric(
        "char_match", "character miss", higher_is_better=False, bounds=metrics.SHARE
    )
    tables.build(
        _records(tmp_path / "again", "char_match", {"lora": low, "dora": high}),
        tmp_path / "again/tables",
        reference="lora",
    )
    task = pd.read_csv(tmp_path / "again/tables/tasks/arith.csv").set_index("method")
    assert task.loc["lora", "best"] and not task.loc["dora", "best"]
    assert pd.isna(task.loc["dora", "example_test"])  # that row gives no per-example form: no test


@pytest.mark.slow
def test_a_real_run_trains_and_evaluates_with_the_new_type(registered, in_tiny, tmp_path):
    spec = in_tiny("lora", max_steps=20, logging_steps=5, save_steps=1000)
    spec = spec.__class__.from_dict({**spec.to_dict(), "task": {**spec.to_dict()["task"], "type": "char_match"}})
    record = train.train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "checkpoints")
    assert record["final_loss"] < record["first_loss"]
    result, predictions = evaluate.evaluate(spec, str(tmp_path / "adapter"))
    assert result["task_type"] == "char_match" and 0 <= result["metrics"]["char_match"] <= 1
    expected = sum(char_match(p["prediction"], p["reference"]) for p in predictions) / len(predictions)
    assert result["metrics"]["char_match"] == pytest.approx(expected) and all("char_match" in p for p in predictions)
