"""Tracking files and plots: one run's (written when it finishes training) and the matrix's (written by the tables
step).

A run's tracking/ folder:
    tracking.json       what was recorded, at which steps, and why not (a method with no ΔW)
    spectral.parquet    step, layer, depth, module, kind (delta | update), quantity, value
    gradients.parquet   step, layer, depth, module, role, quantity (grad_norm, param_norm, update_norm, update_ratio),
                        value
    heatmap_rel_norm.png, heatmap_align_top.png      layer × step, of ΔW
    heatmap_intruders.png                            layer × step, intruder dimensions of W + ΔW (when counted at two
                                                     steps or more)
    heatmap_grad_<role>.png                          layer × step gradient norms, one per role (lora_A, lora_B, ...)
    spectra_final.png                                ΔW's singular values per layer at the end

The matrix's, under tables/ (`matrix`): tracking.csv (one row per run: its final ΔW
averaged over layers, and as change_* the change from the pretrained model, ΔW − ΔW₀, which
differs from ΔW only where the init moved part of W into the adapter), tracking_grouped.csv
and tracking.md (per task, model, method and rank, over seeds), and four plots:
tracking_alignment.png (final alignment with W's top and bottom subspaces per method),
tracking_effective_rank.png (effective rank per method and rank), tracking_intruders.png
(intruder dimensions per layer, per method and rank, drawn as the effective rank is) and
tracking_depth.png (relative change by layer depth per method). A method keeps one colour in every plot.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from peftlab import artifacts  # noqa: E402
from peftlab.drawing import attempt, check_drawable  # noqa: E402

log = logging.getLogger(__name__)

TRACKING = "tracking"
HEATMAPS = {
    "rel_norm": "‖ΔW‖_F / ‖W‖_F",
    "align_top": "share of ‖ΔW‖² in W's top-k subspace\n(left and right averaged)",
    "intruders": (
        "intruder dimensions: top-k left singular vectors of W + ΔW\nfar from all of W's (|cos| below the threshold)"
    ),
}


def _layer_order(frame: pd.DataFrame) -> list[str]:
    layers = frame[["layer", "depth"]].drop_duplicates()
    layers = layers.assign(d=layers["depth"].astype("float").fillna(-1))
    return layers.sort_values(["d", "layer"])["layer"].tolist()


def _heatmap(frame: pd.DataFrame, title: str, path: Path, log_scale: bool = False) -> None:
    grid = frame.pivot_table(index="layer", columns="step", values="value", aggfunc="mean").reindex(_layer_order(frame))
    values = grid.to_numpy(dtype=float)
    if log_scale:
        values = np.log10(np.where(values > 0, values, np.nan))
    fig, ax = plt.subplots(figsize=(max(5.5, 0.5 * grid.shape[1] + 3), max(3.0, 0.22 * grid.shape[0] + 1.5)))
    image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xticks(
        range(grid.shape[1]), [str(s) for s in grid.columns], rotation=90 if grid.shape[1] > 12 else 0, fontsize=7
    )
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=6)
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="log10" if log_scale else None)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_plots(
    spectral: pd.DataFrame, gradients: pd.DataFrame, folder: Path, run_id: str, kept: int | None = None
) -> list[str]:
    """One run's heatmaps and the spectra of the weights it keeps (step `kept`) into `folder`; returns the files
    written."""
    written = []
    delta = spectral[spectral["kind"] == "delta"]
    for q, label in HEATMAPS.items():
        part = delta[delta["quantity"] == q]
        if len(part) and (
            q != "intruders" or part["step"].nunique() > 1
        ):  # counted at the end only: no heatmap over steps
            _heatmap(part, f"{run_id}\n{label}", folder / f"heatmap_{q}.png")
            written.append(f"heatmap_{q}.png")
    grads = gradients[(gradients["quantity"] == "grad_norm") & (gradients["role"] != "(all)")]
    for role, part in grads.groupby("role"):
        _heatmap(
            part,
            f"{run_id}\ngradient norm of {role} (before clipping)",
            folder / f"heatmap_grad_{role}.png",
            log_scale=True,
        )
        written.append(f"heatmap_grad_{role}.png")
    svs = delta[delta["quantity"].str.startswith("sv_")]
    if len(svs):
        final = svs[svs["step"] == (kept if kept in set(svs["step"]) else svs["step"].max())].assign(
            i=lambda f: f["quantity"].str[3:].astype(int)
        )
        order = _layer_order(final)
        fig, ax = plt.subplots(figsize=(6, 4))
        colours = plt.cm.viridis(np.linspace(0, 1, max(len(order), 1)))
        for colour, layer in zip(colours, order):
            part = final[final["layer"] == layer].sort_values("i")
            positive = part[part["value"] > 0]
            if len(positive):
                ax.plot(positive["i"], positive["value"], color=colour, lw=1, marker=".", ms=3, label=layer)
        if len(order) <= 12:
            ax.legend(fontsize=6)
        ax.set_yscale("log")
        ax.set_xlabel("singular value index")
        ax.set_ylabel("σ_i(ΔW)")
        ax.set_title(
            f"{run_id}\nΔW spectra at step {int(final['step'].max())} ({len(order)} layers, dark = shallow)", fontsize=9
        )
        fig.tight_layout()
        fig.savefig(folder / "spectra_final.png", dpi=110)
        plt.close(fig)
        written.append("spectra_final.png")
    return written


def write_run(
    tracker, folder: Path, run_id: str, fingerprint: str, images_to_wandb: tuple[bool, bool] = (False, False)
) -> dict:
    """A run's tracking/ folder (see the module docstring); returns what tracking.json holds."""
    folder.mkdir(parents=True, exist_ok=True)
    spectral, gradients = tracker.frames()
    spectral.to_parquet(folder / "spectral.parquet", index=False)
    gradients.to_parquet(folder / "gradients.parquet", index=False)
    record = {"run_id": run_id, "fingerprint": fingerprint, **tracker.summary()}
    record["plots"] = run_plots(spectral, gradients, folder, run_id, record["final_step"])
    artifacts.write_json(folder / "tracking.json", record)
    _images_to_wandb(folder, record["plots"], *images_to_wandb)
    return record


