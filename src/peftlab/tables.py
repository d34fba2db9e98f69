"""Summary tables and plots, from the runs' JSON files only.

    python -m peftlab.tables --out results/default/tables results/default/runs/<run_id> [...]

Writes summary.{csv,md,tex}: one row per run, then (in summary_grouped.csv and a
second section of the .md and .tex) one row per task, model and setting with
mean ± std over seeds. Plots: metrics.png (each task's main metric by method)
and loss.png (training loss curves); from the runs' tracking folders, tracking.{csv,md} and
its plots (peftlab.tracking.report.matrix). Every run of the matrix is listed with its
status: done, failed (with the stage and the first line of its error, from the
stage's log under <root>/logs/) or missing (not run yet), so the tables can be
rebuilt mid-matrix or after a failure without hiding a run.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from peftlab import artifacts, paths, tasks  # noqa: E402
from peftlab.spec import TaskSpec  # noqa: E402
from peftlab.tracking import report  # noqa: E402

log = logging.getLogger(__name__)
METRICS = tasks.all_metrics()


def main_metric(task: dict) -> str:
    """The metric a task is compared by: its config's `metric`, or its type's default."""
    return tasks.main_metric(TaskSpec.from_dict(task))


SETTING = ["task", "model", "method", "r", "lr", "train_size"]


def run_row(run_dir: Path) -> dict | None:
    """One table row from a run folder's JSON files, or None if the run has not finished."""
    if not (run_dir / "train.json").exists() or not (run_dir / "eval.json").exists():
        return None
    tr, ev = artifacts.read_json(run_dir / "train.json"), artifacts.read_json(run_dir / "eval.json")
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
        **{m: ev["metrics"].get(m) for m in METRICS},
        "trainable_params": tr["trainable_params"],
        "trainable_pct": 100 * tr["trainable_share"],
        "first_loss": tr["first_loss"],
        "final_loss": tr["final_loss"],
        "tokens_per_s": round(tr["tokens_per_s"]) if tr["tokens_per_s"] is not None else None,
        "train_time_s": round(tr["wall_time_s"], 1),
        "losses": tr["losses"],  # for the loss plot; not a table column
    }
    main = row["main_metric"]
    for split, m in ev["metrics"].get("splits", {}).items():  # named held-out sets: MNLI's accuracy[matched], [mismatched]
        row[f"{main}[{split}]"] = m.get(main)
    check = run_dir / "merge_check.json"
    if check.exists():
        mc = artifacts.read_json(check)
        row["merge_diff"] = mc.get("max_abs_logit_diff") if mc["mergeable"] else "cannot merge"
    return row


ERROR_LINE = re.compile(r"^([\w.]*(Error|Exception|Diverged|Mismatch|InUse|Adapter)\b.*:|merge check failed:)")


def first_error_line(log_file: Path) -> str | None:
    """The error a failed stage's log ends with (the exception line of its traceback), or its last line."""
    lines = [x.strip() for x in log_file.read_text(errors="replace").splitlines() if x.strip()]
    errors = [x for x in lines if ERROR_LINE.match(x)]
    return (errors or lines or [None])[-1]


def run_status(run_dir: Path) -> dict:
    """{run_id, status, stage, reason}: done when every stage wrote its output; otherwise the first stage
    without one is failed if its log says so (a log with no output means the stage ran and did not finish),
    and missing if it has not run."""
    root, run_id = paths.split_run(run_dir)
    for stage, output in paths.RUN_OUTPUTS:
        if not (run_dir / output).exists():
            log_file = Path(paths.log(root, stage, run_id))
            if log_file.exists():
                return {"run_id": run_id, "status": "failed", "stage": stage, "reason": first_error_line(log_file)}
            return {"run_id": run_id, "status": "missing", "stage": stage, "reason": None}
    return {"run_id": run_id, "status": "done", "stage": None, "reason": None}


def collect(run_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run whose train.json and eval.json exist, the status of every run)."""
    rows = [row for d in run_dirs if (row := run_row(Path(d))) is not None]
    status = pd.DataFrame([run_status(Path(d)) for d in run_dirs], columns=["run_id", "status", "stage", "reason"])
    for s in status[status["status"] != "done"].itertuples():
        log.warning("%s: %s at %s%s", s.run_id, s.status, s.stage, f": {s.reason}" if s.reason else "")
    table = pd.DataFrame(rows)
    if rows:
        table = table.sort_values(["task", "model", "method", "r", "seed"], na_position="first").reset_index(drop=True)
    return table, status


def grouped(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds for every setting; std is 0 for a single seed."""
    metrics = [m for m in METRICS if runs[m].notna().any()]
    keys = [k for k in SETTING if k in runs]
    out = (
        runs.groupby(keys, dropna=False)
        .agg(
            seeds=("seed", "nunique"),
            trainable_pct=("trainable_pct", "mean"),
            **{f"{m}_{stat}": (m, stat) for m in metrics for stat in ("mean", "std")},
        )
        .reset_index()
    )
    for m in metrics:
        out[f"{m}_std"] = out[f"{m}_std"].fillna(0.0)
    return out


