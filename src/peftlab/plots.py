"""The matrix's plots, one question per file, from the tables' run rows (peftlab.tables.collect).

Per task and model, in <tables>/plots/<task>/<model>/:
- metric.png: the main metric per method and setting, every seed a dot, the mean with its 95% interval;
- params.png, memory.png, time.png, forgetting.png: the metric against a cost (FRONTS: trainable
  parameters, peak memory, training time per example, forgetting), the Pareto front marked;
- rank.png, train_size.png, lr.png: the metric along that axis, one curve per method (and per
  value of the other varying axes), wherever the matrix varies the axis within a method;
- loss.png: training loss per method and setting, the mean over seeds with a band from the lowest to the highest seed;
- eval.png: the in-training evaluations, when the runs had them.
Overviews in <tables>/: metrics.png (metric.png faceted by task and model) and loss.png.

A method keeps one colour in every plot (peftlab.tracking.report.colour); axes fit the data;
every plot names its task, model and metric. A plot the data cannot give (no finite value)
is left out, and the tables say why (`attempt`): the tables themselves always come out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import EngFormatter, FuncFormatter, NullFormatter  # noqa: E402

from peftlab import metrics, stats  # noqa: E402
from peftlab.drawing import NotDrawn, attempt, check_drawable  # noqa: E402
from peftlab.tracking.report import colour  # noqa: E402

AXES = {"r": "rank r", "train_size": "training examples", "lr": "learning rate"}
FILES = {"r": "rank", "train_size": "train_size", "lr": "lr"}  # the axis plots' file names
MARKERS = "osD^v<>P*X"
STYLES = ["-", "--", ":", "-."]


def finite(values) -> list[float]:
    return [float(x) for x in values if x is not None and np.isfinite(x)]


def better(metric: str, a: float, b: float) -> bool:
    return a > b if metrics.metric(metric).higher_is_better else a < b


def varying(part: pd.DataFrame, axis: str) -> bool:
    """Does the axis take two or more values within one method here?"""
    return bool((part.groupby("method")[axis].nunique(dropna=False) > 1).any())


def setting_label(row, axes: list[str]) -> str:
    names = {"r": "r", "train_size": "n", "lr": "lr"}
    return " ".join(
        f"{names[a]}{row[a]:g}" if isinstance(row[a], (int, float, np.number)) and pd.notna(row[a]) else f"{names[a]}-"
        for a in axes
    )


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fit(ax, values) -> None:
    """Y limits that fit the data with a margin (no fixed 0..1 that flattens a saturated task)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v):
        check_drawable(sorted(v.tolist(), key=abs, reverse=True), "a value")
        lo, hi = v.min(), v.max()
        pad = (hi - lo) * 0.1 or max(abs(hi) * 0.05, 1e-3)
        ax.set_ylim(lo - pad, hi + pad)


