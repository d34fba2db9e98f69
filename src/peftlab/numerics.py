"""Tolerances for comparing float32 outputs computed two ways, scaled to what they compare.

Two computations of the same logits (an adapter in memory and the same adapter
reloaded; an adapter model and its merged copy) round differently: the sums run in
another order, a low-rank product is folded into a dense weight, and the CPU kernel
torch picks (AVX2, AVX512, AVX512-BF16, AMX) changes the last bits. Such rounding
grows with the size of the numbers involved, so a fixed absolute bound such as 1e-5
passes on one CPU and fails on another (a PiSSA reload measured 1.13e-05 on an AMD
CPU with AVX512-BF16, 9.3e-06 under ATEN_CPU_CAPABILITY=avx2).

Every check here is therefore `ulps` float32 epsilons of the largest |logit| (at
least 1, so logits near zero keep an absolute floor): 256 epsilons is about 3e-5 of
the logits' scale, a hundred times above the rounding measured on any CPU here and
four orders of magnitude below what a wrong reload or merge gives (0.3 to 0.7 for an
unconverted PiSSA adapter). A NaN or an infinity never passes.
"""

from __future__ import annotations

import math

import torch

EPS = torch.finfo(torch.float32).eps  # 1.19e-07
RELOAD_ULPS = 256  # saved adapter, reloaded onto the untouched base, against the model in memory
MERGE_ULPS = 1024  # merged model, saved and reloaded, against the adapter model: the weights themselves were rewritten


def tolerance(reference: torch.Tensor, ulps: float) -> float:
    """The largest difference two float32 computations of `reference` may show: `ulps` epsilons of its scale."""
    scale = reference.abs().max().item() if reference.numel() else 0.0
    return ulps * EPS * max(scale, 1.0)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b|; NaN if either holds a NaN or an infinity (so `within` fails)."""
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.nan
    return (a - b).abs().max().item()


def within(diff: float, tol: float) -> bool:
    """diff <= tol, and false for NaN (where `diff > tol` would quietly be false too)."""
    return math.isfinite(diff) and diff <= tol


def finite(x) -> bool:
    """Whether a float, or every element of a tensor, is finite."""
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all())
    return x is not None and math.isfinite(x)
