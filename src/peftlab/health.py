"""Did a training run learn? Its health, from the logged losses, the gradient norms and how far its weights moved.

A run that exits 0 is not a run that learned: at a learning rate of 1e30 RMSNorm keeps a
Llama's loss finite while every gradient is zero, and at 1e4 the loss climbs and stays up.
`assess` names what happened, worst first:

- `diverged`: the loss or gradient norm stopped being finite (training stops there:
  peftlab.train.Diverged; a search run records it as its candidate's result);
- `collapsed`: the gradient norm was zero, or below COLLAPSED_GRAD x the norm of the trainable
  weights, for COLLAPSED_LOGS logging intervals in a row;
- `blew up`: the final loss is above where it started by more than the margin, or it climbed
  back more than REBOUND of what it had fallen from its lowest (smoothed) point;
- `no learning`: the final loss is not below the first by more than the margin, or the
  trainable weights moved less than STILL of their norm from their initialisation;
- `ok`: none of these.

The series compared is the logged training loss (a rewarded task's mean reward, negated, since
GRPO's loss is not a learning signal). "Where it started" is the first logged value; the final
value is the mean of the last quarter of the logs (at least one). The margin is the larger of
MIN_CHANGE of the start and NOISE_Z standard errors of the difference, the noise of one logged
value estimated from successive differences (the von Neumann estimator, which a smooth trend
does not inflate). Fewer than MIN_LOGS logged values judge nothing from the loss (the record
says so); the weights' movement and the gradient norms are judged all the same.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

OK, COLLAPSED, BLEW_UP, NO_LEARNING, DIVERGED = "ok", "collapsed", "blew up", "no learning", "diverged"
FLAGS = (DIVERGED, COLLAPSED, BLEW_UP, NO_LEARNING)  # worst first: a run's status is its worst flag
ON_DEGENERATE = ("warn", "fail")  # training.on_degenerate: keep a flagged run, or fail its training job
MIN_LOGS = 4
MIN_CHANGE = 0.01
NOISE_Z = 2.0
REBOUND = 0.5
COLLAPSED_GRAD = 1e-8
COLLAPSED_LOGS = 3
STILL = 1e-6
SAMPLE = 4096  # elements of each trainable tensor kept to measure how far it moved

THRESHOLDS = {
    "min_logs": MIN_LOGS,
    "min_change": MIN_CHANGE,
    "noise_z": NOISE_Z,
    "rebound": REBOUND,
    "collapsed_grad": COLLAPSED_GRAD,
    "collapsed_logs": COLLAPSED_LOGS,
    "still": STILL,
}


class Degenerate(RuntimeError):
    """A run `assess` flagged, under `training.on_degenerate: fail`."""


def flagged(status: str | None) -> bool:
    """Whether a recorded health is a flag (a record from before peftlab judged health is not)."""
    return status in FLAGS


def _noise(values: list[float]) -> float:
    """The standard deviation of one logged value around its trend (successive differences / √2)."""
    if len(values) < 3:
        return 0.0
    diffs = [b - a for a, b in zip(values, values[1:])]
    return math.sqrt(sum(d * d for d in diffs) / (2 * len(diffs)))


def _smoothed(values: list[float], w: int) -> list[float]:
    return [sum(values[i : i + w]) / w for i in range(len(values) - w + 1)]


def _longest_run(flags: list[bool]) -> int:
    best = now = 0
    for f in flags:
        now = now + 1 if f else 0
        best = max(best, now)
    return best


def assess(
    values: list[float],
    grad_norms: list[float | None],
    moved: float | None,
    weight_norm: float | None,
    name: str = "loss",
) -> dict:
    """A run's health from its logged series (lower is better), the gradient norm at each log,
    its weights' relative movement from initialisation and their norm (see the module's docstring).

    Returns {"status", "flags", "reasons", "measures", "thresholds"}; `reasons` says, for each
    flag, what was seen, in numbers.
    """
    flags, reasons, measures = [], [], {"logged": len(values), "weights_moved": moved}
    numbers = [*values, *(g for g in grad_norms if g is not None), *(x for x in (moved, weight_norm) if x is not None)]
    if any(not math.isfinite(v) for v in numbers):
        flags.append(DIVERGED)
        reasons.append("a logged loss, a gradient norm or a trainable weight is not finite")
        measures["weights_moved"] = None if moved is None or not math.isfinite(moved) else moved
    grads = [g for g in grad_norms if g is not None]
    if grads and weight_norm is not None and math.isfinite(weight_norm):
        floor = COLLAPSED_GRAD * max(weight_norm, 1.0)
        longest = _longest_run([g <= floor for g in grads])
        measures["vanished_grad_logs"] = longest
        if longest >= COLLAPSED_LOGS:
            flags.append(COLLAPSED)
            reasons.append(
                f"the gradient norm was {'0' if min(grads) == 0 else f'<= {floor:.2g}'} for {longest} logged "
                "intervals in a row"
            )
    if len(values) >= MIN_LOGS and all(math.isfinite(v) for v in values):
        w = max(1, len(values) // 4)
        start, final = values[0], sum(values[-w:]) / w
        lowest = min(_smoothed(values, w))
        margin = max(MIN_CHANGE * abs(start), NOISE_Z * _noise(values) * math.sqrt(1 + 1 / w))
        measures.update(start=start, final=final, lowest=lowest, margin=margin)
        if final - start > margin:
            flags.append(BLEW_UP)
            reasons.append(f"the {name} rose from {start:.4g} to {final:.4g} (margin {margin:.2g})")
        elif final - lowest > max(margin, REBOUND * (start - lowest)):
            flags.append(BLEW_UP)
            reasons.append(
                f"the {name} climbed back from its lowest {lowest:.4g} to {final:.4g}, having started at {start:.4g}"
            )
        elif start - final <= margin:
            flags.append(NO_LEARNING)
            reasons.append(
                f"the {name} went from {start:.4g} to {final:.4g}, not down by more than the margin {margin:.2g}"
            )
    elif len(values) < MIN_LOGS:
        measures["unjudged"] = (
            f"{len(values)} logged value(s), {MIN_LOGS} needed to judge the loss: lower training.logging_steps"
        )
    if moved is not None and math.isfinite(moved) and moved < STILL:
        flags.append(NO_LEARNING)
        reasons.append(f"the trainable weights moved {moved:.2g} of their norm from their initialisation")
    flags = [f for f in FLAGS if f in flags]  # worst first, each once
    return {
        "status": flags[0] if flags else OK,
        "flags": flags,
        "reasons": reasons,
        "measures": measures,
        "thresholds": THRESHOLDS,
    }


def from_history(
    log_history: list[dict], moved: float | None, weight_norm: float | None, rewarded: bool = False
) -> dict:
    """`assess` on a Trainer's log history: the losses (a rewarded run's rewards, negated) and the gradient norms logged
    with them."""
    key = "reward" if rewarded else "loss"
    logs = [e for e in log_history if key in e]
    values = [-e[key] if rewarded else e[key] for e in logs]
    return assess(
        values, [e.get("grad_norm") for e in logs], moved, weight_norm, "negated mean reward" if rewarded else "loss"
    )


class Movement:
    """How far training moves the trainable weights: a fixed sample of each trainable tensor
    (every k-th element, at most SAMPLE) taken at initialisation, compared at the end.

    Take it before a checkpoint is loaded: a resumed run's weights start from the seed's
    initialisation like a fresh run's, so the movement counts from the same place.
    """

    def __init__(self, model: torch.nn.Module):
        self.params = [p for p in model.parameters() if p.requires_grad and p.numel()]
        self.before = [self._sample(p) for p in self.params]

    @staticmethod
    def _sample(p: torch.Tensor) -> torch.Tensor:
        flat = p.detach().reshape(-1)
        return flat[:: max(1, flat.numel() // SAMPLE)][:SAMPLE].double().cpu().clone()

    def moved(self) -> float | None:
        """‖θ − θ₀‖ / ‖θ₀‖ over the sample (against ‖θ‖ where every sampled weight started at 0)."""
        if not self.params:
            return None
        after = [self._sample(p) for p in self.params]
        change = math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in zip(after, self.before)))
        scale = math.sqrt(sum(float(b.pow(2).sum()) for b in self.before)) or math.sqrt(
            sum(float(a.pow(2).sum()) for a in after)
        )
        return change / scale if scale else 0.0

    def norm(self) -> float:
        """The norm of every trainable weight, now."""
        return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in self.params))


def summary(health: dict | None) -> str:
    """One line for a log, the status and the tables: the status and what was seen."""
    if not health:
        return "not judged (recorded before peftlab judged run health)"
    return health["status"] + (": " + "; ".join(health["reasons"]) if health["reasons"] else "")
