"""FLoRA for 2-D weights (Si et al., arXiv 2405.14739): a low-rank update with a trainable core.

ΔW = (α/r) A M B with A ∈ R^{d×r}, M ∈ R^{r×r}, B ∈ R^{r×k}. A and B start random
(LoRA's Kaiming-uniform init), the core M starts at zero, so ΔW₀ = 0; all three train.
Trainable parameters: r (d + k) + r² per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.methods import tuner
from peftlab.methods.base import Context
from peftlab.spec import PeftSpec


@dataclass
class FloraConfig(tuner.LinearTunerConfig):
    peft_name = "flora"
    r: int = field(default=8, metadata={"help": "rank of the core space"})
    alpha: float = field(default=8.0, metadata={"help": "the update is scaled by alpha / r"})


class FloraLayer(tuner.LinearTunerLayer):
    adapter_layer_names = ("flora_A", "flora_M", "flora_B")
    other_param_names = ("flora_scaling",)

    def init_adapter(self, weight, config):
        d, k = weight.shape
        a, b = torch.empty(d, config.r), torch.empty(config.r, k)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        nn.init.kaiming_uniform_(b, a=math.sqrt(5))
        core = torch.zeros(config.r, config.r) if config.init_weights else torch.randn(config.r, config.r) * 0.02
        return {"flora_A": a, "flora_M": core, "flora_B": b, "flora_scaling": torch.tensor(config.alpha / config.r)}

    def adapt_output(self, a, x, y):
        low = x @ self.param("flora_B", a, x).T @ self.param("flora_M", a, x).T @ self.param("flora_A", a, x).T
        return y + self.param("flora_scaling", a, x) * low

    def delta_factors(self, a):  # ΔW = (s A M) B: its rank-r factors, for peftlab.tracking
        return self.flora_scaling[a].float() * self.flora_A[a].float() @ self.flora_M[a].float(), self.flora_B[
            a
        ].float()

    def merged_weight(self, a, weight, bias):
        delta = self.flora_A[a].float() @ self.flora_M[a].float() @ self.flora_B[a].float()
        return weight + self.flora_scaling[a].float() * delta, bias


tuner.register(FloraConfig, FloraLayer)


def build(p: PeftSpec, ctx: Context, **fixed) -> FloraConfig:
    return FloraConfig(
        **{
            "r": p.r,
            "alpha": p.lora_alpha,
            "target_modules": ctx.targets,
            "task_type": ctx.task_type,
            **fixed,
            **p.options,
        }
    )
