"""The spectral quantities of one update ΔW against its frozen weight W. Pure torch, no model.

ΔW comes either as factors B (m×r) and A (r×n), ΔW = B A, or as a dense m×n matrix.
Its thin SVD U S Vᵀ is computed the cheap way when it is low-rank: with B = Q_b R_b and
Aᵀ = Q_a R_a (QR), ΔW = Q_b (R_b R_aᵀ) Q_aᵀ, so the SVD of the r×r core gives ΔW's, at a
cost of about (m+n)·r² instead of m·n·min(m, n).

From U, S, V (`quantities`):
- fro_norm ‖ΔW‖_F, rel_norm ‖ΔW‖_F / ‖W‖_F, spectral_norm s₁;
- numerical_rank: singular values above s₁ · max(m, n) · eps(float32) (numpy's matrix_rank rule);
- effective_rank: exp of the entropy of p = s / Σs over the non-zero spectrum (Roy & Vetterli);
- stable_rank: ‖ΔW‖_F² / s₁²; condition_number: s₁ / the smallest non-zero singular value;
- align_{top,bottom}_{left,right}: the share of ‖ΔW‖_F² that lies in W's top-k (or bottom-k)
  left (or right) singular subspace, ‖U_kᵀ ΔW‖_F² / ‖ΔW‖_F²; align_top and align_bottom
  average left and right. PiSSA's initial ΔW lies in the top-r subspace, MiLoRA's in the bottom-r;
- sv_1 … sv_n: the largest singular values.

A zero ΔW (LoRA's B₀ = 0) has norms, ranks and singular values 0; its alignments and
condition number are undefined and are left out, never written as NaN.

Intruder dimensions (`intruder_similarity`, `intruders`), after Shuttleworth et al., "LoRA vs Full
Fine-tuning: An Illusion of Equivalence" (arXiv 2410.21228): a left singular vector y_j among the
top k of the fine-tuned weight W' = W + ΔW is an intruder when max_i |cos(y_j, x_i)| < ε over every
left singular vector x_i of W. The defaults k = 10 and ε = 0.5 are the authors' (their released
find_intruder_dimensions.py: the top 10 vectors, `--intruder_dimension_threshold=0.5`; peft's
`reduce_intruder_dimension` takes the same top_k=10 and threshold_epsilon=0.5). Left vectors, as
theirs: W is out × in here for every layer type (GPT-2's Conv1D turned around), so they span the
output space, the one a low-rank update B·A writes new directions into (B's columns). W' is full
rank, so there is no low-rank shortcut to its SVD: a factored ΔW is only added to W without
forming B·A separately, and W's and W''s thin SVDs are taken in full (torch.linalg.svd).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EPS = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class Basis:
    """W's top-k and bottom-k singular subspaces (columns), its spectrum and its Frobenius norm: computed once per
    layer."""

    top_u: torch.Tensor  # m×k
    top_v: torch.Tensor  # n×k
    bottom_u: torch.Tensor  # m×k
    bottom_v: torch.Tensor  # n×k
    s: torch.Tensor  # every singular value of W, descending
    norm: float

    @property
    def k(self) -> int:
        return self.top_u.shape[1]


@torch.no_grad()
def basis(weight: torch.Tensor, k: int) -> Basis:
    """W (m×n) -> its Basis for subspaces of dimension k (at most min(m, n))."""
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    k = min(k, s.numel())
    return Basis(
        top_u=u[:, :k].contiguous(),
        top_v=vh[:k].T.contiguous(),
        bottom_u=u[:, -k:].contiguous(),
        bottom_v=vh[-k:].T.contiguous(),
        s=s,
        norm=float(torch.linalg.vector_norm(s)),
    )


def moved(w: Basis, device) -> Basis:
    return Basis(*(getattr(w, f).to(device) for f in ("top_u", "top_v", "bottom_u", "bottom_v", "s")), norm=w.norm)


@torch.no_grad()
def svd_factored(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD (U, S, V) of ΔW = B A from its factors, without forming ΔW: two QRs and an r×r SVD."""
    qb, rb = torch.linalg.qr(b.float())
    qa, ra = torch.linalg.qr(a.float().T)
    uc, s, vch = torch.linalg.svd(rb @ ra.T)
    return qb @ uc, s, qa @ vch.T


