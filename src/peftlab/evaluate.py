"""Evaluate a trained run with its task's metric, on the held-out split.

    python -m peftlab.evaluate --spec results/specs/runs/<run_id>.json \
        --adapter results/runs/<run_id>/adapter --out results/runs/<run_id>/eval.json

The adapter is loaded onto an untouched base model, as a user would load it.
Classification: accuracy and macro-F1. SFT: eval loss and perplexity on the
response tokens, and exact match of the extracted final answer from batched,
greedy, left-padded generation.
"""

from __future__ import annotations

import logging
import math

import datasets
import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

from peftlab import artifacts, cli, methods, metrics
from peftlab.models import device_of, load_tokenizer
from peftlab.spec import RunSpec

log = logging.getLogger(__name__)


def load_trained(spec: RunSpec, adapter: str, quantized: bool = True):
    """The untouched base with the adapter loaded, and its tokenizer (right padding).

    A quantised method (QLoRA) gets its quantised base unless `quantized=False`.
    """
    tokenizer = load_tokenizer(spec.model)
    return methods.load(spec, adapter, tokenizer, quantized).eval(), tokenizer


def batches(ds: datasets.Dataset, size: int):
    for start in range(0, len(ds), size):
        yield ds.select(range(start, min(start + size, len(ds))))


@torch.no_grad()
def evaluate_classification(model, tokenizer, ds, batch_size: int) -> dict:
    pad = DataCollatorWithPadding(tokenizer)
    predictions, labels = [], []
    for rows in batches(ds.select_columns(["input_ids", "attention_mask", "labels"]), batch_size):
        batch = pad(rows.to_list())
        labels += batch.pop("labels").tolist()
        predictions += model(**batch.to(device_of(model))).logits.argmax(-1).tolist()
    return metrics.classification(labels, predictions)


@torch.no_grad()
def eval_loss(model, tokenizer, ds, batch_size: int) -> float:
    """Mean cross-entropy over response tokens (prompt tokens are labelled -100)."""
    pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    total, count = 0.0, 0
    for rows in batches(ds.select_columns(["input_ids", "attention_mask", "labels"]), batch_size):
        batch = pad(rows.to_list()).to(device_of(model))
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += model(**batch).loss.item() * n
        count += n
    return total / max(count, 1)


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations of each prompt, batched with left padding."""
    tokenizer.padding_side = "left"
    outputs = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": chunk}, return_tensors="pt").to(device_of(model))
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        outputs += tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return outputs


def evaluate(spec: RunSpec, adapter: str) -> dict:
    prov = artifacts.Provenance(spec.to_dict())
    task = spec.task
    ds = datasets.load_from_disk(spec.data_dir)["eval"]
    bs = task.eval_batch_size
    model, tokenizer = load_trained(spec, adapter)
    if torch.cuda.is_available():  # the job's one GPU (launch.Resources.single)
        model.to("cuda")
    if task.type == "classification":
        result = evaluate_classification(model, tokenizer, ds, bs)
    else:
        loss = eval_loss(model, tokenizer, ds, bs)  # right padding: positions match training
        texts = generate(model, tokenizer, ds["prompt_ids"], task.max_new_tokens, bs)
        result = {
            "eval_loss": loss,
            "perplexity": math.exp(min(loss, 50)),
            "exact_match": metrics.exact_match(texts, ds["response"], task.answer_format),
            "samples": [{"reference": r, "generated": g} for r, g in zip(ds["response"][:5], texts[:5])],
        }
    return {"run_id": spec.run_id, "task_type": task.type, "examples": len(ds), "metrics": result, **prov.record()}


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--adapter", required=True, help="trained adapter folder")
    p.add_argument("--out", required=True, help="eval.json to write")
    args = p.parse_args(argv)
    record = evaluate(RunSpec.from_dict(cli.start(args)), args.adapter)
    artifacts.write_json(args.out, record)
    log.info("%s: %s", record["run_id"], {k: v for k, v in record["metrics"].items() if k != "samples"})


if __name__ == "__main__":
    main()
