"""A command that cannot reach a model's files says so in one line: which model, and what to do (issue 28)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from peftlab import runstate
from peftlab.models import ModelFilesError, load_config, load_tokenizer
from peftlab.spec import ModelSpec


def offline(tmp_path) -> dict:
    """An environment with the hub off and an empty cache, whatever this machine has cached."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}


def test_the_cost_plan_of_an_unreachable_model_is_one_line_naming_it(tmp_path):
    config = ROOT / "config/experiments/core_1.5B.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "peftlab.cost", str(config)],
        cwd=ROOT,
        env=offline(tmp_path),
        capture_output=True,
        text=True,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(lines) <= 3, (
        proc.stderr
    )  # bitsandbytes may warn at import
    assert lines[-1].startswith(
        "peftlab.models.ModelFilesError: model 'r1-1.5b': cannot read the files of "
        "'deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B' ("
    )
    assert "give models.r1-1.5b.path a local model folder" in lines[-1] and "HF_HUB_OFFLINE=1" in lines[-1]
    assert runstate.classify(lines[-1])[0] == "model_files"  # a stage's log ending so: status says what to do


def test_a_missing_model_folder_is_named_by_the_config_and_the_tokenizer_loaders(tmp_path):
    missing = ModelSpec(name="mine", path=str(tmp_path / "nowhere"))
    for load in (load_config, load_tokenizer):
        with pytest.raises(
            ModelFilesError, match=r"model 'mine': cannot read the files of '.*nowhere' .*check that the folder exists"
        ):
            load(missing)
