"""Static checks of the workflow files: lint, format, and that every config says how to run it."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from conftest import ROOT, planned_jobs, snakemake
from peftlab.config import plan


def test_snakemake_lint_reports_nothing(tmp_path):
    proc = snakemake(tmp_path, "--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_check_passes():
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]
    proc = subprocess.run(["snakefmt", "--check", *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "config").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_config_opens_with_its_command_and_validates(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Run:") and "snakemake" in first
    if path.name != "config.yaml":
        assert f"--configfile config/{path.relative_to(ROOT / 'config')}" in first
    with open(path) as f:
        assert plan(yaml.safe_load(f))[1]


@pytest.mark.parametrize("path", sorted((ROOT / "config").rglob("*.yaml")), ids=lambda p: p.name)
def test_dry_run_plans_one_training_job_per_run(path, tmp_path):
    """`snakemake -n --configfile <file>` validates and plans every run of the matrix, once."""
    with open(path) as f:
        runs = plan(yaml.safe_load(f))[1]
    proc = snakemake(tmp_path, "-n", config=path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc)
    assert jobs["train_run"] == jobs["evaluate_run"] == len(runs)


def test_python_code_passes_ruff():
    for cmd in (["ruff", "check", "src", "tests", "bench"], ["ruff", "format", "--check", "src", "tests", "bench"]):
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
