"""peftlab.stats by hand, and the tables' statistics on runs whose predictions are known."""

from __future__ import annotations

import copy
import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, load_test_config
from peftlab import artifacts, paths, stats, tables
from peftlab.config import plan


def test_mcnemar_exact_by_hand():
    # 10 examples only a gets right, 3 only b, 20 both, 7 neither
    a = [1] * 10 + [0] * 3 + [1] * 20 + [0] * 7
    b = [0] * 10 + [1] * 3 + [1] * 20 + [0] * 7
    r = stats.mcnemar(a, b)
    assert (r["a_only"], r["b_only"], r["n"]) == (10, 3, 40)
    assert r["test"] == "McNemar exact"
    assert r["statistic"] == 3  # min(10, 3)
    # two-sided binomial: 2 P(X <= 3), X ~ Bin(13, 1/2) = 2 (1 + 13 + 78 + 286) / 2^13
    assert r["p"] == pytest.approx(2 * 378 / 8192, rel=1e-12)
    assert r["diff"] == pytest.approx((30 - 23) / 40)


def test_mcnemar_chi_square_by_hand():
    a = [1] * 30 + [0] * 12 + [1] * 50
    b = [0] * 30 + [1] * 12 + [1] * 50
    r = stats.mcnemar(a, b)
    assert r["test"] == "McNemar chi2 (cc)"
    assert r["statistic"] == pytest.approx((abs(30 - 12) - 1) ** 2 / 42, rel=1e-12)
    # chi-square with one degree of freedom: P(X > x) = erfc(sqrt(x / 2))
    assert r["p"] == pytest.approx(math.erfc(math.sqrt(r["statistic"] / 2)), rel=1e-9)
    assert stats.mcnemar([1, 0, 1], [1, 0, 1])["p"] == 1.0  # no discordant pair


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
    assert r["diff"] == pytest.approx(d.mean())
    from scipy import stats as sp

    assert r["p"] == pytest.approx(2 * sp.t.sf(t, 2), rel=1e-9)
    assert stats.seed_test({1: 0.5}, {1: 0.4}) is None  # one shared seed: no test
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_paired_bootstrap_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    same = stats.paired_bootstrap(x, x, resamples=500)
    assert same["diff"] == 0 and same["p"] == 1.0
    shifted = stats.paired_bootstrap(x + 0.5, x, resamples=500)
    assert shifted["diff"] == pytest.approx(0.5) and shifted["p"] <= 2 / 500
    noisy = stats.paired_bootstrap(x + rng.normal(scale=0.01, size=300), x, resamples=500)
    assert noisy["p"] > 0.05


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
    # pooled over the two shared seeds: lora-only 5 + 8 = 13, pissa-only 4 + 2 = 6 -> exact, statistic 6
    assert pissa["example_test"] == "McNemar exact" and pissa["examples"] == 80
    assert pissa["statistic"] == 6
    exact_p = 2 * sum(math.comb(19, k) for k in range(7)) / 2**19
    assert pissa["p_examples"] == pytest.approx(exact_p, rel=1e-9)
    assert pissa["shared_seeds"] == 2 and pissa["diff"] == pytest.approx(((29 - 30) + (22 - 28)) / 2 / 40)
    ia3 = comps.loc["ia3"]  # one shared seed: no seed test, a per-example test on seed 1 alone
    assert pd.isna(ia3["p_seeds"]) and ia3["examples"] == 40 and ia3["statistic"] == 0  # ia3 is never wrong where lora is right
    # Holm over the table's two per-example tests
    assert sorted(comps["p_examples_holm"]) == pytest.approx(sorted(stats.holm(comps["p_examples"].tolist())))

    task = pd.read_csv(root / "tables/tasks/sentiment.csv").set_index("method")
    assert task.loc["ia3", "best"] and not task.loc["lora", "best"]
    assert task.loc["ia3", "n"] == 1 and pd.isna(task.loc["ia3", "std"]) and pd.isna(task.loc["ia3", "ci95_low"])  # never ± 0
    assert task.loc["lora", "n"] == 2 and task.loc["lora", "ci95_low"] < task.loc["lora", "accuracy"] < task.loc["lora", "ci95_high"]
    md = (root / "tables/tasks/sentiment.md").read_text()
    assert "**1**" in md  # ia3's accuracy of 1, the best cell, in bold
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
        dirs.append(fake_run(root, spec, [True] * int(40 * (0.5 + 10 * lr)) + [False] * (40 - int(40 * (0.5 + 10 * lr)))))
    tables.build(dirs, root / "tables")
    plotted = sorted(p.name for p in (root / "tables/plots/sentiment/minilm").glob("*.png"))
    assert plotted == ["eval.png", "loss.png", "lr.png", "metric.png", "params.png"]
    for png in plotted:
        assert (root / "tables/plots/sentiment/minilm" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = pd.read_csv(root / "tables/tasks/sentiment.csv")
    assert sorted(cells["lr"]) == [1e-4, 1e-3, 1e-2] and (cells["n"] == 2).all()
    assert cells.loc[cells["best"], "lr"].tolist() == [1e-2]  # 0.6 of the examples right beats 0.5 at the two lower rates


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
        f"\\documentclass{{article}}\n\\usepackage{{booktabs,graphicx}}\n\\begin{{document}}\n\\input{{{tex_file}}}\n\\end{{document}}\n"
    )
    return subprocess.run(
        [pdflatex(), "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path, capture_output=True, text=True, timeout=120
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
        f"2026-11-26 INFO peftlab.observe progress {running}: step 20/60 (33%) loss 1.1 learning_rate 0.003 | 0:00:20 elapsed, ETA 0:00:40\n"
    )
    status.main(["--configfile", str(ROOT / "config/test.yaml"), "--json"])
    out = __import__("json").loads(capsys.readouterr().out)
    states = {r["run_id"]: r for r in out["runs"]}
    assert states[done]["state"] == "done" and states[done]["wall_time_s"] == 12.5 and states[done]["peak_rss_mb"] == 2048.0
    assert states[failed]["state"] == "failed" and states[failed]["cause"] == "out_of_memory" and states[failed]["stage"] == "train_run"
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
    stale = status.run_state(root, running, stale_s=60, now=live.stat().st_mtime + 3600)
    assert stale.state == "failed" and "has not changed for 60 min" in stale.reason


OOM_LOG = """2026-11-26 INFO peftlab.observe progress r: step 3/60 (5%) loss 2.1 | 0:00:03 elapsed, ETA 0:00:57
Traceback (most recent call last):
  File "/x/peftlab/train.py", line 200, in _train
    runtime = trainer.train(resume_from_checkpoint=resume).metrics["train_runtime"]
  File "/x/torch/nn/modules/linear.py", line 125, in forward
    return F.linear(input, self.weight, self.bias)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which 1.2 GiB is free.
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

    assert status.classify(OOM_LOG)[0] == "out_of_memory"
    assert status.classify(MISSING_COLUMN_LOG)[0] == "missing_column"
    assert status.classify(TIME_LIMIT_SLURM_LOG)[0] == "slurm_time_limit"
    assert status.classify("peftlab.train.Diverged: training diverged: loss is nan at step 40")[0] == "non_finite_loss"
    assert status.classify("RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x64 and 32x8)")[0] == "shape_mismatch"
    assert status.classify("peftlab.checkpoints.CheckpointsInUse: x is in use by another trainer")[0] == "lock"
    assert status.classify("slurmstepd: error: Detected 1 oom_kill event in StepId=5.batch. ... exceeded memory limit")[0] == (
        "slurm_memory_limit"
    )
    runs = [
        status.Run("a/m/lora/r8-s1", "failed", "train_run", reason="torch.OutOfMemoryError: ...", cause="out_of_memory", lines=["x"]),
        status.Run("a/m/lora/r8-s2", "failed", "train_run", reason="...", cause="out_of_memory", lines=["y"]),
        status.Run("b/m/lora/r8-s1", "failed", "train_run", reason="DataError", cause="missing_column", lines=["z"]),
        status.Run("b/m/lora/r8-s2", "done"),
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
        r = status.run_state("results/m", "a/m/lora/r8-s1", workdir)
    finally:
        os.chdir(ROOT)
    assert r.state == "failed" and r.cause == "slurm_time_limit" and "TIME LIMIT" in r.reason
