"""The whole DAG on config/test.yaml, through Snakemake, in a temporary directory.

One module-scoped run (about 15 minutes on 2 cores: 17 runs); each test reads its outputs.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import replace
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, DataCollatorForSeq2Seq

from conftest import ROOT, load_test_config, planned_jobs, snakemake
from peftlab import artifacts, numerics, tables
from peftlab.artifacts import human_bytes
from peftlab.compute import logits
from peftlab.config import plan
from peftlab.models import load_model, load_tokenizer, probe_batch
from peftlab.spec import RunSpec

pytestmark = pytest.mark.slow
RUNS = plan(load_test_config())[1]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    plan_ = snakemake(work, "-n")
    assert plan_.returncode == 0, plan_.stdout + plan_.stderr
    assert not (work / "results").exists(), "a dry run wrote files"
    proc = snakemake(work, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return work, planned_jobs(plan_)


def test_plan_tokenises_once_per_task_and_model(done):
    _, jobs = done
    assert jobs["train_run"] == len(RUNS) == 17
    assert jobs["data_tokenize"] == 2 < jobs["train_run"]
    assert jobs["evaluate_run"] == jobs["merge_run"] == 17 and jobs["model_build"] == 1


@pytest.mark.parametrize("run_id", sorted(RUNS))
def test_run(done, run_id):
    work, _ = done
    run = work / "results/test/runs" / run_id
    train, ev = artifacts.read_json(run / "train.json"), artifacts.read_json(run / "eval.json")
    spec = artifacts.read_json(work / "results/test/specs/train_run" / f"{run_id}.json")
    assert train["spec"] == spec == ev["spec"]
    assert train["git_commit"] and train["versions"]["peft"] and train["peak_memory"]["cpu_rss_mb"] > 0

    # learning: the loss falls
    losses = [x["loss"] for x in train["losses"]]
    assert len(losses) >= 4 and sum(losses[-2:]) / 2 < losses[0] * 0.9, losses

    # metrics in range
    m = ev["metrics"]
    if spec["task"]["type"] == "classification":
        assert 0.5 < m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1
    else:
        assert 0 <= m["exact_match"] <= 1 and m["perplexity"] == pytest.approx(2.718281828 ** m["eval_loss"], rel=1e-6)
        assert m["eval_loss"] < train["losses"][0]["loss"]

    # the trainer's own reload check, onto an untouched base, scaled to the logits (peftlab.numerics)
    assert train["reload_max_abs_diff"] <= train["reload_tolerance"] < 1e-3

    # independently: adapter on an untouched base == merged model
    check = artifacts.read_json(run / "merge_check.json")
    assert train["adapter_bytes"] == artifacts.disk_bytes(run / "adapter") > 0 and train["checkpoint_bytes"] == 0
    assert not (work / "results/test/checkpoints" / run_id).exists()  # outputs.checkpoints: none
    assert check["merged_bytes"] == (artifacts.disk_bytes(run / "merged") if check.get("saved") else 0)
    if spec["outputs"]["merge"] == "check":  # the rank x train size block: checked, no copy kept
        assert check["checked"] and not check["saved"] and check["max_abs_logit_diff"] <= check["tolerance"]
        assert [p.name for p in (run / "merged").iterdir() if p.name != ".snakemake_timestamp"] == ["NOT_SAVED.txt"]
        return
    if spec["peft"]["type"] == "prompt_tuning":
        assert check["mergeable"] is False and "virtual tokens" in check["reason"]
        assert (run / "merged/NOT_MERGED.txt").exists()
        return
    assert check["max_abs_logit_diff"] <= check["tolerance"] < 1e-2
    typed = RunSpec.from_dict(spec)
    model = replace(typed.model, path=str(work / typed.model.path)) if typed.model.build else typed.model
    tok = load_tokenizer(model)
    probe = probe_batch(datasets.load_from_disk(work / typed.data_dir)["eval"], tok, typed.task)
    adapter_model = PeftModel.from_pretrained(load_model(model, typed.task, tok), run / "adapter")
    auto = AutoModelForSequenceClassification if spec["task"]["type"] == "classification" else AutoModelForCausalLM
    merged = auto.from_pretrained(run / "merged", dtype=torch.float32)
    expected = logits(adapter_model, probe)
    assert (expected - logits(merged, probe)).abs().max().item() <= numerics.tolerance(expected, numerics.MERGE_ULPS)


def test_tables_list_every_run(done):
    work, _ = done
    tables = work / "results/test/tables"
    summary = pd.read_csv(tables / "summary.csv")
    assert sorted(summary["run_id"]) == sorted(RUNS)
    md = (tables / "summary.md").read_text()
    assert all(run_id in md for run_id in RUNS)
    grouped = pd.read_csv(tables / "summary_grouped.csv")
    lora = grouped[(grouped["task"] == "arith") & (grouped["method"] == "lora") & (grouped["r"] == 8)].iloc[0]
    assert lora["seeds"] == 2 and lora["exact_match_std"] >= 0 and 0 < lora["trainable_pct"] < 100
    assert (
        lora["exact_match_n"] == 2
        and lora["exact_match_ci_low"] <= lora["exact_match_mean"] <= lora["exact_match_ci_high"]
    )
    # the rank x train size x seed sweep: every cell has its two seeds
    sweep = grouped[(grouped["method"] == "lora") & grouped["r"].isin([4, 16])]
    assert sorted(zip(sweep["r"], sweep["train_size"], sweep["seeds"])) == [
        (4, 240, 2),
        (4, 480, 2),
        (16, 240, 2),
        (16, 480, 2),
    ]
    dora = grouped[grouped["method"] == "dora"].iloc[0]
    assert (
        dora["exact_match_n"] == 1 and pd.isna(dora["exact_match_std"]) and pd.isna(dora["exact_match_ci_low"])
    )  # never ± 0
    assert "\\begin{tabular}" in (tables / "summary.tex").read_text()
    # disk: every run's record, and the matrix's total (the check-only block keeps no merged model)
    runs_dir = work / "results/test/runs"
    assert (
        summary["adapter_bytes"] == [artifacts.disk_bytes(runs_dir / r / "adapter") for r in summary["run_id"]]
    ).all()
    assert (summary.loc[summary["r"].isin([4, 16]), "merged_bytes"] == 0).all()
    merged = [runs_dir / r / "merged" for r in summary["run_id"] if (runs_dir / r / "merged/config.json").exists()]
    total = sum(map(artifacts.disk_bytes, [runs_dir / r / "adapter" for r in summary["run_id"]] + merged))
    assert f"{len(summary)} finished runs keep {human_bytes(total)}:" in md
    for png in ("metrics.png", "loss.png"):
        assert (tables / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predictions_are_saved_and_give_the_recorded_metrics(done):
    """predictions.jsonl holds one row per held-out example, from which the recorded metric recomputes."""
    work, _ = done
    for run_id in RUNS:
        run = work / "results/test/runs" / run_id
        record = artifacts.read_json(run / "eval.json")
        rows = artifacts.read_jsonl(run / "predictions.jsonl")
        assert len(rows) == record["examples"] and [r["id"] for r in rows] == list(range(len(rows)))
        metrics = record["metrics"]
        if run_id.startswith("arith/"):
            assert sum(r["correct"] for r in rows) / len(rows) == metrics["exact_match"]
            loss = sum(r["loss_sum"] for r in rows) / sum(r["tokens"] for r in rows)
            assert loss == pytest.approx(metrics["eval_loss"], rel=1e-6)
            assert all(isinstance(r["prediction"], str) and r["reference"] for r in rows)
        else:
            assert sum(r["correct"] for r in rows) / len(rows) == metrics["accuracy"]
            assert all(r["correct"] == (r["prediction"] == r["reference"]) for r in rows)


def test_tables_per_task_with_tests_against_lora_and_plots_along_every_varied_axis(done, tmp_path):
    work, _ = done
    tables_dir = work / "results/test/tables"
    comps = pd.read_csv(tables_dir / "comparisons.csv")
    pissa = comps[(comps["task"] == "arith") & (comps["method"] == "pissa")].iloc[0]
    assert pissa["reference"] == "lora r8 lr0.003" and pissa["shared_seeds"] == 2
    # the 32 test examples each once (not once per seed), and no t-test from two seeds
    assert pissa["example_test"] == "paired permutation (examples, seeds averaged)" and pissa["examples"] == 32
    assert 0 < pissa["p_examples"] <= 1 and pd.isna(pissa["p_seeds"]) and "at least 3" in pissa["p_seeds_note"]
    arith = pd.read_csv(tables_dir / "tasks/arith.csv")
    assert arith["best"].any() and (arith.loc[arith["best"], "exact_match"] == arith["exact_match"].max()).all()
    plots = tables_dir / "plots"
    arith_plots = sorted(p.name for p in (plots / "arith/tiny-llama").glob("*.png"))
    # lr does not vary within a method; the four Pareto fronts: parameters, memory, time and forgetting (both tasks
    # name a reference)
    fronts = ["forgetting.png", "memory.png", "params.png", "time.png"]
    assert arith_plots == sorted(["loss.png", "metric.png", "rank.png", "train_size.png", *fronts])
    assert sorted(p.name for p in (plots / "sentiment/minilm").glob("*.png")) == sorted(
        ["loss.png", "metric.png", *fronts]
    )
    from test_stats import compile_latex

    proc = compile_latex(tables_dir / "summary.tex", tmp_path)
    assert proc.returncode == 0 and "Overfull \\hbox" not in proc.stdout, proc.stdout[-3000:]


def test_the_snakemake_report_holds_every_table_and_plot(done, tmp_path):
    """`snakemake --report report.zip`: every table and plot of the tables step and every run's tracking plot,
    with captions and the labels that make the report a grid (task, model, method, rank, seed)."""
    work, _ = done
    proc = snakemake(work, "--report", str(tmp_path / "report.zip"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / "report.zip") as z:
        html = z.read("report/report.html").decode()
        stored = z.namelist()
    results = json.loads(re.search(r"^\s*var results = (\{.*\});?\s*$", html, re.M).group(1).rstrip(";"))
    tables_dir = work / "results/test/tables"
    wanted = {
        str(p.relative_to(work))
        for p in tables_dir.rglob("*")
        if p.is_file() and p.suffix in (".png", ".csv", ".md", ".tex")
    }
    for run_id in RUNS:
        wanted |= {str(p.relative_to(work)) for p in (work / "results/test/runs" / run_id / "tracking").glob("*.png")}
    assert wanted - set(results) == set(), sorted(wanted - set(results))
    assert len(wanted) > 40 and all(any(n.endswith(results[w]["filename"]) for n in stored) for w in wanted)
    rank = results["results/test/tables/plots/arith/tiny-llama/rank.png"]
    assert (
        rank["labels"] == {"task": "arith", "model": "tiny-llama", "plot": "rank"}
        and "rank plot of task" in rank["caption"]
    )
    run = results["results/test/runs/arith/tiny-llama/lora/r16-s2-n480/tracking/heatmap_rel_norm.png"]
    assert run["labels"] == {
        "task": "arith",
        "model": "tiny-llama",
        "method": "lora",
        "rank": "16",
        "seed": "2",
        "plot": "heatmap_rel_norm",
    }


def test_per_example_losses_add_up_to_the_models_own_loss(done, monkeypatch):
    """The loss rows of predictions.jsonl: prompt tuning's virtual tokens and LoRA, against the model's loss on a
    batch."""
    work, _ = done
    from peftlab import compute
    from peftlab.models import load_run

    monkeypatch.chdir(work)  # the run's spec names its built model and data relative to the workdir
    for run_id in ("arith/tiny-llama/prompt_tuning/s1", "arith/tiny-llama/lora/r8-s1"):
        spec, model, tokenizer = load_run(Path("results/test/runs") / run_id, False)
        ds = datasets.load_from_disk(spec.data_dir)["eval"].select(range(8))
        batch = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)(
            ds.select_columns(compute.model_columns(ds)).to_list()
        )
        with torch.no_grad():
            expected = model(**batch).loss.item()
        assert compute.eval_loss(model, tokenizer, ds, 8) == pytest.approx(expected, rel=1e-5)


def test_tracking_compares_what_each_method_changed(done):
    """Every run's tracking folder, and the tables step's matrix-level comparison built from them."""
    work, _ = done
    for run_id, spec in RUNS.items():
        info = artifacts.read_json(work / "results/test/runs" / run_id / "tracking/tracking.json")
        last = spec["training"]["max_steps"]
        assert info["run_id"] == run_id and info["gradients"]["steps"] == [1, *range(20, last, 20), last]
        if "prompt_tuning" in run_id:
            assert "virtual tokens" in info["spectral"]["reason"] and info["spectral"]["steps"] == []
            assert info["plots"] == ["heatmap_grad_weight.png"]  # its prompt embedding's gradients are still tracked
        else:
            assert info["spectral"]["steps"] == [0, *range(20, last, 20), last] and info["spectral"]["reason"] is None
            for png in ("heatmap_rel_norm.png", "heatmap_align_top.png", "spectra_final.png"):
                assert png in info["plots"]
    tables = work / "results/test/tables"
    runs = pd.read_csv(tables / "tracking.csv").set_index("run_id")
    assert sorted(runs.index) == sorted(RUNS)
    arith = runs[(runs["task"] == "arith") & (runs["r"].isna() | (runs["r"] == 8))]  # the methods at one rank
    # PiSSA trains the principal part of W, so its ΔW stays in W's top subspace; LoRA's starts at zero and goes
    # elsewhere
    pissa, lora = arith[arith["method"] == "pissa"], arith[arith["method"] == "lora"]
    assert (pissa["align_top"] > 0.9).all() and pissa["align_top"].min() > lora["align_top"].max()
    # and what training changed in PiSSA (ΔW − ΔW₀) is still mostly principal; LoRA's change is ΔW itself
    assert pissa["change_align_top"].min() > lora["change_align_top"].max()
    assert (lora["change_align_top"] == lora["align_top"]).all() and (
        pissa["change_rel_norm"] < pissa["rel_norm"]
    ).all()
    assert (arith.loc[arith["method"] != "prompt_tuning", "effective_rank"] > 0).all()
    assert "virtual tokens" in runs.loc["arith/tiny-llama/prompt_tuning/s1", "reason"]
    grouped = pd.read_csv(tables / "tracking_grouped.csv")
    assert (
        grouped.loc[(grouped["task"] == "arith") & (grouped["method"] == "lora") & (grouped["r"] == 8), "n"].item() == 2
    )
    assert "Runs without a ΔW record, and why" in (tables / "tracking.md").read_text()
    for png in ("tracking_alignment.png", "tracking_effective_rank.png", "tracking_depth.png"):
        assert (tables / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_left_to_do_and_no_checkpoints_left(done):
    work, _ = done
    proc = snakemake(work, "-n")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr
    assert not any((work / "results/test/checkpoints").rglob("checkpoint-*"))


def test_tables_target_trains_nothing(done):
    work, _ = done
    (work / "results/test/tables/summary.md").unlink()
    proc = snakemake(work, "--cores", "1", "tables")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc) == {"tables": 1}
    assert all(run_id in (work / "results/test/tables/summary.md").read_text() for run_id in RUNS)


def test_resources_rerun_a_run_only_when_they_change_its_world_size(done, tmp_path):
    """Memory, time and partition are not results: raising them reruns nothing; more processes change the global
    batch."""
    work, _ = done
    raw = load_test_config()
    raw["resources"] = {"mem_mb": 32000, "runtime": 600, "partition": "long", "threads": 2}
    raw["name"] = "test"
    (tmp_path / "bigger.yaml").write_text(yaml.safe_dump(raw))
    proc = snakemake(work, "-n", config=tmp_path / "bigger.yaml")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    raw["sweep"][2]["resources"] = {"gpus": 2}  # the ia3 run, now on two processes
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(raw))
    proc = snakemake(work, "-n", config=tmp_path / "two.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc)["train_run"] == 1 and "wildcards: run_id=arith/tiny-llama/ia3/s1" in proc.stdout


def test_another_matrix_plans_its_own_files_and_touches_none_of_these(done, tmp_path):
    """Reproduction: the default's untouched adapters broke after config/test.yaml rebuilt results/models/tiny-llama."""
    work, _ = done
    before = {p: p.stat().st_mtime_ns for p in (work / "results/test").rglob("*") if p.is_file()}
    raw = load_test_config()
    raw["models"]["tiny-llama"]["build"]["hidden_size"] = 32
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(raw))
    proc = snakemake(work, "-n", config=tmp_path / "other.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc)["train_run"] == len(RUNS) and "results/other/models/tiny-llama" in proc.stdout
    assert "results/test/" not in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in (work / "results/test").rglob("*") if p.is_file()} == before


