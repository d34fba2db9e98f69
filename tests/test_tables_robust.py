"""The tables never crash on the data they are given: run records with zeros, NaN, infinities and
nulls, one run, one seed, one method, identical values, an all-zero metric, a method without
tracking, a task with no finished run. Every plot is drawn honestly or left out with a line in
the report saying why; the table of results always comes out."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import load_test_config
from peftlab import artifacts, tables
from peftlab.config import plan

BASE = next(r for r in plan(load_test_config())[1].values() if r["task"]["name"] == "sentiment")
SFT = next(r for r in plan(load_test_config())[1].values() if r["task"]["name"] == "arith")


def record(
    root,
    method: str,
    seed: int,
    value,
    base=BASE,
    finished: bool = True,
    tracked: bool = True,
    loss=1.0,
    r=8,
    verdict=None,
):
    """A run's files as the stages write them, its main metric `value` (any float, or None) on every example;
    `verdict`: its health's status (peftlab.health), none recorded when None."""
    spec = copy.deepcopy(base)
    spec["peft"]["type"], spec["peft"]["r"], spec["training"]["seed"] = method, r, seed
    spec["run_id"] = f"{spec['task']['name']}/{spec['model']['name']}/{method}/r{r}-s{seed}"
    run = root / "runs" / spec["run_id"]
    run.mkdir(parents=True)
    metric = "accuracy" if spec["task"]["type"] == "classification" else "exact_match"
    artifacts.write_json(
        run / "train.json",
        {
            "run_id": spec["run_id"],
            "spec": spec,
            "examples": 100,
            "trainable_params": 1000,
            "trainable_share": 0.01,
            "losses": [{"step": 5, "loss": loss}, {"step": 10, "loss": loss}],
            "first_loss": loss,
            "final_loss": loss,
            "tokens_per_s": None,
            "wall_time_s": 1.0,
            **({"health": {"status": verdict, "flags": [], "reasons": [f"seen: {verdict}"]}} if verdict else {}),
        },
    )
    if tracked:  # the tracker's record (peftlab.tracking): every ΔW quantity of two layers at the last step is `value`
        (run / "tracking").mkdir()
        info = {
            "enabled": True,
            "frequency": 10,
            "layers": 2,
            "low_rank_layers": 2,
            "reason": None,
            "steps": [10],
            "subspace_k": 8,
        }
        artifacts.write_json(
            run / "tracking/tracking.json", {"run_id": spec["run_id"], "final_step": 10, "spectral": info}
        )
        pd.DataFrame(
            [
                {
                    "step": 10,
                    "layer": f"layers.{d}.q_proj",
                    "depth": d,
                    "module": "q_proj",
                    "kind": "delta",
                    "quantity": q,
                    "value": value,
                }
                for d in (0, 1)
                for q in ("rel_norm", "effective_rank", "stable_rank", "numerical_rank", "align_top", "align_bottom")
            ]
        ).astype({"value": float}).to_parquet(run / "tracking/spectral.parquet")
    if not finished:
        return run
    ok = value is not None and math.isfinite(value)
    artifacts.write_json(run / "eval.json", {"spec": spec, "metrics": {metric: value}})
    artifacts.write_jsonl(
        run / "predictions.jsonl",
        [
            {"id": i, "split": "eval", "prediction": 1, "reference": 1, "correct": bool(ok and value > 0.5)}
            for i in range(10)
        ],
    )
    artifacts.write_json(run / "merge_check.json", {"mergeable": True, "max_abs_logit_diff": 0.0})
    return run


CASES = {
    "zeros": [("lora", 1, 0.0), ("lora", 2, 0.0), ("pissa", 1, 0.0), ("pissa", 2, 0.0)],
    "nan": [("lora", 1, float("nan")), ("pissa", 1, 0.5)],
    "infinities": [("lora", 1, float("inf")), ("pissa", 1, float("-inf"))],
    "nulls": [("lora", 1, None), ("lora", 2, None), ("pissa", 1, None)],
    "a single run": [("lora", 1, 0.7)],
    "a single seed": [("lora", 1, 0.7), ("pissa", 1, 0.6), ("dora", 1, 0.8)],
    "a single method": [("pissa", 1, 0.7), ("pissa", 2, 0.75)],
    "identical values": [("lora", s, 0.5) for s in (1, 2, 3)] + [("pissa", s, 0.5) for s in (1, 2, 3)],
    "an all-zero metric, three seeds": [(m, s, 0.0) for m in ("lora", "dora") for s in (1, 2, 3)],
    # found by the property test below: a finite value near float64's largest overflowed matplotlib's limits and ticks
    "a value near the largest float": [("lora", 1, 1.6572483587011957e308)],
    "two such values": [("lora", 1, 1.7120886998688722e308), ("pissa", 1, -1.7e308)],
}


def build(tmp_path, runs, **kw):
    root = tmp_path / "results/m"
    dirs = [record(root, *r, **kw) for r in runs]
    out = root / "tables"
    tables.build(dirs, out, reference="lora")
    return out, dirs


def check(out, dirs):
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == len(dirs)
    md = (out / "summary.md").read_text()
    assert md.startswith("# Results") and "(error:" not in md, md[md.find("## Plots not drawn") :]
    for png in out.rglob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_tables_come_out_whatever_the_runs_hold(tmp_path, case):
    out, dirs = build(tmp_path, CASES[case])
    check(out, dirs)


