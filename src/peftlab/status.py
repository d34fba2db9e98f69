"""Where a matrix stands, and why its failed runs failed.

    python -m peftlab.status                                   # the default matrix, config/config.yaml
    python -m peftlab.status --configfile config/experiments/core_1.5B.yaml
    python -m peftlab.status --configfile ... --watch 30       # refresh every 30 s
    python -m peftlab.status --configfile ... --json           # for scripts
    python -m peftlab.status --configfile ... --diagnose       # failed runs grouped by cause, with a fix each

Every run of the matrix is in one state, from its files alone (so it works on a login node
while Slurm runs the jobs):
- done: train.json, eval.json and merge_check.json exist; with its wall time (the three
  stages' Snakemake benchmarks) and peak memory (their max RSS, and the GPU peak training recorded);
- running: a stage's log exists without its output, has no error, and changed within
  --stale minutes; with its step out of the total and an ETA (peftlab.observe.Progress lines);
- failed: the log ends in an error, or stopped changing --stale minutes ago with no output;
  with the stage, the error line, and its class (`diagnose`);
- pending: no stage of it has started.

Diagnosis reads the stage's log and, under Slurm, the job's Slurm log
(.snakemake/slurm_logs/rule_<stage>/<run id>/), and classifies the failure: out of memory,
non-finite loss, missing column, shape mismatch, Slurm time or memory limit, lock, or other (peftlab.runstate).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from peftlab.health import flagged
from peftlab.matrix import plan
from peftlab.runstate import STATES, Run, explain, matrix_status
from peftlab.schema import ConfigError, load_yaml


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def bar(done: int, total: int, width: int = 30) -> str:
    filled = round(width * done / total) if total else 0
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total} ({100 * done / max(total, 1):.0f}%)"


def render(root: str, runs: list[Run], verbose: bool = False) -> str:
    counts = {s: sum(r.state == s for r in runs) for s in STATES}
    out = [f"Matrix {root}: {len(runs)} runs", "  " + ", ".join(f"{counts[s]} {s}" for s in STATES), ""]
    marks = {"done": "✓", "running": "⧗", "failed": "✗", "pending": "○"}
    for state in ("running", "failed", "done", "pending"):
        chosen = [r for r in runs if r.state == state]
        if not chosen or (state in ("done", "pending") and not verbose and len(chosen) > 20):
            if chosen:
                out.append(f"{state}: {len(chosen)} (--verbose lists them)")
            chosen = [r for r in chosen if flagged(r.health)]  # a flagged run is always listed
            if not chosen:
                continue
        out.append(f"{state}:")
        for r in chosen:
            if state == "done":
                mem = f"{r.peak_rss_mb / 1024:.1f} GB RSS" if r.peak_rss_mb else "-"
                mem += f", {r.peak_gpu_mb / 1024:.1f} GB GPU" if r.peak_gpu_mb else ""
                detail = f"{_clock(r.wall_time_s)}, {mem}" + (f", health: {r.health}" if flagged(r.health) else "")
            elif state == "running":
                detail = f"{r.stage}" + (
                    f", step {r.step}/{r.total}, {r.elapsed} elapsed, ETA {r.eta}"
                    if r.step is not None
                    else ", starting"
                )
            elif state == "failed":
                detail = f"{r.stage}: [{r.cause}] {r.reason}"
            else:
                detail = f"waiting for {r.stage}" if r.stage else "not started"
            out.append(f"  {marks[state]} {r.run_id}  ({detail})")
    out += ["", "Progress: " + bar(counts["done"], len(runs))]
    if n_flagged := sum(flagged(r.health) for r in runs if r.state == "done"):
        out.append(
            f"{n_flagged} done run(s) flagged by their health (train.json's health says what was seen): "
            "the tables keep them out of best marks, Pareto fronts and tests"
        )
    if counts["failed"]:
        causes = dict.fromkeys(r.cause for r in runs if r.state == "failed")
        out += [f"what to do: [{cause}] {explain(cause)[1]}" for cause in causes]
        out.append(
            "Failed runs: python -m peftlab.status --diagnose (same arguments) groups them by cause, with their logs."
        )
    return "\n".join(out)


def diagnose(runs: list[Run], n_lines: int = 12) -> str:
    failed = [r for r in runs if r.state == "failed"]
    if not failed:
        return "No failed runs."
    out = [f"{len(failed)} failed run(s)"]
    by_cause: dict[str, list[Run]] = {}
    for r in failed:
        by_cause.setdefault(r.cause, []).append(r)
    for cause, group in sorted(by_cause.items(), key=lambda kv: -len(kv[1])):
        what, fix = explain(cause)
        out += ["", f"== {cause}: {len(group)} run(s): {what}", f"   fix: {fix}"]
        for r in group:
            out.append(f"   - {r.run_id} ({r.stage}) log: {r.log}")
            out += [f"       | {x}" for x in r.lines[-n_lines:]]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--configfile", default="config/config.yaml", help="the matrix's config (default: config/config.yaml)"
    )
    p.add_argument("--json", action="store_true", help="print every run's state as JSON")
    p.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=30.0,
        help="refresh every N seconds (default 30) until no run is running or pending",
    )
    p.add_argument(
        "--diagnose", action="store_true", help="group the failed runs by cause, with log lines and a fix each"
    )
    p.add_argument(
        "--stale",
        type=float,
        default=60,
        help="minutes without log output before a run with no output counts as failed (default 60)",
    )
    p.add_argument("--lines", type=int, default=12, help="log lines per failed run in --diagnose (default 12)")
    p.add_argument("--verbose", action="store_true", help="list done and pending runs even when there are many")
    args = p.parse_args(argv)
    try:
        planned = plan(load_yaml(args.configfile), args.configfile)
    except (ConfigError, OSError) as e:
        raise SystemExit(f"--configfile {args.configfile}: {e}") from None
    search = {r for r, spec in planned.runs.items() if spec["holdout"] is not None}
    while True:
        runs = matrix_status(planned.root, list(planned.runs), Path("."), args.stale * 60, search)
        if args.json:
            text = json.dumps(
                {
                    "root": planned.root,
                    "counts": {s: sum(r.state == s for r in runs) for s in STATES},
                    "runs": [asdict(r) for r in runs],
                },
                indent=2,
            )
        elif args.diagnose:
            text = diagnose(runs, args.lines)
        else:
            text = render(planned.root, runs, args.verbose)
        if args.watch:
            sys.stdout.write("\033[2J\033[H" + time.strftime("%H:%M:%S ") + "\n")
        print(text, flush=True)
        if not args.watch or not any(r.state in ("running", "pending") for r in runs):
            break
        time.sleep(args.watch)


if __name__ == "__main__":
    main()