def test_tables_list_every_run_with_its_status(done, tmp_path):
    """A failed run and one not yet run are listed, with the first line of the failure, never dropped."""
    work, _ = done
    root = tmp_path / "results/m"
    finished = sorted(RUNS)[0]
    (root / "runs" / finished).parent.mkdir(parents=True)
    import shutil

    shutil.copytree(work / "results/test/runs" / finished, root / "runs" / finished)
    log = root / "logs/train_run/t/m/lora/r8-s9.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "step 10 ...\nTraceback (most recent call last):\n  File x\npeftlab.train.Diverged: training diverged: "
        "loss is nan at step 40\n"
    )
    (root / "runs/t/m/lora/r8-s9").mkdir(parents=True)
    dirs = [root / "runs" / finished, root / "runs/t/m/lora/r8-s9", root / "runs/t/m/lora/r8-s10"]
    tables.build(dirs, root / "tables")
    md = (root / "tables/summary.md").read_text()
    assert md.startswith("# Results: 3 runs (1 done, 1 failed, 1 pending)") or md.startswith(
        "# Results: 3 runs (1 failed, 1 done, 1 pending)"
    )
    summary = pd.read_csv(root / "tables/summary.csv").set_index("run_id")
    assert summary.loc[finished, "status"] == "done"
    assert summary.loc["t/m/lora/r8-s9", "status"] == "failed"
    assert (
        summary.loc["t/m/lora/r8-s9", "reason"] == "peftlab.train.Diverged: training diverged: loss is nan at step 40"
    )
    assert summary.loc["t/m/lora/r8-s10", "status"] == "pending"


