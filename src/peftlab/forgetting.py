"""Forgetting: how far fine-tuning moved a model away from its base, measured on reference text.

A task's `reference:` (config.schema.yaml) names held-out text unlike the fine-tuning data; the
evaluate stage scores it with the base model and the tuned one (`measure`) and records the result in
eval.json under `forgetting`:

- a model with a language-model head (a decoder; an encoder-decoder): the mean token cross-entropy
  of the reference texts with the base and with the tuned model, and the rise, tuned − base
  (`loss_rise`; HF peft's method_comparison "forgetting", Biderman et al. 2024, "LoRA Learns Less and
  Forgets Less", arXiv:2405.09673). A decoder scores `bos + text + eos` as a language model; an
  encoder-decoder reads each text and scores it as its own target (reconstruction: the tiny T5's
  pre-training objective);
- a model without one (a classifier): the drift of its representations, 1 − linear CKA
  (Kornblith et al. 2019) between the base's and the tuned model's final hidden states, mean-pooled
  per text over its attention mask (`cka_drift`).

The base is the tuned model with its adapter disabled (peft's `disable_adapter`), or, where the tuned
weights replaced the base's (method `full`, a merged model), a base loaded beside it. Plain functions
of a model, a tokenizer and texts: no stage, no Snakemake.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import datasets
import torch

from peftlab import artifacts, cli, dataset, tasks
from peftlab.compute import device_of, example_losses, mean_loss
from peftlab.generators import GENERATORS
from peftlab.spec import ModelSpec, TaskSpec

BUILD_RECORD = (
    "build.json"  # what peftlab.build writes into a built model's folder: its spec, the corpus task's included
)


class ReferenceTextError(cli.ClearError, ValueError):
    """Reference texts that cannot be read: a missing or empty file, a JSON line without `text`, a model with no
    corpus."""


# --- the reference texts ---------------------------------------------------------------


def reference_texts(reference: dict, model: ModelSpec | None = None) -> list[str]:
    """The texts of a task's `reference:` (at most `num` of them), in order.

    file: a `.jsonl` file holds one JSON object a line and its `text`; any other file one text a line
    (blank lines skipped). generator: `num` rows of a peftlab.generators generator, drawn from a seed
    stream of their own (never the task's training or held-out rows), each row's text fields joined by
    a newline. pretraining: the held-out split of the corpus a built model was pretrained on, as its
    build pretrained on it (`pretraining_texts`).
    """
    n = reference["num"]
    if reference.get("file") is not None:
        texts = read_texts(reference["file"])
    elif reference.get("generator") is not None:
        rows = GENERATORS[reference["generator"]](n, random.Random(f"{reference['seed']}-reference"))
        texts = ["\n".join(v for v in row.values() if isinstance(v, str)) for row in rows]
    elif reference.get("pretraining"):
        if model is None or not model.build:
            raise ReferenceTextError(
                "reference.pretraining: the model is not one the pipeline builds; its pre-training corpus is unknown"
            )
        texts = pretraining_texts(Path(model.path))
    else:
        raise ReferenceTextError(f"reference: {reference} names no text; give one of file, generator, pretraining")
    return texts[:n]


def read_texts(file: str | Path) -> list[str]:
    """A reference file's texts: `.jsonl`, the `text` of each line's object; any other, each non-blank line."""
    path = Path(file)
    where = f"reference.file: {file}"
    if not path.is_file():
        raise ReferenceTextError(f"{where} does not exist (or is not a file)")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix != ".jsonl":
        texts = [line for line in lines if line.strip()]
    else:
        texts = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReferenceTextError(f"{where}, line {i}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ReferenceTextError(f'{where}, line {i}: needs an object with a string "text" field')
            texts.append(row["text"])
    if not texts:
        raise ReferenceTextError(f"{where} holds no text")
    return texts


def pretraining_texts(folder: Path) -> list[str]:
    """The held-out split of a built model's pre-training corpus: its corpus task's first held-out split, turned into
    text as peftlab.tiny pretrains on it (the task type's `corpus_texts`: for a prompt -> response task, the responses).
    Texts of the distribution the base learned, which neither its pre-training nor a run's fine-tuning saw."""
    record = folder / BUILD_RECORD
    if not record.exists():
        raise ReferenceTextError(
            f"reference.pretraining: {folder} has no {BUILD_RECORD}, so its pre-training corpus is unknown; "
            "build it with python -m peftlab.build"
        )
    task = TaskSpec.from_dict(artifacts.read_json(record)["spec"]["corpus_task"])
    return tasks.of(task).corpus_texts(task, dataset.load_raw(task)["eval"])[1]


# --- the measure ------------------------------------------------------------------------


def has_lm_head(model) -> bool:
    """Whether `model` (or the base under a peft model) predicts tokens: a decoder's or an encoder-decoder's LM head."""
    return model.get_output_embeddings() is not None


def measure(tuned, tokenizer, texts: list[str], base=None, max_length: int = 128, batch_size: int = 32) -> dict:
    """Forgetting of `tuned` on `texts`: the loss rise for a model with an LM head, else 1 − linear CKA.

    `base`: the untouched base, for a tuned model that is not a peft model (full fine-tuning, a merged
    model); None: `tuned` with its adapter disabled. Texts are truncated to `max_length` tokens.
    """
    if base is None and not hasattr(tuned, "disable_adapter"):
        raise TypeError("measure: the tuned model has no adapter to disable; pass its base")
    lm = has_lm_head(tuned)
    score = _loss if lm else _pooled
    with tuned.disable_adapter() if base is None else contextlib.nullcontext():
        before = score(tuned if base is None else base, tokenizer, texts, max_length, batch_size)
    after = score(tuned, tokenizer, texts, max_length, batch_size)
    if lm:
        (base_loss, tokens), (tuned_loss, _) = before, after
        return {
            "measure": "loss_rise",
            "texts": len(texts),
            "tokens": tokens,
            "base_loss": base_loss,
            "tuned_loss": tuned_loss,
            "value": tuned_loss - base_loss,
        }
    cka = linear_cka(before, after)
    return {"measure": "cka_drift", "texts": len(texts), "cka": cka, "value": 1.0 - cka}


def lm_rows(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Each text's token ids as a language model scores it: after the tokenizer's BOS and ending in its EOS (where it
    has them, added unless the tokenizer adds them itself), at most `max_length` ids (a longer text is cut before its
    EOS)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    rows = []
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        if eos is not None and (not ids or ids[-1] != eos):
            ids = [*ids, eos]
        if len(ids) > max_length:
            ids = ids[: max_length - 1] + [eos] if eos is not None else ids[:max_length]
        rows.append(ids)
    return rows


def _loss(model, tokenizer, texts, max_length, batch_size) -> tuple[float, int]:
    """(mean token cross-entropy, tokens scored) of the texts: a decoder predicts each token after the first; an
    encoder-decoder reads the text and predicts all of it (peftlab.compute.example_losses)."""
    rows = sorted(lm_rows(tokenizer, texts, max_length), key=len)  # batches of like lengths: little padding
    ds = datasets.Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows], "labels": rows})
    losses = example_losses(model.eval(), tokenizer, ds, batch_size)
    return mean_loss(losses), sum(n for _, n in losses)


