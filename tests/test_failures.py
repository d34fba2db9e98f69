"""Bad input and failed steps: clear errors, and nothing left behind that looks finished."""

from __future__ import annotations

import dataclasses

import datasets
import pytest
import torch

from conftest import load_test_config
from peftlab import artifacts, dataset, infer, merge, methods, models, numerics
from peftlab import spec as spec_module
from peftlab.config import plan
from peftlab.models import load_model, load_tokenizer
from peftlab.spec import OutputsSpec, TaskSpec, fingerprint
from peftlab.train import train_subset


def test_atomic_dir_leaves_nothing_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with artifacts.atomic_dir(tmp_path / "adapter") as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_missing_column_names_the_column_and_the_columns_that_exist():
    task = TaskSpec(name="sst", type="classification", data={}, text_fields=["sentence"], label_field="label")
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"], "label": [0]})})
    with pytest.raises(
        dataset.DataError,
        match=r"task 'sst', split train: missing column\(s\) \['sentence'\]; the data has \['text', 'label'\]",
    ):
        dataset.check_columns(task, raw)


def test_train_size_larger_than_the_data_is_an_error():
    ds = datasets.Dataset.from_dict({"x": list(range(10))})
    assert train_subset(ds, 4, seed=1)["x"] == train_subset(ds, 4, seed=1)["x"] != train_subset(ds, 4, seed=2)["x"]
    assert set(train_subset(ds, 4, seed=1)["x"]) < set(train_subset(ds, 8, seed=1)["x"])  # sizes nest
    with pytest.raises(ValueError, match="train_size=11 but the training split has only 10"):
        train_subset(ds, 11, seed=1)


@pytest.fixture
def lora_adapter(in_tiny, tmp_path):
    spec = in_tiny("lora")
    model = methods.attach(
        load_model(spec.model, spec.task), spec.peft, methods.Context("CAUSAL_LM", total_steps=1, targets=None)
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    methods.save(model, tmp_path / "adapter")
    load_tokenizer(spec.model).save_pretrained(tmp_path / "adapter")
    artifacts.write_json(
        tmp_path / "adapter" / models.RUN_FILE, models.run_marker(spec, fingerprint(spec.to_dict(), "train_run"))
    )
    return spec, tmp_path / "adapter"


def test_merge_writes_a_checked_model(lora_adapter, tmp_path):
    spec, adapter = lora_adapter
    record = merge.merge(spec, adapter, tmp_path / "merged")
    assert record["mergeable"] and record["max_abs_logit_diff"] <= record["tolerance"]
    assert (tmp_path / "merged" / "config.json").exists()


@pytest.mark.parametrize(
    ("ulps", "message"),
    [
        ("MERGE_ULPS", "merged model differs from the adapter model"),
        ("RELOAD_ULPS", "merged model, reloaded, differs from the merged model"),
    ],
)
def test_merge_mismatch_fails_and_leaves_no_merged_model(lora_adapter, tmp_path, monkeypatch, ulps, message):
    spec, adapter = lora_adapter
    monkeypatch.setattr(numerics, ulps, -1.0)  # any difference, even 0, is now too much
    with pytest.raises(merge.MergeMismatch, match=message):
        merge.merge(spec, adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def with_merge(spec, mode):
    return dataclasses.replace(spec, outputs=OutputsSpec(merge=mode))


def test_merge_check_proves_the_merge_and_keeps_no_copy(lora_adapter, tmp_path):
    spec, adapter = lora_adapter
    record = merge.merge(with_merge(spec, "check"), adapter, tmp_path / "merged")
    assert record["merge"] == "check" and record["checked"] and not record["saved"] and record["merged_bytes"] == 0
    assert (
        0 <= record["max_abs_logit_diff"] <= record["tolerance"]
        and 0 <= record["reload_max_abs_diff"] <= record["reload_tolerance"]
    )
    assert [p.name for p in (tmp_path / "merged").iterdir()] == [merge.NOT_SAVED]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "merged"]  # no copy left anywhere
    assert artifacts.disk_bytes(tmp_path / "merged") < 200
    artifacts.write_json(tmp_path / "train.json", {"spec": spec.to_dict()})  # tmp_path as a run folder
    with pytest.raises(
        models.NotMerged, match=r"merged: outputs.merge: check: the merge was checked exact .* \(drop --merged\)"
    ):
        models.load_run(tmp_path, merged=True)


def test_merge_none_loads_nothing_and_says_so(lora_adapter, tmp_path):
    spec, adapter = lora_adapter
    (adapter / "adapter_model.safetensors").unlink()  # its weights are never read: only the settings it records
    record = merge.merge(with_merge(spec, "none"), adapter, tmp_path / "merged")
    assert (record["merge"], record["checked"], record["saved"], record["merged_bytes"]) == ("none", False, False, 0)
    assert "max_abs_logit_diff" not in record
    assert (tmp_path / "merged" / merge.NOT_SAVED).read_text().startswith("outputs.merge: none")


def test_merge_auto_saves_below_the_size_and_checks_from_it(lora_adapter, tmp_path, monkeypatch):
    spec, adapter = lora_adapter
    small = merge.merge(with_merge(spec, "auto"), adapter, tmp_path / "small")
    assert small["saved"] and (tmp_path / "small" / "config.json").exists()
    assert small["merged_bytes"] == artifacts.disk_bytes(tmp_path / "small") > small["params"] * 4  # float32 weights
    monkeypatch.setattr(spec_module, "AUTO_SAVE_BELOW", small["params"])  # this model is now "large"
    large = merge.merge(with_merge(spec, "auto"), adapter, tmp_path / "large")
    assert (
        large["checked"]
        and not large["saved"]
        and [p.name for p in (tmp_path / "large").iterdir()] == [merge.NOT_SAVED]
    )


def test_prompt_tuning_records_why_it_cannot_merge(in_tiny, tmp_path):
    spec = in_tiny("prompt_tuning")
    (tmp_path / "adapter").mkdir()  # no weights are read: only the settings it records
    artifacts.write_json(
        tmp_path / "adapter" / models.RUN_FILE, models.run_marker(spec, fingerprint(spec.to_dict(), "train_run"))
    )
    record = merge.merge(spec, tmp_path / "adapter", tmp_path / "merged")
    assert record["mergeable"] is False and "virtual tokens" in record["reason"]
    assert (tmp_path / "merged" / "NOT_MERGED.txt").read_text().strip() == record["reason"]


def test_inference_with_merged_on_a_method_that_cannot_merge_says_why(tmp_path):
    spec = next(s for s in plan(load_test_config(), "config/test.yaml").runs.values())
    run = tmp_path / "run"
    (run / "merged").mkdir(parents=True)
    artifacts.write_json(run / "train.json", {"spec": spec})
    (run / "merged" / "NOT_MERGED.txt").write_text("prompt learning adds virtual tokens\n")
    with pytest.raises(
        SystemExit, match=r"run/merged: prompt learning adds virtual tokens; use the adapter \(drop --merged\)"
    ):
        infer.main(["--run", str(run), "--merged", "--input", "1 + 2"])
