"""What a method changes in each adapted layer: the frozen weight W and the update ΔW, both out × in, float32.

ΔW is the method's own delta over the frozen weight (for PiSSA, OLoRA and MiLoRA, whose
init moves part of W into the adapter: s·B·A over the residual, and W is the pretrained
weight W_res + s·B₀A₀). How it is read, by layer type:
- LoRA (and rsLoRA, LoRA+, QLoRA, PiSSA, OLoRA, MiLoRA): factors s·B and A;
- AdaLoRA: factors B and (A ⊙ E)·s / ranknum; VeRA: factors Λ_b B and Λ_d A;
- a custom method: its tuner layer's `delta_factors(adapter)` when it defines one (FLoRA,
  SVA), else `merged_weight` − W;
- every other peft layer (DoRA, IA3, LoHa, LoKr, OFT, BOFT, FourierFT, MiSS): the merged
  weight minus W, read off the layer itself: W' = (layer(I) − layer(0))ᵀ, in float32 on a
  float32 copy when the model is not float32 (W' − W in bfloat16 would be rounding noise);
- full fine-tuning: W − W₀ of every linear layer but the heads, W₀ kept on the CPU.
Factored deltas go through the low-rank SVD (peftlab.tracking.spectra); the others through a dense one.

Gradient roles: a trainable tensor belongs to the tuner layer that owns it, and its role is
the attribute it sits in (lora_A, lora_B, lora_magnitude_vector, ia3_l, a custom tuner's
`adapter_layer_names`); a classifier head trained in full is `head`; anything else (full
fine-tuning, prompt encoders) is its own tensor name (weight, bias, embedding).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

PREFIX = re.compile(r"^(base_model\.model\.)+")
DEPTH = re.compile(r"\.(\d+)\.")


def short(name: str) -> str:
    """A module path without peft's wrapper prefix: model.layers.3.self_attn.q_proj."""
    return PREFIX.sub("", name)


def depth(name: str) -> int | None:
    """The block index in a module path (the first number in it), None outside the blocks."""
    found = DEPTH.search(f".{name}.")
    return int(found.group(1)) if found else None


def frozen_weight(base: nn.Module) -> torch.Tensor:
    """A base layer's weight as out × in in float32: dequantised (QLoRA's 4-bit), GPT-2's Conv1D turned around."""
    from peft.utils.integrations import dequantize_module_weight

    w = dequantize_module_weight(base).detach().float()
    return w.T if isinstance(base, Conv1D) else w


def _identity_probe(layer: nn.Module, n_in: int, device) -> torch.Tensor:
    """The out × in weight a layer applies, read off its outputs on the identity: (layer(I) − layer(0))ᵀ, float32."""
    weight = layer.get_base_layer().weight if hasattr(layer, "get_base_layer") else layer.weight
    if weight.dtype != torch.float32:
        layer = copy.deepcopy(layer).float()
    training = layer.training
    layer.eval()  # dropout off
    eye = torch.eye(n_in, device=device, dtype=torch.float32)
    out = layer(eye) - layer(torch.zeros(1, n_in, device=device, dtype=torch.float32))
    layer.train(training)
    return out.T