def _pm(df: pd.DataFrame) -> pd.DataFrame:
    """mean/std column pairs -> one 'mean ± std' text column each, for md and tex."""
    out = df.copy()
    for col in [c for c in df if c.endswith("_mean")]:
        m = col.removesuffix("_mean")
        out[m] = [f"{a:.4f} ± {b:.4f}" if pd.notna(a) else "" for a, b in zip(df[col], df[f"{m}_std"])]
        out = out.drop(columns=[col, f"{m}_std"])
    return out


def _plot_metrics(runs: pd.DataFrame, path: Path) -> None:
    tasks = sorted(runs["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        part = runs[runs["task"] == task]
        metric = part["main_metric"].iloc[0]
        stats = part.groupby("method")[metric].agg(["mean", "std"]).fillna(0.0)
        ax.bar(stats.index, stats["mean"], yerr=stats["std"], capsize=4, color="tab:blue")
        ax.scatter(part["method"], part[metric], color="black", s=10, zorder=3, label="runs")
        ax.set_title(f"{task} ({part['model'].iloc[0]})")
        ax.set_ylabel(metric)
        if part[metric].max() <= 1:  # a share or a correlation; losses and perplexities scale freely
            ax.set_ylim(min(0, part[metric].min() * 1.05), 1.05)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_losses(runs: pd.DataFrame, path: Path) -> None:
    tasks = sorted(runs["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    ax_of = dict(zip(tasks, axes[0]))
    for run in runs.itertuples():
        label = run.run_id.split("/", 2)[2]  # the part after task/model
        ax_of[run.task].plot([x["step"] for x in run.losses], [x["loss"] for x in run.losses], lw=1, label=label)
    for task, ax in ax_of.items():
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build(run_dirs: list[Path], out: Path) -> pd.DataFrame:
    runs, status = collect(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    counts = ", ".join(f"{n} {s}" for s, n in status["status"].value_counts().items())
    blank = lambda df: df.astype(object).where(df.notna(), None)  # noqa: E731  (tabulate prints None as missingval)
    md = [f"# Results: {len(status)} runs ({counts})\n"]
    not_done = status[status["status"] != "done"]
    if len(not_done):
        md += ["## Runs not done\n", blank(not_done).to_markdown(index=False, missingval=""), ""]
    if runs.empty:
        not_done.to_csv(out / "summary.csv", index=False)
        (out / "summary.md").write_text("\n".join(md))
        return runs
    table = runs.drop(columns=["losses"])
    groups = grouped(table)
    everything = pd.concat([table.assign(status="done"), not_done.drop(columns=["stage"])], ignore_index=True)
    everything.to_csv(out / "summary.csv", index=False)
    groups.to_csv(out / "summary_grouped.csv", index=False)
    shown = table.drop(columns=["task_type", "main_metric"]).dropna(axis=1, how="all")
    md += [
        "## Every finished run\n",
        blank(shown).to_markdown(index=False, floatfmt=".4g", missingval=""),
        "\n## Mean ± std over seeds\n",
        blank(_pm(groups)).to_markdown(index=False, floatfmt=".4g", missingval=""),
        "",
    ]
    (out / "summary.md").write_text("\n".join(md))
    tex = shown.to_latex(index=False, float_format="%.4g", na_rep="", caption="Every finished run", label="tab:runs")
    tex += "\n" + _pm(groups).to_latex(
        index=False, float_format="%.4g", na_rep="", caption="Mean $\\pm$ std over seeds", label="tab:grouped"
    )
    (out / "summary.tex").write_text(tex.replace("±", "$\\pm$"))
    _plot_metrics(table, out / "metrics.png")
    _plot_losses(runs, out / "loss.png")
    report.matrix([Path(d) for d in run_dirs if run_row(Path(d)) is not None], out)
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (results/default/runs/<run_id>)")
    p.add_argument("--out", required=True, type=Path, help="folder for the tables and plots")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    runs = build(args.runs, args.out)
    log.info("tabulated %d finished run(s) of %d into %s", len(runs), len(args.runs), args.out)


if __name__ == "__main__":
    main()
