"""Which layers a method adapts: `peft.target_modules` in a config.

- left out, or `default`: the method's default for the architecture (peft's table;
  LoRA-style methods adapt the attention query and value projections). The spec
  records it as null.
- empty (`target_modules:` in YAML, null), `[]` or `all-linear`: every linear layer
  except the output head and the classifier (`peftlab.validate` turns null into
  `all-linear` before the schema sees it).
- a preset name (PRESETS below, per model family), e.g. `llama` or `bert-attn`.
- a list of module-name suffixes, e.g. `[q_proj, v_proj]` or `[attention.self.query]`.

Suffixes are checked when the config is parsed, against the linear layers of
the model's family (read from the model's config.json when the model is local,
guessed from a hub id's name otherwise). Pure Python: no torch at parse time.
"""

from __future__ import annotations

import functools
import json
import re
from importlib.util import find_spec
from pathlib import Path

LINEAR = {  # every linear layer's last name component in a block, per family
    "llama": [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ],  # Llama, Qwen2/3, Mistral, DeepSeek-R1-Distill
    "bert": [
        "query",
        "key",
        "value",
        "dense",
    ],  # BERT, RoBERTa, MiniLM (dense: attention.output, intermediate, output, pooler)
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # GPT-2 (Conv1D layers)
    "t5": ["q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1"],  # T5, Flan-T5, mT5
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],  # DistilBERT (lin1/lin2: the feed-forward)
    "bart": [
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "fc1",
        "fc2",
    ],  # BART, mBART (encoder and decoder attention, feed-forward)
    "gpt_neo": [
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "c_fc",
        "c_proj",
    ],  # GPT-Neo (plain Linear layers, unlike GPT-2)
}
PRESETS = {
    "llama": LINEAR["llama"],
    "llama-attn": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "llama-mlp": ["gate_proj", "up_proj", "down_proj"],
    "bert": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    "bert-attn": ["query", "key", "value", "attention.output.dense"],
    "gpt2": LINEAR["gpt2"],
    "gpt2-attn": ["attn.c_attn", "attn.c_proj"],
    "t5": LINEAR["t5"],
    "t5-attn": ["q", "k", "v", "o"],
    "distilbert": LINEAR["distilbert"],
    "distilbert-attn": ["q_lin", "k_lin", "v_lin", "out_lin"],
    "bart": LINEAR["bart"],
    "bart-attn": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "gpt_neo": LINEAR["gpt_neo"],
    "gpt_neo-attn": [
        "attn.attention.q_proj",
        "attn.attention.k_proj",
        "attn.attention.v_proj",
        "attn.attention.out_proj",
    ],
}
FAMILY_OF_MODEL_TYPE = {
    **dict.fromkeys(
        ["llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma", "gemma2", "phi3"], "llama"
    ),
    **dict.fromkeys(["bert", "roberta", "xlm-roberta", "electra", "deberta", "deberta-v2"], "bert"),
    "gpt2": "gpt2",
    **dict.fromkeys(["t5", "mt5", "umt5"], "t5"),
    "distilbert": "distilbert",
    **dict.fromkeys(["bart", "mbart"], "bart"),
    "gpt_neo": "gpt_neo",
}
FAMILY_OF_NAME = [  # hub ids, when no config.json can be read at parse time; the first match wins
    (re.compile(r"distilbert", re.I), "distilbert"),
    (re.compile(r"gpt-neo(?!x)", re.I), "gpt_neo"),
    (re.compile(r"(^|[/-])m?bart", re.I), "bart"),
    (re.compile(r"llama|qwen|mistral|deepseek|gemma|phi-3", re.I), "llama"),
    (re.compile(r"bert|minilm|electra|deberta", re.I), "bert"),
    (re.compile(r"gpt2|gpt-2", re.I), "gpt2"),
    (re.compile(r"(^|[/-])t5|flan-t5", re.I), "t5"),
]
ENCODER_ONLY = ("bert", "distilbert")  # families without a generating head: they classify
ENCODER_DECODER = ("t5", "bart")  # families with an encoder-decoder, which seq2seq tasks need
ALL_LINEAR = ("all-linear",)
HEADS = ("lm_head", "classifier", "score", "qa_outputs", "cls")


