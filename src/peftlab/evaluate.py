"""Evaluate a trained run with its task's metric, on the held-out split.

    python -m peftlab.evaluate --spec results/default/specs/evaluate_run/<run_id>.json \
        --adapter results/default/runs/<run_id>/adapter --out results/default/runs/<run_id>/eval.json

The adapter is loaded onto an untouched base model, as a user would load it.
Generation is greedy and batched (left-padded for decoders).
- classification: accuracy, macro-F1, F1, precision, recall, Matthews correlation;
  regression (num_labels 1): Pearson, Spearman, MSE;
- sft: eval loss and perplexity on the response tokens; exact match of the
  extracted final answer (answer_format); ROUGE when `rouge: true`;
- lm: eval loss and perplexity;
- seq2seq: ROUGE-1/2/L of the generations, eval loss and perplexity;
- rlvr: accuracy (the first reward scores 1 on the greedy answer), the share in
  the answer format, and the mean of every reward.
"""

from __future__ import annotations

import logging
import math

import datasets
import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

from peftlab import artifacts, cli, methods, metrics, rewards
from peftlab.data import eval_names
from peftlab.models import device_of, load_tokenizer
from peftlab.spec import RunSpec, TaskSpec
from peftlab.train import model_columns

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
def predict(model, tokenizer, ds, batch_size: int, num_labels: int) -> tuple[list, list]:
    """(labels, predictions) of a classifier: the argmax class, or the score of a regression head."""
    pad = DataCollatorWithPadding(tokenizer)
    predictions, labels = [], []
    for rows in batches(ds.select_columns(model_columns(ds)), batch_size):
        batch = pad(rows.to_list())
        labels += batch.pop("labels").tolist()
        out = model(**batch.to(device_of(model))).logits.float()
        predictions += (out[:, 0] if num_labels == 1 else out.argmax(-1)).tolist()
    return labels, predictions


@torch.no_grad()
def eval_loss(model, tokenizer, ds, batch_size: int) -> float:
    """Mean cross-entropy over the labelled tokens (prompt tokens are labelled -100).

    A decoder predicts token t+1 from t, so its first label has no prediction; an
    encoder-decoder predicts every label.
    """
    shifted = not model.config.is_encoder_decoder
    pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    total, count = 0.0, 0
    for rows in batches(ds.select_columns(model_columns(ds)), batch_size):
        batch = pad(rows.to_list()).to(device_of(model))
        labels = batch["labels"][:, 1:] if shifted else batch["labels"]
        n = int((labels != -100).sum())
        total += model(**batch).loss.item() * n
        count += n
    return total / max(count, 1)


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations of each prompt, batched; decoders get left padding, so every prompt ends where generation starts."""
    encoder_decoder = model.config.is_encoder_decoder
    tokenizer.padding_side = "right" if encoder_decoder else "left"
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
        new = generated if encoder_decoder else generated[:, batch["input_ids"].shape[1] :]
        outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    tokenizer.padding_side = "right"
    return outputs


def with_perplexity(loss: float) -> dict[str, float]:
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50))}


def samples(references: list[str], generated: list[str], n: int = 5) -> list[dict]:
    return [{"reference": r, "generated": g} for r, g in zip(references[:n], generated[:n])]


def task_metrics(task: TaskSpec, model, tokenizer, ds: datasets.Dataset) -> dict:
    """The task's metrics on one held-out split."""
    bs = task.eval_batch_size
    if task.type == "classification":
        labels, predictions = predict(model, tokenizer, ds, bs, task.num_labels)
        if task.num_labels == 1:
            return metrics.regression(labels, predictions)
        return metrics.classification(labels, predictions, task.num_labels)
    if task.type == "lm":
        return with_perplexity(eval_loss(model, tokenizer, ds, bs))
    if task.type == "seq2seq":
        texts = generate(model, tokenizer, ds["input_ids"], task.max_new_tokens, bs)
        loss = eval_loss(model, tokenizer, ds, bs)
        return {**metrics.rouge(texts, ds["response"]), **with_perplexity(loss), "samples": samples(ds["response"], texts)}
    if task.type == "rlvr":
        texts = generate(model, tokenizer, ds["input_ids"], task.max_new_tokens, bs)
        columns = {c: ds[c] for c in rewards.columns(task.rewards)}
        scores = {r: rewards.REWARDS[r](texts, **columns) for r in task.rewards}
        correct = scores[task.rewards[0]]
        return {
            "accuracy": sum(s == 1.0 for s in correct) / max(len(correct), 1),
            "format": sum(map(rewards.format_score, texts)) / max(len(texts), 1),
            "mean_reward": {r: sum(v) / max(len(v), 1) for r, v in scores.items()},
            "samples": [{"prompt": p[-200:], "generated": g, "score": s} for p, g, s in zip(ds["prompt"][:5], texts[:5], correct[:5])],
        }
    # sft; right padding for the loss: positions match training
    result = with_perplexity(eval_loss(model, tokenizer, ds, bs))
    texts = generate(model, tokenizer, ds["prompt_ids"], task.max_new_tokens, bs)
    if task.answer_format != "none":
        result["exact_match"] = metrics.exact_match(texts, ds["response"], task.answer_format)
    if task.rouge:
        result.update(metrics.rouge(texts, ds["response"]))
    return {**result, "samples": samples(ds["response"], texts)}


def evaluate(spec: RunSpec, adapter: str) -> dict:
    """The task's metrics on its held-out split; with named splits (MNLI's matched and
    mismatched), the first one's at the top and every one's under `splits`."""
    prov = artifacts.Provenance(spec.to_dict())
    data = datasets.load_from_disk(spec.data_dir)
    model, tokenizer = load_trained(spec, adapter)
    if torch.cuda.is_available():  # the job's one GPU (launch.Resources.single)
        model.to("cuda")
    names = eval_names(spec.task)
    by_split = {split: task_metrics(spec.task, model, tokenizer, data[split]) for split in names}
    result = by_split["eval"]
    if names["eval"] is not None:
        result = {**result, "splits": {names[split]: m for split, m in by_split.items()}}
    examples = sum(len(data[split]) for split in names)
    return {"run_id": spec.run_id, "task_type": spec.task.type, "examples": examples, "metrics": result, **prov.record()}


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
