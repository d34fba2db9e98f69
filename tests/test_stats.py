"""peftlab.stats by hand, and the tables' statistics on runs whose predictions are known."""

from __future__ import annotations

import copy
import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, load_test_config
from peftlab import artifacts, metrics, paths, runstate, stats, tables
from peftlab.config import plan


def test_one_seed_of_correctness_is_mcnemars_exact_test_by_hand():
    # 10 examples only a gets right, 3 only b, 20 both, 7 neither: only the 13 that differ move under a sign flip
    a = [1] * 10 + [0] * 3 + [1] * 20 + [0] * 7
    b = [0] * 10 + [1] * 3 + [1] * 20 + [0] * 7
    r = stats.example_test([a], [b])
    assert (r["n"], r["seeds"]) == (40, 1) and r["test"] == "paired permutation (examples, seeds averaged)"
    # two-sided: 2 P(X <= 3), X ~ Bin(13, 1/2) = 2 (1 + 13 + 78 + 286) / 2^13: exact (2^13 flips < RESAMPLES)
    assert r["p"] == pytest.approx(2 * 378 / 8192, rel=1e-12)
    assert r["diff"] == pytest.approx((30 - 23) / 40)
    assert stats.example_test([[1, 0, 1]], [[1, 0, 1]])["p"] == 1.0  # no example differs


def test_seeds_are_averaged_per_example_by_hand():
    # two seeds, three examples: seed-averaged differences 1, 0.5 and 0.5; the 8 sign flips give sums
    # 2, 1, 1, 0, 0, -1, -1, -2, so the observed 2 is as extreme as 1 flip in 8 on each side: p = 2/8
    r = stats.example_test([[1, 1, 1], [1, 1, 0]], [[0, 0, 0], [0, 1, 0]])
    assert (r["n"], r["seeds"], r["diff"], r["p"]) == (3, 2, pytest.approx(2 / 3), pytest.approx(0.25))


def test_a_whole_set_metric_is_bootstrapped_over_examples_averaged_over_seeds():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 300))
    pairs = lambda pred: np.stack([pred, ref], axis=-1)  # noqa: E731  (prediction, reference) rows per seed
    good, noisy = ref + rng.normal(scale=0.3, size=ref.shape), ref + rng.normal(scale=1.0, size=ref.shape)
    better = stats.example_test(pairs(good), pairs(noisy), metrics.pearson_pairs, resamples=500)
    assert (
        better["test"] == "paired bootstrap (examples, seeds averaged)" and better["n"] == 300 and better["seeds"] == 2
    )
    expected = np.mean(
        [metrics.pearson_pairs(pairs(good)[s]) - metrics.pearson_pairs(pairs(noisy)[s]) for s in range(2)]
    )
    assert better["diff"] == pytest.approx(expected) and better["p"] <= 2 / 501
    same = stats.example_test(pairs(good), pairs(good), metrics.pearson_pairs, resamples=500)
    assert same["diff"] == 0 and same["p"] == 1.0


