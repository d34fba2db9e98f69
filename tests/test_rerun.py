"""The research loop, executed: finish a matrix, edit one key of its config file, run the same
command again, and check what ran and what every output records.

One finished matrix (config/test_loop.yaml: a LoRA run, an IA3 run whose learning rate a
search over two rates picks, about a minute on 2 cores) is shared; each test works on its own
copy. What ran is read from Snakemake's own job summary of the real run, and checked against
the stages that read the key (peftlab.spec.NOT_READ, docs/config.md's "Which keys rerun which
stages") and what follows them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, planned_jobs, snakemake
from peftlab import artifacts
from peftlab.models import RUN_FILE
from peftlab.spec import reads, rerun_table

pytestmark = pytest.mark.slow
CONFIG = "test_loop.yaml"
RESULTS = "results/test_loop"
L1, L2 = "arith/tiny-llama/lora/r8-s1", "arith/tiny-llama/lora/r8-s2"  # the second: a seed added
SEARCHED = "arith_lr/tiny-llama/ia3/s1"
RUN_STAGES = ("train_run", "evaluate_run", "merge_run")
AFTER = {"train_run": {"evaluate_run", "merge_run"}, "evaluate_run": {"tables_build"}, "merge_run": {"tables_build"}}


def rerun_by(key: str) -> set[str]:
    """The rules an edit of `key` reruns: the run stages that read it, what follows them, and the tables."""
    todo = {s for s in RUN_STAGES if reads(s, key)}
    done: set[str] = set()
    while todo:
        s = todo.pop()
        done.add(s)
        todo |= AFTER.get(s, set()) - done
    return done


def test_the_docs_rerun_table_is_the_one_the_code_reruns_by():
    assert rerun_table() in (ROOT / "docs/config.md").read_text()  # its section "Which keys rerun which stages"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    work = tmp_path_factory.mktemp("loop")
    shutil.copy(ROOT / "config" / CONFIG, work / CONFIG)
    proc = snakemake(work, "--cores", "2", config=work / CONFIG)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work


@pytest.fixture
def loop(finished, tmp_path):
    """A copy of the finished matrix (Snakemake's metadata and the files' times kept)."""
    work = tmp_path / "work"
    shutil.copytree(finished, work, symlinks=True)
    return work


def edit(work: Path, change) -> None:
    raw = yaml.safe_load((work / CONFIG).read_text())
    change(raw)
    (work / CONFIG).write_text(yaml.safe_dump(raw, sort_keys=False))


def run_again(work: Path, *targets: str) -> dict[str, int]:
    """The same command again; the jobs that ran, from Snakemake's job summary. Afterwards nothing is left to do."""
    proc = snakemake(work, "--cores", "2", *targets, config=work / CONFIG)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    jobs = planned_jobs(proc) if "Job stats:" in out else {}
    again = snakemake(work, "-n", *targets, config=work / CONFIG)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
    return jobs


def outputs(work: Path, run_id: str, merged: bool = True) -> dict[str, dict]:
    """The spec every output of a run records: its adapter, train.json, eval.json and merge_check.json."""
    run = work / RESULTS / "runs" / run_id
    files = {"adapter": run / "adapter" / RUN_FILE, "train": run / "train.json", "eval": run / "eval.json"}
    if merged:
        files["merge"] = run / "merge_check.json"
    return {name: artifacts.read_json(f)["spec"] for name, f in files.items()}


def recorded(work: Path, run_id: str, section: str, key: str, merged: bool = True) -> set:
    """The values of `section.key` in every output of a run (a search run has no merge)."""
    return {repr(spec[section][key]) for spec in outputs(work, run_id, merged).values()}


def mtimes(work: Path, run_id: str) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (work / RESULTS / "runs" / run_id).rglob("*") if p.is_file()}


def summary(work: Path) -> pd.DataFrame:
    return pd.read_csv(work / RESULTS / "tables/summary.csv").set_index("run_id")


def ran(jobs: dict[str, int]) -> set[str]:
    """The stages that ran (`all` is bookkeeping)."""
    return set(jobs) - {"all"}


# --- one test per class of key: (edit, key, jobs that run, check of the outputs) -------------


