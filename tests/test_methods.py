"""One row per registered method, on the tiny Llama: parameter count, learning, reload, merge.

Adding a method to peftlab.methods means adding its row here.
"""

from __future__ import annotations

from dataclasses import replace

import datasets
import pytest
import safetensors.torch
import torch
from peft import PeftConfig, PeftModel, get_peft_model

from peftlab import methods
from peftlab.models import load_model, load_tokenizer, peft_task_type
from peftlab.train import logits, probe_batch, save_adapter

# tiny Llama of config/test.yaml: hidden 48, 2 layers, MLP 192; peft defaults target q_proj, v_proj (IA3: k, v, down)
H, LAYERS, MLP, R = 48, 2, 192, 8
ROWS = {
    "lora": LAYERS * 2 * (R * H + H * R),
    "dora": LAYERS * 2 * (R * H + H * R + H),  # + a magnitude per output feature
    "pissa": LAYERS * 2 * (R * H + H * R),
    "ia3": LAYERS * (H + H + MLP),  # k and v scale outputs; down_proj (feed-forward) scales its input
    "prompt_tuning": 8 * H,  # 8 virtual tokens
}


def test_every_registered_method_has_a_row():
    assert sorted(ROWS) == sorted(methods.METHODS)


@pytest.fixture
def setup(in_tiny):
    spec = in_tiny()
    tok = load_tokenizer(spec.model)
    ds = datasets.load_from_disk(spec.data_dir)
    return spec, tok, ds


def _train_batch(tok, ds):
    rows = ds["train"].select(range(16))
    feats = [
        {"input_ids": i, "attention_mask": a, "labels": lab} for i, a, lab in zip(rows["input_ids"], rows["attention_mask"], rows["labels"])
    ]
    width = max(len(f["input_ids"]) for f in feats)
    pad = lambda x, v: x + [v] * (width - len(x))  # noqa: E731
    return {
        k: torch.tensor([pad(f[k], v) for f in feats])
        for k, v in (("input_ids", tok.pad_token_id), ("attention_mask", 0), ("labels", -100))
    }


@pytest.mark.parametrize("name", sorted(ROWS))
def test_method(name, setup, tmp_path):
    spec, tok, ds = setup
    method = methods.get(name)
    torch.manual_seed(0)
    model = get_peft_model(load_model(spec.model, spec.task), method.build(replace(spec.peft, type=name), peft_task_type(spec.task)))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ROWS[name]

    initial = None
    if method.init_changes_base:
        initial = tmp_path / "initial"
        model.save_pretrained(initial)

    batch = _train_batch(tok, ds)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses

    probe = probe_batch(ds["eval"], tok)
    trained = logits(model, probe)
    save_adapter(model, tmp_path / "adapter", initial)
    reloaded = PeftModel.from_pretrained(load_model(spec.model, spec.task), tmp_path / "adapter")
    assert (logits(reloaded, probe) - trained).abs().max().item() <= 1e-5

    if method.mergeable:
        merged = reloaded.merge_and_unload()
        assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters())
        assert (logits(merged, probe) - trained).abs().max().item() <= 1e-4
    else:
        assert method.not_mergeable_reason


def test_pissa_saves_a_plain_lora_adapter(setup, tmp_path):
    """The saved PiSSA adapter is Delta = BA - B0A0 as a rank-2r LoRA with plain init.

    It loads onto the untouched base without re-running the SVD (which peft would
    otherwise redo at load time, slowly for large models and not reproducibly for
    randomised SVD), and it combines with other adapters.
    """
    spec, tok, ds = setup
    model = get_peft_model(load_model(spec.model, spec.task), methods.get("pissa").build(replace(spec.peft, type="pissa"), "CAUSAL_LM"))
    model.save_pretrained(tmp_path / "initial")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    save_adapter(model, tmp_path / "adapter", tmp_path / "initial")
    config = PeftConfig.from_pretrained(tmp_path / "adapter")
    assert config.init_lora_weights is True and config.r == 2 * R
    weights = safetensors.torch.load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    a = next(v for k, v in weights.items() if "lora_A" in k)
    assert a.shape[0] == 2 * R
