"""What a method row is (`Method`) and what its config builder is given (`Context`).

Plain data, no peft or torch: the config parser reads the registry on every Snakemake start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Method:
    name: str
    math: str  # one line for docs/methods.md's methods table
    source: str  # peft | custom | baseline
    impl: (
        str | None
    )  # "module:function" building the peft config from (PeftSpec, Context, **fixed); None: no adapter (full)
    fixed: dict[str, Any] = field(default_factory=dict)  # keyword arguments the method always passes to its builder
    uses_rank: bool = True  # the run id carries r<rank>
    init_changes_base: bool = False  # saved adapters are converted to apply to the untouched base
    mergeable: bool = True
    not_mergeable_reason: str = ""
    after_init: str | None = None  # "module:function"(peft_model): re-initialise after peft built the layers (MiLoRA)
    optimizer: str | None = None  # "module:function"(model, TrainingArguments, PeftSpec) -> optimizer (LoRA+)
    callbacks: str | None = None  # "module:function"(model) -> [TrainerCallback] (AdaLoRA's rank budget)
    after_merge: str | None = (
        None  # "module:function"(merged model): fit its config to what merging added (BitFit's new biases)
    )
    quantized: bool = False  # the base is loaded quantised through bitsandbytes (QLoRA)
    unsupported_task_types: tuple[
        str, ...
    ] = ()  # task types it cannot run on, rejected at parse time; see not_supported_reason
    not_supported_reason: str = ""
    linear_only: bool = (
        False  # its peft implementation adapts nn.Linear only: GPT-2's Conv1D models are refused at parse time
    )
    default_targets: str | None = (
        None  # target_modules when the config says null; None: peft's default for the architecture
    )
    peft_tuner: bool = (
        False  # impl's module defines a peft tuner: imported (so registered) whenever peft loads, before adapters load
    )


@dataclass(frozen=True)
class Context:
    """What a builder needs beyond the peft spec: known only once the model and data are loaded."""

    task_type: str  # peft task type: SEQ_CLS | CAUSAL_LM | SEQ_2_SEQ_LM
    total_steps: int  # optimiser steps of the run (AdaLoRA's schedule)
    targets: list[str] | None  # resolved target modules; None: the method's default for the architecture
