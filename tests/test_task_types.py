"""The task type registry: every type's contract on one example row, and a new type added the documented way.

Adding a task type is one module in `src/peftlab/tasks/`, one line in `TASK_TYPES`
and one row in `ROWS` below; `test_a_new_task_type_is_one_file_one_line_one_row`
does exactly that with a toy type in a temporary module and runs it through
tokenise, train and evaluate.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from dataclasses import dataclass, field, replace

import datasets
import pytest

from peftlab import dataset, evaluate, paths, tasks, train
from peftlab.models import load_tokenizer
from peftlab.spec import TaskSpec
from peftlab.tasks.base import TaskType


@dataclass
class Row:
    task: dict  # the TaskSpec fields beyond name, type and data
    example: dict  # one raw row of the data
    metrics: list[str]  # what evaluation reports
    main: str  # the metric tables compare by
    peft_task_type: str
    kept: list[str] = field(default_factory=list)  # raw columns kept beside the tokens


ROWS = {
    "classification": Row(
        {"text_fields": ["text"], "num_labels": 2},
        {"text": "a fine film", "label": 1},
        ["accuracy", "macro_f1", "f1", "precision", "recall", "mcc", "eval_loss"],
        "accuracy",
        "SEQ_CLS",
    ),
    "sft": Row(
        {"prompt_field": "question", "response_field": "answer"},
        {"question": "1 + 2", "answer": "#### 3"},
        ["exact_match", "eval_loss", "perplexity", "rouge1", "rouge2", "rougeL"],
        "exact_match",
        "CAUSAL_LM",
    ),
    "lm": Row(
        {"text_fields": ["text"]}, {"text": "once upon a time"}, ["eval_loss", "perplexity"], "perplexity", "CAUSAL_LM"
    ),
    "seq2seq": Row(
        {"prompt_field": "dialogue", "response_field": "summary", "prompt_template": "{prompt}"},
        {"dialogue": "Tom: hi. Li: hello.", "summary": "they greet"},
        ["rouge1", "rouge2", "rougeL", "eval_loss", "perplexity"],
        "rougeL",
        "SEQ_2_SEQ_LM",
    ),
    "rlvr": Row(
        {"rewards": ["countdown", "format"], "prompt_template": "Use {nums} to make {target}. {prompt}"},
        {"question": "Answer in <answer></answer>.", "nums": [3, 4], "target": 7},
        ["accuracy", "format"],
        "accuracy",
        "CAUSAL_LM",
        kept=["question", "nums", "target"],
    ),
}


def task_of(name: str, row: Row) -> TaskSpec:
    return TaskSpec(name="t", type=name, data={}, **row.task)


def check_row(name: str, row: Row, tokenizer) -> datasets.DatasetDict:
    """The type's contract on its row: the columns it reads, its tokens and labels, its metrics."""
    ttype, task = tasks.TASK_TYPES[name], task_of(name, row)
    assert set(ttype.columns(task)) <= set(row.example), "the type reads a column its example lacks"
    raw = datasets.DatasetDict({split: datasets.Dataset.from_list([row.example] * 2) for split in ("train", "eval")})
    tokenised = dataset.tokenize(task, tokenizer, raw)
    assert sorted(set(tokenised["train"].column_names) & set(row.example)) == sorted(row.kept)
    first = tokenised["train"][0]
    assert first["length"] == len(first["input_ids"]) > 0
    assert ttype.metric_names(task) == row.metrics and tasks.main_metric(task) == row.main
    assert ttype.peft_task_type == row.peft_task_type
    return tokenised


def test_every_task_type_has_a_row():
    assert set(ROWS) == set(tasks.TASK_TYPES)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_each_type_tokenises_its_row_and_names_its_metrics(name, tiny):
    work, runs = tiny
    model = runs["arith/tiny-llama/lora/r8-s1"]["model"]
    from peftlab.spec import ModelSpec

    model = ModelSpec.from_dict({**model, "path": str(work / model["path"])})
    check_row(name, ROWS[name], load_tokenizer(model))


def test_a_type_that_forgets_a_piece_fails_at_import_with_its_name():
    with pytest.raises(TypeError, match=r"task type Half \(.*\) lacks evaluate, answer"):

        class Half(TaskType):
            name, peft_task_type, encoder_decoder, loss_kwargs = "half", "CAUSAL_LM", False, True
            summary = "a type with pieces missing"

            def columns(self, task): ...
            def corpus_texts(self, task, rows): ...
            def encoder(self, task, tokenizer, label_ids): ...
            def load_model(self, path, task, tokenizer, label_names, kwargs): ...
            def collator(self, task, tokenizer): ...
            def trainer(self, spec, model, tokenizer, train_ds, validation, args, callbacks, make_optimizer): ...
            def metric_names(self, task): ...
            def default_metric(self, task): ...
            def input_column(self, task): ...


