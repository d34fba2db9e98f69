"""Learning-rate search inside the matrix: candidates, search runs, the selection and the best-LR tables.

The selection step's command is peftlab.lr_search; the plan (peftlab.matrix), training, the
tables and the config checks read this module.

A sweep block (or the whole config) with `lr_search` does not train its cells at one
learning rate. For each cell (task, model, method, rank, train size) the plan adds one
**search run** per candidate rate and search seed: it trains on the training split
minus a held-out validation share (`validation_share`, drawn with `validation_seed`)
and is evaluated on that share only; the evaluation split is never opened. The
**selection** (`select`; `python -m peftlab.lr_search`, one job per cell) takes the mean of the selection
metric over the search seeds per rate and writes every candidate's scores and the
winner. The cell's **final runs** (one per final seed, the run ids a block without a
search would have) train on the whole training split at the winner's rate and are
evaluated on the held-out evaluation split as usual; their train.json records the rate.

A candidate whose training diverges scores as the worst; a cell whose every candidate
diverged fails its selection, naming them. A winner at either end of the grid is
flagged (`at_edge`) and logged: the best rate may lie outside the grid.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from peftlab import artifacts, metrics

log = logging.getLogger(__name__)

LOSS = "eval_loss"  # `metric: loss` selects on the validation loss
SEARCH_KEYS = ("cell", "rates", "seeds", "validation_share", "validation_seed", "metric")  # what a selection is of


def candidates(search: dict) -> list[float]:
    """The candidate rates, ascending: `rates` as given, or `range` {low, high, count} spaced evenly on a log scale."""
    if "rates" in search:
        return sorted(float(r) for r in search["rates"])
    r = search["range"]
    low, high, n = math.log10(r["low"]), math.log10(r["high"]), r["count"]
    return [float(f"{10 ** (low + i * (high - low) / (n - 1)):.3g}") for i in range(n)]


def resolved(search: dict) -> dict:
    """A validated config's lr_search (the schema's defaults filled in) with its candidates listed."""
    out = {k: v for k, v in search.items() if k not in ("rates", "range")}
    out["rates"] = candidates(search)
    return out


def cell_id(task: str, model: str, method: str, parts: list[str]) -> str:
    """A search cell's id: task/model/method/search[-r8][-n100] (the final runs' ids without their seed)."""
    return f"{task}/{model}/{method}/{'-'.join(['search', *parts])}"


def search_run_id(cell: str, seed: int, rate: float) -> str:
    """A search run's id: its cell's id with the search seed and the candidate rate."""
    return f"{cell}-s{seed}-lr{rate:g}"


def cell_of(run_id: str) -> str:
    """A search run's cell: its id without the search seed and rate (the inverse of search_run_id)."""
    return run_id.rsplit("-s", 1)[0]


def select_spec(search: dict) -> dict:
    """The selection step's spec of a cell, from its final runs' lr_search: the metric, its direction, and the search
    runs."""
    runs = {
        search_run_id(search["cell"], seed, rate): {"rate": rate, "seed": seed}
        for seed in search["seeds"]
        for rate in search["rates"]
    }
    return {**search, "greater_is_better": metrics.metric(search["metric"]).higher_is_better, "runs": runs}


def score(record: dict | None, metric: str) -> float | None:
    """A search run's score from its eval.json: None when it diverged or did not report the metric."""
    if record is None or record.get("diverged"):
        return None
    value = record["metrics"].get(metric)
    return float(value) if value is not None and math.isfinite(value) else None


def select(spec: dict, records: dict[str, dict | None]) -> dict:
    """The selection of one cell: every candidate's scores (mean over the search seeds) and the winner.

    `spec` is the lr_select spec (peftlab.matrix.step_specs): the cell, its metric and
    direction, and its search runs {run_id: {rate, seed}}; `records` maps each search run
    to its eval.json. A rate with any diverged seed scores None and cannot win.
    """
    better = max if spec["greater_is_better"] else min
    rows = []
    for rate in spec["rates"]:
        runs = {run_id: r for run_id, r in spec["runs"].items() if r["rate"] == rate}
        scores = {run_id: score(records.get(run_id), spec["metric"]) for run_id in runs}
        valid = [s for s in scores.values() if s is not None]
        mean = sum(valid) / len(valid) if valid and len(valid) == len(scores) else None
        rows.append({"rate": rate, "mean": mean, "scores": {str(runs[k]["seed"]): s for k, s in scores.items()}})
    scored = [r for r in rows if r["mean"] is not None]
    if not scored:
        raise RuntimeError(
            f"{spec['cell']}: every candidate rate diverged or reported no {spec['metric']} "
            f"({', '.join(f'{r:g}' for r in spec['rates'])}); lower the rates of this cell's lr_search"
        )
    best = better(scored, key=lambda r: r["mean"])
    at_edge = best["rate"] in (spec["rates"][0], spec["rates"][-1])
    return {
        **{k: spec[k] for k in SEARCH_KEYS},
        "greater_is_better": spec["greater_is_better"],
        "candidates": rows,
        "best_rate": best["rate"],
        "best_score": best["mean"],
        "at_edge": at_edge,
    }


