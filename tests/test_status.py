"""peftlab.status on a matrix's files: a failed run is named with its stage, its error's first line and what to do."""

from __future__ import annotations

from pathlib import Path

from peftlab import artifacts, paths, runstate, status

CONFIG = """
name: loop
tasks: {t: {type: sft, data: {generator: gsm8k_arith}}}
models: {m: {build: {corpus_task: t}}}
sweep: [{task: t, model: m, method: lora, seed: 1}]
"""
RUN = "t/m/lora/r8-s1"
STALE_LOG = f"""2026-11-26 10:00:00 peftlab.evaluate INFO evaluating {RUN}
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/x/peftlab/evaluate.py", line 93, in main
    record, predictions = evaluate(spec, args.adapter)
  File "/x/peftlab/models.py", line 111, in check_trained_by
    raise StaleAdapter(
peftlab.models.StaleAdapter: {RUN}: the adapter in results/loop/runs/{RUN}/adapter was trained from other settings \
(fingerprint a, the spec's is b); retrain it
"""


def failed_after_an_edit(tmp_path: Path, monkeypatch) -> Path:
    """A matrix whose one run trained, then failed in evaluate_run: its eval.json gone, its log ending in a
    traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop.yaml").write_text(CONFIG)
    root = paths.root("loop")
    artifacts.write_json(paths.train_record(root, RUN), {})
    log = Path(paths.log(root, "evaluate_run", RUN))
    log.parent.mkdir(parents=True)
    log.write_text(STALE_LOG)
    return tmp_path / "loop.yaml"


def test_a_stage_that_fails_after_an_edit_is_named_with_its_error_and_what_to_do(tmp_path, monkeypatch, capsys):
    config = failed_after_an_edit(tmp_path, monkeypatch)
    status.main(["--configfile", str(config)])
    text = capsys.readouterr().out
    assert f"✗ {RUN}  (evaluate_run: [stale_adapter] peftlab.models.StaleAdapter: {RUN}: the adapter in" in text
    assert "what to do: [stale_adapter] run the same snakemake command again" in text
    status.main(["--configfile", str(config), "--diagnose"])
    text = capsys.readouterr().out
    assert "== stale_adapter: 1 run(s)" in text and f"- {RUN} (evaluate_run)" in text
    assert "| Traceback (most recent call last):" in text  # the traceback's lines, not its last line alone


def test_the_time_limit_fix_names_the_runtime_key():
    cause, _, fix = runstate.classify(
        "slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026-11-26T10:00:00 DUE TO TIME LIMIT ***"
    )
    assert cause == "slurm_time_limit" and "resources.runtime" in fix and "resources.time " not in fix
