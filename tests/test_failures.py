"""Bad input and failed steps: clear errors, and nothing left behind that looks finished."""

from __future__ import annotations

import datasets
import pytest
import torch

from conftest import load_test_config
from peftlab import artifacts, data, infer, merge, methods, models, numerics
from peftlab.config import plan
from peftlab.models import load_model, load_tokenizer
from peftlab.spec import TaskSpec, fingerprint
from peftlab.train import train_subset


def test_atomic_dir_leaves_nothing_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with artifacts.atomic_dir(tmp_path / "adapter") as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_spec_files_keep_their_mtime_when_unchanged(tmp_path):
    path = tmp_path / "s.json"
    assert artifacts.write_json_if_changed(path, {"a": 1})
    assert not artifacts.write_json_if_changed(path, {"a": 1})
    assert artifacts.write_json_if_changed(path, {"a": 2})


def test_missing_column_names_the_column_and_the_columns_that_exist():
    task = TaskSpec(name="sst", type="classification", data={}, text_fields=["sentence"], label_field="label")
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"], "label": [0]})})
    with pytest.raises(
        data.DataError, match=r"task 'sst', split train: missing column\(s\) \['sentence'\]; the data has \['text', 'label'\]"
    ):
        data.check_columns(task, raw)


def test_train_size_larger_than_the_data_is_an_error():
    ds = datasets.Dataset.from_dict({"x": list(range(10))})
    assert train_subset(ds, 4, seed=1)["x"] == train_subset(ds, 4, seed=1)["x"] != train_subset(ds, 4, seed=2)["x"]
    assert set(train_subset(ds, 4, seed=1)["x"]) < set(train_subset(ds, 8, seed=1)["x"])  # sizes nest
    with pytest.raises(ValueError, match="train_size=11 but the training split has only 10"):
        train_subset(ds, 11, seed=1)


@pytest.fixture
def lora_adapter(in_tiny, tmp_path):
    spec = in_tiny("lora")
    model = methods.attach(load_model(spec.model, spec.task), spec.peft, methods.Context("CAUSAL_LM", total_steps=1, targets=None))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    methods.save(model, tmp_path / "adapter")
    load_tokenizer(spec.model).save_pretrained(tmp_path / "adapter")
    artifacts.write_json(
        tmp_path / "adapter" / models.RUN_FILE, {"run_id": spec.run_id, "fingerprint": fingerprint(spec.to_dict(), "train_run")}
    )
    return spec, tmp_path / "adapter"


def test_merge_writes_a_checked_model(lora_adapter, tmp_path):
    spec, adapter = lora_adapter
    record = merge.merge(spec, adapter, tmp_path / "merged")
    assert record["mergeable"] and record["max_abs_logit_diff"] <= record["tolerance"]
    assert (tmp_path / "merged" / "config.json").exists()


def test_merge_mismatch_fails_and_leaves_no_merged_model(lora_adapter, tmp_path, monkeypatch):
    spec, adapter = lora_adapter
    monkeypatch.setattr(numerics, "MERGE_ULPS", -1.0)  # any difference, even 0, is now too much
    with pytest.raises(merge.MergeMismatch, match="merged model, reloaded, differs"):
        merge.merge(spec, adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_prompt_tuning_records_why_it_cannot_merge(in_tiny, tmp_path):
    record = merge.merge(in_tiny("prompt_tuning"), "unused", tmp_path / "merged")
    assert record["mergeable"] is False and "virtual tokens" in record["reason"]
    assert (tmp_path / "merged" / "NOT_MERGED.txt").read_text().strip() == record["reason"]


def test_inference_with_merged_on_a_method_that_cannot_merge_says_why(tmp_path):
    spec = next(s for s in plan(load_test_config(), "config/test.yaml").runs.values())
    run = tmp_path / "run"
    (run / "merged").mkdir(parents=True)
    artifacts.write_json(run / "train.json", {"spec": spec})
    (run / "merged" / "NOT_MERGED.txt").write_text("prompt learning adds virtual tokens\n")
    with pytest.raises(SystemExit, match=r"run/merged: prompt learning adds virtual tokens; use the adapter \(drop --merged\)"):
        infer.main(["--run", str(run), "--merged", "--input", "1 + 2"])
