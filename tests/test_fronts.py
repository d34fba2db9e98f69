"""The Pareto fronts against peak memory, training time and forgetting (peftlab.plots.FRONTS), beside the one against
trainable parameters: the tables' columns carry what train.json and eval.json recorded, each front holds exactly the
settings no other beats on both a lower cost and a better metric (by the metric's direction), and a cost no run
recorded leaves its plot out with the reason while the tables still come out."""

from __future__ import annotations

import math
import sys
import types

import pandas as pd
import pytest
from test_tables_robust import check, record

from peftlab import artifacts, plots, tables

TRAINED = {"examples": 100, "epochs": 3.0, "train_runtime_s": 12.0, "resumed_from": None}


def run(root, method, seed, value, memory=None, trained=None, forgetting=None, metric=None, r=8, verdict=None):
    """A finished run (test_tables_robust.record) whose train.json and eval.json also hold `memory` (train.json's
    peak_memory), `trained` (examples, epochs, train_runtime_s, resumed_from) and `forgetting` (eval.json's record);
    `metric`: the task's main metric, set in its config, instead of accuracy."""
    d = record(root, method, seed, value, r=r, verdict=verdict)
    train, evaluation = artifacts.read_json(d / "train.json"), artifacts.read_json(d / "eval.json")
    train.update(trained or {})
    if memory is not None:
        train["peak_memory"] = memory
    if forgetting is not None:
        evaluation["forgetting"] = forgetting
    if metric is not None:
        evaluation["spec"]["task"]["metric"] = metric
        evaluation["metrics"] = {metric: value}
    artifacts.write_json(d / "train.json", train)
    artifacts.write_json(d / "eval.json", evaluation)
    return d


def test_the_columns_carry_what_the_runs_recorded(tmp_path):
    root = tmp_path / "results/m"
    dirs = [
        run(
            root,
            "lora",
            1,
            0.8,
            memory={"cpu_rss_mb": 1000.0},
            trained=TRAINED,  # 12 s over 100 examples × 3 epochs
            forgetting={"measure": "loss_rise", "texts": 64, "value": 0.25},
        ),
        run(
            root,
            "dora",
            1,
            0.7,
            memory={"cpu_rss_mb": 3000.0, "cuda_max_allocated_mb": 500.0},  # the accelerator's count wins
            trained={"examples": 100, "epochs": 2.5, "train_runtime_s": 5.0},  # max_steps: a fractional epoch count
        ),
        run(
            root, "pissa", 1, 0.6, trained={**TRAINED, "resumed_from": "checkpoint-10"}
        ),  # its runtime is its last session's
        run(root, "vera", 1, 0.5, memory={"cpu_rss_mb": 800.0, "gpu_mb": 300.0}),  # the CUDA count under its older name
    ]
    out = root / "tables"
    tables.build(dirs, out, reference="lora")
    check(out, dirs)
    s = pd.read_csv(out / "summary.csv").set_index("method")
    assert s.loc["lora", "peak_memory_mb"] == 1000.0 and s.loc["lora", "peak_memory_kind"] == "cpu_rss"
    assert s.loc["dora", "peak_memory_mb"] == 500.0 and s.loc["dora", "peak_memory_kind"] == "cuda_max_allocated"
    assert s.loc["vera", "peak_memory_mb"] == 300.0 and s.loc["vera", "peak_memory_kind"] == "cuda_max_allocated"
    assert math.isnan(s.loc["pissa", "peak_memory_mb"]) and pd.isna(s.loc["pissa", "peak_memory_kind"])
    assert s.loc["lora", "train_s_per_example"] == pytest.approx(12 / 300)
    assert s.loc["dora", "train_s_per_example"] == pytest.approx(5 / 250)
    assert math.isnan(s.loc["pissa", "train_s_per_example"]) and math.isnan(s.loc["vera", "train_s_per_example"])
    assert s.loc["lora", "forgetting"] == 0.25 and s.loc["lora", "forgetting_measure"] == "loss_rise"
    assert math.isnan(s.loc["dora", "forgetting"]) and pd.isna(s.loc["dora", "forgetting_measure"])
    g = pd.read_csv(out / "summary_grouped.csv").set_index("method")
    assert g.loc["dora", "peak_memory_mb"] == 500.0 and g.loc["dora", "peak_memory_kind"] == "cuda_max_allocated"
    # two kinds of memory in one task and model: no axis compares them, so memory.png says why instead
    md = (out / "summary.md").read_text()
    assert (
        "memory.png: not drawn: sentiment / minilm: its runs measured peak memory as cpu_rss (1 run(s)), "
        "cuda_max_allocated (2 run(s))" in md
    )
    assert not (out / "plots/sentiment/minilm/memory.png").exists()
    for drawn in ("params", "time", "forgetting"):
        assert (out / f"plots/sentiment/minilm/{drawn}.png").exists(), drawn


