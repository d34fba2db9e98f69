"""Files that look finished only when they are: atomic JSON and folder writes, provenance."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "trl", "bitsandbytes", "tokenizers", "peftlab")


def _finite(obj):
    """obj with every NaN or infinity replaced by None: JSON has no such numbers (a bare NaN is not JSON),
    and a metric that is undefined (Pearson of a constant prediction) is recorded as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_text(obj) -> str:
    return json.dumps(_finite(obj), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n"


def write_json(path: str | Path, obj) -> None:
    """Write JSON via a temporary file and rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(_json_text(obj))
    os.replace(tmp, path)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """One JSON object per line, written atomically like write_json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(_finite(row), sort_keys=True, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: str | Path):
    with open(path) as f:
        return json.load(f)


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary sibling folder; it becomes `path` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def disk_bytes(path: str | Path) -> int:
    """Bytes a file or folder holds on disk (its files' sizes; 0 if it does not exist)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    return out


def git_commit() -> str:
    """The commit of the peftlab checkout (with -dirty for local edits), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cuda_used():
    """torch, when this process has used a CUDA device (torch imported, CUDA there and initialised); else None."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized() else None


def reset_peak_memory() -> None:
    """Start the CUDA device's peak count afresh (train: the peak of training, not of loading); no-op without CUDA.

    The process's peak RSS cannot be reset: it counts from the process's start."""
    if torch := _cuda_used():
        torch.cuda.reset_peak_memory_stats()


# train.json's peak_memory keys (peak_memory_mb writes them), in the order a reader prefers them, and the kind each
# measured; gpu_mb is the CUDA count under its name before cuda_max_allocated_mb, read at the end of the training job
PEAK_MEMORY_KEYS = {
    "cuda_max_allocated_mb": "cuda_max_allocated",
    "gpu_mb": "cuda_max_allocated",
    "cpu_rss_mb": "cpu_rss",
}


def recorded_peak(peak: dict, kind: str) -> float | None:
    """A recorded peak_memory's value of `kind` (cuda_max_allocated or cpu_rss) under any of its names; None without."""
    return next((peak[k] for k, of in PEAK_MEMORY_KEYS.items() if of == kind and peak.get(k) is not None), None)


def peak_memory_mb() -> dict[str, float]:
    """The process's peak memory in MiB, each kind named: `cpu_rss_mb`, the peak resident set size since the
    process started (getrusage's ru_maxrss; kibibytes on Linux); and, when the process used a CUDA device,
    `cuda_max_allocated_mb`, torch.cuda.max_memory_allocated on its current device since the process
    started or since reset_peak_memory (tensors torch allocated, not the caching allocator's reserve)."""
    out = {"cpu_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch := _cuda_used():
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class Provenance:
    """Times a step; `record()` gives what every output JSON carries."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.start = time.time()

    def record(self) -> dict:
        return {
            "spec": self.spec,
            "versions": versions(),
            "git_commit": git_commit(),
            "host": platform.node(),
            "wall_time_s": round(time.time() - self.start, 3),
            "peak_memory": peak_memory_mb(),
        }


def human_bytes(n: float) -> str:
    """A byte count as the tables and the cost plan print it: 1.2 GB (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError
