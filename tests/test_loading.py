"""Model loading keys (models.<name>.dtype, attn_implementation, revision, tokenizer_name,
trust_remote_code): what loads, what trains, and which fingerprints they move."""

from __future__ import annotations

import dataclasses
import math

import pytest
import safetensors
import torch

from conftest import load_test_config
from peftlab import merge
from peftlab.config import ConfigError, plan
from peftlab.models import load_model, load_tokenizer, load_trained
from peftlab.spec import RunSpec, fingerprint
from peftlab.train import train


def with_model(spec: RunSpec, **keys) -> RunSpec:
    return dataclasses.replace(spec, model=dataclasses.replace(spec.model, **keys))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_weights_load_in_the_configured_dtype(dtype, in_tiny):
    spec = with_model(in_tiny("lora"), dtype=dtype)
    model = load_model(spec.model, spec.task)
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    assert {p.dtype for p in load_model(spec.model, spec.task, float32=True).parameters()} == {torch.float32}


def test_a_bfloat16_base_trains_reloads_and_merges_in_float32(in_tiny, tmp_path):
    """LoRA on a bfloat16 base: the base stays bfloat16, peft keeps the adapter in float32,
    the reload check passes, and the merge (float32, documented) reproduces the adapter model."""
    spec = with_model(
        in_tiny("lora", max_steps=8, train_size=16, batch_size=16, learning_rate=5e-3, logging_steps=1),
        dtype="bfloat16",
    )
    record = train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "ckpt")
    losses = [e["loss"] for e in record["losses"]]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.02, losses
    assert record["reload_max_abs_diff"] <= record["reload_tolerance"]

    trained = load_trained(spec, tmp_path / "adapter")
    base_dtypes = {p.dtype for n, p in trained.named_parameters() if "lora_" not in n}
    adapter_dtypes = {p.dtype for n, p in trained.named_parameters() if "lora_" in n}
    assert base_dtypes == {torch.bfloat16} and adapter_dtypes == {torch.float32}

    check = merge.merge(spec, str(tmp_path / "adapter"), tmp_path / "merged")
    assert check["merged_in"] == "float32" and check["max_abs_logit_diff"] <= check["tolerance"]
    assert check["dtype"] == "bfloat16" and check["reload_max_abs_diff"] <= check["reload_tolerance"]
    with safetensors.safe_open(
        tmp_path / "merged" / "model.safetensors", "pt"
    ) as f:  # stored in the model's dtype: half of float32
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert check["params"] * 2 <= check["merged_bytes"] < check["params"] * 3


def test_attn_implementation_and_tokenizer_name_reach_transformers(in_tiny, tmp_path):
    spec = in_tiny("lora")
    eager = load_model(with_model(spec, attn_implementation="eager").model, spec.task)
    assert eager.config._attn_implementation == "eager"
    # a tokenizer from another folder: the built model's tokenizer, saved elsewhere with a marker
    tok = load_tokenizer(spec.model)
    tok.model_max_length = 77
    tok.save_pretrained(tmp_path / "tok")
    assert load_tokenizer(with_model(spec, tokenizer_name=str(tmp_path / "tok")).model).model_max_length == 77
    assert load_tokenizer(spec.model).model_max_length != 77


def test_loading_keys_are_validated_and_default_to_what_ran_before():
    raw = load_test_config()
    runs = plan(raw).runs
    run = next(r for r in runs.values() if r["model"]["name"] == "minilm")
    assert {
        k: run["model"][k] for k in ("dtype", "attn_implementation", "revision", "tokenizer_name", "trust_remote_code")
    } == {
        "dtype": "float32",
        "attn_implementation": None,
        "revision": None,
        "tokenizer_name": None,
        "trust_remote_code": False,
    }
    # set, a loading key reruns training, not tokenising
    bf16 = {**run, "model": {**run["model"], "dtype": "bfloat16"}}
    assert fingerprint(bf16, "train_run") != fingerprint(run, "train_run")
    tokenize = {"task": run["task"], "model": run["model"]}
    assert fingerprint({**tokenize, "model": bf16["model"]}, "data_tokenize") == fingerprint(tokenize, "data_tokenize")
    pinned = {**tokenize, "model": {**run["model"], "revision": "abc123"}}
    assert fingerprint(pinned, "data_tokenize") != fingerprint(tokenize, "data_tokenize")

    bad = load_test_config()
    bad["models"]["minilm"]["dtype"] = "float8"
    with pytest.raises(
        ConfigError, match=r"models.minilm.dtype: 'float8' is not one of \['float32', 'bfloat16', 'float16'\]"
    ):
        plan(bad)
    built = load_test_config()
    built["models"]["tiny-llama"]["revision"] = "main"
    with pytest.raises(ConfigError, match=r"models.tiny-llama.revision: a model the pipeline builds"):
        plan(built)