@dataclass
class Layer:
    """One adapted layer: where it is, how its ΔW is read, and what the run started from."""

    name: str
    module: nn.Module
    adapter: str | None
    how: str  # lora | adalora | vera | custom | probe | full
    initial_factors: tuple[torch.Tensor, torch.Tensor] | None = None  # init_changes_base: (s·B₀, A₀)
    initial_weight: torch.Tensor | None = field(default=None, repr=False)  # full fine-tuning: W₀ (CPU)

    @property
    def depth(self) -> int | None:
        return depth(self.name)

    @property
    def kind(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    def base(self) -> nn.Module:
        return self.module if self.how == "full" else self.module.get_base_layer()

    @torch.no_grad()
    def weight(self) -> torch.Tensor:
        """The frozen weight the method adapts (the pretrained W for methods whose init moved part of it)."""
        w = frozen_weight(self.base())
        if self.initial_factors is not None:
            b0, a0 = self.initial_factors
            w = w + (b0 @ a0).to(w.device)
        return w

    @torch.no_grad()
    def pretrained(self) -> torch.Tensor:
        """The pretrained W the run started from: `weight()`, or W₀ for full fine-tuning, whose weight trains."""
        if self.how == "full":
            return self.initial_weight.to(self.module.weight.device)
        return self.weight()

    @torch.no_grad()
    def change(self) -> tuple[str, tuple]:
        """The change from the pretrained W: `update()` where the init moved part of W into the adapter, else
        `delta()`."""
        return self.update() or self.delta()

    @torch.no_grad()
    def delta(self) -> tuple[str, tuple]:
        """("factors", (B, A)) with ΔW = B A, or ("dense", (ΔW,)); float32, out × in."""
        m, a = self.module, self.adapter
        if self.how == "lora":
            return "factors", (m.lora_B[a].weight.float() * m.scaling[a], m.lora_A[a].weight.float())
        if self.how == "adalora":
            scale = m.scaling[a] / (float(m.ranknum[a]) + 1e-5)
            return "factors", (m.lora_B[a].float(), (m.lora_A[a] * m.lora_E[a]).float() * scale)
        if self.how == "vera":
            b = m.vera_B[a][: m.out_features, :].float() * m.vera_lambda_b[a].float()[:, None]
            return "factors", (b, m.vera_A[a][:, : m.in_features].float() * m.vera_lambda_d[a].float()[:, None])
        if self.how == "custom":
            if hasattr(m, "delta_factors"):
                return "factors", m.delta_factors(a)
            w = frozen_weight(self.base())
            return "dense", (m.merged_weight(a, w, None)[0] - w,)
        if self.how == "full":
            return "dense", (frozen_weight(m) - self.initial_weight.to(m.weight.device),)
        w = frozen_weight(self.base())
        return "dense", (_identity_probe(m, w.shape[1], w.device) - w,)

    @torch.no_grad()
    def update(self) -> tuple[str, tuple] | None:
        """ΔW − ΔW₀ as factors [B, −B₀] [A; A₀], for methods whose init changed the base (None for the others: it is
        ΔW)."""
        if self.initial_factors is None:
            return None
        b, a = self.delta()[1]
        b0, a0 = (x.to(b.device) for x in self.initial_factors)
        return "factors", (torch.cat([b, -b0], 1), torch.cat([a, a0], 0))


def _how(module: nn.Module) -> str | None:
    """How a tuner layer's ΔW is read, or None for a layer that is not a linear map (an embedding's LoRA)."""
    from peft.tuners.adalora import AdaLoraLayer
    from peft.tuners.lora import LoraLayer
    from peft.tuners.vera import VeraLayer

    from peftlab.methods.tuner import LinearTunerLayer

    if isinstance(module, LinearTunerLayer):
        return "custom"
    base = module.get_base_layer()
    if not (
        isinstance(base, (nn.Linear, Conv1D))
        or hasattr(base, "weight")
        and base.weight.ndim == 2
        and hasattr(base, "in_features")
    ):
        return None
    if isinstance(module, AdaLoraLayer):
        return "adalora"
    if isinstance(module, LoraLayer):
        a = module.active_adapters[0]
        if a in module.lora_A and not module.use_dora.get(a, False):
            return "lora"
        return "probe"
    if isinstance(module, VeraLayer):
        return "vera"
    return "probe"


def adapted(model, full: bool = False, init_changes_base: bool = False) -> list[Layer]:
    """Every adapted linear layer of a peft model (every linear layer but the heads, with `full`), as it is now.

    Call it before training starts: with `init_changes_base` it keeps the initial factors
    (the pretrained W is the residual plus them), and with `full` the initial weights.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    from peftlab.methods.targets import HEADS

    layers = []
    for name, module in model.named_modules():
        if full:
            if isinstance(module, (nn.Linear, Conv1D)) and name.rsplit(".", 1)[-1] not in HEADS:
                layers.append(
                    Layer(short(name), module, None, "full", initial_weight=frozen_weight(module).to("cpu", copy=True))
                )
            continue
        if not isinstance(module, BaseTunerLayer) or not module.active_adapters or (how := _how(module)) is None:
            continue
        layer = Layer(short(name), module, module.active_adapters[0], how)
        if init_changes_base and how == "lora":
            layer.initial_factors = tuple(x.clone() for x in layer.delta()[1])
        layers.append(layer)
    return layers


def roles(model) -> dict[str, tuple[str, str]]:
    """{parameter name: (layer, role)} for every trainable tensor (see the module docstring)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    owners = {name: module for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            if ".".join(parts[:i]) in owners:
                out[name] = (short(".".join(parts[:i])), parts[i])
                break
        else:
            if "modules_to_save" in parts:
                out[name] = (short(".".join(parts[: parts.index("modules_to_save")])), "head")
            else:
                out[name] = (short(".".join(parts[:-1])), parts[-1])
    return out
