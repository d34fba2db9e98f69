"""The Python API: the "From Python" block of docs/inference.md, run as it is, then checked."""

from __future__ import annotations

import os
import re
import shutil

import datasets
import pytest
import torch

from conftest import ROOT
from peftlab import api, artifacts, compute, tasks
from peftlab.models import load_run, probe_batch

pytestmark = pytest.mark.slow


def docs_block() -> str:
    section = (ROOT / "docs/inference.md").read_text().split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_the_docs_example_runs_a_selection_then_loads_it(tmp_path, monkeypatch, capfd):
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config/test.yaml", tmp_path / "config/test.yaml")
    monkeypatch.chdir(tmp_path)
    api.run("config/test.yaml", only="sentiment/minilm/lora/r8-s1", dry_run=True)
    assert not (tmp_path / "results").exists()  # a dry run writes nothing

    scope: dict = {}
    exec(docs_block(), scope)
    assert "{0: " in capfd.readouterr().out  # it printed the labels and the probabilities
    model, tokenizer, merged = scope["model"], scope["tokenizer"], scope["merged"]
    run_dir = tmp_path / scope["run_dir"]
    assert sorted(
        str(p.relative_to(tmp_path / "results/test/runs")) for p in (tmp_path / "results/test/runs").rglob("eval.json")
    ) == ["sentiment/minilm/lora/r8-s1/eval.json"]  # the selection only
    assert type(model).__name__ == "PeftModelForSequenceClassification" and not model.training
    assert type(merged).__name__ == "BertForSequenceClassification"
    assert scope["logits"].shape == (1, 2) and torch.isfinite(scope["logits"]).all()

    spec = load_run(run_dir)[0]
    ds = datasets.load_from_disk(os.fspath(tmp_path / spec.data_dir))["eval"]
    probe = probe_batch(ds, tokenizer, spec.task)
    adapter_logits, merged_logits = compute.logits(model, probe), compute.logits(merged, probe)
    assert (adapter_logits - merged_logits).abs().max() <= 1e-4 * max(1.0, adapter_logits.abs().max().item())
    # the loaded model is the evaluated one: its accuracy on the held-out set is the recorded one
    recorded = artifacts.read_json(run_dir / "eval.json")["metrics"]["accuracy"]
    assert tasks.of(spec.task).evaluate(spec.task, model, tokenizer, ds)["accuracy"] == recorded

    with pytest.raises(api.RunFailed, match=r"only: 'sentiment/minilm/lora/r99-\*' matches no run"):
        api.run("config/test.yaml", only="sentiment/minilm/lora/r99-*", dry_run=True)
