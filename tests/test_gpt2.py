"""Every method on GPT-2's Conv1D layers (finetune_leveling's gpt2_imdb): it trains and merges, or the
config is refused when it is read. Conv1D stores its weight transposed (in x out), which the custom
methods and MiLoRA's initialisation turn around; peft's own implementations of some methods take
nn.Linear only, and those are refused at parse time."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_methods import ROWS

from conftest import load_test_config
from peftlab import merge, methods
from peftlab.config import ConfigError, plan
from peftlab.models import load_model, load_tokenizer
from peftlab.spec import ModelSpec
from peftlab.train import train

CONV1D_METHODS = sorted(
    m.name for m in methods.METHODS.values() if m.source == "custom" or m.peft_tuner
)  # peftlab's own code
LINEAR_ONLY = sorted(m.name for m in methods.METHODS.values() if m.linear_only)


@pytest.fixture(scope="module")
def tiny_gpt2(tiny, tmp_path_factory):
    """A 2-layer GPT-2 with the tiny Llama's tokenizer, so the tokenised arith data fits it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    work, runs = tiny
    llama = ModelSpec.from_dict(runs["arith/tiny-llama/lora/r8-s1"]["model"])
    tok = load_tokenizer(dataclasses.replace(llama, path=str(work / llama.path)))
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=128,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.mark.numerics
@pytest.mark.parametrize("name", CONV1D_METHODS)
def test_method_trains_and_merges_on_conv1d(name, tiny_gpt2, in_tiny, tmp_path):
    row = ROWS[name]
    spec = in_tiny(
        name,
        options=row.options,
        max_steps=10,
        train_size=16,
        batch_size=16,
        logging_steps=1,
        save_steps=1000,
        learning_rate=row.lr,
    )
    spec = dataclasses.replace(
        spec,
        model=ModelSpec(name="tiny-gpt2", path=tiny_gpt2),
        peft=dataclasses.replace(spec.peft, target_modules="gpt2"),
    )
    model = methods.attach(
        load_model(spec.model, spec.task), spec.peft, methods.Context("CAUSAL_LM", 10, ["c_attn", "c_proj", "c_fc"])
    )
    wrapped = {
        n.rsplit(".", 1)[-1]
        for n, m in model.named_modules()
        if hasattr(m, "base_layer") and type(m.base_layer).__name__ == "Conv1D"
    }
    assert wrapped == {"c_attn", "c_proj", "c_fc"}  # every Conv1D is adapted, none skipped

    record = train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "ckpt")
    losses = [e["loss"] for e in record["losses"]]
    assert losses[-1] < losses[0] - 0.02, losses
    assert record["reload_max_abs_diff"] <= record["reload_tolerance"]
    check = merge.merge(spec, str(tmp_path / "adapter"), tmp_path / "merged")
    if methods.get(name).mergeable:
        assert check["max_abs_logit_diff"] <= check["tolerance"]
    else:
        assert not check["mergeable"]


def test_milora_on_conv1d_spans_the_bottom_subspace_of_the_untransposed_weight(tiny_gpt2, in_tiny):
    spec = in_tiny("milora")
    spec = dataclasses.replace(
        spec,
        model=ModelSpec(name="tiny-gpt2", path=tiny_gpt2),
        peft=dataclasses.replace(spec.peft, target_modules=["c_fc"]),
    )
    base = load_model(spec.model, spec.task)
    w = base.transformer.h[0].mlp.c_fc.weight.detach().T.clone()  # out x in
    model = methods.attach(base, spec.peft, methods.Context("CAUSAL_LM", 10, ["c_fc"]))
    layer = model.base_model.model.transformer.h[0].mlp.c_fc
    a = layer.lora_A["default"].weight.detach()  # r x in
    _, _, vh = torch.linalg.svd(w, full_matrices=False)
    bottom = vh[-a.shape[0] :]
    projected = a @ bottom.T @ bottom
    assert torch.allclose(
        projected, a, atol=1e-4 * a.abs().max().item()
    )  # A's rows lie in W's bottom right-singular subspace
    restored = layer.get_base_layer().weight.detach().T + layer.scaling["default"] * layer.lora_B["default"].weight @ a
    assert torch.allclose(restored, w, atol=1e-5 * w.abs().max().item())  # W_res + B A = W: the model starts unchanged


@pytest.mark.parametrize("name", LINEAR_ONLY)
def test_methods_peft_runs_on_linear_only_are_refused_for_gpt2(name, tiny_gpt2):
    raw = load_test_config()
    raw["models"]["gpt2"] = {"path": tiny_gpt2}
    raw["sweep"] = [{"task": "arith", "model": "gpt2", "method": name, "seed": 1}]
    with pytest.raises(
        ConfigError,
        match=rf"sweep\[0\].peft.type: peft's {name} adapts torch.nn.Linear layers only, and GPT-2's \('gpt2'\) are "
        r"Conv1D",
    ):
        plan(raw)