TOY = '''
"""toy_answers: a causal LM of the answers alone; reports greedy next-token accuracy."""

import torch

from peftlab import compute
from peftlab.tasks.base import Supervised, causal_lm, with_perplexity


class ToyAnswers(Supervised):
    name = "toy_answers"
    summary = "prompt -> short answer, scored by exact match"
    peft_task_type = "CAUSAL_LM"
    encoder_decoder = False
    loss_kwargs = True

    def columns(self, task):
        return [task.response_field]

    def corpus_texts(self, task, rows):
        texts = [str(r[task.response_field]) for r in rows]
        return texts, texts

    def encoder(self, task, tokenizer, label_ids):
        def encode(batch):
            texts = [str(a) + tokenizer.eos_token for a in batch[task.response_field]]
            enc = tokenizer(texts, truncation=True, max_length=task.max_length)
            return {**enc, "labels": enc["input_ids"]}

        return encode

    def load_model(self, path, task, tokenizer, label_names, kwargs):
        return causal_lm(path, kwargs)

    def collator(self, task, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)

    def metric_names(self, task):
        return ["token_accuracy", "eval_loss", "perplexity"]

    def default_metric(self, task):
        return "token_accuracy"

    @torch.no_grad()
    def evaluate(self, task, model, tokenizer, ds):
        pad = self.collator(task, tokenizer)
        hits = total = 0
        for rows in compute.batches(ds.select_columns(compute.model_columns(ds)), task.eval_batch_size):
            batch = pad(rows.to_list())
            predicted = model(**batch).logits[:, :-1].argmax(-1)
            labels = batch["labels"][:, 1:]
            hits += int(((predicted == labels) & (labels != -100)).sum())
            total += int((labels != -100).sum())
        loss = compute.eval_loss(model, tokenizer, ds, task.eval_batch_size)
        return {"token_accuracy": hits / total, **with_perplexity(loss)}

    def input_column(self, task):
        return task.response_field

    def answer(self, task, model, tokenizer, rows, label_names, max_new_tokens):
        ids = [tokenizer(str(r[task.response_field]))["input_ids"] for r in rows]
        return [{"output": t} for t in compute.generate(model, tokenizer, ids, max_new_tokens, task.eval_batch_size)]
'''


@pytest.mark.slow
def test_a_new_task_type_is_one_file_one_line_one_row(in_tiny, tmp_path, monkeypatch):
    # one file: the toy type's module, in a temporary package on the path
    (tmp_path / "toy_tasks").mkdir()
    (tmp_path / "toy_tasks" / "__init__.py").write_text("")
    (tmp_path / "toy_tasks" / "answers.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_tasks.answers")
    # one registry line
    monkeypatch.setitem(tasks.TASK_TYPES, "toy_answers", module.ToyAnswers())
    # one test row, checked like every other type's
    row = Row(
        {"response_field": "answer"},
        {"answer": "#### 12"},
        ["token_accuracy", "eval_loss", "perplexity"],
        "token_accuracy",
        "CAUSAL_LM",
    )
    monkeypatch.setitem(ROWS, "toy_answers", row)
    base = in_tiny("lora", max_steps=30, learning_rate=5e-3, logging_steps=5, save_steps=1000)
    tokenizer = load_tokenizer(base.model)
    check_row("toy_answers", row, tokenizer)

    # tokenise, train and evaluate, through the stages' own functions
    root = base.data_dir.rsplit("/data/", 1)[0]
    task = replace(base.task, type="toy_answers", data={"files": paths.raw_files(root, "arith")})
    tokenised = dataset.tokenize(task, tokenizer, dataset.load_raw(task))
    assert tokenised["train"].column_names == ["input_ids", "attention_mask", "labels", "length"]
    tokenised.save_to_disk(str(tmp_path / "data"))
    spec = replace(base, task=task, data_dir=str(tmp_path / "data"), run_id="arith/tiny-llama/lora/toy")
    record = train.train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "checkpoints")
    assert record["final_loss"] < 0.8 * record["first_loss"], record["losses"]
    assert record["reload_max_abs_diff"] <= record["reload_tolerance"]  # reloaded through the toy's own head
    result, predictions = evaluate.evaluate(spec, str(tmp_path / "adapter"))
    assert predictions == []  # a task type without per-example rows still evaluates
    assert result["task_type"] == "toy_answers"
    assert set(result["metrics"]) == {"token_accuracy", "eval_loss", "perplexity"}
    assert (
        0.3 < result["metrics"]["token_accuracy"] <= 1.0
    )  # "####" and the digits are learnable from the answers alone
    assert tasks.main_metric(spec.task) == "token_accuracy"
    sys.modules.pop("toy_tasks.answers", None)
    sys.modules.pop("toy_tasks", None)