# (method, peak memory MiB, accuracy): pissa costs more than lora and scores less, so it is off the front
FOUR = [("vera", 600.0, 0.70), ("lora", 1000.0, 0.80), ("pissa", 1100.0, 0.78), ("dora", 1200.0, 0.85)]


def four(tmp_path, seeds=(1, 2)):
    """FOUR, each method over `seeds` whose accuracies average to its value, and whose memory varies by ±10 MiB around
    it."""
    root = tmp_path / "results/m"
    return [
        run(
            root,
            m,
            s,
            acc + (0.01 if s == 1 else -0.01),
            memory={"cuda_max_allocated_mb": mem + (10 if s == 1 else -10)},
        )
        for m, mem, acc in FOUR
        for s in seeds
    ]


def test_the_memory_front_holds_exactly_the_settings_nothing_beats(tmp_path):
    dirs = four(tmp_path)
    out = tmp_path / "results/m/tables"
    tables.build(dirs, out, reference="lora")
    check(out, dirs)
    runs, _ = tables.collect(dirs)
    c, front, kind, missing = plots.front(runs, "accuracy", "memory")
    assert kind == "cuda_max_allocated" and missing == 0
    assert list(c.iloc[front]["method"]) == ["vera", "lora", "dora"]  # by memory, low to high; pissa dominated by lora
    points = dict(zip(c["method"], zip(c["peak_memory_mb"], c["mean"])))  # the seeds averaged
    assert points["lora"] == pytest.approx((1000.0, 0.80)) and points["pissa"] == pytest.approx((1100.0, 0.78))
    assert (out / "plots/sentiment/minilm/memory.png").exists()
    md = (out / "summary.md").read_text()
    assert "## Pareto fronts" in md and "peak memory (MiB): cuda_max_allocated" in md
    fronts = md[md.index("## Pareto fronts") :]
    assert (
        "| memory.png | peak memory (MiB): cuda_max_allocated (torch.cuda.max_memory_allocated during training) | vera"
        in fronts
    )
    memory_rows = [line for line in fronts.splitlines() if line.startswith("| memory.png")]
    assert [line.split("|")[3].strip() for line in memory_rows] == ["vera", "lora", "dora"]


def test_a_lower_is_better_metric_flips_the_front():
    """(cost, metric) A (1, 0.6), B (2, 0.5), C (3, 0.8), D (4, 0.4): higher is better keeps A and C (B and D
    score less than the cheaper A); lower is better keeps A, B and D (C scores more than the cheaper B)."""
    points = [(1.0, 0.6), (2.0, 0.5), (3.0, 0.8), (4.0, 0.4)]
    assert plots.pareto(points, "accuracy") == [0, 2]
    assert plots.pareto(points, "eval_loss") == [0, 1, 3]
    part = pd.DataFrame(
        {
            "method": ["lora", "dora", "pissa", "vera"],
            "r": 8,
            "lr": 1e-4,
            "train_size": 100,
            "seed": 1,
            "eval_loss": [m for _, m in points],
            "train_s_per_example": [c for c, _ in points],
        }
    )
    c, front, kind, _ = plots.front(part, "eval_loss", "time")
    assert list(c.iloc[front]["method"]) == ["lora", "dora", "vera"] and kind is None


def test_a_lower_is_better_main_metric_flips_the_front_in_the_tables(tmp_path):
    root = tmp_path / "results/m"
    # eval loss of FOUR's accuracies: vera's 0.70 is now the best, and cheapest: it alone is the front
    dirs = [run(root, m, 1, acc, memory={"cpu_rss_mb": mem}, metric="eval_loss") for m, mem, acc in FOUR]
    out = root / "tables"
    tables.build(dirs, out, reference="lora")
    check(out, dirs)
    runs, _ = tables.collect(dirs)
    c, front, kind, _ = plots.front(runs, "eval_loss", "memory")
    assert list(c.iloc[front]["method"]) == ["vera"] and kind == "cpu_rss"


