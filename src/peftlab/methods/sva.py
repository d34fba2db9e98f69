"""SVA: singular-value adjustment (PEFT Playground seed).

Take the SVD W = U Σ Vᵀ of each frozen weight and train only a shift δ of its
top-r singular values: W' = W + U_r diag(δ) V_rᵀ, δ₀ = 0. U_r and V_r are saved
with the adapter, so it reloads onto the untouched base without a new SVD.
Trainable parameters: r per adapted layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from peftlab.methods import tuner
from peftlab.methods.base import Context
from peftlab.spec import PeftSpec


@dataclass
class SvaConfig(tuner.LinearTunerConfig):
    peft_name = "sva"
    r: int = field(default=8, metadata={"help": "number of top singular values to adjust"})


class SvaLayer(tuner.LinearTunerLayer):
    adapter_layer_names = ("sva_delta",)
    other_param_names = ("sva_U", "sva_Vh")

    def init_adapter(self, weight, config):
        if config.r > min(weight.shape):
            raise ValueError(
                f"sva: r={config.r} exceeds min(out, in) = {min(weight.shape)} of a {tuple(weight.shape)} layer"
            )
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        return {
            "sva_delta": torch.zeros(config.r),
            "sva_U": u[:, : config.r].contiguous(),
            "sva_Vh": vh[: config.r].contiguous(),
        }

    def adapt_output(self, a, x, y):
        coords = x @ self.param("sva_Vh", a, x).T  # (..., r): the input in the top right-singular basis
        return y + (coords * self.param("sva_delta", a, x)) @ self.param("sva_U", a, x).T

    def delta_factors(self, a):  # ΔW = (U diag(δ)) Vᵀ: its rank-r factors, for peftlab.tracking
        return self.sva_U[a].float() * self.sva_delta[a].float(), self.sva_Vh[a].float()

    def merged_weight(self, a, weight, bias):
        u, delta, vh = (getattr(self, n)[a].float() for n in ("sva_U", "sva_delta", "sva_Vh"))
        return weight + (u * delta) @ vh, bias


tuner.register(SvaConfig, SvaLayer)


def build(p: PeftSpec, ctx: Context, **fixed) -> SvaConfig:
    return SvaConfig(**{"r": p.r, "target_modules": ctx.targets, "task_type": ctx.task_type, **fixed, **p.options})
