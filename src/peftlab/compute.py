"""Running a loaded model on tokenised rows: device placement, batches, logits, loss and greedy generation.

The lowest layer the stages and the task types share; it knows no task type and no stage.
"""

from __future__ import annotations

import datasets
import torch

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def device_of(model) -> torch.device:
    """Where a model's weights are (the device its inputs must go to)."""
    return next(model.parameters()).device


def place(model):
    """The model on the job's one GPU when there is one (launch.Resources.single), else where it is."""
    return model.to("cuda") if torch.cuda.is_available() else model


def model_columns(ds: datasets.Dataset) -> list[str]:
    """The tokenised columns a model's forward takes (BERT-style pairs keep their token_type_ids)."""
    return [c for c in MODEL_INPUTS if c in ds.column_names]


def batches(ds: datasets.Dataset, size: int):
    for start in range(0, len(ds), size):
        yield ds.select(range(start, min(start + size, len(ds))))


@torch.no_grad()
def logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's float32 logits on `batch`, computed on the model's device, returned on the CPU."""
    model.eval()
    device = device_of(model)
    return model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()


@torch.no_grad()
def example_losses(model, tokenizer, ds: datasets.Dataset, batch_size: int) -> list[tuple[float, int]]:
    """(summed cross-entropy, labelled tokens) of every example, in order (prompt tokens are labelled -100).

    A decoder predicts token t+1 from t, so its first label has no prediction; an
    encoder-decoder predicts every label. The model's own loss is the token-weighted
    mean of these: `eval_loss`.
    """
    from transformers import DataCollatorForSeq2Seq

    shifted = not model.config.is_encoder_decoder
    pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    out = []
    for rows in batches(ds.select_columns(model_columns(ds)), batch_size):
        batch = pad(rows.to_list()).to(device_of(model))
        labels = batch.pop("labels")
        if not shifted:
            batch["labels"] = labels  # the decoder's inputs are the labels shifted right
        logits = model(**batch).logits.float()
        logits = logits[:, logits.shape[1] - labels.shape[1] :]  # prompt tuning prepends its virtual tokens' logits
        if shifted:
            logits, labels = logits[:, :-1], labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        out += zip(nll.sum(1).tolist(), (labels != -100).sum(1).tolist())
    return out


def eval_loss(model, tokenizer, ds: datasets.Dataset, batch_size: int) -> float:
    """Mean cross-entropy over the labelled tokens of `ds`."""
    return mean_loss(example_losses(model, tokenizer, ds, batch_size))


def mean_loss(losses: list[tuple[float, int]]) -> float:
    return sum(s for s, _ in losses) / max(sum(n for _, n in losses), 1)


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations of each prompt, batched; decoders get left padding, so every prompt ends where generation
    starts."""
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