def test_a_training_key_retrains_the_edited_runs_and_every_output_records_it(loop):
    untouched = mtimes(loop, SEARCHED)
    edit(loop, lambda c: c["sweep"][0].setdefault("training", {}).update(learning_rate=0.01))
    jobs = run_again(loop)
    assert ran(jobs) == rerun_by("training.learning_rate") == {"train_run", "evaluate_run", "merge_run", "tables_build"}
    assert jobs == {"train_run": 1, "evaluate_run": 1, "merge_run": 1, "tables_build": 1, "all": 1}
    assert recorded(loop, L1, "training", "learning_rate") == {"0.01"}
    assert artifacts.read_json(loop / RESULTS / "runs" / L1 / "train.json")["resumed_from"] is None
    assert summary(loop).loc[L1, "lr"] == 0.01
    assert mtimes(loop, SEARCHED) == untouched


def test_a_peft_key_retrains_evaluates_and_merges_again(loop):
    edit(loop, lambda c: c["sweep"][0].update(peft={"lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]}))
    jobs = run_again(loop)
    assert (
        ran(jobs)
        == rerun_by("peft.lora_alpha")
        == rerun_by("peft.target_modules")
        == {"train_run", "evaluate_run", "merge_run", "tables_build"}
    )
    # evaluate and merge read the PEFT settings too: their spec files are rewritten as well
    assert jobs == {"train_run": 1, "evaluate_run": 1, "merge_run": 1, "tables_build": 1, "all": 1}
    assert recorded(loop, L1, "peft", "lora_alpha") == {"32"}
    assert recorded(loop, L1, "peft", "target_modules") == {"['q_proj', 'v_proj']"}
    adapter = artifacts.read_json(loop / RESULTS / "runs" / L1 / "adapter/adapter_config.json")
    assert adapter["lora_alpha"] == 32 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]


def test_a_data_key_regenerates_and_retokenises_its_task_and_retrains_its_runs_only(loop):
    untouched = mtimes(loop, SEARCHED)
    edit(loop, lambda c: c["tasks"]["arith"]["data"].update(num_train=120))
    jobs = run_again(loop)
    assert ran(jobs) == {"data_generate", "data_tokenize"} | rerun_by("task.data.num_train")
    assert {k: jobs[k] for k in ("data_generate", "data_tokenize", "train_run", "evaluate_run", "merge_run")} == {
        "data_generate": 1,
        "data_tokenize": 1,
        "train_run": 1,
        "evaluate_run": 1,
        "merge_run": 1,
    }
    assert "model_build" not in jobs  # the base is built from another task's corpus
    for run_id in [L1]:
        assert {spec["task"]["data"]["num_train"] for spec in outputs(loop, run_id).values()} == {120}
        assert artifacts.read_json(loop / RESULTS / "runs" / run_id / "train.json")["examples"] == 120
    assert mtimes(loop, SEARCHED) == untouched


def test_an_evaluation_key_reevaluates_without_retraining(loop):
    key, value = "max_new_tokens", 12
    trained = {r: mtimes(loop, r) for r in [L1]}
    edit(loop, lambda c: c["tasks"]["arith"].update({key: value}))
    jobs = run_again(loop)
    assert ran(jobs) == rerun_by(f"task.{key}") == {"evaluate_run", "tables_build"}
    assert jobs == {"evaluate_run": 1, "tables_build": 1, "all": 1}
    for run_id in [L1]:
        ev = artifacts.read_json(loop / RESULTS / "runs" / run_id / "eval.json")
        assert ev["spec"]["task"][key] == value
        train = artifacts.read_json(loop / RESULTS / "runs" / run_id / "train.json")
        assert ev["trained_fingerprint"] == train["fingerprint"]
        assert {k: v for k, v in ev["spec"].items() if k != "task"} == {
            k: v for k, v in train["spec"].items() if k != "task"
        }
        changed = {p for p, t in mtimes(loop, run_id).items() if trained[run_id].get(p) != t}
        assert {p.name for p in changed} == {"eval.json", "predictions.jsonl"}


def test_a_logging_key_reruns_nothing(loop):
    before = {r: mtimes(loop, r) for r in (L1, SEARCHED)}
    edit(loop, lambda c: (c["training"].update(logging_steps=3), c.update(wandb={"mode": "offline"})))
    assert rerun_by("training.logging_steps") == rerun_by("wandb.mode") == set()
    assert run_again(loop) == {}
    assert {r: mtimes(loop, r) for r in (L1, SEARCHED)} == before


def test_a_tracker_key_retrains(loop):
    edit(loop, lambda c: c["sweep"][0].update(tracker={"spectral_log_frequency": 2}))
    jobs = run_again(loop)
    assert ran(jobs) == rerun_by("tracker.spectral_log_frequency")
    assert jobs == {"train_run": 1, "evaluate_run": 1, "merge_run": 1, "tables_build": 1, "all": 1}
    for run_id in [L1]:
        assert recorded(loop, run_id, "tracker", "spectral_log_frequency") == {"2"}
        assert artifacts.read_json(loop / RESULTS / "runs" / run_id / "train.json")["tracking"]["spectral_steps"] == [
            0,
            2,
            4,
            6,
        ]


def test_outputs_merge_remerges_only(loop):
    edit(loop, lambda c: c["sweep"][0].update(outputs={"merge": "check"}))
    jobs = run_again(loop)
    assert ran(jobs) == rerun_by("outputs.merge") == {"merge_run", "tables_build"}
    assert jobs == {"merge_run": 1, "tables_build": 1, "all": 1}
    for run_id in [L1]:
        check = artifacts.read_json(loop / RESULTS / "runs" / run_id / "merge_check.json")
        assert check["spec"]["outputs"]["merge"] == "check" and check["checked"] and not check["saved"]
        assert (loop / RESULTS / "runs" / run_id / "merged/NOT_SAVED.txt").exists()


def test_outputs_checkpoints_retrains_and_keeps_them(loop):
    edit(loop, lambda c: c["sweep"][0].update(outputs={"checkpoints": "last"}))
    jobs = run_again(loop)
    assert ran(jobs) == rerun_by("outputs.checkpoints")
    assert jobs == {"train_run": 1, "evaluate_run": 1, "merge_run": 1, "tables_build": 1, "all": 1}
    for run_id in [L1]:
        assert recorded(loop, run_id, "outputs", "checkpoints") == {"'last'"}
        kept = artifacts.read_json(loop / RESULTS / "runs" / run_id / "train.json")["checkpoints"]
        assert [k["step"] for k in kept] == [6] and Path(loop / kept[0]["adapter"]).exists()


def test_an_lr_search_key_searches_the_new_rate_and_retrains_the_final_run(loop):
    untouched = {r: mtimes(loop, r) for r in (L1, "arith_lr/tiny-llama/ia3/search-s0-lr0.01")}
    edit(loop, lambda c: c["sweep"][1]["lr_search"].update(rates=[0.01, 0.3]))
    jobs = run_again(loop)
    # one new search run, the cell's selection, and the final run it picks for
    assert jobs == {"train_run": 2, "evaluate_run": 2, "lr_select": 1, "merge_run": 1, "tables_build": 1, "all": 1}
    assert recorded(loop, SEARCHED, "lr_search", "rates") == {"[0.01, 0.3]"}
    chosen = artifacts.read_json(loop / RESULTS / "lr_search/arith_lr/tiny-llama/ia3/search.json")
    assert {c["rate"] for c in chosen["candidates"]} == {0.01, 0.3}
    assert recorded(loop, SEARCHED, "training", "learning_rate") == {repr(chosen["best_rate"])}
    assert {r: mtimes(loop, r) for r in untouched} == untouched


def test_adding_a_seed_trains_only_the_new_run(loop):
    before = {r: mtimes(loop, r) for r in (L1, SEARCHED)}
    edit(loop, lambda c: c["sweep"][0].update(seed=[1, 2]))
    jobs = run_again(loop)
    assert jobs == {"train_run": 1, "evaluate_run": 1, "merge_run": 1, "tables_build": 1, "all": 1}
    assert {r: mtimes(loop, r) for r in before} == before
    assert sorted(summary(loop).index) == [L1, L2, SEARCHED]
    assert recorded(loop, L2, "training", "seed") == {"2"}


def test_removing_a_run_drops_it_from_the_tables_and_reruns_nothing_else(loop):
    before = mtimes(loop, L1)
    edit(loop, lambda c: c["sweep"].pop(1))  # the searched IA3 run, and with it its search
    jobs = run_again(loop)
    assert jobs == {"tables_build": 1, "all": 1}
    assert list(summary(loop).index) == [L1] and not (loop / RESULTS / "tables/best_lr.csv").exists()
    assert mtimes(loop, L1) == before


def test_a_collapsed_run_is_flagged_through_the_pipeline_and_a_tables_key_reruns_the_tables_only(loop):
    """A seed at a learning rate of 1e30 (RMSNorm keeps its loss finite, every gradient 0): it finishes, flagged,
    and the tables leave it out and say why; `tables.include_flagged` rebuilds the tables, retraining nothing."""
    collapsed = {"task": "arith", "model": "tiny-llama", "method": "lora", "seed": 2}
    edit(
        loop,
        lambda c: c["sweep"].append(
            {**collapsed, "training": {"learning_rate": 1.0e30, "max_steps": 12, "logging_steps": 1}}
        ),
    )
    jobs = run_again(loop)
    assert jobs == {"train_run": 1, "evaluate_run": 1, "merge_run": 1, "tables_build": 1, "all": 1}
    assert artifacts.read_json(loop / RESULTS / "runs" / L2 / "train.json")["health"]["status"] == "collapsed"
    table = summary(loop)
    assert table.loc[L2, "health"] == "collapsed" and table.loc[L1, "health"] == "ok"
    md = (loop / RESULTS / "tables/summary.md").read_text()
    assert "## Runs left out of the comparisons" in md and f"| {L2} | collapsed | the gradient norm was 0 for" in md
    arith = pd.read_csv(loop / RESULTS / "tables/tasks/arith.csv")
    assert list(arith["lr"]) == [0.003] and list(arith["n"]) == [1]  # the collapsed run's setting is not in the table
    state = subprocess.run(
        [sys.executable, "-m", "peftlab.status", "--configfile", CONFIG],
        cwd=loop,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"{L2}  (" in state.stdout and "health: collapsed" in state.stdout, state.stdout + state.stderr

    before = {r: mtimes(loop, r) for r in (L1, L2, SEARCHED)}
    edit(loop, lambda c: c.update(tables={"include_flagged": True}))
    assert run_again(loop) == {"tables_build": 1, "all": 1}
    assert {r: mtimes(loop, r) for r in before} == before
    arith = pd.read_csv(loop / RESULTS / "tables/tasks/arith.csv")
    assert sorted(arith["lr"]) == [0.003, 1e30]  # the flagged run's setting is compared again
    assert "Runs left out" not in (loop / RESULTS / "tables/summary.md").read_text()


# --- a kill, and one targeted file ----------------------------------------------------------


def test_killed_during_training_then_edited_the_run_finishes_at_the_new_rate_from_no_stale_checkpoint(loop):
    """kill -9 of Snakemake and its jobs (a node lost) while a run trains and has written a checkpoint;
    then the learning rate is edited and the same command runs again."""
    edit(loop, lambda c: c["sweep"][0].update(training={"max_steps": 400, "save_steps": 5}))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow/Snakefile"), "--directory", str(loop)]
    cmd += ["--workflow-profile", str(ROOT / "profiles/default")]
    cmd += ["--configfile", str(loop / CONFIG), "--cores", "2", f"{RESULTS}/runs/{L1}/eval.json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = loop / RESULTS / "checkpoints" / L1
    deadline = time.time() + 300
    while not list(ckpts.glob("checkpoint-*/trainer_state.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stale = sorted(p.name for p in ckpts.glob("checkpoint-*"))
    assert stale, "no checkpoint was written before the kill"
    assert not (loop / RESULTS / "runs" / L1 / "train.json").exists()  # training was under way: no result yet

    edit(loop, lambda c: c["sweep"][0]["training"].update(learning_rate=0.02, max_steps=20))
    # a killed Snakemake leaves its lock: the next command says to remove it with --unlock
    refused = snakemake(loop, "--cores", "2", config=loop / CONFIG)
    assert refused.returncode != 0 and "--unlock" in refused.stdout + refused.stderr
    assert snakemake(loop, "--unlock", config=loop / CONFIG).returncode == 0
    jobs = run_again(loop, f"{RESULTS}/runs/{L1}/eval.json")
    assert jobs == {"train_run": 1, "evaluate_run": 1}
    train = artifacts.read_json(loop / RESULTS / "runs" / L1 / "train.json")
    assert (
        train["resumed_from"] is None and train["steps"] == 20
    )  # the checkpoints of the killed settings were discarded
    assert recorded(loop, L1, "training", "learning_rate", merged=False) == {"0.02"}
    log = (loop / RESULTS / "logs/train_run" / f"{L1}.log").read_text()
    assert "discarding" in log and "written from other training settings" in log


def test_targeting_one_runs_file_after_an_edit_reruns_that_run_alone(loop):
    other = mtimes(loop, SEARCHED)
    edit(loop, lambda c: (c["training"].update(learning_rate=0.01), c["sweep"][0].update(seed=[1, 2])))
    jobs = run_again(loop, f"{RESULTS}/runs/{L1}/eval.json")
    assert jobs == {"train_run": 1, "evaluate_run": 1}
    assert recorded(loop, L1, "training", "learning_rate", merged=False) == {"0.01"}
    assert mtimes(loop, SEARCHED) == other and not (loop / RESULTS / "runs" / L2).exists()
    # the full command goes on from there: L1's merge, and L2 from the start
    assert planned_jobs(snakemake(loop, "-n", config=loop / CONFIG))["merge_run"] == 2
