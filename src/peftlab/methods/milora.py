"""MiLoRA (Wang et al. 2024): LoRA initialised from the *minor* singular components, the mirror of PiSSA.

With W = U Σ Vᵀ and the r smallest singular triplets (U_r, Σ_r, V_r):
B = U_r √Σ_r, A = √Σ_r V_rᵀ (each divided by √scaling, as peft does for PiSSA), and the
frozen residual W_res = W − scaling · B A. Training starts exactly at the base model and
updates the subspace the pretrained weight uses least.

It is a LoRA adapter in every other respect: saved as a plain rank-2r LoRA
(Delta = BA − B₀A₀, like PiSSA), which loads onto the untouched base with peft alone.
"""

from __future__ import annotations

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

from peftlab.methods.base import Context
from peftlab.methods.peft_builtin import lora
from peftlab.spec import PeftSpec


def build(p: PeftSpec, ctx: Context, **fixed) -> LoraConfig:
    return lora(p, ctx, init_lora_weights=True, **fixed)


@torch.no_grad()
def minor_init(weight: torch.Tensor, r: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, B, W_res) from the r smallest singular triplets of `weight` (out × in)."""
    if r > min(weight.shape):
        raise ValueError(f"milora: r={r} exceeds min(out, in) = {min(weight.shape)} of a {tuple(weight.shape)} layer")
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    root = torch.sqrt(s[-r:] / scaling)
    a = root[:, None] * vh[-r:]
    b = u[:, -r:] * root[None, :]
    return a, b, weight.float() - scaling * b @ a


@torch.no_grad()
def initialise(model) -> None:
    """Re-initialise every LoRA layer of `model` (just built by peft) the MiLoRA way."""
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        transposed = getattr(module, "fan_in_fan_out", False)  # GPT-2's Conv1D stores W as in × out
        for name in module.lora_A:
            a, b, residual = minor_init(
                base.weight.T if transposed else base.weight, module.r[name], module.scaling[name]
            )
            module.lora_A[name].weight.copy_(a)
            module.lora_B[name].weight.copy_(b)
            base.weight.copy_((residual.T if transposed else residual).to(base.weight.dtype))
