"""Method registry: a config's `peft.type` -> how to attach and save that method.

`METHODS` is the one table of every method (a `Method` row, peftlab.methods.base):
its name, one line of math, where it comes from (peft, custom, baseline), whether it
merges, and `impl`, the `module:function` that builds its peft config. The table is
plain data, so parsing a config (every Snakemake start) never imports peft or torch.

The files a new method touches:
- a method peft has: one row here (its builder in peft_builtin.py if no existing one
  fits), one row in tests/test_methods.py, and its line in docs/methods.md's methods table
  (that test checks the table against the registry and the counted parameters);
- a custom method: one file in this package (a tuner built on `peftlab.methods.tuner`
  and its `build` function), one row here with `peft_tuner=True` (so its adapters
  load wherever peft does), and the same test row and table.

The functions below are what the stages call: `attach` (base model -> trainable
model), `save` (in peft's format, converted so it applies to the untouched base),
`quantization` (QLoRA's base). Loading a saved adapter is `peftlab.models.load_trained`.
"""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from peftlab.methods.base import Context, Method

if TYPE_CHECKING:
    from peftlab.spec import PeftSpec

__all__ = [
    "METHODS",
    "Context",
    "Method",
    "attach",
    "check_options",
    "get",
    "hook",
    "peft_config",
    "quantization",
    "save",
]


