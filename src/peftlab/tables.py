"""The matrix's tables, statistics and plots, from the runs' files only (no model is loaded).

    python -m peftlab.tables --out results/default/tables [--reference lora] results/default/runs/<run_id> [...]

Writes into --out:
- summary.csv (one row per run, with every run's status and its costs: peak memory, training
  seconds per example, forgetting), summary_grouped.csv (per setting over seeds: n, mean, std
  and the 95% t interval of every metric, the costs' means), summary.md (per task tables, the
  runs not done with their reason, every finished run, the Pareto fronts) and summary.tex
  (the per-task tables: booktabs, escaped, one page wide);
- comparisons.csv: every setting against the reference method's (peftlab.stats: a paired
  t-test over shared seeds, none below 3 (`p_seeds_note` says why), and a test on the
  per-example predictions with the example as the unit, Holm-corrected per task);
- tasks/<task>.{csv,md,tex}: one table per task, the best cell marked;
- plots/<task>/<model>/*.png and the overviews metrics.png and loss.png (peftlab.plots);
- tracking.{csv,md} and its plots (peftlab.tracking.report.matrix).

Every run is listed with its state (peftlab.status): done, running, failed (with the stage
and its error line) or pending, so the tables can be rebuilt mid-matrix or after a failure
without hiding a run.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from peftlab import artifacts, health, metrics, paths, plots, stats, tasks
from peftlab import search as lr_search
from peftlab.drawing import NotDrawn
from peftlab.runstate import run_state
from peftlab.spec import TaskSpec
from peftlab.tracking import report

log = logging.getLogger(__name__)


def main_metric(task: dict) -> str:
    """The metric a task is compared by: its config's `metric`, or its type's default."""
    return tasks.main_metric(TaskSpec.from_dict(task))


SETTING = ["task", "model", "method", "r", "lr", "train_size"]


def _number(x) -> float:
    """A recorded metric as a float: NaN for a null or a non-number, so that every column is numeric."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else float("nan")


def peak_memory(train: dict) -> dict:
    """`peak_memory_mb` (MiB) and `peak_memory_kind`: the CUDA device's max allocated when the run recorded it,
    else the process's peak RSS; both empty when train.json has neither."""
    recorded = train.get("peak_memory") or {}
    for key, kind in artifacts.PEAK_MEMORY_KEYS.items():
        if np.isfinite(value := _number(recorded.get(key))):
            return {"peak_memory_mb": value, "peak_memory_kind": kind}
    return {"peak_memory_mb": float("nan"), "peak_memory_kind": None}


def seconds_per_example(train: dict) -> float:
    """Training seconds per example trained on: the Trainer's train_runtime (train_runtime_s) over the examples
    passed through (examples × epochs, the epochs as the Trainer counts them, fractional under max_steps).
    NaN for a run resumed from a checkpoint (its runtime is its last session's) or recorded without train_runtime_s."""
    runtime, examples, epochs = (_number(train.get(k)) for k in ("train_runtime_s", "examples", "epochs"))
    if train.get("resumed_from") or not (runtime > 0 and examples > 0 and epochs > 0):
        return float("nan")
    return runtime / (examples * epochs)


def forgetting(evaluation: dict) -> dict:
    """`forgetting` (eval.json's forgetting.value; lower is better) and `forgetting_measure` (its measure); empty
    without one."""
    record = evaluation.get("forgetting")
    record = record if isinstance(record, dict) else {}
    return {"forgetting": _number(record.get("value")), "forgetting_measure": record.get("measure")}