class TargetError(ValueError):
    pass


def _config_json(path: str) -> Path | None:
    if path.startswith("package:"):
        spec = find_spec(path.removeprefix("package:"))
        if spec is None or not spec.submodule_search_locations:
            return None
        root = Path(next(iter(spec.submodule_search_locations)))
        return next((p for p in (root / "model" / "config.json", root / "config.json") if p.exists()), None)
    p = Path(path) / "config.json"
    return p if p.exists() else None


@functools.lru_cache(maxsize=None)
def _local_config(path: str) -> dict | None:
    """A local or packaged model's config.json, read once per parse; None for a hub id."""
    config = _config_json(path)
    return json.loads(config.read_text()) if config is not None else None


def family(model: dict) -> str | None:
    """The model family of a config's model entry (`path` or `build`), or None if unknown."""
    if "build" in model:
        return model["build"].get(
            "arch", "llama"
        )  # the pipeline builds Llama or T5 models (families of the same names)
    config = _local_config(model["path"])
    if config is not None:
        return FAMILY_OF_MODEL_TYPE.get(config.get("model_type"))
    return next((fam for pattern, fam in FAMILY_OF_NAME if pattern.search(model["path"])), None)


def model_config(model: dict) -> dict | None:
    """What parsing can know of a model's shape: a built model's `build` settings, or a local
    folder's (or a package's) config.json; None for a hub id (no network at parse time)."""
    if "build" in model:
        return {"model_type": model["build"].get("arch", "llama"), **model["build"]}
    return _local_config(model["path"])


def width(config: dict) -> int | None:
    """The model's hidden width under its architecture's name for it."""
    return next(
        (config[k] for k in ("hidden_size", "d_model", "n_embd", "dim") if isinstance(config.get(k), int)), None
    )


BUILT_MAX_POSITIONS = 512  # position embeddings of the Llama that peftlab.build builds


def max_positions(config: dict) -> int | None:
    """The longest input the model's position embeddings cover (None: no such limit, as with T5's relative
    positions)."""
    if config.get("model_type") in ("t5", "mt5", "umt5"):
        return None
    if "corpus_task" in config:  # a model the pipeline builds
        return BUILT_MAX_POSITIONS
    return next((config[k] for k in ("max_position_embeddings", "n_positions") if isinstance(config.get(k), int)), None)


def check(targets, model: dict, where: str) -> None:
    """Raise TargetError for an unknown preset, a preset of another model family, or a suffix
    that names no linear layer of the model's family."""
    if targets is None or targets == [] or targets in ALL_LINEAR:
        return
    fam = family(model)
    if isinstance(targets, str):
        if targets not in PRESETS:
            raise TargetError(
                f"{where}: unknown preset {targets!r}; allowed: default, all-linear, {', '.join(PRESETS)}, or a "
                "list of module suffixes"
            )
        preset_family = targets.split("-")[0]
        if fam is not None and preset_family != fam:
            same = [p for p in PRESETS if p.split("-")[0] == fam]
            raise TargetError(
                f"{where}: preset {targets!r} is for the {preset_family} family, but the model is {fam}; "
                f"allowed: {', '.join(same)}"
            )
        return
    known = set(LINEAR[fam]) if fam else {n for names in LINEAR.values() for n in names}
    for t in targets:
        if t.split(".")[-1] not in known:
            what = f"the {fam} family" if fam else "any known model family"
            raise TargetError(
                f"{where}: {t!r} names no linear layer of {what}; allowed suffixes: {', '.join(sorted(known))}"
            )


def resolve(model, targets, default: str | None = None) -> list[str] | None:
    """Config value -> what the peft config gets: None (peft's default), or a list of module names.

    `default` is the method's own choice when the config says null (BitFit: all-linear).
    """
    targets = default if targets is None else targets
    if targets is None:
        return None
    if isinstance(targets, str) and targets in PRESETS:
        return list(PRESETS[targets])
    if targets == [] or targets in ALL_LINEAR:
        return all_linear(model)
    return list(targets)


def all_linear(model) -> list[str]:
    """Full names of every linear layer except the output embeddings and classification heads."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, Conv1D)) or module is head:
            continue
        if any(part in HEADS for part in name.split(".")):
            continue
        names.append(name)
    return names