_PEFT = "peftlab.methods.peft_builtin"
_NO_WEIGHTS = "prompt learning adds virtual tokens or prefixes, not weight deltas; there is nothing to merge"
METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        # --- from peft, configured
        Method("lora", "W' = W + (α/r) B A, A ∈ R^{r×k}, B ∈ R^{d×r}, B₀ = 0", "peft", f"{_PEFT}:lora"),
        Method(
            "dora",
            "W' = m ⊙ (W + B A) / ‖W + B A‖_col, magnitude m trained",
            "peft",
            f"{_PEFT}:lora",
            {"use_dora": True},
        ),
        Method("rslora", "W' = W + (α/√r) B A: rank-stabilised scaling", "peft", f"{_PEFT}:lora", {"use_rslora": True}),
        Method(
            "pissa",
            "W = W_res + B A, B A from the top-r singular triplets of W; train A, B",
            "peft",
            f"{_PEFT}:lora",
            {"init_lora_weights": "pissa"},
            init_changes_base=True,
        ),
        Method(
            "olora",
            "W = W_res + B A, B A from a QR decomposition of W; train A, B",
            "peft",
            f"{_PEFT}:lora",
            {"init_lora_weights": "olora"},
            init_changes_base=True,
            linear_only=True,
        ),
        Method(
            "adalora",
            "W' = W + P Λ Q, SVD-shaped; the rank budget is pruned by importance during training",
            "peft",
            f"{_PEFT}:adalora",
            callbacks=f"{_PEFT}:adalora_callbacks",
        ),
        Method(
            "vera", "W' = W + Λ_b B Λ_d A, A, B random, frozen and shared; train vectors b, d", "peft", f"{_PEFT}:vera"
        ),
        Method(
            "lora_plus",
            "LoRA with B's learning rate = loraplus_lr_ratio × A's",
            "peft",
            f"{_PEFT}:lora",
            optimizer=f"{_PEFT}:loraplus_optimizer",
        ),
        Method(
            "miss",
            "W' = W + expand(D): one trainable r×d block per layer, tiled over W (MiSS)",
            "peft",
            f"{_PEFT}:miss",
            linear_only=True,
        ),
        Method(
            "ia3",
            "h' = l ⊙ h: learned vectors scale keys, values and the FFN input",
            "peft",
            f"{_PEFT}:ia3",
            uses_rank=False,
        ),
        Method(
            "loha",
            "W' = W + (B₁A₁) ⊙ (B₂A₂): Hadamard product of two low-rank pairs",
            "peft",
            f"{_PEFT}:loha",
            linear_only=True,
        ),
        Method(
            "lokr",
            "W' = W + C ⊗ (B A): Kronecker product with a low-rank factor",
            "peft",
            f"{_PEFT}:lokr",
            linear_only=True,
        ),
        Method(
            "oft",
            "W' = R W, R block-diagonal orthogonal (Cayley), R₀ = I",
            "peft",
            f"{_PEFT}:oft",
            uses_rank=False,
            linear_only=True,
        ),
        Method(
            "boft",
            "W' = (Π_i B_i) W: butterfly product of orthogonal blocks",
            "peft",
            f"{_PEFT}:boft",
            uses_rank=False,
            linear_only=True,
        ),
        Method(
            "fourierft",
            "ΔW = α · IDFT2(c at n fixed random frequencies); train c",
            "peft",
            f"{_PEFT}:fourierft",
            uses_rank=False,
        ),
        Method(
            "prefix_tuning",
            "[P_k; K], [P_v; V]: trainable key/value prefixes in every layer",
            "peft",
            f"{_PEFT}:prefix_tuning",
            uses_rank=False,
            mergeable=False,
            not_mergeable_reason=_NO_WEIGHTS,
            unsupported_task_types=("classification",),
            not_supported_reason="peft 0.21 looks for a `past_key_values` argument on sequence classifiers, "
            "which transformers 5 renamed `cache`",
        ),
        Method(
            "prompt_tuning",
            "[P; X]: n trainable virtual-token embeddings prepended to the input",
            "peft",
            f"{_PEFT}:prompt_tuning",
            uses_rank=False,
            mergeable=False,
            not_mergeable_reason=_NO_WEIGHTS,
        ),
        Method(
            "p_tuning",
            "[MLP(P); X]: virtual tokens produced by a trainable prompt encoder",
            "peft",
            f"{_PEFT}:p_tuning",
            uses_rank=False,
            mergeable=False,
            not_mergeable_reason=_NO_WEIGHTS,
        ),
        Method(
            "qlora",
            "LoRA over a 4-bit NF4 base with double quantisation (options.bits: 8 for int8)",
            "peft",
            f"{_PEFT}:qlora",
            quantized=True,
        ),
        # --- custom: peft lacks them; each is one file here, registered into peft
        Method(
            "milora",
            "W = W_res + B A, B = U_r √Σ_r, A = √Σ_r V_rᵀ over the r smallest singular triplets",
            "custom",
            "peftlab.methods.milora:build",
            init_changes_base=True,
            after_init="peftlab.methods.milora:initialise",
        ),
        Method(
            "sva",
            "W' = W + U_r diag(δ) V_rᵀ over the top-r singular triplets; train δ, δ₀ = 0",
            "custom",
            "peftlab.methods.sva:build",
            peft_tuner=True,
        ),
        Method(
            "ssl",
            "W' = D₁ W, D₁ diagonal, D₁₀ = I (subspace scaling, left)",
            "custom",
            "peftlab.methods.ssl:build",
            peft_tuner=True,
            uses_rank=False,
        ),
        Method(
            "ssb",
            "W' = D₁ W D₂, D₁, D₂ diagonal, = I at init (subspace scaling, both sides)",
            "custom",
            "peftlab.methods.ssb:build",
            peft_tuner=True,
            uses_rank=False,
        ),
        Method(
            "flora",
            "ΔW = (α/r) A M B, trainable core M ∈ R^{r×r}, M₀ = 0 (FLoRA)",
            "custom",
            "peftlab.methods.flora:build",
            peft_tuner=True,
        ),
        Method(
            "adapter",
            "h' = h + W_up σ(W_down h) after attention and MLP blocks (Houlsby), W_up₀ = 0",
            "custom",
            "peftlab.methods.adapter:build",
            peft_tuner=True,
            uses_rank=False,
            mergeable=False,
            not_mergeable_reason="a bottleneck adapter is a nonlinear function of h; it is not a weight delta",
        ),
        # --- baselines
        Method("full", "W' = W + ΔW, every weight trained", "baseline", None, uses_rank=False),
        Method(
            "bitfit",
            "b' = b + δ, biases of the targeted linear layers only (added as zeros where missing)",
            "baseline",
            "peftlab.methods.bitfit:build",
            peft_tuner=True,
            uses_rank=False,
            default_targets="all-linear",
            after_merge="peftlab.methods.bitfit:declare_biases",
        ),
    ]
}


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}") from None