def _images_to_wandb(folder: Path, plots: list[str], spectral: bool, gradient: bool) -> None:
    if not (spectral or gradient):
        return
    import wandb

    if wandb.run is None:
        return
    chosen = [
        p
        for p in plots
        if (spectral and not p.startswith("heatmap_grad")) or (gradient and p.startswith("heatmap_grad"))
    ]
    wandb.log({f"tracking/{Path(p).stem}": wandb.Image(str(folder / p)) for p in chosen})


# --- the matrix
def run_final(run_dir: Path) -> dict | None:
    """One run's final ΔW averaged over its layers, with its coordinates; None when it has no tracking record."""
    folder = run_dir / TRACKING
    if not (folder / "tracking.json").exists() or not (run_dir / "train.json").exists():
        return None
    spec = artifacts.read_json(run_dir / "train.json")["spec"]
    tracking = artifacts.read_json(folder / "tracking.json")
    info = tracking["spectral"]
    row = {
        "run_id": spec["run_id"],
        "task": spec["task"]["name"],
        "model": spec["model"]["name"],
        "method": spec["peft"]["type"],
        "r": spec["peft"]["r"],
        "seed": spec["training"]["seed"],
        "subspace_k": info["subspace_k"],
        "reason": info["reason"] if info["enabled"] else "spectral tracking off",
    }
    spectral = pd.read_parquet(folder / "spectral.parquet")
    delta = spectral[spectral["kind"] == "delta"]
    if delta.empty:
        return row
    kept = tracking["final_step"] if tracking["final_step"] in set(delta["step"]) else delta["step"].max()
    final = spectral[
        spectral["step"] == kept
    ]  # the weights the run keeps (the best checkpoint's with load_best_model_at_end)
    # the change from the pretrained model: ΔW itself, or ΔW − ΔW₀ where the init moved part of W into the adapter
    # (PiSSA)
    change = final[final["kind"] == ("update" if (final["kind"] == "update").any() else "delta")]
    means, change_means = (f.groupby("quantity")["value"].mean() for f in (final[final["kind"] == "delta"], change))
    row["step"] = int(kept)
    for q in QUANTITIES:
        row[q] = float(means[q]) if q in means else None
    intruders = final[final["quantity"] == "intruders"]["value"]  # recorded once per layer, of W + (ΔW − ΔW₀)
    row["intruders_total"] = float(intruders.sum()) if len(intruders) else None
    for q in CHANGE:
        row[f"change_{q}"] = float(change_means[q]) if q in change_means else None
    row["depth_rel_norm"] = change[change["quantity"] == "rel_norm"].groupby("depth")["value"].mean().to_dict()
    return row


QUANTITIES = ("align_top", "align_bottom", "effective_rank", "stable_rank", "rel_norm", "numerical_rank", "intruders")
CHANGE = ("align_top", "align_bottom", "rel_norm")
COLOURS = {}  # one colour per method in every plot: its place in the registry