def run_row(run_dir: Path, columns: list[str]) -> dict | None:
    """One table row from a run folder's JSON files, with a column per metric of `columns`, or None if the run has not
    finished."""
    if not (run_dir / "train.json").exists() or not (run_dir / "eval.json").exists():
        return None
    tr, ev = artifacts.read_json(run_dir / "train.json"), artifacts.read_json(run_dir / "eval.json")
    verdict = tr.get("health") or {}  # peftlab.health; older records were not judged
    spec = tr["spec"]
    row = {
        "run_id": tr["run_id"],
        "task": spec["task"]["name"],
        "task_type": spec["task"]["type"],
        "main_metric": main_metric(ev["spec"]["task"]),  # evaluation reruns when `metric` changes; training does not
        "model": spec["model"]["name"],
        "method": spec["peft"]["type"],
        "r": spec["peft"]["r"],
        "seed": spec["training"]["seed"],
        "lr": spec["training"]["learning_rate"],
        "train_size": tr["examples"],
        **{m: _number(ev["metrics"].get(m)) for m in columns},  # null (Pearson of constant predictions) is NaN: missing
        "trainable_params": tr["trainable_params"],
        "trainable_pct": 100 * tr["trainable_share"],
        "health": verdict.get("status", "not judged"),
        "health_reasons": "; ".join(verdict.get("reasons", [])),
        "first_loss": tr["first_loss"],
        "final_loss": tr["final_loss"],
        "tokens_per_s": round(tr["tokens_per_s"]) if tr["tokens_per_s"] is not None else None,
        "train_time_s": round(tr["wall_time_s"], 1),
        **peak_memory(tr),
        "train_s_per_example": seconds_per_example(tr),
        **forgetting(ev),
        # what the run keeps on disk (None for runs recorded before peftlab recorded it)
        "adapter_bytes": tr.get("adapter_bytes"),
        "checkpoint_bytes": tr.get("checkpoint_bytes"),
        "losses": tr["losses"],  # for the loss plot; not a table column
        "evaluations": tr.get("evaluations"),  # in-training evaluations, for the eval plot
        "run_dir": Path(run_dir),  # where its predictions are
    }
    main = row["main_metric"]
    for split, m in (
        ev["metrics"].get("splits", {}).items()
    ):  # named held-out sets: MNLI's accuracy[matched], [mismatched]
        row[f"{main}[{split}]"] = m.get(main)
    check = run_dir / "merge_check.json"
    if check.exists():
        mc = artifacts.read_json(check)
        row["merge_diff"] = mc.get("max_abs_logit_diff") if mc["mergeable"] else "cannot merge"
        row["merged_bytes"] = mc.get("merged_bytes")
    return row


def collect(run_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run whose train.json and eval.json exist, the status of every run)."""
    columns = tasks.all_metrics()  # asked at build time: a task type registered after import has its columns
    rows = [row for d in run_dirs if (row := run_row(Path(d), columns)) is not None]
    states = [run_state(*paths.split_run(d)) for d in run_dirs]
    status = pd.DataFrame(
        [(r.run_id, r.state, r.stage, r.reason) for r in states], columns=["run_id", "status", "stage", "reason"]
    )
    for s in status[status["status"] != "done"].itertuples():
        log.warning("%s: %s at %s%s", s.run_id, s.status, s.stage, f": {s.reason}" if s.reason else "")
    table = pd.DataFrame(rows)
    if rows:
        table = table.sort_values(["task", "model", "method", "r", "seed"], na_position="first").reset_index(drop=True)
    return table, status


COSTS = {
    "peak_memory_mb": "peak_memory_kind",
    "train_s_per_example": None,
    "forgetting": "forgetting_measure",
}  # lower is better


def grouped(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting (task, model, method, r, lr, train_size), over its seeds: for every metric n, mean, std
    and the 95% t interval (std and interval empty for one seed: never ± 0)."""
    main = (
        set(runs["main_metric"]) if "main_metric" in runs else set()
    )  # a task's main metric has columns, even all missing
    reported = [m for m in tasks.all_metrics() if m in runs and (runs[m].notna().any() or m in main)]
    keys = [k for k in SETTING if k in runs]
    rows = []
    for key, g in runs.groupby(keys, dropna=False, sort=False):
        row = {**dict(zip(keys, key)), "seeds": g["seed"].nunique(), "trainable_pct": g["trainable_pct"].mean()}
        for cost, kind in COSTS.items():  # each cost's mean over the seeds that recorded it, and what they measured
            if cost in g:
                row[cost] = pd.to_numeric(g[cost], errors="coerce").mean()
            if kind and kind in g:
                row[kind] = "; ".join(sorted(set(g[kind].dropna()))) or None
        for m in reported:
            s = stats.summary(g[m].tolist(), bounds=metrics.metric(m).bounds)
            row.update({f"{m}_{k}": s[k] for k in ("n", "mean", "std", "ci_low", "ci_high")})
        rows.append(row)
    return pd.DataFrame(rows)


BOOTSTRAP_RESAMPLES = 2000