def _resolve(ref: str):
    module, function = ref.split(":")
    return getattr(importlib.import_module(module), function)


def hook(method: Method, name: str):
    """The method's optional hook `name` (after_init, optimizer, callbacks, after_merge) as a callable, or None."""
    ref = getattr(method, name)
    return _resolve(ref) if ref else None


def register_custom_tuners() -> None:
    """Register every custom tuner with peft, so `PeftModel.from_pretrained` loads their adapters.

    Runs when peft is first imported after `import peftlab` (see peftlab/__init__.py).
    Importing a tuner's module registers it; the rows with `peft_tuner` name them.
    """
    for method in METHODS.values():
        if method.peft_tuner:
            importlib.import_module(method.impl.split(":")[0])


def peft_config(spec: PeftSpec, ctx: Context):
    """The peft config of a run, or None for full fine-tuning."""
    method = get(spec.type)
    return _resolve(method.impl)(spec, ctx, **method.fixed) if method.impl else None


@functools.lru_cache(maxsize=None)
def _check_options(peft_json: str) -> None:
    from peftlab.spec import PeftSpec

    peft_config(
        PeftSpec.from_dict(json.loads(peft_json)), Context("CAUSAL_LM", total_steps=100, targets=["q_proj", "v_proj"])
    )


def check_options(peft: dict) -> None:
    """Build the method's peft config from a config's `peft` section (placeholder targets), so that
    an `options` key its config class lacks, or a value it refuses, fails when the config is
    parsed (TypeError or ValueError). Imports peft (seconds): called only for runs that set options."""
    _check_options(json.dumps(peft, sort_keys=True))


def quantization(spec: PeftSpec):
    """BitsAndBytesConfig of a quantised method's base (QLoRA), else None."""
    if not get(spec.type).quantized:
        return None
    from peftlab.methods.peft_builtin import bnb_config

    return bnb_config(spec)


def attach(base, spec: PeftSpec, ctx: Context):
    """Base model -> the model to train: a PeftModel, or the base itself with every weight trainable (full)."""
    method = get(spec.type)
    config = peft_config(spec, ctx)
    if config is None:
        base.requires_grad_(True)
        return base
    from peft import get_peft_model, prepare_model_for_kbit_training

    if method.quantized:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    model = get_peft_model(base, config)
    if init := hook(method, "after_init"):
        init(model)
    return model


def save(model, folder: Path, initial: Path | None = None) -> None:
    """Save in peft's format (a full model for `full`).

    With `initial` (the adapter as initialised, for methods whose init changes the
    base: PiSSA, OLoRA, MiLoRA), save Delta = BA - B0A0 as a plain rank-2r LoRA that
    applies to the untouched base. peft 0.21 drops every non-LoRA tensor in that
    conversion (modules_to_save, e.g. a classification head), so they are put back.
    """
    from peft import PeftModel, get_peft_model_state_dict

    if not isinstance(model, PeftModel) or initial is None:
        model.save_pretrained(folder)
        return
    import safetensors.torch

    model.save_pretrained(folder, path_initial_model_for_weight_conversion=str(initial))
    weights = Path(folder) / "adapter_model.safetensors"
    converted = safetensors.torch.load_file(weights)
    for key, value in get_peft_model_state_dict(model).items():
        if key not in converted and "lora_" not in key:
            converted[key] = value.detach().cpu().contiguous()
    safetensors.torch.save_file(converted, weights, metadata={"format": "pt"})
