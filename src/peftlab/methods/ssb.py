"""SSB: subspace scaling on both sides (Si et al., arXiv 2407.05417; see ssl.py).

W' = D₁ W D₂ with D₁ = diag(d₁), D₂ = diag(d₂) trainable, both 1 at init: the
frozen weight's output and input features each get a learned scale.
Trainable parameters: out_features + in_features per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from peftlab.methods import tuner
from peftlab.methods.base import Context
from peftlab.methods.ssl import _bias
from peftlab.spec import PeftSpec


@dataclass
class SsbConfig(tuner.LinearTunerConfig):
    peft_name = "ssb"


class SsbLayer(tuner.LinearTunerLayer):
    adapter_layer_names = ("ssb_left", "ssb_right")

    def init_adapter(self, weight, config):
        return {"ssb_left": torch.ones(weight.shape[0]), "ssb_right": torch.ones(weight.shape[1])}

    def adapt_input(self, a, x):  # W D₂ x = W (d₂ ⊙ x)
        return x * self.param("ssb_right", a, x)

    def adapt_output(self, a, x, y):
        d, b = self.param("ssb_left", a, y), _bias(self, y)
        return d * y if b is None else d * (y - b) + b

    def merged_weight(self, a, weight, bias):
        return self.ssb_left[a].float()[:, None] * weight * self.ssb_right[a].float()[None, :], bias


tuner.register(SsbConfig, SsbLayer)


def build(p: PeftSpec, ctx: Context, **fixed) -> SsbConfig:
    return SsbConfig(**{"target_modules": ctx.targets, "task_type": ctx.task_type, **fixed, **p.options})