def test_a_cost_no_run_recorded_leaves_its_plot_out_with_the_reason(tmp_path):
    dirs = four(tmp_path, seeds=(1,))  # memory only: no runtime, no forgetting record
    out = tmp_path / "results/m/tables"
    tables.build(dirs, out, reference="lora")
    check(out, dirs)
    md = (out / "summary.md").read_text()
    notes = md[md.index("## Plots not drawn, and why") :]
    assert "time.png: not drawn: sentiment / minilm: no run recorded its training runtime with its epochs" in notes
    assert "forgetting.png: not drawn: sentiment / minilm: no run's eval.json has a forgetting record" in notes
    folder = out / "plots/sentiment/minilm"
    assert not (folder / "time.png").exists() and not (folder / "forgetting.png").exists()
    assert (folder / "memory.png").exists() and (folder / "params.png").exists()
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and summary["forgetting"].isna().all() and summary["train_s_per_example"].isna().all()


def test_a_flagged_run_stays_off_the_fronts(tmp_path):
    """A collapsed dora seed with the best accuracy and the least memory would take the whole front; flagged, it is left
    out."""
    root = tmp_path / "results/m"
    dirs = four(tmp_path, seeds=(1,))
    dirs.append(run(root, "dora", 2, 0.99, memory={"cuda_max_allocated_mb": 100.0}, r=4, verdict="collapsed"))
    out = root / "tables"
    tables.build(dirs, out, reference="lora")
    fronts = (out / "summary.md").read_text().split("## Pareto fronts")[1]
    memory_rows = [line for line in fronts.splitlines() if line.startswith("| memory.png")]
    assert [line.split("|")[3].strip() for line in memory_rows] == ["vera", "lora", "dora"]
    assert "| 100 |" not in fronts


def test_the_fronts_in_summary_md_name_each_setting_where_the_matrix_varies_it(tmp_path):
    """lora r4 (1000 MiB, 0.70), lora r16 (1400 MiB, 0.80), dora r4 (1200 MiB, 0.65): dora r4 is beaten by lora r4."""
    root = tmp_path / "results/m"
    points = [("lora", 4, 1000.0, 0.70), ("lora", 16, 1400.0, 0.80), ("dora", 4, 1200.0, 0.65)]
    dirs = [run(root, m, 1, acc, r=r, memory={"cpu_rss_mb": mem}) for m, r, mem, acc in points]
    tables.build(dirs, root / "tables", reference="lora")
    fronts = (root / "tables/summary.md").read_text().split("## Pareto fronts")[1]
    rows = [
        [cell.strip() for cell in line.split("|")[3:7]]
        for line in fronts.splitlines()
        if line.startswith("| memory.png")
    ]
    assert rows == [["lora", "r4", "1000", "0.7"], ["lora", "r16", "1400", "0.8"]]


class FakeCuda:
    """torch.cuda as artifacts.peak_memory_mb asks it: `used` whether this process initialised CUDA."""

    def __init__(self, used: bool):
        self.used, self.peak, self.resets = used, 512 * 2**20, 0

    def is_available(self):
        return True

    def is_initialized(self):
        return self.used

    def max_memory_allocated(self):
        return self.peak

    def reset_peak_memory_stats(self):
        self.resets += 1
        self.peak = 0


def test_peak_memory_names_the_cuda_count_only_when_the_process_used_cuda(monkeypatch):
    assert set(artifacts.peak_memory_mb()) <= {"cpu_rss_mb", "cuda_max_allocated_mb"}
    used, unused = FakeCuda(True), FakeCuda(False)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=used))
    memory = artifacts.peak_memory_mb()
    assert memory["cuda_max_allocated_mb"] == 512.0 and memory["cpu_rss_mb"] > 0  # 512 MiB in bytes, in MiB
    artifacts.reset_peak_memory()  # train: before trainer.train, so the peak is training's
    assert used.resets == 1 and artifacts.peak_memory_mb()["cuda_max_allocated_mb"] == 0.0
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=unused))
    artifacts.reset_peak_memory()
    assert "cuda_max_allocated_mb" not in artifacts.peak_memory_mb() and unused.resets == 0
