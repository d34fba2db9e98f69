"""One row per registered method, run through peftlab's own train and merge on two models.

Each case trains a few steps on one fixed batch with `peftlab.train.train` (the
pipeline's trainer: method optimizers, callbacks, saving, the reload check onto an
untouched base) and merges with `peftlab.merge.merge`, then asserts:
- the exact number of trainable parameters, from the method's definition;
- that the loss fell;
- that the saved adapter, loaded onto an untouched base, gives the trained logits
  (within numerics.RELOAD_ULPS float32 epsilons of the logits' scale);
- that the merged model, saved and reloaded, gives the adapter model's logits
  (within numerics.MERGE_ULPS epsilons), or that the method records why it cannot merge;
- that the tracker (peftlab.tracking) wrote its files: at steps 0 and 10, ΔW of every
  adapted layer, whose norm is the merged weight's change (peftlab reads ΔW a different way
  per layer type), and the gradients of every trainable tensor; or, for a method with no
  ΔW, the reason.
These are the checks whose rounding differs between CPUs: .ci/run repeats them under
ATEN_CPU_CAPABILITY=avx2 (marker `numerics`).

Adding a method to peftlab.methods means adding its row here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import safetensors.torch
from peft import PeftConfig

from conftest import ROOT, load_test_config
from peftlab import artifacts, merge, methods, numerics
from peftlab.config import ConfigError, plan
from peftlab.models import load_model
from peftlab.train import train

R = 8  # the test config's rank


@dataclass(frozen=True)
class Dims:
    """The shapes a parameter count depends on."""

    hidden: int
    layers: int
    mlp: int
    head: int  # trainable classification head (modules_to_save) or 0


LLAMA = Dims(hidden=64, layers=2, mlp=256, head=0)  # tiny Llama of config/test.yaml (widths in multiples of 32: QLoRA)
MINILM = Dims(hidden=384, layers=6, mlp=1536, head=384 * 2 + 2)  # all-MiniLM-L6-v2, 2 labels


def lora_like(d: Dims, r: int = R) -> int:  # A (r x H) and B (H x r) on q and v of every layer
    return d.layers * 2 * (r * d.hidden + d.hidden * r)


def kronecker(h: int) -> tuple[int, int]:
    """peft's LoKr factorisation of a width: a * b = h, a the largest divisor not above sqrt(h)."""
    a = max(f for f in range(1, math.isqrt(h) + 1) if h % f == 0)
    return a, h // a


def lokr_w2(b: int, r: int = R) -> int:
    """LoKr's second factor: b x b, or two rank-r factors when r < b/2."""
    return 2 * b * r if r < b / 2 else b * b


@dataclass(frozen=True)
class Row:
    params: object  # Dims -> expected trainable parameters, head excluded
    options: dict = field(default_factory=dict)
    lr: float = 1e-2