def colour(method: str):
    if not COLOURS:
        from peftlab.methods import METHODS

        tab20 = plt.get_cmap("tab20").colors
        palette = (
            tab20[0::2] + tab20[1::2]
        )  # the ten strong colours first: neighbours in the registry never share a hue
        COLOURS.update({m: palette[i % len(palette)] for i, m in enumerate(METHODS)})
    return COLOURS.get(method, "grey")


def matrix(run_dirs: list[Path], out: Path, notes: list[str] | None = None) -> pd.DataFrame | None:
    """The matrix-level tables and plots (see the module docstring), from the runs' tracking folders; None when no run
    has one.
    A plot that cannot be drawn is noted in `notes` with the reason (peftlab.plots.attempt)."""
    rows = [row for d in run_dirs if (row := run_final(Path(d))) is not None]
    if not rows:
        return None
    runs = pd.DataFrame(rows)
    for q in (*QUANTITIES, *(f"change_{q}" for q in CHANGE), "intruders_total", "step"):
        if q not in runs:
            runs[q] = None
    table = runs.drop(columns=["depth_rel_norm"], errors="ignore")
    table.to_csv(out / "tracking.csv", index=False)
    measured = table[table["align_top"].notna() | table["rel_norm"].notna()]
    keys = ["task", "model", "method", "r"]
    quantities = [
        "align_top",
        "align_bottom",
        "effective_rank",
        "stable_rank",
        "rel_norm",
        *(f"change_{q}" for q in CHANGE),
    ]
    quantities += ["intruders", "intruders_total"]
    if len(measured):
        grouped = (
            measured.astype({q: float for q in quantities})
            .groupby(keys, dropna=False)
            .agg(n=("seed", "size"), **{f"{q}_{stat}": (q, stat) for q in quantities for stat in ("mean", "std")})
            .reset_index()
        )
    else:
        grouped = pd.DataFrame(columns=keys)
    grouped.to_csv(out / "tracking_grouped.csv", index=False)
    unmeasured = table[table["align_top"].isna() & table["rel_norm"].isna()][["run_id", "reason"]]
    md = [
        "# What each adapter changed: ΔW at the end of training\n",
        "Averaged over each run's adapted layers. align_top / align_bottom: the share of ΔW's energy in the "
        "frozen weight's top-k / bottom-k singular subspaces (k = subspace_k, left and right averaged); "
        "effective_rank: exp of the entropy of ΔW's normalised spectrum; rel_norm: ‖ΔW‖_F / ‖W‖_F. "
        "intruders: intruder dimensions per layer (Shuttleworth et al. 2024), of the top k left singular "
        "vectors of the "
        "fine-tuned weight W + (ΔW − ΔW₀) those whose largest |cos| with any of W's is below the threshold (k and the "
        "threshold: tracker.intruder_k and intruder_threshold); intruders_total: their sum over the layers. "
        "change_*: the same of the change from the pretrained model, ΔW − ΔW₀ (ΔW itself for methods whose "
        "ΔW starts at zero; PiSSA's, OLoRA's and MiLoRA's starts as part of W).\n",
        "## Per task, model, method and rank (n runs: mean and std over seeds; no std for one run)\n",
        blank(grouped).to_markdown(index=False, floatfmt=".4g", missingval="") if len(grouped) else "(no run has a ΔW)",
        "\n## Every run\n",
        blank(table).to_markdown(index=False, floatfmt=".4g", missingval=""),
    ]
    if len(unmeasured):
        md += ["\n## Runs without a ΔW record, and why\n", unmeasured.to_markdown(index=False)]
    (out / "tracking.md").write_text("\n".join(md) + "\n")
    notes = [] if notes is None else notes
    attempt(notes, out / "tracking_alignment.png", _faceted, measured, _alignment)
    attempt(notes, out / "tracking_effective_rank.png", _faceted, measured, _effective_rank)
    attempt(notes, out / "tracking_intruders.png", _faceted, measured, _intruders)
    depth = runs if "depth_rel_norm" in runs else runs.assign(depth_rel_norm=None)
    attempt(notes, out / "tracking_depth.png", _faceted, depth, _depth)
    return table