def example_test(metric: str, a: list[list[dict]], b: list[list[dict]]) -> dict | None:
    """Two settings' per-example predictions, seed-matched lists of runs' rows (the seeds both ran),
    tested with the example as the unit as the metric's row says (peftlab.metrics: per_example and
    statistic; stats.example_test); None when the metric has no per-example form or the runs' examples differ."""
    row = metrics.metric(metric)
    split = a[0][0].get("split", "eval") if a and a[0] else None
    a_rows = [[r for r in rows if r.get("split", "eval") == split] for rows in a]
    b_rows = [[r for r in rows if r.get("split", "eval") == split] for rows in b]
    ids = [r["id"] for r in a_rows[0]] if a_rows else []
    if row.per_example is None or not ids or any([r["id"] for r in rows] != ids for rows in a_rows + b_rows):
        return None
    try:
        x, y = (
            np.stack([row.per_example(rows) for rows in a_rows]),
            np.stack([row.per_example(rows) for rows in b_rows]),
        )
    except (KeyError, TypeError, ValueError):  # a run recorded before its metric had a per-example column
        return None
    if row.statistic is None:
        return stats.example_test(x[:, :, 0], y[:, :, 0])
    return stats.example_test(x, y, row.statistic, resamples=BOOTSTRAP_RESAMPLES)


def _predictions(run_dir: Path) -> list[dict]:
    path = run_dir / "predictions.jsonl"
    return artifacts.read_jsonl(path) if path.exists() else []


