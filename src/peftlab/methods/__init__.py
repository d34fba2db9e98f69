"""Method registry: a config's `peft.type` -> how to build its peft config.

Adding a method is one entry here (or one file in this package that calls
`register`) and one row in tests/test_methods.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # peft is imported inside the builders: parsing a config (every Snakemake start) stays fast
    from peft import PeftConfig

    from peftlab.spec import PeftSpec


@dataclass(frozen=True)
class Method:
    name: str
    build: Callable[["PeftSpec", str], "PeftConfig"]  # (the run's peft spec, peft task type) -> config
    math: str  # one line for the README's methods table
    uses_rank: bool = True
    init_changes_base: bool = False  # saved adapters must be converted to apply to the untouched base
    mergeable: bool = True
    not_mergeable_reason: str = ""


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}") from None


def _lora(**fixed):
    def build(p: PeftSpec, task_type: str):
        from peft import LoraConfig

        kwargs = dict(r=p.r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout, target_modules=p.target_modules, task_type=task_type)
        return LoraConfig(**{**kwargs, **fixed, **p.options})

    return build


def _ia3(p: PeftSpec, task_type: str):
    from peft import IA3Config

    return IA3Config(target_modules=p.target_modules, task_type=task_type, **p.options)


def _prompt_tuning(p: PeftSpec, task_type: str):
    from peft import PromptTuningConfig

    return PromptTuningConfig(task_type=task_type, **{"num_virtual_tokens": 8, **p.options})


register(Method("lora", _lora(), "W' = W + (alpha/r) B A, A in R^{r x k}, B in R^{d x r}, B0 = 0"))
register(Method("dora", _lora(use_dora=True), "W' = m * (W + B A) / ||W + B A||_col, magnitude m trained"))
register(
    Method(
        "pissa",
        _lora(init_lora_weights="pissa"),
        "W = W_res + B A with B A from the top-r singular triplets of W; train A, B",
        init_changes_base=True,
    )
)
register(Method("ia3", _ia3, "h' = l * h, a learned vector l scales keys, values and FFN activations", uses_rank=False))
register(
    Method(
        "prompt_tuning",
        _prompt_tuning,
        "[P; X]: n trainable virtual-token embeddings P prepended to the input",
        uses_rank=False,
        mergeable=False,
        not_mergeable_reason="prompt learning adds virtual tokens, not weight deltas; there is nothing to merge",
    )
)
