"""BitFit (Ben Zaken et al. 2022): train only the biases.

Every targeted linear layer (default: all of them but the head) gets a trainable
bias shift δ, zero at init: y = W x + b + δ. A layer without a bias (Llama,
Qwen) gets one this way, so BitFit works on bias-free architectures too.
Merging folds δ into b; where the base layer had no bias, the merged model gets one
(see peftlab.merge for how its config is told). Trainable parameters: out_features per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from peftlab.methods import tuner
from peftlab.methods.base import Context
from peftlab.spec import PeftSpec


@dataclass
class BitfitConfig(tuner.LinearTunerConfig):
    peft_name = "bitfit"


class BitfitLayer(tuner.LinearTunerLayer):
    adapter_layer_names = ("bitfit_bias",)

    def init_adapter(self, weight, config):
        return {"bitfit_bias": torch.zeros(weight.shape[0])}

    def adapt_output(self, a, x, y):
        return y + self.param("bitfit_bias", a, y)

    def merged_weight(self, a, weight, bias):
        delta = self.bitfit_bias[a].float()
        return weight, delta if bias is None else bias + delta


tuner.register(BitfitConfig, BitfitLayer)


def build(p: PeftSpec, ctx: Context, **fixed) -> BitfitConfig:
    return BitfitConfig(**{"target_modules": ctx.targets, "task_type": ctx.task_type, **fixed, **p.options})


# config flags that give a whole group of a bias-free architecture's linear layers a bias
BIAS_FLAGS = {
    "attention_bias": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp_bias": ("gate_proj", "up_proj", "down_proj"),
}


@torch.no_grad()
def declare_biases(model) -> None:
    """After merging into a bias-free architecture (Llama, Qwen3): switch on the config flag of every
    layer group that gained a bias, and give the group's other layers a zero bias, so the saved
    merged model loads with its biases. An architecture without such flags fails the merge's reload check."""
    for flag, names in BIAS_FLAGS.items():
        if getattr(model.config, flag, True):
            continue
        layers = [m for n, m in model.named_modules() if n.split(".")[-1] in names and isinstance(m, torch.nn.Linear)]
        if any(layer.bias is not None for layer in layers):
            for layer in layers:
                if layer.bias is None:
                    layer.bias = torch.nn.Parameter(
                        torch.zeros(layer.out_features, dtype=layer.weight.dtype), requires_grad=False
                    )
            setattr(model.config, flag, True)