def blank(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype(object).where(df.notna(), None)  # tabulate prints None as missingval


def _faceted(frame: pd.DataFrame, draw, path: Path) -> Path:
    """One panel per task and model; `draw(ax, part, title)` fills one (returns False when it has nothing to show)."""
    pairs = sorted({(t, m) for t, m in zip(frame["task"], frame["model"])}) or [("(none)", "(none)")]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 3.8), squeeze=False)
    for (task, model), ax in zip(pairs, axes[0]):
        drawn = draw(ax, frame[(frame["task"] == task) & (frame["model"] == model)], f"{task} ({model})")
        if drawn is False or isinstance(drawn, str):  # a string: what no run has
            ax.text(0.5, 0.5, drawn or "no run has a ΔW record", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        else:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _finite(part: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """The rows whose `columns` hold finite numbers (a collapsed or diverged run's may not)."""
    return part[np.isfinite(part[list(columns)].astype(float)).all(axis=1)]


def _alignment(ax, part: pd.DataFrame, title: str):
    part = _finite(part, "align_top", "align_bottom")
    if part.empty:
        return False
    check_drawable([*part["align_top"].astype(float), *part["align_bottom"].astype(float)], "an alignment")
    methods = sorted(part["method"].unique())
    x = np.arange(len(methods))
    for offset, q, shade in ((-0.2, "align_top", "tab:red"), (0.2, "align_bottom", "tab:blue")):
        stats = part.groupby("method")[q].agg(["mean", "std"]).reindex(methods)
        ax.bar(x + offset, stats["mean"], 0.4, yerr=stats["std"].fillna(0), capsize=3, color=shade, alpha=0.8, label=q)
        for i, m in enumerate(methods):
            ys = part.loc[part["method"] == m, q].astype(float)
            ax.scatter(np.full(len(ys), x[i] + offset), ys, color="black", s=8, zorder=3)
    k = sorted(part["subspace_k"].dropna().unique().tolist())
    ax.set_xticks(x, methods, rotation=30)
    ax.set_ylabel("share of ΔW's energy")
    ax.set_title(f"{title}: ΔW in W's top / bottom-k subspaces, k = {', '.join(map(str, k))}", fontsize=9)


def _per_rank(ax, part: pd.DataFrame, title: str, q: str, what: str, ylabel: str, heading: str):
    """One run-level quantity `q` against the adapter rank, a curve per method (a method without a rank: a dashed
    line)."""
    part = _finite(part, q)
    if part.empty:
        return False if q == "effective_rank" else f"no run has {what}"
    check_drawable(part[q].astype(float), what)
    ranked, rankless = part[part["r"].notna()], part[part["r"].isna()]
    for method, rows in ranked.groupby("method"):
        stats = rows.groupby("r")[q].agg(["mean", "std"]).sort_index()
        ax.errorbar(
            stats.index,
            stats["mean"],
            yerr=stats["std"].fillna(0),
            marker="o",
            capsize=3,
            label=method,
            color=colour(method),
        )
    for method, rows in rankless.groupby("method"):
        ax.axhline(rows[q].astype(float).mean(), ls="--", lw=1, label=f"{method} (no rank)", color=colour(method))
    if len(ranked):
        ax.set_xscale("log", base=2)
    ax.set_xlabel("adapter rank r")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}: {heading}", fontsize=9)


def _effective_rank(ax, part: pd.DataFrame, title: str):
    return _per_rank(
        ax, part, title, "effective_rank", "an effective rank", "effective rank of ΔW", "effective rank of the final ΔW"
    )


def _intruders(ax, part: pd.DataFrame, title: str):
    heading = "intruder dimensions of the final weights, per layer"
    return _per_rank(ax, part, title, "intruders", "an intruder count", "intruder dimensions per layer", heading)


def _depth(ax, part: pd.DataFrame, title: str):
    curves = {}
    for row in part.itertuples():
        for d, v in (row.depth_rel_norm if isinstance(row.depth_rel_norm, dict) else {}).items():
            if d is not None and not pd.isna(d) and v is not None and np.isfinite(v):
                curves.setdefault(row.method, {}).setdefault(int(d), []).append(v)
    if not curves:
        return False
    check_drawable([v for by_depth in curves.values() for vs in by_depth.values() for v in vs], "a relative change")
    for method, by_depth in sorted(curves.items()):
        depths = sorted(by_depth)
        ax.plot(depths, [np.mean(by_depth[d]) for d in depths], marker="o", label=method, color=colour(method))
    ax.set_xticks(sorted({d for by_depth in curves.values() for d in by_depth}))
    ax.set_xlabel("layer depth (block index)")
    ax.set_ylabel("‖ΔW − ΔW₀‖_F / ‖W‖_F")
    if (
        min(v for by_depth in curves.values() for vs in by_depth.values() for v in vs) > 0
    ):  # else linear: a log axis cannot hold 0
        ax.set_yscale("log")
    ax.set_title(
        f"{title}: relative change from the pretrained weight by depth\n(mean over modules and seeds)", fontsize=9
    )