def cells(part: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per method and setting: the seeds' values and their summary."""
    rows = []
    for key, g in part.groupby(["method", "r", "lr", "train_size"], dropna=False, sort=False):
        s = stats.summary(g[metric].tolist(), bounds=metrics.metric(metric).bounds)
        rows.append(
            {
                **dict(zip(["method", "r", "lr", "train_size"], key)),
                **s,
                "values": g[metric].tolist(),
                # each cost's mean over the seeds that recorded it (NaN when none did)
                **{c.column: _numbers(g[c.column]).mean() for c in FRONTS.values() if c.column in g},
            }
        )
    return pd.DataFrame(rows)


def _numbers(column: pd.Series) -> pd.Series:
    """A column's finite numbers (None, text and infinities dropped)."""
    v = pd.to_numeric(column, errors="coerce").astype(float)
    return v[np.isfinite(v)]


def _metric(ax, part: pd.DataFrame, metric: str, title: str) -> None:
    if not finite(part[metric]):
        raise NotDrawn(f"no run of {title} has a finite {metric}")
    axes = [a for a in AXES if varying(part, a)]
    c = cells(part, metric)
    c["label"] = [m + (f"\n{setting_label(r, axes)}" if axes else "") for m, (_, r) in zip(c["method"], c.iterrows())]
    for x, row in enumerate(c.itertuples()):
        col = colour(row.method)
        ax.scatter([x] * len(row.values), row.values, color=col, s=14, alpha=0.7, zorder=3)
        if row.ci_low is not None and pd.notna(row.ci_low):
            below, above = (
                max(row.mean - row.ci_low, 0),
                max(row.ci_high - row.mean, 0),
            )  # a mean outside the range: the clipped side is 0
            ax.errorbar([x], [row.mean], yerr=[[below], [above]], fmt="_", color="black", capsize=5, ms=14)
        else:
            ax.plot([x], [row.mean], "_", color="black", ms=14)
    ax.set_xticks(range(len(c)), c["label"], rotation=30, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(c) - 0.4)
    _fit(
        ax,
        [v for vs in c["values"] for v in vs]
        + [v for v in c["ci_low"].tolist() + c["ci_high"].tolist() if v is not None],
    )
    ax.set_ylabel(metric)
    ax.set_title(f"{title}\nmean, 95% t interval (n ≥ 2), seeds as dots", fontsize=9)


def metric_plot(part: pd.DataFrame, metric: str, task: str, model: str, path: Path) -> Path:
    if not finite(part[metric]):
        raise NotDrawn(f"no run of {task} / {model} has a finite {metric}")
    fig, ax = plt.subplots(
        figsize=(max(5, 0.7 * part.groupby(["method", "r", "lr", "train_size"], dropna=False).ngroups + 2), 4)
    )
    _metric(ax, part, metric, f"{task} / {model}: {metric}")
    return _save(fig, path)


def pareto(points: list[tuple[float, float]], metric: str) -> list[int]:
    """Indices of the points no other point beats on both a lower cost and a better metric (by its direction)."""
    front = []
    for i, (p, m) in enumerate(points):
        dominated = any(
            (q <= p and not better(metric, m, n) and (q < p or better(metric, n, m)))
            for j, (q, n) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


@dataclass(frozen=True)
class Cost:
    """What a Pareto front trades the metric against: a column of the run rows (peftlab.tables.run_row), lower is
    better."""

    column: str
    name: str  # the cost, in the plot's title
    axis: str  # the x axis, in words, with its unit
    missing: str  # why no run has a value: the reason a front is left out when none does
    kind: str | None = None  # the column naming what was measured: one kind per front, named on its axis
    unit: str | None = None  # ticks with SI prefixes (1k, 5 ms) on a log axis; None: plain numbers
    log: bool | None = (
        None  # True: a log axis always (positive values only); None: when all are positive and span 10x or more
    )


FRONTS = {  # the plot's file name: its cost
    "params": Cost(
        "trainable_params",
        "trainable parameters",
        "trainable parameters",
        "no run recorded a positive count of trainable parameters",
        unit="",
        log=True,
    ),
    "memory": Cost(
        "peak_memory_mb",
        "peak memory",
        "peak memory (MiB)",
        "no run recorded its peak memory (train.json's peak_memory)",
        kind="peak_memory_kind",
    ),
    "time": Cost(
        "train_s_per_example",
        "training time per example",
        "training time per example, s (Trainer runtime / (examples × epochs))",
        "no run recorded its training runtime with its epochs (train.json's train_runtime_s; a resumed run has none)",
        unit="s",
    ),
    "forgetting": Cost(
        "forgetting",
        "forgetting",
        "forgetting",
        "no run's eval.json has a forgetting record",
        kind="forgetting_measure",
    ),
}
KINDS = {  # what each kind of a cost measured, on the axis
    "cuda_max_allocated": "torch.cuda.max_memory_allocated during training",
    "cpu_rss": "the training process's peak resident set size",
    "loss_rise": "tuned − base mean token cross-entropy on the reference texts",  # peftlab.forgetting
    "cka_drift": "1 − linear CKA of base and tuned final hidden states on the reference texts",
}


def front(part: pd.DataFrame, metric: str, name: str) -> tuple[pd.DataFrame, list[int], str | None, int]:
    """The settings (seeds averaged, cells) with a finite mean metric and cost FRONTS[name], the indices of the Pareto
    front among them (a lower cost and a better metric), the kind the runs measured (one per front) and how many
    settings with a metric had no cost. NotDrawn when no run has the cost, or the runs measured different kinds."""
    cost = FRONTS[name]
    values = _numbers(part[cost.column]) if cost.column in part else pd.Series(dtype=float)
    values = values[values > 0] if cost.log else values
    if values.empty:
        raise NotDrawn(cost.missing)
    check_drawable(sorted(values.tolist(), key=abs, reverse=True), f"a {cost.name}")
    kinds = sorted(set(part.loc[values.index, cost.kind].dropna())) if cost.kind else []
    if len(kinds) > 1:
        counts = part.loc[values.index, cost.kind].value_counts()
        raise NotDrawn(
            f"its runs measured {cost.name} as {', '.join(f'{k} ({counts[k]} run(s))' for k in kinds)}: one "
            "axis cannot compare them"
        )
    c = cells(part, metric)
    c = c[[m is not None and np.isfinite(m) for m in c["mean"]]]
    if c.empty:
        raise NotDrawn(f"no setting has a finite {metric}")
    has = c[cost.column].notna() & ((c[cost.column] > 0) if cost.log else True)
    c = c[has].reset_index(drop=True)
    if c.empty:
        raise NotDrawn(f"no setting with a finite {metric} has a {cost.name}")
    return c, pareto(list(zip(c[cost.column], c["mean"])), metric), kinds[0] if kinds else None, int((~has).sum())


def cost_label(name: str, kind: str | None) -> str:
    """A front's x label: the cost and the kind its runs measured."""
    cost = FRONTS[name]
    if kind is None:
        return cost.axis
    return f"{cost.axis}: {kind}" + (f"\n({KINDS[kind]})" if kind in KINDS else "")


def _cost_axis(ax, x: pd.Series, cost: Cost) -> None:
    """Log when the cost asks or its positive values span a decade or more; SI prefixes (1k, 5 ms) where it has a
    unit."""
    lo, hi = x.min(), x.max()
    if cost.log or (cost.log is None and lo > 0 and hi / lo >= 10):
        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        label = EngFormatter(unit=cost.unit, sep=" " if cost.unit else "") if cost.unit is not None else plain
        ax.xaxis.set_major_formatter(label)
        # between the decades, label 2x and 5x when the data spans under two decades, nothing when more
        minor = FuncFormatter(lambda v, _: label(v) if f"{v:.0e}"[0] in "25" else "")
        ax.xaxis.set_minor_formatter(NullFormatter() if np.log10(hi / lo) > 2 else minor)
    else:
        if cost.unit:
            ax.xaxis.set_major_formatter(EngFormatter(unit=cost.unit, sep=" "))
        else:
            ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        if lo == hi:  # one value: a window around it, not matplotlib's ±0.05 of nothing
            pad = abs(lo) * 0.1 or 0.1
            ax.set_xlim(lo - pad, hi + pad)


def front_plot(part: pd.DataFrame, metric: str, name: str, task: str, model: str, path: Path) -> Path:
    """The metric against the cost FRONTS[name], a point per method and setting (the mean over seeds), the Pareto front
    dashed."""
    cost = FRONTS[name]
    try:
        c, idx, kind, missing = front(part, metric, name)
    except NotDrawn as e:
        raise NotDrawn(f"{task} / {model}: {e}") from None
    x = c[cost.column]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, g in c.groupby("method", sort=False):
        ax.scatter(g[cost.column], g["mean"], color=colour(method), label=method, s=30, zorder=3)
    f = c.iloc[idx]
    ax.step(f[cost.column], f["mean"], where="post", color="black", lw=1, ls="--", label="Pareto front")
    ax.scatter(f[cost.column], f["mean"], facecolors="none", edgecolors="black", s=90, zorder=4)
    _cost_axis(ax, x, cost)
    _fit(ax, c["mean"])
    ax.set_xlabel(cost_label(name, kind), fontsize=8)
    direction = "higher" if metrics.metric(metric).higher_is_better else "lower"
    ax.set_ylabel(f"{metric} (mean over seeds; {direction} is better)")
    left = f"; {missing} setting(s) without it left out" if missing else ""
    ax.set_title(f"{task} / {model}: {metric} against {cost.name}\n(lower cost is better{left})", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def axis_plot(part: pd.DataFrame, metric: str, axis: str, task: str, model: str, path: Path) -> Path | None:
    """The metric along one axis: a curve per method and per value of the other varying axes, with a 95% band."""
    others = [a for a in AXES if a != axis and varying(part, a)]
    c = cells(part, metric)
    fig, ax = plt.subplots(figsize=(6, 4))
    plotted = []
    for i, (key, g) in enumerate(c.groupby(["method", *others], dropna=False, sort=False)):
        key = key if isinstance(key, tuple) else (key,)
        method = key[0]
        g = g[[m is not None and np.isfinite(m) for m in g["mean"]]].dropna(subset=[axis]).sort_values(axis)
        if g[axis].nunique() < 2:
            continue
        plotted.append(g)
        style = STYLES[(i % len(STYLES))] if others else "-"
        label = method + ("" if not others else " " + setting_label(dict(zip(others, key[1:])), others))
        ax.plot(g[axis], g["mean"], style, marker=MARKERS[i % len(MARKERS)], color=colour(method), label=label)
        lo = g["ci_low"].astype(float)
        if lo.notna().any():
            ax.fill_between(g[axis], lo, g["ci_high"].astype(float), color=colour(method), alpha=0.15)
    if not plotted:  # the axis varies, but never with the other axes held: no curve to draw
        plt.close(fig)
        return None
    c = pd.concat(plotted)  # the axis and the y limits fit the curves drawn, not the settings left out
    values = sorted(c[axis].unique())
    if axis != "train_size" or values[-1] / max(values[0], 1) > 8:
        ax.set_xscale("log", base=2 if axis == "r" else 10)
    if len(values) <= 12:  # the values the matrix ran, as plain numbers
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.minorticks_off()
    ax.set_xlabel(AXES[axis])
    ax.set_ylabel(f"{metric} (mean, 95% band)")
    _fit(ax, list(c["mean"]) + [v for v in list(c["ci_low"]) + list(c["ci_high"]) if v is not None])
    ax.set_title(f"{task} / {model}: {metric} against {AXES[axis]}", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _curves(ax, part: pd.DataFrame, column: str, key: str) -> None:
    """Per method and setting: the mean curve over seeds, and a band from the lowest to the highest seed."""
    axes = [a for a in AXES if varying(part, a)]
    for i, (setting, g) in enumerate(part.groupby(["method", "r", "lr", "train_size"], dropna=False, sort=False)):
        curves = [
            pd.Series({p["step"]: p[key] for p in h if key in p}, dtype=float) for h in g[column] if isinstance(h, list)
        ]
        curves = [c for c in curves if len(c)]
        if not curves:
            continue
        table = pd.concat(curves, axis=1).sort_index().interpolate(limit_area="inside")
        method = setting[0]
        label = method + (
            " " + setting_label(dict(zip(["method", "r", "lr", "train_size"], setting)), axes) if axes else ""
        )
        label += f" (n={len(curves)})"
        style = STYLES[i % len(STYLES)] if axes else "-"
        ax.plot(table.index, table.mean(axis=1), style, color=colour(method), lw=1.2, label=label)
        if len(curves) > 1:
            ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=colour(method), alpha=0.15)


def _flagged_curves(ax, flagged: pd.DataFrame) -> None:
    """Each run the comparisons leave out (peftlab.health), dotted, labelled with its health."""
    for _, run in flagged.iterrows():
        points = (
            [(p["step"], p["loss"]) for p in run["losses"] if "loss" in p] if isinstance(run["losses"], list) else []
        )
        if points:
            steps, losses = zip(*points)
            label = f"{run['method']} s{run['seed']}: {run.get('health', 'flagged')}"
            ax.plot(steps, losses, ":", color=colour(run["method"]), lw=1.2, label=label)


def _check_losses(part: pd.DataFrame) -> None:
    """NotDrawn when a logged loss is beyond what an axis can hold (peftlab.drawing.DRAWABLE)."""
    check_drawable([p.get("loss") for h in part["losses"] if isinstance(h, list) for p in h], "a logged loss")


def loss_plot(part: pd.DataFrame, task: str, model: str, path: Path) -> Path:
    _check_losses(part)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    _curves(ax, part, "losses", "loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{task} / {model}: training loss (mean over seeds; band: lowest to highest seed)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def eval_plot(part: pd.DataFrame, metric: str, task: str, model: str, path: Path) -> Path | None:
    key = f"eval_{metric}"
    if not any(isinstance(h, list) and any(key in e for e in h) for h in part["evaluations"]):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    _curves(ax, part, "evaluations", key)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{metric} (in-training evaluation)")
    ax.set_title(f"{task} / {model}: {metric} during training (mean over seeds; band: lowest to highest)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def by_task_model(runs: pd.DataFrame, out: Path, notes: list[str]) -> list[Path]:
    """Every per-(task, model) plot; returns the files written, and notes in `notes` each plot left out and why."""
    written = []
    for (task, model), part in runs.groupby(["task", "model"], sort=True):
        metric = part["main_metric"].iloc[0]
        folder = out / task / model
        written += [
            attempt(notes, folder / "metric.png", metric_plot, part, metric, task, model),
            *(attempt(notes, folder / f"{name}.png", front_plot, part, metric, name, task, model) for name in FRONTS),
            attempt(notes, folder / "loss.png", loss_plot, part, task, model),
        ]
        written += [
            attempt(notes, folder / f"{FILES[a]}.png", axis_plot, part, metric, a, task, model)
            for a in AXES
            if varying(part, a)
        ]
        written.append(attempt(notes, folder / "eval.png", eval_plot, part, metric, task, model))
    return [w for w in written if w is not None]


def overview(runs: pd.DataFrame, out: Path, notes: list[str], flagged: pd.DataFrame | None = None) -> None:
    """metrics.png and loss.png: every task and model as a facet; a facet the data cannot give says why, in its panel
    and in `notes`.

    `flagged`: finished runs the comparisons leave out (peftlab.health): their losses are drawn (that is
    where a collapse shows), their metrics are not."""
    every = runs if flagged is None or flagged.empty else pd.concat([runs, flagged])
    facets = sorted(every.groupby(["task", "model"]).groups)
    ncol = min(3, len(facets))
    nrow = -(-len(facets) // ncol)
    for name in ("metrics", "loss"):
        fig, axes = plt.subplots(nrow, ncol, figsize=(5.5 * ncol, 4 * nrow), squeeze=False)
        for ax, (task, model) in zip(axes.flat, facets):
            part = runs.query("task == @task and model == @model")
            try:
                if name == "metrics":
                    if part.empty:
                        raise NotDrawn("every finished run is flagged by its health")
                    _metric(ax, part, part["main_metric"].iloc[0], f"{task} / {model}")
                else:
                    flagged_part = every.query("task == @task and model == @model and index not in @part.index")
                    _check_losses(pd.concat([part, flagged_part]))
                    _curves(ax, part, "losses", "loss")
                    _flagged_curves(ax, flagged_part)
                    ax.set_title(f"{task} / {model}: training loss", fontsize=9)
                    ax.set_xlabel("step")
                    ax.legend(fontsize=6)
            except NotDrawn as e:
                ax.clear()  # nothing half-drawn stays behind the reason
                ax.text(0.5, 0.5, str(e), ha="center", va="center", transform=ax.transAxes, wrap=True)
                ax.set_axis_off()
                notes.append(f"{name}.png, panel {task} / {model}: not drawn: {e}")
        for ax in list(axes.flat)[len(facets) :]:
            ax.set_visible(False)
        _save(fig, out / f"{name}.png")


def lr_search_plot(rows: pd.DataFrame, path: Path) -> Path:
    """Score against learning rate, one panel per task, model and metric, one curve per method and setting;
    the chosen rate a star, a diverged candidate an x on the axis (peftlab.search.table's rows). A successive-halving
    search draws a curve per rung, over the rates that trained to it."""
    rows = rows.assign(rung=rows["rung"] if "rung" in rows else None)
    halving = rows["rung"].notna().any()
    panels = list(rows.groupby(["task", "model", "metric"], sort=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, ((task, model, metric), part) in zip(axes[0], panels):
        styles = {}
        curves = part.groupby(["method", "setting", part["rung"].fillna(-1)], sort=False)
        for (method, setting, rung), g in curves:
            if rung >= 0:  # a halving cell: its last rung a solid line, the rungs below it dotted
                cell = part[(part["method"] == method) & (part["setting"] == setting)]
                style = "-" if rung == cell["rung"].max() else ":"
            else:
                style = (
                    STYLES[styles.setdefault(method, len(styles)) % len(STYLES)]
                    if part["setting"].nunique() > 1
                    else "-"
                )
            ok = g[g["score"].notna()]
            label = method + (f" {setting}" if setting != "-" else "")
            if rung >= 0:  # a halving rung: its budget, as a share of the run's steps
                label += f" rung {int(rung)} ({g['budget'].iloc[0]:.2g} of the steps)"
            best = g[g["chosen"]]
            if "sharpness" in best and best["sharpness"].notna().any():  # tracker.sharpness_probe's λ_max at init
                label += f" (λ_max {best['sharpness'].dropna().iloc[0]:.3g})"
            ax.plot(ok["rate"], ok["score"], style, marker="o", color=colour(method), label=label)
            ax.plot(best["rate"], best["score"], "*", ms=14, color=colour(method), markeredgecolor="black")
            bad = g[g["score"].isna()]
            if len(bad):
                ax.plot(
                    bad["rate"],
                    [0] * len(bad),
                    "x",
                    color=colour(method),
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                )
        ax.set_xscale("log")
        rates = sorted(part["rate"].unique())
        if len(rates) <= 12:
            ax.set_xticks(rates, [f"{r:g}" for r in rates])
            ax.xaxis.set_minor_formatter(NullFormatter())
        _fit(ax, list(part["score"].dropna()))
        ax.set_xlabel("learning rate")
        direction = "higher is better" if metrics.metric(metric).higher_is_better else "lower is better"
        ax.set_ylabel(f"validation {metric} ({direction})")
        ax.set_title(
            f"{task} / {model}: {metric} against learning rate\n(star: chosen; x: diverged"
            + ("; each rung's survivors only" if halving else "")
            + ")",
            fontsize=9,
        )
        ax.legend(fontsize=7)
    return _save(fig, path)
