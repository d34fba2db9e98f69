"""A run's checkpoint folder: held by one trainer at a time, holding only checkpoints of one set of training settings.

The folder lies outside the run's declared outputs (Snakemake deletes those before it
reruns a failed job), at peftlab.paths.checkpoints. Once the run is done, training keeps
what the run's `outputs.checkpoints` says (`prune`): none (the folder is removed), the
last, or every N steps and the last. A kept checkpoint stays beside the fingerprint of
its settings, so a retrain from other settings discards it like any stale checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger(__name__)


class CheckpointsInUse(RuntimeError):
    """Another live trainer holds the run's checkpoint folder."""


KEEP = ("none", "last")  # outputs.checkpoints, besides every N steps (an integer)


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def kept_steps(steps: list[int], keep: str | int, best: int | None = None) -> set[int]:
    """Which of a run's checkpoint steps `outputs.checkpoints` keeps: none, the last, or every N and the last (and the
    best one, while training)."""
    if keep == "none" or not steps:
        return set()
    last = {max(steps)} | ({best} if best is not None else set())
    return last if keep == "last" else last | {s for s in steps if s % keep == 0}


def prune(folder: Path, keep: str | int, best: str | None = None) -> list[Path]:
    """Delete the checkpoints of `folder` that `keep` does not keep; the kept ones, oldest first."""
    found = {step_of(p): p for p in folder.glob("checkpoint-*") if p.is_dir()}
    keep_steps = kept_steps(list(found), keep, step_of(Path(best)) if best else None)
    for step, path in found.items():
        if step not in keep_steps:
            shutil.rmtree(path)
    return [found[s] for s in sorted(keep_steps)]


class KeepEvery(TrainerCallback):
    """A TrainerCallback for `outputs.checkpoints: N`: after each save, drop the checkpoints that are
    neither a multiple of N, the newest (resuming needs it) nor the best evaluated one, so that
    disk grows with N, not with save_steps (save_total_limit is off: it would delete kept ones)."""

    def __init__(self, every: int):
        self.every = every

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            prune(Path(args.output_dir), self.every, state.best_model_checkpoint)


def last_checkpoint(folder: Path) -> str | None:
    """Newest checkpoint-N whose trainer_state.json (written last) exists."""
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


@contextlib.contextmanager
def claimed(folder: Path, training_fingerprint: str):
    """Hold a run's checkpoint folder for this trainer, with only checkpoints of these training settings in it.

    The lock is an flock on `folder/LOCK`: a second trainer on the same run refuses with
    the holder's pid and host, and a dead holder's lock is released by the kernel, so the
    next trainer takes it over. Checkpoints whose `fingerprint` file differs (or is missing)
    came from other settings: they are discarded, and the log says so.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "LOCK", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise CheckpointsInUse(
                f"{folder} is in use by another trainer ({lock.read().strip() or 'unknown holder'}); "
                "wait for it or stop it: two trainers on one run would write over each other's checkpoints"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        lock.flush()
        marker = folder / "fingerprint"
        found = marker.read_text().strip() if marker.exists() else None
        stale = [p for p in folder.iterdir() if p.name not in ("LOCK", "fingerprint")]
        if found != training_fingerprint and stale:
            log.warning(
                "discarding %d checkpoint item(s) in %s: written from other training settings (fingerprint %s, now %s)",
                len(stale),
                folder,
                found,
                training_fingerprint,
            )
            for p in stale:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        marker.write_text(training_fingerprint + "\n")
        yield