def test_a_loss_near_the_largest_float_is_left_out_of_the_loss_plots_with_the_reason(tmp_path):
    out, dirs = build(tmp_path, [("lora", 1, 0.7), ("pissa", 1, 0.6)], loss=1.7e308)
    check(out, dirs)
    assert (
        "loss.png, panel sentiment / minilm: not drawn: a logged loss of 1.7e+308 is too large to draw"
        in (out / "summary.md").read_text()
    )


def test_a_method_without_tracking_and_a_task_with_no_finished_run(tmp_path):
    root = tmp_path / "results/m"
    dirs = [record(root, "lora", 1, 0.7), record(root, "pissa", 1, 0.6, tracked=False)]
    dirs += [record(root, "lora", 1, None, base=SFT, finished=False)]  # arith: trained, never evaluated
    tables.build(dirs, root / "tables", reference="lora")
    check(root / "tables", dirs)
    summary = pd.read_csv(root / "tables/summary.csv").set_index("run_id")
    assert summary.loc["arith/tiny-llama/lora/r8-s1", "status"] != "done"


def test_a_plot_that_cannot_be_drawn_on_a_log_axis_is_drawn_on_a_linear_one_or_left_out_with_the_reason(tmp_path):
    """Reproduction: a collapsed run's effective rank of 0 took down every table ("Data cannot be log-scaled")."""
    out, dirs = build(tmp_path, [("lora", 1, 0.0), ("lora", 2, 0.0), ("pissa", 1, 0.0)])
    check(out, dirs)
    md = (out / "summary.md").read_text() + (
        (out / "tracking.md").read_text() if (out / "tracking.md").exists() else ""
    )
    for png in ("tracking_effective_rank.png", "tracking_alignment.png", "tracking_depth.png"):
        assert (out / png).exists() or f"{png}: not drawn" in md, png


values = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, 0.5]))
matrices = st.lists(
    st.tuples(st.sampled_from(["lora", "pissa", "dora"]), st.integers(1, 3), values),
    min_size=1,
    max_size=7,
    unique_by=lambda r: r[:2],
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    runs=matrices,
    loss=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.0)),
    verdicts=st.lists(st.sampled_from([None, "ok", "collapsed", "blew up", "no learning"]), min_size=7, max_size=7),
)
def test_any_run_records_give_the_tables(tmp_path_factory, runs, loss, verdicts):
    tmp = tmp_path_factory.mktemp("any")
    root = tmp / "results/m"
    dirs = [record(root, *r, loss=loss, verdict=v) for r, v in zip(runs, verdicts)]
    tables.build(dirs, root / "tables", reference="lora")
    check(root / "tables", dirs)


def test_a_flagged_run_is_listed_but_kept_out_of_best_marks_tests_and_fronts_unless_asked(tmp_path):
    """A collapsed pissa seed with the highest accuracy would make pissa best; flagged, it is left out, and says so."""
    root = tmp_path / "results/m"
    dirs = [record(root, "lora", s, 0.6, verdict="ok") for s in (1, 2, 3)]
    dirs += [record(root, "pissa", 1, 0.99, verdict="collapsed"), record(root, "pissa", 2, 0.5, verdict="ok")]
    dirs += [record(root, "pissa", 3, 0.52, verdict="ok"), record(root, "dora", 1, 0.9, verdict="blew up")]
    out = root / "tables"
    tables.build(dirs, out, reference="lora")
    check(out, dirs)
    summary = pd.read_csv(out / "summary.csv").set_index("run_id")
    assert summary.loc["sentiment/minilm/pissa/r8-s1", "health"] == "collapsed" and len(summary) == 7
    task = pd.read_csv(out / "tasks/sentiment.csv").set_index("method")
    assert "dora" not in task.index  # its only run is flagged: no row, no test
    assert task.loc["pissa", "n"] == 2 and task.loc["pissa", "accuracy"] == pytest.approx(0.51)
    assert bool(task.loc["lora", "best"]) and not bool(task.loc["pissa", "best"])
    comps = pd.read_csv(out / "comparisons.csv").set_index("method")
    assert comps.loc["pissa", "shared_seeds"] == 2 and "dora" not in comps.index
    md = (out / "summary.md").read_text()
    assert "## Runs left out of the comparisons" in md and "2 finished run(s) flagged by their health" in md
    assert "| sentiment/minilm/pissa/r8-s1 | collapsed | seen: collapsed |" in md
    assert "2 run(s) of sentiment left out, flagged by their health" in (out / "tasks/sentiment.md").read_text()

    tables.build(dirs, tmp_path / "all", reference="lora", include_flagged=True)  # tables.include_flagged: true
    task = pd.read_csv(tmp_path / "all/tasks/sentiment.csv").set_index("method")
    assert task.loc["pissa", "n"] == 3 and bool(task.loc["dora", "best"])
    assert "Runs left out" not in (tmp_path / "all/summary.md").read_text()


def test_a_task_whose_every_run_is_flagged_still_gets_its_declared_files(tmp_path):
    root = tmp_path / "results/m"
    dirs = [record(root, "lora", 1, 0.6, verdict="ok"), record(root, "lora", 1, None, base=SFT, verdict="collapsed")]
    out = root / "tables"
    tables.build(dirs, out, reference="lora")
    check(out, dirs)
    for ext in ("csv", "md", "tex"):
        assert (out / f"tasks/arith.{ext}").exists()
    assert "Every finished run of arith is flagged by its health" in (out / "tasks/arith.md").read_text()
    assert (out / "metrics.png").exists() and (out / "loss.png").exists() and (out / "plots").is_dir()
    assert (
        "metrics.png, panel arith / tiny-llama: not drawn: every finished run is flagged by its health"
        in (out / "summary.md").read_text()
    )
