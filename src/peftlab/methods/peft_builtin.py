"""Builders for the methods peft already has: each maps a run's PeftSpec onto a peft config.

`options` in the spec are passed to the peft config unchanged, so any peft
argument is reachable from YAML; the defaults here are the ones a method needs
to be comparable at a given `r`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from peft import (
    AdaLoraConfig,
    BOFTConfig,
    FourierFTConfig,
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    MissConfig,
    OFTConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    VeraConfig,
)

from peftlab.methods.base import Context
from peftlab.methods.targets import HEADS
from peftlab.spec import PeftSpec


def _targets(ctx: Context) -> dict:
    return {"target_modules": ctx.targets, "task_type": ctx.task_type}


def lora(p: PeftSpec, ctx: Context, **fixed) -> LoraConfig:
    """LoRA and its variants (DoRA, rsLoRA, PiSSA, OLoRA, LoRA+): `fixed` picks the variant."""
    kwargs = dict(r=p.r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout, **_targets(ctx))
    return LoraConfig(**{**kwargs, **fixed, **p.options})


QUANTISATION_KEYS = ("bits", "quant_type", "double_quant")


def qlora(p: PeftSpec, ctx: Context) -> LoraConfig:
    """LoRA on a quantised base; the quantisation keys of `options` go to `bnb_config`."""
    rest = {k: v for k, v in p.options.items() if k not in QUANTISATION_KEYS}
    return lora(replace(p, options=rest), ctx)


def bnb_config(p: PeftSpec):
    """4-bit NF4 with double quantisation (QLoRA's recipe), or int8 with `options.bits: 8`: a BitsAndBytesConfig."""
    from transformers import BitsAndBytesConfig

    bits = p.options.get("bits", 4)
    keep = list(HEADS)  # output and classification heads stay in full precision (and trainable)
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    if bits != 4:
        raise ValueError(f"peft.options.bits: {bits!r}; allowed: 4, 8")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        llm_int8_skip_modules=keep,
        bnb_4bit_quant_type=p.options.get("quant_type", "nf4"),
        bnb_4bit_use_double_quant=p.options.get("double_quant", True),
        bnb_4bit_compute_dtype=torch.float32 if not torch.cuda.is_available() else torch.bfloat16,
    )


def loraplus_optimizer(model, args, p: PeftSpec):
    """AdamW where B's learning rate is `loraplus_lr_ratio` times A's (peft's LoRA+ optimizer)."""
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model,
        optimizer_cls=torch.optim.AdamW,
        lr=args.learning_rate,
        loraplus_lr_ratio=p.loraplus_lr_ratio,
        weight_decay=args.weight_decay,
    )


def adalora(p: PeftSpec, ctx: Context) -> AdaLoraConfig:
    """Start every layer at init_r (default 1.5 r) and prune to an average of r, over the real step count.

    Pruning runs between the first 10% of steps (tinit) and the last 20% (tfinal),
    as in the AdaLoRA paper's schedules; `options` overrides any of these.
    """
    t = ctx.total_steps
    kwargs = dict(
        init_r=max(p.r + 1, (3 * p.r) // 2),
        target_r=p.r,
        lora_alpha=p.lora_alpha,
        lora_dropout=p.lora_dropout,
        total_step=t,
        tinit=t // 10,
        tfinal=t // 5,
        deltaT=max(1, t // 100),
        **_targets(ctx),
    )
    return AdaLoraConfig(**{**kwargs, **p.options})


def adalora_callbacks(model) -> list:
    """AdaLoRA's rank allocator, called after every optimiser step while the gradients still exist.

    transformers is imported here, not at the top: this module is imported while peft
    registers the custom tuners, and transformers may then be half-initialised.
    """
    from transformers import TrainerCallback

    class AdaLoraBudget(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            model.base_model.update_and_allocate(state.global_step)

    return [AdaLoraBudget()]


def vera(p: PeftSpec, ctx: Context) -> VeraConfig:
    return VeraConfig(**{"r": p.r, "vera_dropout": p.lora_dropout, **_targets(ctx), **p.options})


def miss(p: PeftSpec, ctx: Context) -> MissConfig:
    return MissConfig(**{"r": p.r, **_targets(ctx), **p.options})


def ia3(p: PeftSpec, ctx: Context) -> IA3Config:
    """Explicit targets scale outputs unless `options.feedforward_modules` names some to scale inputs."""
    extra = {"feedforward_modules": []} if ctx.targets is not None else {}
    return IA3Config(**{**_targets(ctx), **extra, **p.options})


def loha(p: PeftSpec, ctx: Context) -> LoHaConfig:
    return LoHaConfig(**{"r": p.r, "alpha": p.lora_alpha, "module_dropout": 0.0, **_targets(ctx), **p.options})


def lokr(p: PeftSpec, ctx: Context) -> LoKrConfig:
    return LoKrConfig(**{"r": p.r, "alpha": p.lora_alpha, "module_dropout": 0.0, **_targets(ctx), **p.options})


def oft(p: PeftSpec, ctx: Context) -> OFTConfig:
    """Blocks of `oft_block_size` (default 16) must divide each targeted layer's input size."""
    return OFTConfig(**{"r": 0, "oft_block_size": 16, "module_dropout": 0.0, **_targets(ctx), **p.options})


def boft(p: PeftSpec, ctx: Context) -> BOFTConfig:
    return BOFTConfig(
        **{"boft_block_size": 4, "boft_n_butterfly_factor": 1, "boft_dropout": 0.0, **_targets(ctx), **p.options}
    )


def fourierft(p: PeftSpec, ctx: Context) -> FourierFTConfig:
    return FourierFTConfig(**{"n_frequency": 1000, "scaling": 150.0, **_targets(ctx), **p.options})


def prefix_tuning(p: PeftSpec, ctx: Context) -> PrefixTuningConfig:
    return PrefixTuningConfig(**{"num_virtual_tokens": 8, "task_type": ctx.task_type, **p.options})


def prompt_tuning(p: PeftSpec, ctx: Context) -> PromptTuningConfig:
    return PromptTuningConfig(**{"num_virtual_tokens": 8, "task_type": ctx.task_type, **p.options})


def p_tuning(p: PeftSpec, ctx: Context) -> PromptEncoderConfig:
    return PromptEncoderConfig(
        **{"num_virtual_tokens": 8, "encoder_hidden_size": 64, "task_type": ctx.task_type, **p.options}
    )
