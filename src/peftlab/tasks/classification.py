"""classification: text field(s) -> a label; num_labels 1 is regression (STS-B: float labels, MSE loss).

Tokenised: input_ids of one or two text fields, integer labels (float for regression).
Evaluated: accuracy, macro-F1, F1, precision, recall, Matthews correlation; regression:
Pearson, Spearman, MSE. Inference answers the label (its name when the classes have
names) and the class probabilities, or the regression score.
"""

from __future__ import annotations

import math

from peftlab.tasks.base import Supervised

CLASS_METRICS = [
    "accuracy",
    "macro_f1",
    "f1",
    "precision",
    "recall",
    "mcc",
    "eval_loss",
]  # eval_loss: mean cross-entropy
REGRESSION_METRICS = ["pearson", "spearman", "mse"]


class Classification(Supervised):
    name = "classification"
    summary = "text fields -> label (num_labels 1: regression)"
    peft_task_type = "SEQ_CLS"
    encoder_decoder = False
    loss_kwargs = False  # the sequence-classification heads return a per-batch mean

    def columns(self, task):
        return [*task.text_fields, task.label_field]

    def label_column(self, task):
        return task.label_field

    def corpus_texts(self, task, rows):
        texts = [" ".join(str(r[f]) for f in task.text_fields) for r in rows]
        return texts, texts

    def class_names(self, task, ds):
        """The task's label_names, else the sorted names of the training split; None when the labels are numbers."""
        if task.num_labels == 1:
            return None
        if task.label_names is not None:
            return list(task.label_names)
        values = [v for v in ds["train"][task.label_field] if v is not None]
        if not any(isinstance(v, str) for v in values):
            return None
        return sorted({str(v) for v in values})

    def label_problems(self, task, values, names):
        if task.num_labels == 1:
            bad = [i for i, v in enumerate(values) if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v]
            return bad, "a number for regression (num_labels 1)"
        if names is not None:
            bad = [
                i
                for i, v in enumerate(values)
                if str(v) not in names and not (isinstance(v, int) and 0 <= v < len(names))
            ]
            return bad, f"one of {names}"
        bad = [
            i
            for i, v in enumerate(values)
            if not isinstance(v, (int, float))
            or isinstance(v, bool)
            or not math.isfinite(v)
            or v != int(v)
            or not 0 <= v < task.num_labels
        ]
        return (
            bad,
            f"an integer from 0 to {task.num_labels - 1} (num_labels {task.num_labels}); class names need "
            "label_names or string labels",
        )

    def encoder(self, task, tokenizer, label_ids):
        def as_label(x):  # regression: MSE on float labels; classes: an id, or a name's position
            return float(x) if task.num_labels == 1 else label_ids[x] if isinstance(x, str) else int(x)

        def encode(batch):
            enc = tokenizer(*[batch[f] for f in task.text_fields], truncation=True, max_length=task.max_length)
            return {**enc, "labels": [as_label(x) for x in batch[task.label_field]]}

        return encode

    def load_model(self, path, task, tokenizer, label_names, kwargs):
        from transformers import AutoModelForSequenceClassification

        if label_names:
            kwargs = {
                **kwargs,
                "id2label": dict(enumerate(label_names)),
                "label2id": {n: i for i, n in enumerate(label_names)},
            }
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=task.num_labels, **kwargs)
        if model.config.pad_token_id is None and tokenizer is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return model

    def model_from_config(self, config, task, trust_remote_code=False):
        from transformers import AutoModelForSequenceClassification

        config.num_labels = task.num_labels
        return AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)

    def collator(self, task, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def kind(self, task):
        return "regression" if task.num_labels == 1 else self.name

    def metric_names(self, task):
        return REGRESSION_METRICS if task.num_labels == 1 else CLASS_METRICS

    def default_metric(self, task):
        return "pearson" if task.num_labels == 1 else "accuracy"

    def evaluate(self, task, model, tokenizer, ds):
        import torch
        from transformers import DataCollatorWithPadding

        from peftlab import compute, metrics

        pad = DataCollatorWithPadding(tokenizer)
        predictions, labels, loss_sum = [], [], 0.0
        with torch.no_grad():
            for rows in compute.batches(ds.select_columns(compute.model_columns(ds)), task.eval_batch_size):
                batch = pad(rows.to_list())
                y = batch.pop("labels")
                labels += y.tolist()
                out = model(**batch.to(compute.device_of(model))).logits.float()
                predictions += (out[:, 0] if task.num_labels == 1 else out.argmax(-1)).tolist()
                if task.num_labels > 1:
                    loss_sum += torch.nn.functional.cross_entropy(out, y.to(out.device), reduction="sum").item()
        if task.num_labels == 1:
            rows = [{"id": i, "prediction": p, "reference": y} for i, (p, y) in enumerate(zip(predictions, labels))]
            return {**metrics.regression(labels, predictions), "predictions": rows}
        rows = [
            {"id": i, "prediction": p, "reference": y, "correct": p == y}
            for i, (p, y) in enumerate(zip(predictions, labels))
        ]
        return {
            **metrics.classification(labels, predictions, task.num_labels),
            "eval_loss": loss_sum / max(len(labels), 1),
            "predictions": rows,
        }

    def input_column(self, task):
        return task.text_fields[0]

    def answer(self, task, model, tokenizer, rows, label_names, max_new_tokens):
        import torch

        from peftlab import compute

        enc = tokenizer(
            *[[str(r[f]) for r in rows] for f in task.text_fields],
            truncation=True,
            max_length=task.max_length,
            padding=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            logits = model(**enc.to(compute.device_of(model))).logits.float().cpu()
        if task.num_labels == 1:
            return [{"score": float(s)} for s in logits[:, 0]]
        names = label_names  # string labels: answer with the class names
        return [
            {
                "label": names[int(p.argmax())] if names else int(p.argmax()),
                "probabilities": [round(float(x), 6) for x in p],
                **({"label_names": names} if names else {}),
            }
            for p in logits.softmax(-1)
        ]
