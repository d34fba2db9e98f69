"""Watching a run: the training log's progress lines, and wandb's run, tags and groups.

- `Progress`: a TrainerCallback that logs `step 40/120 (33%) loss 1.23 lr 2e-04 | 0:01:02
  elapsed, ETA 0:02:04` at every logging step, and every in-training evaluation's metrics.
  `peftlab.status` reads these lines from a running job's log.
- `wandb_setup`: the settings wandb.init reads from its environment. An exported
  WANDB_MODE wins over the config's `wandb.mode` (offline stays the default). The run's
  wandb id comes from its run id and training fingerprint, so the evaluation step logs its
  metrics into the same wandb run as training (`log_eval`). PeRL's automatic tags (method,
  seed, model size, rank, and the conditions ultra_low_rank, high_rank, data_scarcity,
  spectral_tracking) and its `{model_size}_{method}` group are set.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
import time
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger(__name__)

ULTRA_LOW_RANK = 4  # r at or below: PeRL's stress_rank low end
HIGH_RANK = 128  # r at or above


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class Progress(TrainerCallback):
    """Progress lines in the training log: step/total, the latest loss and learning rate, elapsed and ETA."""

    PREFIX = "progress"

    def __init__(self, run_id: str):
        self.run_id, self.start, self.first_step = run_id, None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first_step = time.monotonic(), state.global_step  # a resumed run's rate counts from its resume

    def line(self, state, logs: dict) -> str:
        step, total = state.global_step, max(state.max_steps, 1)
        elapsed = time.monotonic() - (self.start or time.monotonic())
        done = step - self.first_step
        eta = elapsed / done * (total - step) if done > 0 else None
        shown = " ".join(
            f"{k} {v:.4g}" for k, v in logs.items() if k in ("loss", "learning_rate", "grad_norm", "reward")
        )
        return (
            f"{self.PREFIX} {self.run_id}: step {step}/{total} ({100 * step / total:.0f}%) {shown} | "
            f"{_clock(elapsed)} elapsed, ETA {_clock(eta) if eta is not None else '?'}"
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and any(k in logs for k in ("loss", "reward")):
            log.info(self.line(state, logs))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and metrics:
            shown = ", ".join(
                f"{k.removeprefix('eval_')} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))
            )
            log.info("evaluation %s at step %d/%d: %s", self.run_id, state.global_step, state.max_steps, shown)


SIZE_IN_NAME = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[bBmM](?![\w])")


def model_size(params: int, name: str = "") -> str:
    """The size a model is known by: the one in its name or path ('DeepSeek-R1-Distill-Qwen-1.5B' -> '1.5B',
    as PeRL tags it), else its parameter count (6_738_415_616 -> '6.7B', 12_345_678 -> '12M')."""
    found = SIZE_IN_NAME.findall(name.replace("_", "-"))
    if found:
        m = re.search(rf"{re.escape(found[-1])}([bBmM])", name.replace("_", "-"))
        return f"{found[-1]}{m[1].upper()}"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if params >= scale:
            value = params / scale
            return f"{value:.1f}".rstrip("0").rstrip(".") + unit if value < 10 else f"{value:.0f}{unit}"
    return str(params)


def tags(spec, total_params: int) -> list[str]:
    """PeRL's automatic tags: method, seed, model size, rank, special conditions."""
    r = spec.peft.r
    out = [spec.peft.type, f"seed{spec.training.seed}", size(spec, total_params), spec.task.name, spec.model.name]
    if r is not None:
        out.append(f"r{r}")
        if r <= ULTRA_LOW_RANK:
            out.append("ultra_low_rank")
        elif r >= HIGH_RANK:
            out.append("high_rank")
    if spec.training.train_size:
        out.append("data_scarcity")
    if spec.tracker.enable_spectral_tracking:
        out.append("spectral_tracking")
    return out


def group(spec, total_params: int) -> str:
    return f"{size(spec, total_params)}_{spec.peft.type}"


def size(spec, total_params: int) -> str:
    return model_size(total_params, f"{spec.model.name} {spec.model.path or ''}")


def wandb_id(run_id: str, fingerprint: str) -> str:
    """The run's wandb id: one per run id and training spec, so a retrained run is a new wandb run."""
    return hashlib.sha1(f"{run_id}:{fingerprint}".encode()).hexdigest()[:16]


def mode(w) -> str:
    """The wandb mode: an exported WANDB_MODE wins over the config's."""
    return os.environ.get("WANDB_MODE") or w.mode


def _environment(w, run_id: str, fingerprint: str) -> None:
    os.environ["WANDB_MODE"] = mode(w)
    os.environ["WANDB_PROJECT"] = w.project
    os.environ["WANDB_DIR"] = str(Path(w.dir).resolve())
    os.environ["WANDB_RUN_ID"] = wandb_id(run_id, fingerprint)
    os.environ["WANDB_RESUME"] = "allow"  # a resumed training job, and the evaluation step, continue the same run
    os.environ["WANDB_NAME"] = run_id
    Path(w.dir).mkdir(parents=True, exist_ok=True)
    if w.entity:
        os.environ["WANDB_ENTITY"] = w.entity


def wandb_setup(spec, fingerprint: str, total_params: int) -> list[str]:
    """The Trainer's report_to list; wandb's settings go through its environment variables."""
    if mode(spec.wandb) == "disabled":
        return []
    _environment(spec.wandb, spec.run_id, fingerprint)
    os.environ["WANDB_TAGS"] = ",".join(tags(spec, total_params))
    os.environ["WANDB_RUN_GROUP"] = group(spec, total_params)
    return ["wandb"]


def log_eval(spec, fingerprint: str, record: dict) -> None:
    """The evaluation's metrics (eval/<metric>) into the run's wandb run, beside its training curves."""
    if mode(spec.wandb) == "disabled":
        return
    import wandb

    _environment(spec.wandb, spec.run_id, fingerprint)
    run = wandb.init(id=os.environ["WANDB_RUN_ID"], resume="allow", project=spec.wandb.project, name=spec.run_id)
    found = {
        f"eval/{k}": v for k, v in record["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    for split, m in record["metrics"].get("splits", {}).items():
        found.update(
            {f"eval/{split}/{k}": v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
    run.log(found)
    run.summary.update(found)
    run.finish()


def log_health(spec, fingerprint: str, verdict: dict) -> None:
    """The run's health (peftlab.health) into its wandb run's summary, where wandb's runs table shows it."""
    if mode(spec.wandb) == "disabled":
        return
    import wandb

    run, ours = wandb.run, wandb.run is None
    if ours:  # the Trainer's run has ended: reopen it
        _environment(spec.wandb, spec.run_id, fingerprint)
        run = wandb.init(id=os.environ["WANDB_RUN_ID"], resume="allow", project=spec.wandb.project, name=spec.run_id)
    run.summary.update({"health": verdict["status"], "health_reasons": "; ".join(verdict["reasons"])})
    if ours:
        run.finish()