@torch.no_grad()
def svd_dense(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD (U, S, V) of a dense ΔW."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    return u, s, vh.T


def _share(basis_cols: torch.Tensor, vecs: torch.Tensor, s2: torch.Tensor, energy: torch.Tensor) -> float:
    """Share of the energy Σ s_i² that lies in span(basis_cols): Σ_i s_i² ‖basis_colsᵀ vec_i‖² / Σ s_i²."""
    proj = (basis_cols.T @ vecs).square().sum(0)
    return float((proj * s2).sum() / energy)


@torch.no_grad()
def quantities(
    u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, w: Basis, shape: tuple[int, int], top: int
) -> dict[str, float]:
    """The spectral record of one ΔW (thin SVD u, s, v; shape m×n) against its weight's Basis `w`."""
    s = s.float()
    s1 = float(s.max()) if s.numel() else 0.0
    out = {"fro_norm": float(torch.linalg.vector_norm(s)), "spectral_norm": s1}
    out["rel_norm"] = out["fro_norm"] / w.norm if w.norm > 0 else 0.0
    nonzero = s[s > s1 * max(shape) * EPS] if s1 > 0 else s[:0]
    out["numerical_rank"] = float(nonzero.numel())
    if nonzero.numel():
        p = nonzero / nonzero.sum()
        out["effective_rank"] = math.exp(float(-(p * p.log()).sum()))
        out["stable_rank"] = float(nonzero.square().sum()) / s1**2
        out["condition_number"] = s1 / float(nonzero.min())
        s2 = s.square()
        energy = s2.sum()
        out["align_top_left"] = _share(w.top_u, u, s2, energy)
        out["align_top_right"] = _share(w.top_v, v, s2, energy)
        out["align_bottom_left"] = _share(w.bottom_u, u, s2, energy)
        out["align_bottom_right"] = _share(w.bottom_v, v, s2, energy)
        out["align_top"] = (out["align_top_left"] + out["align_top_right"]) / 2
        out["align_bottom"] = (out["align_bottom_left"] + out["align_bottom_right"]) / 2
    else:
        out["effective_rank"] = out["stable_rank"] = 0.0
    values = torch.sort(s, descending=True).values[:top].tolist()
    out.update({f"sv_{i + 1}": x for i, x in enumerate(values)})
    return out


def _tuned(weight: torch.Tensor, delta) -> torch.Tensor:
    """W' = W + ΔW in float32, ΔW dense or factors (B, A)."""
    w = weight.float()
    if isinstance(delta, (tuple, list)):
        b, a = delta
        return torch.addmm(w, b.float(), a.float())
    return w + delta.float()


@torch.no_grad()
def intruder_similarity(weight: torch.Tensor, delta, k: int) -> torch.Tensor:
    """max_i |cos(y_j, x_i)| for each of the top-k left singular vectors y_j of W' = W + ΔW (most significant
    first) over every left singular vector x_i of W (m × n). `delta`: ΔW (m × n) or its factors (B, A)."""
    x = torch.linalg.svd(weight.float(), full_matrices=False).U
    y = torch.linalg.svd(_tuned(weight, delta), full_matrices=False).U[:, :k]
    return (y.T @ x).abs().amax(dim=1)


def intruders(weight: torch.Tensor, delta, k: int, threshold: float) -> int:
    """How many of the top-k left singular vectors of W + ΔW are intruder dimensions: below `threshold` in
    `intruder_similarity` (see the module docstring)."""
    return int((intruder_similarity(weight, delta, k) < threshold).sum())