def test_summary_one_seed_has_no_interval_and_three_have_a_t_interval():
    one = stats.summary([0.9531])
    assert one == {"n": 1, "mean": 0.9531, "std": None, "ci_low": None, "ci_high": None, "ci": None}
    three = stats.summary([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) x std 1 / sqrt(3)
    assert three["std"] == pytest.approx(1.0)
    assert (three["ci_low"], three["ci_high"]) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert three["ci"] == "t95"


def test_seed_test_and_holm_by_hand():
    a, b = {1: 0.5, 2: 0.7, 3: 0.6}, {1: 0.4, 2: 0.5, 3: 0.55}
    d = np.array([0.1, 0.2, 0.05])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    r = stats.seed_test(a, b)
    assert r["diff"] == pytest.approx(d.mean()) and r["note"] is None
    from scipy import stats as sp

    assert r["p"] == pytest.approx(2 * sp.t.sf(t, 2), rel=1e-9)
    assert stats.seed_test({1: 0.5}, {2: 0.4}) is None  # no shared seed: nothing to compare
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_no_p_value_from_fewer_than_three_seeds_or_differences_that_do_not_vary():
    """The README demo's table printed p = 0 for two seeds whose differences were both -0.18."""
    two = stats.seed_test({1: 0.42, 2: 0.5}, {1: 0.6, 2: 0.68})
    assert two["p"] is None and two["n"] == 2 and "at least 3" in two["note"] and two["diff"] == pytest.approx(-0.18)
    near = stats.seed_test({1: 0.05, 2: 0.0499999}, {1: 0.0, 2: 0.0})
    assert near["p"] is None
    flat = stats.seed_test({1: 0.6, 2: 0.7, 3: 0.8}, {1: 0.4, 2: 0.5, 3: 0.6})
    assert flat["p"] is None and "do not vary" in flat["note"]


correctness = st.lists(st.lists(st.integers(0, 1), min_size=12, max_size=12), min_size=1, max_size=3)


@settings(max_examples=40, deadline=None)
@given(base=st.lists(st.floats(0, 1), min_size=1, max_size=8), same=st.floats(-1, 1))
def test_identical_differences_never_give_a_p_value(base, same):
    """Scores that differ by the same amount on every seed (up to float rounding): t is undefined, not infinite."""
    r = stats.seed_test({s: x + same for s, x in enumerate(base)}, dict(enumerate(base)))
    assert r["p"] is None and r["note"]


@settings(max_examples=40, deadline=None)
@given(a=correctness, b=correctness)
def test_the_example_test_counts_each_example_once_and_is_symmetric(a, b):
    seeds = min(len(a), len(b))
    a, b = a[:seeds], b[:seeds]
    r = stats.example_test(a, b)
    assert 0 < r["p"] <= 1
    assert stats.example_test(b, a)["p"] == pytest.approx(r["p"])  # swapping the methods
    # a copy of the seeds' predictions as more seeds is no new example: the same p (never smaller)
    assert stats.example_test(a + a, b + b)["p"] == pytest.approx(r["p"])
    if seeds == 1:
        assert stats.example_test(a * 3, b * 3)["p"] == pytest.approx(r["p"])


def fake_run(root, spec: dict, correct: list[bool], metric_value: float | None = None):
    """A finished run's files, as the stages write them, with the given per-example correctness."""
    run = root / "runs" / spec["run_id"]
    run.mkdir(parents=True)
    accuracy = float(np.mean(correct)) if metric_value is None else metric_value
    artifacts.write_json(
        run / "train.json",
        {
            "run_id": spec["run_id"],
            "spec": spec,
            "examples": 400,
            "trainable_params": 1000 if spec["peft"]["type"] == "lora" else 500,
            "trainable_share": 0.01,
            "losses": [{"step": 5, "loss": 1.0}, {"step": 10, "loss": 0.5}],
            "evaluations": [{"step": 5, "eval_accuracy": accuracy / 2}, {"step": 10, "eval_accuracy": accuracy}],
            "first_loss": 1.0,
            "final_loss": 0.5,
            "tokens_per_s": 100.0,
            "wall_time_s": 3.0,
        },
    )
    artifacts.write_json(run / "eval.json", {"spec": spec, "metrics": {"accuracy": accuracy}})
    artifacts.write_jsonl(
        run / "predictions.jsonl",
        [{"id": i, "split": "eval", "prediction": int(c), "reference": 1, "correct": c} for i, c in enumerate(correct)],
    )
    artifacts.write_json(run / "merge_check.json", {"mergeable": True, "max_abs_logit_diff": 0.0})
    return run


def fake_matrix(root):
    """sentiment on minilm: lora and pissa over seeds 1 and 2, ia3 over seed 1; known per-example correctness."""
    base = next(r for r in plan(load_test_config())[1].values() if r["task"]["name"] == "sentiment")
    dirs = []
    pattern = {
        ("lora", 1): [True] * 30 + [False] * 10,
        ("lora", 2): [True] * 28 + [False] * 12,
        ("pissa", 1): [True] * 25 + [False] * 5 + [True] * 4 + [False] * 6,  # lora-only 5, pissa-only 4 on seed 1
        ("pissa", 2): [True] * 20 + [False] * 8 + [True] * 2 + [False] * 10,  # lora-only 8, pissa-only 2 on seed 2
        ("ia3", 1): [True] * 40,
    }
    for (method, seed), correct in pattern.items():
        spec = copy.deepcopy(base)
        spec["peft"]["type"], spec["training"]["seed"] = method, seed
        spec["run_id"] = f"sentiment/minilm/{method}/r8-s{seed}"
        dirs.append(fake_run(root, spec, correct))
    return dirs


def test_tables_compare_every_method_with_the_reference_on_known_predictions(tmp_path):
    root = tmp_path / "results/m"
    dirs = fake_matrix(root)
    tables.build(dirs, root / "tables", reference="lora")
    comps = pd.read_csv(root / "tables/comparisons.csv").set_index("method")
    pissa = comps.loc["pissa"]
    # each of the 40 examples once, its correctness averaged over the two shared seeds: pissa - lora is
    # -0.5 on examples 20-24, -1 on 25-27, +0.5 on 30-33 and 0 elsewhere. A sign flip of the 12 that
    # differ gives the sum X + 2Y - 7.5 (X of the nine 0.5s and Y of the three 1s positive, each
    # Bin(n, 1/2)); the observed sum -3.5 is X + 2Y = 4: exact, as 2^12 flips < RESAMPLES
    below = sum(math.comb(9, x) * math.comb(3, y) for x in range(10) for y in range(4) if x + 2 * y <= 4) / 2**12
    assert pissa["example_test"] == "paired permutation (examples, seeds averaged)" and pissa["examples"] == 40
    assert pissa["p_examples"] == pytest.approx(2 * below, rel=1e-9)
    assert pissa["shared_seeds"] == 2 and pissa["diff"] == pytest.approx(((29 - 30) + (22 - 28)) / 2 / 40)
    assert pd.isna(pissa["p_seeds"]) and "at least 3" in pissa["p_seeds_note"]  # two seeds: no t-test
    ia3 = comps.loc["ia3"]  # one shared seed: no seed test, a per-example test on seed 1 alone
    assert pd.isna(ia3["p_seeds"]) and ia3["examples"] == 40
    assert ia3["p_examples"] == pytest.approx(
        2 / 2**10
    )  # right on the 10 examples lora gets wrong, never the other way
    # Holm over the table's two per-example tests
    assert sorted(comps["p_examples_holm"]) == pytest.approx(sorted(stats.holm(comps["p_examples"].tolist())))

    task = pd.read_csv(root / "tables/tasks/sentiment.csv").set_index("method")
    assert task.loc["ia3", "best"] and not task.loc["lora", "best"]
    assert (
        task.loc["ia3", "n"] == 1 and pd.isna(task.loc["ia3", "std"]) and pd.isna(task.loc["ia3", "ci95_low"])
    )  # never ± 0
    assert (
        task.loc["lora", "n"] == 2
        and task.loc["lora", "ci95_low"] < task.loc["lora", "accuracy"] < task.loc["lora", "ci95_high"]
    )
    md = (root / "tables/tasks/sentiment.md").read_text()
    assert "**1**" in md  # ia3's accuracy of 1, the best cell, in bold
    assert "(n=2: few seeds)" in md and "| n/a " in md and "2 shared seed(s): a test needs at least 3" in md
    assert "± 0" not in (root / "tables/summary.md").read_text()


def test_plots_follow_the_axes_the_matrix_varies(tmp_path):
    """A learning-rate sweep gets lr.png and no rank or size plot; in-training evaluations get eval.png."""
    root = tmp_path / "results/m"
    base = next(r for r in plan(load_test_config())[1].values() if r["task"]["name"] == "sentiment")
    dirs = []
    for lr, seed in [(lr, seed) for lr in (1e-4, 1e-3, 1e-2) for seed in (1, 2)]:
        spec = copy.deepcopy(base)
        spec["training"]["learning_rate"], spec["training"]["seed"] = lr, seed
        spec["run_id"] = f"sentiment/minilm/lora/r8-s{seed}-lr{lr:g}"
        dirs.append(
            fake_run(root, spec, [True] * int(40 * (0.5 + 10 * lr)) + [False] * (40 - int(40 * (0.5 + 10 * lr))))
        )
    tables.build(dirs, root / "tables")
    plotted = sorted(p.name for p in (root / "tables/plots/sentiment/minilm").glob("*.png"))
    assert plotted == ["eval.png", "loss.png", "lr.png", "metric.png", "params.png"]
    for png in plotted:
        assert (root / "tables/plots/sentiment/minilm" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = pd.read_csv(root / "tables/tasks/sentiment.csv")
    assert sorted(cells["lr"]) == [1e-4, 1e-3, 1e-2] and (cells["n"] == 2).all()
    assert cells.loc[cells["best"], "lr"].tolist() == [
        1e-2
    ]  # 0.6 of the examples right beats 0.5 at the two lower rates


def pdflatex() -> str:
    found = shutil.which("pdflatex")
    if found is None:
        if __import__("os").environ.get("PEFTLAB_REQUIRE_LATEX"):
            pytest.fail("pdflatex is missing, and PEFTLAB_REQUIRE_LATEX is set (CI installs texlive-latex-recommended)")
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    return found


def compile_latex(tex_file, tmp_path) -> subprocess.CompletedProcess:
    doc = tmp_path / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs,"
        f"graphicx}}\n\\begin{{document}}\n\\input{{{tex_file}}}\n\\end{{document}}\n"
    )
    return subprocess.run(
        [pdflatex(), "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_latex_tables_escape_names_and_compile(tmp_path):
    root = tmp_path / "results/m"
    dirs = fake_matrix(root)
    # a task and method whose names need escaping (underscores), as real ones do
    tables.build(dirs, root / "tables", reference="lora")
    tex = (root / "tables/summary.tex").read_text()
    assert "\\toprule" in tex and "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth" in tex and "\\textbf{" in tex
    table = tables.task_table(
        pd.DataFrame(
            {
                "task": ["my_task"],
                "model": ["tiny_llama"],
                "method": ["prompt_tuning"],
                "r": [None],
                "lr": [0.1],
                "train_size": [100],
                "seeds": [1],
                "trainable_pct": [0.5],
                "main_metric": ["exact_match"],
                "exact_match_mean": [0.5],
                "exact_match_std": [None],
                "exact_match_ci_low": [None],
                "exact_match_ci_high": [None],
            }
        ),
        pd.DataFrame(),
        "my_task",
    )
    escaped = tables.latex(table, "my_task", "exact_match")
    assert "prompt\\_tuning" in escaped and "my\\_task" in escaped and "exact\\_match" in escaped
    (tmp_path / "escaped.tex").write_text(escaped)
    for name in (root / "tables/summary.tex", tmp_path / "escaped.tex"):
        proc = compile_latex(name, tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert "Overfull \\hbox" not in proc.stdout  # one page wide
        assert (tmp_path / "doc.pdf").stat().st_size > 1000


def test_one_failed_one_done_one_pending_run(tmp_path, monkeypatch, capsys):
    """peftlab.status --json on a matrix's files: each run's state from its files and logs."""
    from peftlab import status

    runs = list(plan(load_test_config())[1])
    done, failed, running, pending = runs[0], runs[1], runs[2], runs[3]
    monkeypatch.chdir(tmp_path)
    root = "results/test"
    for _, output in paths.RUN_OUTPUTS:
        artifacts.write_json(f"{paths.run(root, done)}/{output}", {})
    bench = tmp_path / paths.benchmark(root, "train_run", done)
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\tmax_vms\n12.5\t0:00:12\t2048.0\t4000\n")
    log = tmp_path / paths.log(root, "train_run", failed)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(OOM_LOG)
    live = tmp_path / paths.log(root, "train_run", running)
    live.parent.mkdir(parents=True, exist_ok=True)
    live.write_text(
        "2026-11-26 INFO peftlab.observe progress x: step 10/60 (17%) loss 1.2 | 0:00:10 elapsed, ETA 0:00:50\n"
        f"2026-11-26 INFO peftlab.observe progress {running}: step 20/60 (33%) loss 1.1 learning_rate 0.003 | "
        "0:00:20 elapsed, ETA 0:00:40\n"
    )
    status.main(["--configfile", str(ROOT / "config/test.yaml"), "--json"])
    out = __import__("json").loads(capsys.readouterr().out)
    states = {r["run_id"]: r for r in out["runs"]}
    assert (
        states[done]["state"] == "done"
        and states[done]["wall_time_s"] == 12.5
        and states[done]["peak_rss_mb"] == 2048.0
    )
    assert (
        states[failed]["state"] == "failed"
        and states[failed]["cause"] == "out_of_memory"
        and states[failed]["stage"] == "train_run"
    )
    assert states[failed]["reason"].startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert (states[running]["state"], states[running]["step"], states[running]["total"], states[running]["eta"]) == (
        "running",
        20,
        60,
        "0:00:40",
    )
    assert states[pending]["state"] == "pending"
    assert out["counts"] == {"done": 1, "running": 1, "failed": 1, "pending": len(runs) - 3}
    status.main(["--configfile", str(ROOT / "config/test.yaml")])
    text = capsys.readouterr().out
    assert "Progress: [" in text and f"1/{len(runs)}" in text and "ETA 0:00:40" in text
    # a log that stopped changing long ago, with no output and no error: failed, not running forever
    stale = runstate.run_state(root, running, stale_s=60, now=live.stat().st_mtime + 3600)
    assert stale.state == "failed" and "has not changed for 60 min" in stale.reason


OOM_LOG = """2026-11-26 INFO peftlab.observe progress r: step 3/60 (5%) loss 2.1 | 0:00:03 elapsed, ETA 0:00:57
Traceback (most recent call last):
  File "/x/peftlab/train.py", line 200, in _train
    runtime = trainer.train(resume_from_checkpoint=resume).metrics["train_runtime"]
  File "/x/torch/nn/modules/linear.py", line 125, in forward
    return F.linear(input, self.weight, self.bias)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. \
GPU 0 has a total capacity of 79.10 GiB of which 1.2 GiB is free.
"""
MISSING_COLUMN_LOG = """Traceback (most recent call last):
  File "/x/peftlab/data.py", line 131, in check
peftlab.data.DataError: task 'cola', split train: missing column(s) ['sentence']; the data has ['text', 'label']
"""
TIME_LIMIT_SLURM_LOG = """srun: cluster configuration lacks support for cpu binding
slurmstepd: error: *** JOB 4242 ON node1 CANCELLED AT 2026-11-26T10:00:00 DUE TO TIME LIMIT ***
"""


def test_diagnosis_classifies_failures_and_suggests_a_fix(tmp_path):
    from peftlab import status

    assert runstate.classify(OOM_LOG)[0] == "out_of_memory"
    assert runstate.classify(MISSING_COLUMN_LOG)[0] == "missing_column"
    assert runstate.classify(TIME_LIMIT_SLURM_LOG)[0] == "slurm_time_limit"
    assert (
        runstate.classify("peftlab.train.Diverged: training diverged: loss is nan at step 40")[0] == "non_finite_loss"
    )
    assert (
        runstate.classify("RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x64 and 32x8)")[0]
        == "shape_mismatch"
    )
    assert runstate.classify("peftlab.checkpoints.CheckpointsInUse: x is in use by another trainer")[0] == "lock"
    assert runstate.classify(
        "slurmstepd: error: Detected 1 oom_kill event in StepId=5.batch. ... exceeded memory limit"
    )[0] == ("slurm_memory_limit")
    runs = [
        runstate.Run(
            "a/m/lora/r8-s1",
            "failed",
            "train_run",
            reason="torch.OutOfMemoryError: ...",
            cause="out_of_memory",
            lines=["x"],
        ),
        runstate.Run("a/m/lora/r8-s2", "failed", "train_run", reason="...", cause="out_of_memory", lines=["y"]),
        runstate.Run("b/m/lora/r8-s1", "failed", "train_run", reason="DataError", cause="missing_column", lines=["z"]),
        runstate.Run("b/m/lora/r8-s2", "done"),
    ]
    text = status.diagnose(runs)
    assert text.startswith("3 failed run(s)")
    assert text.index("== out_of_memory: 2 run(s)") < text.index("== missing_column: 1 run(s)")
    assert "gradient_checkpointing" in text and "tasks.<name>.columns" in text
    # the Slurm log of a job killed at its time limit is read beside the stage's own log
    workdir = tmp_path
    (workdir / "results/m/logs/train_run/a/m/lora").mkdir(parents=True)
    (workdir / "results/m/logs/train_run/a/m/lora/r8-s1.log").write_text(
        "progress a/m/lora/r8-s1: step 5/60 (8%) | 0:00:05 elapsed, ETA 0:00:55\n"
    )
    slurm = workdir / ".snakemake/slurm_logs/rule_train_run/a_m_lora_r8-s1"
    slurm.mkdir(parents=True)
    (slurm / "4242.log").write_text(TIME_LIMIT_SLURM_LOG)
    import os

    os.chdir(workdir)
    try:
        r = runstate.run_state("results/m", "a/m/lora/r8-s1", workdir)
    finally:
        os.chdir(ROOT)
    assert r.state == "failed" and r.cause == "slurm_time_limit" and "TIME LIMIT" in r.reason