def comparisons(runs: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Every setting against the reference method's, per task and model, on the task's main metric.

    The reference setting has the same train size and rank when the reference ran one (its best
    learning rate among them), else its best at that train size. Two tests: a paired t over the
    seeds both ran (none below stats.MIN_SEEDS or without spread: `p_seeds_note` says why), and a
    test on the per-example predictions with the example as the unit (example_test). p-values are
    Holm-corrected within each task's table, separately per test.
    """
    rows = []
    for (task, model), part in runs.groupby(["task", "model"], sort=True):
        metric = part["main_metric"].iloc[0]
        ref = part[part["method"] == reference]
        if ref.empty:
            continue
        means = ref.groupby(["r", "lr", "train_size"], dropna=False)[metric].mean()
        for key, g in part[part["method"] != reference].groupby(
            ["method", "r", "lr", "train_size"], dropna=False, sort=False
        ):
            method, r, lr, size = key
            same = [(k, v) for k, v in means.items() if _eq(k[2], size)]
            closest = [(k, v) for k, v in same if _eq(k[0], r)] or same
            if not closest:
                continue
            best = closest[0]
            for k, v in closest[1:]:
                if plots.better(metric, v, best[1]):
                    best = (k, v)
            rk = best[0]
            rg = ref[
                [
                    _eq(a, rk[0]) and _eq(b, rk[1]) and _eq(c, rk[2])
                    for a, b, c in zip(ref["r"], ref["lr"], ref["train_size"])
                ]
            ]
            a_by_seed, b_by_seed = dict(zip(g["seed"], g[metric])), dict(zip(rg["seed"], rg[metric]))
            shared = sorted(set(a_by_seed) & set(b_by_seed))
            seed = stats.seed_test(a_by_seed, b_by_seed)
            a_dirs, b_dirs = dict(zip(g["seed"], g["run_dir"])), dict(zip(rg["seed"], rg["run_dir"]))
            example = (
                example_test(
                    metric, [_predictions(a_dirs[s]) for s in shared], [_predictions(b_dirs[s]) for s in shared]
                )
                if shared
                else None
            )
            rows.append(
                {
                    "task": task,
                    "model": model,
                    "method": method,
                    "r": r,
                    "lr": lr,
                    "train_size": size,
                    "metric": metric,
                    "reference": f"{reference}" + (f" r{rk[0]:g}" if pd.notna(rk[0]) else "") + f" lr{rk[1]:g}",
                    "shared_seeds": len(shared),
                    "diff": float(np.mean([a_by_seed[s] - b_by_seed[s] for s in shared]))
                    if shared
                    else g[metric].mean() - rg[metric].mean(),
                    "p_seeds": seed["p"] if seed else None,
                    "p_seeds_note": seed["note"] if seed else "no shared seed",
                    "example_test": example["test"] if example else None,
                    "examples": example["n"] if example else None,
                    "statistic": example.get("statistic") if example else None,
                    "p_examples": example["p"] if example else None,
                }
            )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    for col in ("p_seeds", "p_examples"):
        out[f"{col}_holm"] = None
        for _, idx in out.groupby("task").groups.items():
            sub = out.loc[idx, col]
            have = sub[sub.notna()]
            if len(have):
                out.loc[have.index, f"{col}_holm"] = stats.holm(have.tolist())
    return out


def _eq(a, b) -> bool:
    return (pd.isna(a) and pd.isna(b)) or a == b


def _fmt(x, digits: int = 4) -> str:
    return "" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}g}"


def _p(p, reference) -> str:
    """A p-value as the tables show it: "n/a" for a comparison that has none (its note says why), empty for no
    comparison."""
    return _fmt(p, 3) if pd.notna(p) else ("n/a" if isinstance(reference, str) and reference else "")


def _few(n) -> str:
    """Beside an interval over fewer seeds than a seed test needs: say so."""
    return f" (n={int(n)}: few seeds)" if pd.notna(n) and n < stats.MIN_SEEDS else ""


def task_table(groups: pd.DataFrame, comps: pd.DataFrame, task: str) -> pd.DataFrame:
    """One task's table: a row per model and setting, its main metric's n, mean, std and 95% interval,
    the test against the reference, and `best` marking the best mean per model."""
    part = groups[groups["task"] == task].copy()
    metric = part["main_metric"].iloc[0]
    part["best"] = False
    for _, idx in part.groupby("model").groups.items():
        sub = part.loc[idx, f"{metric}_mean"].dropna()
        if len(sub):  # every setting that ties for the best mean
            part.loc[
                sub.index[sub == (sub.max() if metrics.metric(metric).higher_is_better else sub.min())], "best"
            ] = True
    cols = ["model", "method", "r", "lr", "train_size"]
    table = part[cols + ["seeds"]].rename(columns={"seeds": "n"})
    table[metric] = part[f"{metric}_mean"]
    table["std"] = part[f"{metric}_std"]
    table["ci95_low"], table["ci95_high"] = part[f"{metric}_ci_low"], part[f"{metric}_ci_high"]
    table["trainable_pct"] = part["trainable_pct"]
    table["best"] = part["best"]
    if not comps.empty:
        c = comps[comps["task"] == task][
            [*cols, "reference", "diff", "p_seeds_holm", "p_seeds_note", "example_test", "p_examples_holm"]
        ]
        table = table.merge(c, on=cols, how="left")
    return table.reset_index(drop=True)


def _markdown(table: pd.DataFrame, metric: str) -> str:
    shown = pd.DataFrame(
        {
            "model": table["model"],
            "method": table["method"],
            "r": table["r"],
            "lr": [_fmt(x, 3) for x in table["lr"]],
            "train size": table["train_size"],
            "n": table["n"],
            metric: [f"**{_fmt(m)}**" if b else _fmt(m) for m, b in zip(table[metric], table["best"])],
            "std": [_fmt(x, 3) for x in table["std"]],
            "95% CI (t, clipped to the metric's range)": [
                f"[{_fmt(a)}, {_fmt(b)}]" + _few(n) if pd.notna(a) else ""
                for a, b, n in zip(table["ci95_low"], table["ci95_high"], table["n"])
            ],
            "trainable %": [_fmt(x, 3) for x in table["trainable_pct"]],
        }
    )
    if "reference" in table:
        shown["vs"] = table["reference"].fillna("")
        shown["Δ"] = [_fmt(x, 3) for x in table["diff"]]
        shown["p seeds (Holm)"] = [_p(x, ref) for x, ref in zip(table["p_seeds_holm"], table["reference"])]
        shown["why no p seeds"] = table["p_seeds_note"].fillna("")
        shown["p examples (Holm)"] = [
            f"{_fmt(p, 3)} ({t})" if pd.notna(p) else ""
            for p, t in zip(table["p_examples_holm"], table["example_test"])
        ]
    return shown.astype(object).where(shown.notna(), "").to_markdown(index=False)


LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def latex(table: pd.DataFrame, task: str, metric: str) -> str:
    """A booktabs table, escaped, scaled to the text width, the best cell in bold; compiles with pdflatex."""

    def cell(m, lo, hi, n, best):
        text = _fmt(m) + (f" [{_fmt(lo)}, {_fmt(hi)}]" + _few(n) if pd.notna(lo) else "") + ("" if n > 1 else " (n=1)")
        return f"\\textbf{{{text}}}" if best else text

    body = pd.DataFrame(
        {
            "model": table["model"].map(latex_escape),
            "method": table["method"].map(latex_escape),
            "r": table["r"].map(lambda x: _fmt(x) if pd.notna(x) else "--"),
            "lr": table["lr"].map(lambda x: _fmt(x, 3)),
            "size": table["train_size"].map(lambda x: _fmt(x) if pd.notna(x) else "--"),
            "n": table["n"],
            latex_escape(metric) + " [95\\% CI]": [
                cell(*v) for v in zip(table[metric], table["ci95_low"], table["ci95_high"], table["n"], table["best"])
            ],
            "trainable \\%": table["trainable_pct"].map(lambda x: _fmt(x, 3)),
        }
    )
    if "reference" in table:
        body["$\\Delta$"] = table["diff"].map(lambda x: _fmt(x, 3))
        body["$p$ (Holm)"] = [
            _p(b if pd.notna(b) else a, ref)
            for a, b, ref in zip(table["p_seeds_holm"], table["p_examples_holm"], table["reference"])
        ]
    tabular = body.to_latex(index=False, escape=False, column_format="ll" + "r" * (len(body.columns) - 2))
    caption = (
        f"{latex_escape(task)}: {latex_escape(metric)}, mean over seeds with its 95\\% $t$ interval; best in bold."
        + (
            " $\\Delta$ and $p$ against the reference method (Holm-corrected; per-example test where it exists, "
            "else seeds)."
            if "reference" in table
            else ""
        )
    )
    return (
        # scaled down to the text width when wider, never up
        "\\begin{table}[ht]\n\\centering\n\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%\n"
        + tabular
        + "}\n"
        + f"\\caption{{{caption}}}\n\\label{{tab:{re.sub(r'[^A-Za-z0-9]', '-', task)}}}\n\\end{{table}}\n"
    )


LATEX_PREAMBLE = "% \\usepackage{booktabs,graphicx} in the preamble; \\input{} this file\n"
DISK = {"adapter_bytes": "adapters", "checkpoint_bytes": "kept checkpoints", "merged_bytes": "merged models"}


def disk(table: pd.DataFrame) -> str:
    """The matrix's disk, from its runs' records: adapters, kept checkpoints and merged models, and their sum."""
    totals = {label: table[col].dropna().sum() if col in table else 0 for col, label in DISK.items()}
    unrecorded = int(table[list(DISK)[0]].isna().sum()) if list(DISK)[0] in table else len(table)
    parts = ", ".join(f"{artifacts.human_bytes(v)} of {label}" for label, v in totals.items())
    note = f" ({unrecorded} run(s) recorded before peftlab recorded disk are not counted)" if unrecorded else ""
    return f"## Disk\n\n{len(table)} finished runs keep {artifacts.human_bytes(sum(totals.values()))}: {parts}{note}.\n"


def lr_tables(files: list[Path], out: Path, run_dirs: list[Path] = ()) -> int:
    """best_lr.csv, best_lr.md and lr_search.png from the learning-rate searches' selections that exist, with each
    cell's sharpness at initialisation from its final runs' train.json (`run_dirs`); how many selections there were."""
    selections = [artifacts.read_json(f) for f in files if Path(f).exists()]
    if not selections:
        return 0
    records = [artifacts.read_json(Path(d) / "train.json") for d in run_dirs if (Path(d) / "train.json").exists()]
    sharpness = lr_search.sharpness_by_cell(records)
    rows = pd.DataFrame(lr_search.table(selections, sharpness))
    rows.to_csv(out / "best_lr.csv", index=False)
    (out / "best_lr.md").write_text(lr_search.markdown(selections, sharpness))
    plots.lr_search_plot(rows, out / "lr_search.png")
    return len(selections)


def pareto_fronts(runs: pd.DataFrame) -> list[str]:
    """summary.md's Pareto fronts: per task and model, the settings on each cost's front (peftlab.plots.FRONTS),
    with the kind of memory and the forgetting measure the runs recorded. A front left out is listed with its reason
    among the plots not drawn."""
    lines = []
    for (task, model), part in runs.groupby(["task", "model"], sort=True):
        metric = part["main_metric"].iloc[0]
        axes = [a for a in plots.AXES if plots.varying(part, a)]
        rows = []
        for name, cost in plots.FRONTS.items():
            try:
                c, front, kind, _ = plots.front(part, metric, name)
            except NotDrawn:
                continue
            except Exception:  # noqa: BLE001  (as for a plot: never the tables)
                log.exception("%s / %s: the %s front", task, model, name)
                continue
            for i in front:
                cell = c.iloc[i]
                rows.append(
                    {
                        "plot": f"{name}.png",
                        "cost (lower is better)": plots.cost_label(name, kind).replace("\n", " "),
                        "method": cell["method"],
                        "setting": plots.setting_label(cell, axes) if axes else "",
                        "cost": _fmt(cell[cost.column]),
                        f"{metric} (mean)": _fmt(cell["mean"]),
                    }
                )
        if rows:
            shown = pd.DataFrame(rows).drop(columns=[] if axes else ["setting"])
            lines += [f"### {task} / {model}: {metric}\n", shown.to_markdown(index=False), ""]
    if not lines:
        return []
    intro = (
        "Per task and model, the settings no other setting beats on both a lower cost and a better mean metric "
        "over its seeds "
        f"(plots/<task>/<model>/{{{','.join(plots.FRONTS)}}}.png draw them dashed). Peak memory is in MiB "
        "(cuda_max_allocated: torch.cuda.max_memory_allocated during training; cpu_rss: the training process's "
        "peak resident "
        "set size); time is the Trainer's training runtime in seconds over examples × epochs; forgetting is "
        "eval.json's "
        "forgetting value (peftlab.forgetting; loss_rise: the tuned model's mean token cross-entropy on the "
        "task's reference "
        "texts minus the base's; cka_drift: 1 − linear CKA of the two models' final hidden states on them).\n"
    )
    return ["## Pareto fronts\n", intro, *lines]


def left_out(runs: pd.DataFrame, include_flagged: bool) -> pd.DataFrame:
    """The finished runs the comparisons leave out: those whose health is flagged (peftlab.health), unless
    `include_flagged`."""
    if include_flagged or runs.empty:
        return runs.iloc[0:0]
    return runs[runs["health"].map(health.flagged)]


def _left_out_section(flagged: pd.DataFrame) -> list[str]:
    shown = flagged[["run_id", "health", "health_reasons"]].rename(columns={"health_reasons": "what was seen"})
    return [
        "## Runs left out of the comparisons\n",
        f"{len(flagged)} finished run(s) flagged by their health (peftlab.health) are kept out of the per-task tables, "
        "their best marks, the tests, the Pareto fronts and the plots; `tables.include_flagged: true` keeps them in. "
        "Every finished run, flagged or not, is in summary.csv and in the last table below.\n",
        shown.to_markdown(index=False),
        "",
    ]


def build(
    run_dirs: list[Path],
    out: Path,
    reference: str = "lora",
    lr_selections: list[Path] = (),
    include_flagged: bool = False,
) -> pd.DataFrame:
    everyone, status = collect(run_dirs)
    flagged = left_out(everyone, include_flagged)
    runs = everyone.drop(index=flagged.index)  # what the tables compare: the finished runs not flagged
    out.mkdir(parents=True, exist_ok=True)
    searched = lr_tables(list(lr_selections), out, run_dirs)
    (out / "tasks").mkdir(exist_ok=True)
    counts = ", ".join(f"{n} {s}" for s, n in status["status"].value_counts().items())
    blank = lambda df: df.astype(object).where(df.notna(), None)  # noqa: E731  (tabulate prints None as missingval)
    md = [f"# Results: {len(status)} runs ({counts})\n"]
    if searched:
        md.append(
            f"{searched} cells chose their learning rate by a search on a validation share of their training data: "
            "the `lr` column is the rate each run trained at; best_lr.md lists every candidate's score.\n"
        )
    not_done = status[status["status"] != "done"]
    if len(not_done):
        md += ["## Runs not done\n", blank(not_done).to_markdown(index=False, missingval=""), ""]
    if len(flagged):
        md += _left_out_section(flagged)
    if everyone.empty:
        not_done.to_csv(out / "summary.csv", index=False)
        (out / "summary.md").write_text("\n".join(md))
        (out / "summary.tex").write_text(LATEX_PREAMBLE + "% no finished runs\n")
        return everyone
    table = runs.drop(columns=["losses", "evaluations", "run_dir"])
    finished = everyone.drop(columns=["losses", "evaluations", "run_dir"])
    groups = grouped(table)
    comps = comparisons(runs, reference)
    pd.concat([finished.assign(status="done"), not_done.drop(columns=["stage"])], ignore_index=True).to_csv(
        out / "summary.csv", index=False
    )
    groups.to_csv(out / "summary_grouped.csv", index=False)
    comps.to_csv(out / "comparisons.csv", index=False)
    tex = [LATEX_PREAMBLE]
    md += [
        "Per task: each setting's main metric over its seeds (n, mean, std, 95% Student-t interval clipped to "
        "the metric's range; one seed shows "
        f"n = 1 and no interval), the best mean per model in bold, and the test against `{reference}` (the "
        f"`tables.reference` method): a paired t-test over shared seeds (n/a below {stats.MIN_SEEDS} seeds or when the "
        "differences do not vary), and on the per-example predictions, each example counted once however many "
        "seeds saw it, "
        "a paired permutation test of the seed-averaged outcome (accuracy, exact match, ROUGE; "
        f"{stats.RESAMPLES} sign flips, "
        f"exact when fewer) or a paired bootstrap ({BOOTSTRAP_RESAMPLES} resamples of the examples) of the "
        "seed-averaged "
        f"metric; p-values Holm-corrected within each table.\n",
    ]
    for task in sorted(finished["task"].unique()):
        metric = finished.loc[finished["task"] == task, "main_metric"].iloc[0]
        task_flagged = flagged[flagged["task"] == task]
        if (table["task"] == task).any():
            t = task_table(groups.merge(table[["task", "main_metric"]].drop_duplicates(), on="task"), comps, task)
            section, body = [f"## {task}: {metric}\n", _markdown(t, metric), ""], latex(t, task, metric)
        else:  # every finished run of the task is flagged
            t = pd.DataFrame(columns=["model", "method", "r", "lr", "train_size", "n", metric])
            section = [
                f"## {task}: {metric}\n",
                f"Every finished run of {task} is flagged by its health: nothing to compare.\n",
            ]
            body = f"% {latex_escape(task)}: every finished run is flagged by its health; nothing to compare\n"
        t.to_csv(out / "tasks" / f"{task}.csv", index=False)
        if len(task_flagged):
            section += [
                f"{len(task_flagged)} run(s) of {task} left out, flagged by their health: see Runs left out of "
                "the comparisons.\n"
            ]
        task_missing = not_done[not_done["run_id"].str.split("/").str[0] == task]
        if len(task_missing):
            section += [f"Runs of {task} not done:\n", blank(task_missing).to_markdown(index=False, missingval=""), ""]
        (out / "tasks" / f"{task}.md").write_text("\n".join(section))
        (out / "tasks" / f"{task}.tex").write_text(LATEX_PREAMBLE + body)
        md += section
        tex.append(body)
    md += [disk(finished), ""]
    shown = finished.drop(columns=["task_type", "main_metric", "health_reasons"]).dropna(axis=1, how="all")
    md += ["## Every finished run\n", blank(shown).to_markdown(index=False, floatfmt=".4g", missingval=""), ""]
    (out / "summary.md").write_text("\n".join(md))  # the tables first: a plot never takes them down
    (out / "summary.tex").write_text("\n".join(tex))
    notes: list[str] = []
    plots.overview(runs, out, notes, flagged)
    (out / "plots").mkdir(exist_ok=True)
    plots.by_task_model(runs, out / "plots", notes)
    report.matrix([Path(d) for d in everyone["run_dir"]], out, notes)  # what each adapter changed: every finished run
    md += pareto_fronts(runs)
    if notes:
        md += ["## Plots not drawn, and why\n", *(f"- {n}" for n in notes), ""]
    (out / "summary.md").write_text("\n".join(md))
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (results/default/runs/<run_id>)")
    p.add_argument("--out", required=True, type=Path, help="folder for the tables and plots")
    p.add_argument("--reference", default="lora", help="the method every other one is compared with (default: lora)")
    p.add_argument(
        "--include-flagged",
        action="store_true",
        help="compare runs whose health is flagged too (peftlab.health; default: leave them out)",
    )
    p.add_argument(
        "--lr-search",
        nargs="*",
        type=Path,
        default=[],
        help="learning-rate searches' selections (results/<m>/lr_search/<cell>.json)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with artifacts.atomic_dir(
        args.out
    ) as tmp:  # whole: no table or plot of a run or search no longer in the matrix stays behind
        runs = build(args.runs, tmp, args.reference, args.lr_search, args.include_flagged)
    log.info("tabulated %d finished run(s) of %d into %s", len(runs), len(args.runs), args.out)


if __name__ == "__main__":
    main()