def chosen_rate(selection_file: str | Path, lr_search) -> float:
    """The rate a final run trains at: its cell's selection, checked to be of this very search."""
    sel = artifacts.read_json(selection_file)
    expected = {k: getattr(lr_search, k) for k in SEARCH_KEYS}
    found = {k: sel.get(k) for k in SEARCH_KEYS}
    if found != expected:
        raise RuntimeError(
            f"{selection_file} is the selection of another search ({found}), not of this run's ({expected})"
        )
    return sel["best_rate"]


def coordinates(cell: str) -> tuple[str, str, str, str]:
    """(task, model, method, setting) of a cell id; the setting is its rank and train size ('r8-n100'), or '-'."""
    task, model, method, last = cell.split("/")
    return task, model, method, last.removeprefix("search").lstrip("-") or "-"


def sharpness_by_cell(records: list[dict]) -> dict[str, float]:
    """Each searched cell's top Hessian eigenvalue at initialisation (train.json's `sharpness`,
    tracker.sharpness_probe): the mean over the cell's final runs, one per final seed, which trained at its chosen rate.
    The probe runs before the first optimiser step, so the rate does not enter it; the search runs, which hold out the
    validation share, are not read."""
    values: dict[str, list[float]] = {}
    for rec in records:
        cell = ((rec.get("spec") or {}).get("lr_search") or {}).get("cell")
        value = (rec.get("sharpness") or {}).get("top_eigenvalue")
        if cell is not None and value is not None and math.isfinite(value):
            values.setdefault(cell, []).append(float(value))
    return {cell: sum(v) / len(v) for cell, v in values.items()}


def table(selections: list[dict], sharpness: dict[str, float] | None = None) -> list[dict]:
    """best_lr.csv's rows: one per cell and candidate rate, with its mean score, every seed's, and the winner marked;
    the chosen rate's row also holds the cell's `sharpness` (sharpness_by_cell), empty where no final run probed it."""
    sharpness = sharpness or {}
    rows = []
    for sel in selections:
        task, model, method, setting = coordinates(sel["cell"])
        for c in sel["candidates"]:
            rows.append(
                {
                    "task": task,
                    "model": model,
                    "method": method,
                    "setting": setting,
                    "metric": sel["metric"],
                    "rate": c["rate"],
                    "score": c["mean"],
                    "seeds": " ".join(
                        f"s{k}={'diverged' if v is None else f'{v:.4g}'}" for k, v in c["scores"].items()
                    ),
                    "chosen": c["rate"] == sel["best_rate"],
                    "at_edge": sel["at_edge"] and c["rate"] == sel["best_rate"],
                    "sharpness": sharpness.get(sel["cell"]) if c["rate"] == sel["best_rate"] else None,
                }
            )
    return rows


def markdown(selections: list[dict], sharpness: dict[str, float] | None = None) -> str:
    """best_lr.md: per cell, the chosen rate and every candidate's score (the winner in bold, an edge winner flagged),
    and beside the rate the cell's top Hessian eigenvalue at initialisation when its final runs probed it
    (sharpness_by_cell)."""
    sharpness = {cell: v for cell, v in (sharpness or {}).items() if cell in {sel["cell"] for sel in selections}}
    column = "λ_max at init | " if sharpness else ""
    lines = [
        "# Learning-rate search\n",
        "Each cell's candidates, scored on the validation share held out of its training data (the mean over the "
        "search seeds); its final runs trained at the chosen rate. *edge*: the best rate is the grid's lowest or "
        "highest, so a better one may lie outside the grid.\n",
        "| task | model | method | setting | metric | chosen rate | " + column + "candidates (rate: score) |",
        "|---|---|---|---|---|---|" + ("---|" if sharpness else "") + "---|",
    ]
    if sharpness:
        lines.insert(
            2,
            "λ_max at init: the largest eigenvalue of the training loss's Hessian in the method's trainable parameters "
            "before the first step (tracker.sharpness_probe), the mean over the cell's final runs; gradient descent is "
            "stable below a rate of about 2 / λ_max.\n",
        )
    for sel in selections:
        task, model, method, setting = coordinates(sel["cell"])
        cands = ", ".join(
            ("**{}: {}**" if c["rate"] == sel["best_rate"] else "{}: {}").format(
                f"{c['rate']:g}", "diverged" if c["mean"] is None else f"{c['mean']:.4g}"
            )
            for c in sel["candidates"]
        )
        edge = " (edge)" if sel["at_edge"] else ""
        probed = (f"{sharpness[sel['cell']]:.4g} | " if sel["cell"] in sharpness else " | ") if sharpness else ""
        lines.append(
            f"| {task} | {model} | {method} | {setting} | {sel['metric']} | {sel['best_rate']:g}{edge} | "
            f"{probed}{cands} |"
        )
    return "\n".join(lines) + "\n"