ROWS = {
    "lora": Row(lora_like),
    "dora": Row(lambda d: lora_like(d) + d.layers * 2 * d.hidden),  # + a magnitude per output feature
    "rslora": Row(lora_like),
    "pissa": Row(lora_like),
    "olora": Row(lora_like),
    "milora": Row(lora_like),
    "lora_plus": Row(lora_like, lr=3e-3),
    "qlora": Row(lora_like),
    # starts at init_r = 1.5 r = 12 per layer: P (12 x H), Q (H x 12) and the 12 singular values
    "adalora": Row(lambda d: d.layers * 2 * (12 * d.hidden + d.hidden * 12 + 12)),
    "vera": Row(lambda d: d.layers * 2 * (d.hidden + R), lr=5e-2),  # scaling vectors b (out) and d (r); A, B frozen
    "miss": Row(lambda d: d.layers * 2 * R * d.hidden),  # one r x out block per layer
    # k and v scale their outputs, the feed-forward output projection its input
    "ia3": Row(lambda d: d.layers * (2 * d.hidden + d.mlp) + (d.layers * d.hidden if d is MINILM else 0), lr=5e-2),
    "loha": Row(lambda d: d.layers * 2 * 2 * (R * d.hidden + d.hidden * R)),  # two low-rank pairs
    # Kronecker factors: H = a*b with a <= b closest to sqrt(H); w1 is a x a, w2 is b x b (low-rank r when r < b/2)
    "lokr": Row(lambda d: d.layers * 2 * (kronecker(d.hidden)[0] ** 2 + lokr_w2(kronecker(d.hidden)[1]))),
    # H/16 orthogonal blocks of 16 x 16, each stored as its 16*15/2 skew-symmetric upper triangle
    "oft": Row(lambda d: d.layers * 2 * (d.hidden // 16) * (16 * 15 // 2)),
    # one butterfly factor of H/4 blocks of 4 x 4, plus a scale per output feature
    "boft": Row(lambda d: d.layers * 2 * ((d.hidden // 4) * 4 * 4 + d.hidden)),
    "fourierft": Row(lambda d: d.layers * 2 * 1000, lr=5e-2),  # 1000 spectral coefficients per layer
    # key and value prefixes of 8 tokens per layer; on classification a config error (peft 0.21 x transformers 5)
    "prefix_tuning": Row(lambda d: 8 * d.layers * 2 * d.hidden, lr=5e-2),
    "prompt_tuning": Row(lambda d: 8 * d.hidden, lr=0.1),
    # 8 virtual tokens and the MLP encoder H -> 64 -> 64 -> H
    "p_tuning": Row(
        lambda d: 8 * d.hidden + (d.hidden * 64 + 64) + (64 * 64 + 64) + (64 * d.hidden + d.hidden), lr=3e-2
    ),
    "sva": Row(lambda d: d.layers * 2 * R, lr=5e-2),  # r singular-value shifts per layer
    "ssl": Row(lambda d: d.layers * 2 * d.hidden),  # d1 per layer
    "ssb": Row(lambda d: d.layers * 2 * (d.hidden + d.hidden)),  # d1 and d2 per layer
    "flora": Row(lambda d: d.layers * 2 * (d.hidden * R + R * R + R * d.hidden)),  # A, core M, B
    # after the attention and MLP output projections: down (16 x H + 16) and up (H x 16 + H)
    "adapter": Row(lambda d: d.layers * 2 * (2 * 16 * d.hidden + 16 + d.hidden), options={"bottleneck_size": 16}),
    "full": Row(lambda d: 0, lr=1e-3),  # every parameter of the base, counted from the loaded model
    # a bias shift for every linear layer's outputs (MiniLM: also the pooler)
    "bitfit": Row(
        lambda d: d.layers * (5 * d.hidden + 2 * d.mlp) if d is LLAMA else d.layers * (5 * d.hidden + d.mlp) + d.hidden
    ),
}
MODELS = {"tiny-llama": LLAMA, "minilm": MINILM}
TASK = {"tiny-llama": "arith", "minilm": "sentiment"}  # the test config's SFT and classification tasks
TASK_TYPE = {"tiny-llama": "sft", "minilm": "classification"}


def test_every_registered_method_has_a_row():
    assert sorted(ROWS) == sorted(methods.METHODS)


@pytest.mark.numerics
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("name", sorted(ROWS))
def test_method(name, model, in_tiny, tmp_path):
    row, dims, method = ROWS[name], MODELS[model], methods.get(name)
    if TASK_TYPE[model] in method.unsupported_task_types:  # rejected when the config is read, before any job
        raw = load_test_config()
        raw["sweep"] = [{"task": TASK[model], "model": model, "method": name, "seed": 1}]
        with pytest.raises(ConfigError, match=f"sweep\\[0\\].peft.type: {name} cannot run on {TASK_TYPE[model]} task"):
            plan(raw)
        return
    one_batch = dict(max_steps=10, train_size=16, batch_size=16, logging_steps=1, save_steps=1000)
    spec = in_tiny(name, model=model, options=row.options, learning_rate=row.lr, **one_batch)
    record = train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "checkpoints")

    base_params = sum(p.numel() for p in load_model(spec.model, spec.task).parameters())  # float32, unquantised
    assert record["total_params"] == base_params  # QLoRA too: its 4-bit weights count as the parameters they hold
    expected = base_params if name == "full" else row.params(dims) + dims.head
    assert record["trainable_params"] == expected

    losses = [e["loss"] for e in record["losses"]]
    assert losses[-1] < losses[0] - 0.02, losses
    assert (
        record["reload_max_abs_diff"] <= record["reload_tolerance"] <= numerics.RELOAD_ULPS * numerics.EPS * 100
    )  # logits below 100

    check = merge.merge(spec, str(tmp_path / "adapter"), tmp_path / "merged")
    if method.impl is None:  # full: adapter/ is the model; it is not stored twice
        assert check["saved"] and [p.name for p in (tmp_path / "merged").iterdir()] == [merge.SAME_AS_ADAPTER]
    elif method.mergeable:
        assert check["max_abs_logit_diff"] <= check["tolerance"] <= numerics.MERGE_ULPS * numerics.EPS * 100
        assert (tmp_path / "merged" / "config.json").exists()
    else:
        assert not check["mergeable"] and check["reason"] == method.not_mergeable_reason
        assert (tmp_path / "merged" / "NOT_MERGED.txt").read_text().strip() == method.not_mergeable_reason
    check_tracking(spec, method, tmp_path)


GRADIENT_ROLES = {
    "lora": {"lora_A", "lora_B"},
    "dora": {"lora_A", "lora_B", "lora_magnitude_vector"},
    "ia3": {"ia3_l"},
    "flora": {"flora_A", "flora_M", "flora_B"},
}


def check_tracking(spec, method, run: Path) -> None:
    """The tracker's files after 10 steps: ΔW equals the merge's change of every adapted layer's weight."""
    info = artifacts.read_json(run / "tracking/tracking.json")
    spectral, gradients = (
        pd.read_parquet(run / "tracking/spectral.parquet"),
        pd.read_parquet(run / "tracking/gradients.parquet"),
    )
    assert info["gradients"]["steps"] == [1, 10]
    grads = gradients[gradients["quantity"] == "grad_norm"]
    assert grads["value"].map(math.isfinite).all() and (grads["value"] > 0).any()
    assert set(GRADIENT_ROLES.get(method.name, set())) <= set(grads["role"])
    if not method.mergeable:
        assert info["spectral"]["reason"] == f"{method.name}: {method.not_mergeable_reason}" and spectral.empty
        return
    assert (
        info["spectral"]["reason"] is None and info["spectral"]["steps"] == [0, 10] and info["spectral"]["layers"] > 0
    )
    assert spectral["value"].map(math.isfinite).all()
    assert {"heatmap_rel_norm.png", "spectra_final.png"} <= set(info["plots"])
    if method.quantized:  # the merge dequantises; the float32 base is not the weight the adapter was trained on
        return
    folder = "adapter" if method.impl is None else "merged"  # full: the adapter folder is the model, not stored twice
    merged = safetensors.torch.load_file(run / folder / "model.safetensors")
    base = load_model(spec.model, spec.task).state_dict()
    final = spectral[(spectral["step"] == 10) & (spectral["quantity"] == "fro_norm")]
    kind = "update" if method.init_changes_base else "delta"  # the change from the pretrained weight
    for row in final[final["kind"] == kind].itertuples():
        w = base[f"{row.layer}.weight"]
        change = (merged[f"{row.layer}.weight"] - w).norm().item()
        assert abs(row.value - change) <= 1e-5 * w.norm().item() + 1e-3 * change, (row.layer, row.value, change)


@pytest.mark.parametrize("bits,layer,quant_type", [(4, "Linear4bit", "nf4"), (8, "Linear8bitLt", None)])
def test_qlora_base_is_really_quantised(bits, layer, quant_type, in_tiny):
    """QLoRA's base layers under the LoRA adapter are bitsandbytes layers: NF4 with double quantisation, or int8."""
    spec = in_tiny("qlora", options={"bits": bits})
    bnb = methods.quantization(spec.peft)
    model = methods.attach(
        load_model(spec.model, spec.task, quantization=bnb), spec.peft, methods.Context("CAUSAL_LM", 10, None)
    )
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj.get_base_layer()).__name__ == layer
    if quant_type:
        state = q_proj.get_base_layer().weight.quant_state
        assert state.quant_type == quant_type and state.nested  # nested = double quantisation
    assert type(model.base_model.model.lm_head).__name__ == "Linear"  # the head stays in full precision
    assert {n.split(".")[-3] for n, p in model.named_parameters() if p.requires_grad} == {
        "lora_A",
        "lora_B",
    }  # <layer>.lora_A.default.weight


def test_the_docs_methods_table_matches_the_registry_and_the_counts():
    rows = {}
    for line in (ROOT / "docs/methods.md").read_text().splitlines():
        if m := re.match(r"\| `(\w+)` \| (.+?) \| (peft|custom|baseline) \| (yes|no) \| ([\d,]+|all) \|", line):
            rows[m[1]] = m.groups()[1:]
    assert sorted(rows) == sorted(methods.METHODS)
    for name, (formula, source, merges, tiny) in rows.items():
        method = methods.get(name)
        assert (formula, source, merges == "yes") == (method.math, method.source, method.mergeable)
        assert tiny == ("all" if name == "full" else f"{ROWS[name].params(LLAMA):,}")


def test_adalora_schedules_its_budget_over_the_real_step_count(in_tiny, tmp_path):
    """An epoch-based run: AdaLoRA's total_step is the number of steps the Trainer really takes."""
    spec = in_tiny("adalora", max_steps=None, epochs=2, train_size=40, batch_size=16, grad_accum=2, save_steps=1000)
    record = train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "checkpoints")
    config = PeftConfig.from_pretrained(tmp_path / "adapter")
    assert record["steps"] == config.total_step == 4  # 3 batches per epoch, 2 per optimiser step, 2 epochs
    assert config.rank_pattern  # the budget was allocated: a rank per adapted layer