def test_a_dry_run_or_a_refused_command_writes_nothing_while_a_matrix_runs(tmp_path):
    """Reproduction: specs were written at parse time, so a dry run of an edited config while the
    matrix trained made its records carry the edited learning rate. Now only jobs write specs."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "workflow/Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "1",
    ]
    cmd += ["--workflow-profile", str(ROOT / "profiles/default")]
    first = subprocess.Popen(
        [*cmd, "--configfile", str(ROOT / "config/test.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while not any((tmp_path / ".snakemake/locks").glob("*")):
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        raw = load_test_config()
        raw["training"]["learning_rate"] = 0.0123  # every run's spec differs
        (tmp_path / "test.yaml").write_text(yaml.safe_dump(raw))  # the same matrix (results/test), edited
        dry = subprocess.run(
            [*cmd, "-n", "--configfile", str(tmp_path / "test.yaml")], capture_output=True, text=True, timeout=300
        )
        assert dry.returncode == 0, dry.stderr[-3000:]
        refused = subprocess.run(
            [*cmd, "--configfile", str(tmp_path / "test.yaml")], capture_output=True, text=True, timeout=300
        )
        assert refused.returncode != 0 and "cannot be locked" in refused.stdout + refused.stderr
        written = [p for p in (tmp_path / "results").rglob("*.json") if "0.0123" in p.read_text()]
        assert written == [], written
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_the_cost_plan_predicts_every_finished_run_within_a_factor_of_two(done, monkeypatch):
    """peftlab.cost --validate: each finished run's wall time predicted from the others (leave one out), judged run by
    run.

    Not on the matrix's total: predictions from the mean of the others sum back to it by construction.
    """
    from peftlab import cost as cost_plan

    work, _ = done
    monkeypatch.chdir(work)
    result = cost_plan.cost(ROOT / "config/test.yaml", leave_one_out=True)
    assert sorted(result["measured"]) == sorted(RUNS)
    v = cost_plan.validation(result["runs"], result["measured"])
    off = {r: x for r, x in v["runs"].items() if x["off"] > cost_plan.GOAL_FACTOR}
    assert v["failed"] == [] and v["within"] >= 0.9, (
        off
    )  # two seeds of one setting took 27 s and 47 s on a loaded 2-core machine
    assert all(c.source == "measured" for c in result["runs"].values())
    for run_id, c in result["runs"].items():  # parameters counted on the meta device, as training counted them
        train = artifacts.read_json(work / "results/test/runs" / run_id / "train.json")
        assert (c.total_params, c.trainable_params) == (train["total_params"], train["trainable_params"]), run_id
