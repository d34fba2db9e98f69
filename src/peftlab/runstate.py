"""A run's state from its files and logs alone: done, running, failed (with the stage, the error
line and its cause) or pending. What `python -m peftlab.status` shows and the tables list.

Diagnosis reads the stage's log and, under Slurm, the job's Slurm log
(.snakemake/slurm_logs/rule_<stage>/<run id>/), and classifies the failure: out of memory,
non-finite loss, a degenerate run, missing column, shape mismatch, Slurm time or memory limit,
a stale adapter, unreadable model files, lock, or other (CAUSES).
"""

from __future__ import annotations

import csv
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from peftlab import artifacts, paths

STATES = ("done", "running", "failed", "pending")
PROGRESS = re.compile(
    r"progress (?P<run>\S+): step (?P<step>\d+)/(?P<total>\d+) .*?\| (?P<elapsed>[\d:, a-z]+) elapsed, ETA "
    r"(?P<eta>[\d:, a-z?]+)"
)
# a line that says a job failed: a traceback's start or its exception line, or Slurm's or the kernel's kill
TRACEBACK = re.compile(
    r"^(Traceback \(most recent call last\):?|[\w.]*(Error|Exception|Diverged|Degenerate|Mismatch|InUse|Adapter)"
    r"\b.*:.*|merge check failed:.*"
    r"|.*CANCELLED AT .*|.*oom.kill.*|Killed)$"
)

# (class, what it is, log patterns, the fix to try), checked in order: the first match names the failure
CAUSES = (
    (
        "slurm_time_limit",
        "Slurm stopped the job at its time limit",
        [r"DUE TO TIME LIMIT", r"TIMEOUT"],
        "raise the run's resources.runtime, in minutes (or its preset's); a retried job gets attempt x the "
        "time, so check --retries",
    ),
    (
        "slurm_memory_limit",
        "Slurm killed the job for exceeding its memory limit",
        [r"exceeded memory limit", r"oom[_-]kill", r"OUT_OF_MEMORY"],
        "raise the run's resources.mem_mb (host memory, not GPU memory); a retried job gets attempt x the memory",
    ),
    (
        "out_of_memory",
        "the GPU or host ran out of memory",
        [
            r"CUDA out of memory",
            r"OutOfMemoryError",
            r"\bMemoryError\b",
            r"Cannot allocate memory",
            r"DefaultCPUAllocator: can't allocate",
        ],
        "lower training.batch_size and raise grad_accum (same effective batch), set gradient_checkpointing: true, "
        "shorten max_length, or use qlora; or give the run a larger GPU preset",
    ),
    (
        "non_finite_loss",
        "the loss or the logits became NaN or infinite",
        [r"Diverged", r"loss is nan", r"non-finite", r"\bnan\b.*loss", r"inf(inite)? loss"],
        "lower training.learning_rate, add warmup (warmup_ratio), keep max_grad_norm, or train in bf16 rather "
        "than fp16",
    ),
    (
        "degenerate",
        "training ended, but the run learned nothing or went wrong (peftlab.health), and training.on_degenerate "
        "is fail",
        [r"Degenerate", r"run health is (collapsed|blew up|no learning)"],
        "the error line says what was seen: lower training.learning_rate (blew up, collapsed) or raise it (no "
        "learning), "
        "or train longer; training.on_degenerate: warn keeps such a run, flagged and out of the comparisons",
    ),
    (
        "missing_column",
        "the data lacks a column the task reads",
        [r"missing column", r"lacks the column", r"KeyError: '", r"Column .* not in the dataset"],
        "name the task's columns (tasks.<name>.text_fields, prompt_field, response_field, label_field) or rename them "
        "with tasks.<name>.columns; `python -m peftlab.config CONFIG` checks the data before any job",
    ),
    (
        "shape_mismatch",
        "tensor shapes do not fit (a head, an adapter or a checkpoint of another model)",
        [
            r"size mismatch",
            r"shape mismatch",
            r"shapes cannot be multiplied",
            r"The size of tensor a",
            r"Expected .* to have .* size",
        ],
        "check the model and num_labels against the adapter or checkpoint; target_modules may name layers of "
        "another architecture",
    ),
    (
        "stale_adapter",
        "the stage read an adapter trained from other settings than its own spec",
        [r"StaleAdapter"],
        "run the same snakemake command again (it reruns the stages whose settings changed); if it fails the same way, "
        "retrain the run: snakemake --forcerun train_run <the run's eval.json>, with the same --configfile",
    ),
    (
        "model_files",
        "a model's files could not be read: not a local folder, and the hub unreachable or the files not in its cache",
        [r"ModelFilesError", r"couldn't connect to 'https://huggingface.co'"],
        "give models.<name>.path a local model folder, or fill the Hugging Face cache on a machine with network and "
        "set HF_HUB_OFFLINE=1; then run the same command again",
    ),
    (
        "lock",
        "another process holds the run's folder or Snakemake's lock",
        [r"CheckpointsInUse", r"is in use by another trainer", r"LockException", r"Directory cannot be locked"],
        "wait for the other job or stop it; after a crash, `snakemake --unlock` frees Snakemake's lock",
    ),
)


@dataclass
class Run:
    run_id: str
    state: str
    stage: str | None = None
    wall_time_s: float | None = None
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    health: str | None = None  # a done run's (peftlab.health): ok, collapsed, blew up, no learning; None if not judged
    step: int | None = None
    total: int | None = None
    elapsed: str | None = None
    eta: str | None = None
    reason: str | None = None
    cause: str | None = None
    log: str | None = None
    lines: list[str] = field(default_factory=list)


