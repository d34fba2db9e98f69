"""Bottleneck adapters (Houlsby et al. 2019), the "Adapters" method of the finetune_leveling seed.

After the output projection of each attention and MLP block, before the residual
add: h' = h + W_up σ(W_down h + b_down) + b_up, with a bottleneck of
`bottleneck_size` (options, default 64). W_up and b_up start at zero, so the
adapter starts as the identity. Nonlinear, so it cannot be merged into W.
Trainable parameters: 2 d s + s + d per adapted layer (d = hidden size, s = bottleneck).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.methods import tuner
from peftlab.methods.base import Context
from peftlab.spec import PeftSpec

ACTIVATIONS = {"relu": torch.relu, "gelu": nn.functional.gelu, "silu": nn.functional.silu, "tanh": torch.tanh}
# the output projections of attention and MLP blocks, by model type (used when no target_modules are given)
BLOCK_OUTPUTS = {
    **dict.fromkeys(["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"], ["o_proj", "down_proj"]),
    **dict.fromkeys(["bert", "roberta", "xlm-roberta", "electra"], ["output.dense"]),
    **dict.fromkeys(["t5", "mt5"], ["o", "wo"]),
    "bart": ["out_proj", "fc2"],
}


@dataclass
class BottleneckConfig(tuner.LinearTunerConfig):
    peft_name = "bottleneck"
    bottleneck_size: int = field(default=64, metadata={"help": "width of the bottleneck"})
    activation: str = field(default="gelu", metadata={"help": f"one of {sorted(ACTIVATIONS)}"})

    def __post_init__(self):
        super().__post_init__()
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"adapter: activation {self.activation!r}; allowed: {', '.join(sorted(ACTIVATIONS))}")


class BottleneckLayer(tuner.LinearTunerLayer):
    adapter_layer_names = ("bottleneck_down", "bottleneck_down_bias", "bottleneck_up", "bottleneck_up_bias")

    def init_adapter(self, weight, config):
        d, s = weight.shape[0], config.bottleneck_size
        down = torch.empty(s, d)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        self.activation = ACTIVATIONS[config.activation]
        return {
            "bottleneck_down": down,
            "bottleneck_down_bias": torch.zeros(s),
            "bottleneck_up": torch.zeros(d, s),
            "bottleneck_up_bias": torch.zeros(d),
        }

    def adapt_output(self, a, x, y):
        p = lambda n: self.param(n, a, y)  # noqa: E731
        hidden = self.activation(nn.functional.linear(y, p("bottleneck_down"), p("bottleneck_down_bias")))
        return y + nn.functional.linear(hidden, p("bottleneck_up"), p("bottleneck_up_bias"))


tuner.register(BottleneckConfig, BottleneckLayer, target_module_mapping=BLOCK_OUTPUTS)


def build(p: PeftSpec, ctx: Context, **fixed) -> BottleneckConfig:
    return BottleneckConfig(**{"target_modules": ctx.targets, "task_type": ctx.task_type, **fixed, **p.options})