@torch.no_grad()
def _pooled(model, tokenizer, texts, max_length, batch_size) -> torch.Tensor:
    """(texts, hidden size) float64: each text's final hidden states, mean-pooled over its attention mask."""
    model.eval()
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    order = sorted(
        range(len(texts)), key=lambda i: len(encoded["input_ids"][i])
    )  # batches of like lengths: little padding
    out = []
    for start in range(0, len(order), batch_size):
        rows = [{k: v[i] for k, v in encoded.items()} for i in order[start : start + batch_size]]
        batch = tokenizer.pad(rows, return_tensors="pt").to(device_of(model))
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1].double()
        hidden = hidden[
            :, hidden.shape[1] - batch["attention_mask"].shape[1] :
        ]  # prompt tuning prepends its virtual tokens
        mask = batch["attention_mask"].unsqueeze(-1).double()
        out.append(((hidden * mask).sum(1) / mask.sum(1)).cpu())
    pooled = torch.cat(out)
    return pooled[torch.argsort(torch.tensor(order))]  # back in the texts' order


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same n examples, x (n, p) and y (n, q), in float64.

    Kornblith, Norouzi, Lee, Hinton 2019, "Similarity of Neural Network Representations Revisited" (ICML), §3:
    with the columns centred, CKA = ‖yᵀx‖²_F / (‖xᵀx‖_F ‖yᵀy‖_F). Written here with the n × n Gram matrices
    K = xxᵀ and L = yyᵀ (‖yᵀx‖²_F = ⟨K, L⟩_F and ‖xᵀx‖_F = ‖K‖_F), which costs n²(p + q) whatever the width.
    1 for representations equal up to an orthogonal map and an isotropic scale; invariant to neither other map.
    """
    x, y = x.double(), y.double()
    x, y = x - x.mean(0), y - y.mean(0)
    k, l_ = x @ x.T, y @ y.T
    return ((k * l_).sum() / (k.norm() * l_.norm())).item()