def _benchmarks(root: str, run_id: str) -> tuple[float | None, float | None]:
    """(seconds, max RSS in MB) summed and maxed over a run's stages' Snakemake benchmark files."""
    seconds, rss = 0.0, None
    for stage, _ in paths.RUN_OUTPUTS:
        path = Path(paths.benchmark(root, stage, run_id))
        if path.exists():
            rows = list(csv.DictReader(path.open(), delimiter="\t"))
            if rows:
                seconds += float(rows[-1]["s"])
                value = rows[-1].get("max_rss")
                if value not in (None, "", "NA", "-"):
                    rss = max(rss or 0.0, float(value))
    return (seconds or None), rss


def slurm_logs(workdir: Path, stage: str, run_id: str) -> list[Path]:
    """The Slurm logs of a run's stage, newest last (the plugin names the folder after the wildcards, / as _)."""
    folder = workdir / ".snakemake" / "slurm_logs" / f"rule_{stage}" / run_id.replace("/", "_")
    return sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime) if folder.exists() else []


OTHER = (
    "an error peftlab does not recognise",
    "read the error in the run's log (--diagnose prints its last lines), fix its cause, and run the same "
    "snakemake command again",
)


def classify(text: str) -> tuple[str, str, str]:
    """(class, what it is, the fix) of a failure's log text."""
    for cause, what, patterns, fix in CAUSES:
        if any(re.search(p, text) for p in patterns):
            return cause, what, fix
    return "other", *OTHER


def explain(cause: str) -> tuple[str, str]:
    """(what it is, the fix) of a failure class."""
    return next(((what, fix) for c, what, _, fix in CAUSES if c == cause), OTHER)


def relevant_lines(text: str, n: int = 12) -> list[str]:
    """The lines that say what went wrong: from the last traceback (or the last error-looking line), at most n."""
    lines = [x.rstrip() for x in text.splitlines() if x.strip()]
    starts = [i for i, x in enumerate(lines) if TRACEBACK.match(x.strip())]
    if not starts:
        return lines[-n:]
    tb = [i for i in starts if lines[i].startswith("Traceback")]
    first = tb[-1] if tb else starts[-1]
    chunk = lines[first:]
    return chunk if len(chunk) <= n else chunk[:2] + ["..."] + chunk[-(n - 3) :]


def error_line(text: str) -> str | None:
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    errors = [x for x in lines if TRACEBACK.match(x) and not x.startswith("Traceback")]
    return (errors or lines or [None])[-1]


def run_state(
    root: str,
    run_id: str,
    workdir: Path = Path("."),
    stale_s: float = 3600,
    now: float | None = None,
    search: bool = False,
) -> Run:
    """A run's state from its files and logs; a learning-rate search's run (`search`) is done once evaluated (it is
    never merged)."""
    now = time.time() if now is None else now
    run_dir = Path(paths.run(root, run_id))
    for stage, output in paths.RUN_OUTPUTS[:2] if search else paths.RUN_OUTPUTS:
        if (run_dir / output).exists():
            continue
        log_file = Path(paths.log(root, stage, run_id))
        slurm = slurm_logs(workdir, stage, run_id)
        if not log_file.exists() and not slurm:
            started = stage != paths.RUN_OUTPUTS[0][0]
            return Run(run_id, "pending", stage if started else None)
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        slurm_text = slurm[-1].read_text(errors="replace") if slurm else ""
        newest = max([p.stat().st_mtime for p in [log_file, *slurm[-1:]] if p.exists()])
        errored = (
            any(TRACEBACK.match(x.strip()) for x in (text + "\n" + slurm_text).splitlines())
            or "Error in rule" in slurm_text
        )
        if not errored and now - newest < stale_s:
            run = Run(run_id, "running", stage, log=str(log_file))
            found = list(PROGRESS.finditer(text))
            if found:
                m = found[-1]
                run.step, run.total, run.elapsed, run.eta = int(m["step"]), int(m["total"]), m["elapsed"], m["eta"]
            return run
        both = text + "\n" + slurm_text
        cause, _, _ = classify(both)
        reason = (
            error_line(both)
            if errored
            else f"no output, and the log has not changed for {(now - newest) / 60:.0f} min (killed?)"
        )
        lines = relevant_lines(text if errored and TRACEBACK.search(text or "") else both)
        return Run(
            run_id,
            "failed",
            stage,
            reason=reason,
            cause=cause,
            log=str(slurm[-1] if slurm and not text else log_file),
            lines=lines,
        )
    seconds, rss = _benchmarks(root, run_id)
    gpu = verdict = None
    train = run_dir / "train.json"
    if train.exists():
        record = artifacts.read_json(train)
        peak = record.get("peak_memory", {})
        gpu = artifacts.recorded_peak(peak, "cuda_max_allocated")
        rss = rss or peak.get("cpu_rss_mb")
        verdict = (record.get("health") or {}).get("status")
    return Run(run_id, "done", wall_time_s=seconds, peak_rss_mb=rss, peak_gpu_mb=gpu, health=verdict)


def matrix_status(
    root: str, run_ids: list[str], workdir: Path = Path("."), stale_s: float = 3600, search_runs=frozenset()
) -> list[Run]:
    return [run_state(root, r, workdir, stale_s, search=r in search_runs) for r in run_ids]
