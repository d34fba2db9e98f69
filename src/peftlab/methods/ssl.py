"""SSL: subspace scaling on the left (Si et al., "See Further for Parameter Efficient
Fine-tuning by Standing on the Shoulders of Decomposition", arXiv 2407.05417).

W' = D₁ W with D₁ = diag(d₁) trainable, d₁ = 1 at init: every output feature of
the frozen weight gets a learned scale. Trainable parameters: out_features per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from peftlab.methods import tuner
from peftlab.methods.base import Context
from peftlab.spec import PeftSpec


@dataclass
class SslConfig(tuner.LinearTunerConfig):
    peft_name = "ssl"


def _bias(layer, like):
    b = layer.get_base_layer().bias
    return None if b is None else b.to(like.dtype)


class SslLayer(tuner.LinearTunerLayer):
    adapter_layer_names = ("ssl_left",)

    def init_adapter(self, weight, config):
        return {"ssl_left": torch.ones(weight.shape[0])}

    def adapt_output(self, a, x, y):  # D₁ (W x) + b = d₁ ⊙ (y − b) + b
        d, b = self.param("ssl_left", a, y), _bias(self, y)
        return d * y if b is None else d * (y - b) + b

    def merged_weight(self, a, weight, bias):
        return self.ssl_left[a].float()[:, None] * weight, bias


tuner.register(SslConfig, SslLayer)


def build(p: PeftSpec, ctx: Context, **fixed) -> SslConfig:
    return SslConfig(**{"target_modules": ctx.targets, "task_type": ctx.task_type, **fixed, **p.options})
