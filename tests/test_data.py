"""Loading and tokenising each task type's data in its real file format."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import pytest

from peftlab import dataset
from peftlab.models import load_tokenizer
from peftlab.spec import ModelSpec, TaskSpec
from peftlab.tasks.base import format_prompt


@pytest.fixture
def tokenizer(tiny):
    work, _ = tiny
    return load_tokenizer(ModelSpec(name="tiny-llama", path=str(work / "results/test/models/tiny-llama")))


def task(tmp_path: Path, type_: str, rows: list[dict], **keys) -> TaskSpec:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return TaskSpec(name="t", type=type_, data={"files": {"train": str(path), "eval": str(path)}}, **keys)


def test_glue_tsv_loads_with_bare_quotes_and_renamed_columns(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text(
        'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said "yes .\tHe agreed .\n0\t3\t4\tIt '
        'rained\tIt was "sunny"\n'
    )
    t = TaskSpec(
        name="mrpc",
        type="classification",
        data={"files": {"train": str(tsv), "eval": str(tsv)}},
        columns={"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"},
        text_fields=["sentence1", "sentence2"],
    )
    raw = dataset.load_raw(t)
    assert raw["train"]["sentence1"] == ['He said "yes .', "It rained"] and raw["eval"]["label"] == [1, 0]


def test_a_missing_column_names_it_and_the_columns_there_are(tmp_path, tokenizer):
    t = task(tmp_path, "sft", [{"question": "q", "solution": "a"}], response_field="answer")
    with pytest.raises(
        ValueError,
        match=r"task 't', split train: missing column\(s\) \['answer'\]; the data has \['question', 'solution'\]",
    ):
        dataset.tokenize(t, tokenizer, dataset.load_raw(t))
    t = task(
        tmp_path,
        "rlvr",
        [{"target": 3}],
        prompt_field="target",
        prompt_template="{nums} -> {target}",
        rewards=["countdown"],
    )
    with pytest.raises(ValueError, match=r"missing column\(s\) \['nums'\]"):
        dataset.tokenize(t, tokenizer, dataset.load_raw(t))


def test_sft_labels_only_the_response(tmp_path, tokenizer):
    t = task(tmp_path, "sft", [{"question": "1 + 2", "answer": "#### 3"}])
    row = dataset.tokenize(t, tokenizer, dataset.load_raw(t))["train"][0]
    n_prompt = len(row["prompt_ids"])
    assert row["labels"][:n_prompt] == [-100] * n_prompt
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:] and row["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(row["prompt_ids"], skip_special_tokens=True) == "Question: 1 + 2\nAnswer: "


def test_chat_template_wraps_the_prompt(tmp_path, tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt "
        "%}<|assistant|>{% endif %}"
    )
    t = task(
        tmp_path, "sft", [{"question": "1 + 2", "answer": "3"}], chat_template=True, prompt_template="Solve: {prompt}"
    )
    assert format_prompt(t, {"question": "1 + 2"}, tokenizer) == "<|user|>Solve: 1 + 2<|assistant|>"
    row = dataset.tokenize(t, tokenizer, dataset.load_raw(t))["train"][0]
    assert (
        tokenizer.decode(row["prompt_ids"]) == "<|user|>Solve: 1 + 2<|assistant|>"
    )  # no second BOS: the template has its own


def test_lm_seq2seq_regression_and_rlvr_rows(tmp_path, tokenizer):
    lm = task(tmp_path, "lm", [{"text": "a review", "label": 1}])
    row = dataset.tokenize(lm, tokenizer, dataset.load_raw(lm))["train"][0]
    assert row["labels"] == row["input_ids"] and set(row) == {"input_ids", "attention_mask", "labels", "length"}

    s2s = task(
        tmp_path,
        "seq2seq",
        [{"dialogue": "A: hi", "summary": "A says hi"}],
        prompt_field="dialogue",
        response_field="summary",
        prompt_template="summarize: {prompt}",
    )
    row = dataset.tokenize(s2s, tokenizer, dataset.load_raw(s2s))["train"][0]
    assert tokenizer.decode(row["input_ids"], skip_special_tokens=True) == "summarize: A: hi"
    assert tokenizer.decode(row["labels"], skip_special_tokens=True) == "A says hi" and row["response"] == "A says hi"

    reg = task(
        tmp_path,
        "classification",
        [{"s1": "a", "s2": "b", "score": 3}],
        text_fields=["s1", "s2"],
        label_field="score",
        num_labels=1,
    )
    assert dataset.tokenize(reg, tokenizer, dataset.load_raw(reg))["train"][0]["labels"] == 3.0

    rl = task(
        tmp_path,
        "rlvr",
        [{"target": 7, "nums": [1, 2, 3]}],
        prompt_field="target",
        prompt_template="{nums} make {target}",
        rewards=["countdown", "format"],
    )
    row = dataset.tokenize(rl, tokenizer, dataset.load_raw(rl))["train"][0]
    assert (row["prompt"], row["nums"], row["target"]) == ("[1, 2, 3] make 7", [1, 2, 3], 7)


def test_named_held_out_sets_load_as_their_own_splits(tmp_path):
    for name in "train", "m", "mm":
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"text": name, "label": 0}) + "\n")
    t = TaskSpec(
        name="mnli",
        type="classification",
        data={
            "files": {
                "train": str(tmp_path / "train.jsonl"),
                "eval": {"matched": str(tmp_path / "m.jsonl"), "mismatched": str(tmp_path / "mm.jsonl")},
            }
        },
    )
    assert dataset.eval_names(t) == {"eval": "matched", "eval_mismatched": "mismatched"}
    raw = dataset.load_raw(t)
    assert (raw["eval"]["text"], raw["eval_mismatched"]["text"]) == (["m"], ["mm"])
    assert dataset.eval_names(dataclasses.replace(t, data={"generator": "sentiment"})) == {"eval": None}
    assert isinstance(raw, datasets.DatasetDict)


def test_a_held_out_split_from_another_hub_dataset_loads_with_its_columns_renamed(monkeypatch):
    """HF's method comparison trains on MetaMathQA (query, response) and tests on GSM8K (question, answer): `eval_id`
    names
    the second dataset, and `columns` renames in each split the columns it has."""
    calls = []

    def load_dataset(name, subset, split):
        calls.append((name, subset, split))
        if name == "meta-math/MetaMathQA":
            return datasets.Dataset.from_dict({"query": ["1+1?"], "response": ["The answer is: 2"]})
        return datasets.Dataset.from_dict({"question": ["2+2?"], "answer": ["#### 4"]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    hub = {"id": "meta-math/MetaMathQA", "subset": None, "train_split": "train", "eval_split": "test"}
    task = TaskSpec(
        name="mc",
        type="sft",
        data={"hub": {**hub, "eval_id": "openai/gsm8k", "eval_subset": "main"}},
        columns={"question": "query", "answer": "response"},
    )
    raw = dataset.load_raw(task)
    assert calls == [("meta-math/MetaMathQA", None, "train"), ("openai/gsm8k", "main", "test")]
    assert (
        raw["train"]["query"] == ["1+1?"]
        and raw["eval"].column_names == ["query", "response"]
        and raw["eval"]["response"] == ["#### 4"]
    )
    calls.clear()
    same = TaskSpec(name="mc", type="sft", data={"hub": {**hub, "eval_id": None, "eval_subset": None}})
    dataset.load_raw(same)
    assert calls == [("meta-math/MetaMathQA", None, "train"), ("meta-math/MetaMathQA", None, "test")]
    typo = dataclasses.replace(task, columns={"questoin": "query"})
    with pytest.raises(dataset.DataError, match=r"tasks.mc.columns: no split has column\(s\) \['questoin'\]"):
        dataset.load_raw(typo)
