"""peftlab from Python: run a matrix (or a selection of it) through Snakemake's API, and load a finished run in one
call.

    from peftlab.api import load, run

    run("config/config.yaml", only="sentiment/minilm/lora/*", cores=2)        # as `snakemake --cores 2 --config
                                                                              # only=...`
    model, tokenizer = load("results/default/runs/sentiment/minilm/lora/r8-s1")   # base + adapter, in eval mode
    merged, tokenizer = load("results/default/runs/sentiment/minilm/lora/r8-s1", merged=True)

`run` is the command line's `snakemake` with the workflow's default profile
(keep going past a failed run, rerun incomplete jobs, print each stage's command),
so the same files are planned, written and reused: a finished run is not retrained.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # an editable install: the checkout that holds workflow/Snakefile


class RunFailed(RuntimeError):
    """Snakemake refused the config, or stopped with failed jobs (their logs are under results/<matrix>/logs/)."""


def run(
    configfile: str | Path = "config/config.yaml",
    *,
    only: str | list[str] | None = None,
    exclude: str | list[str] | None = None,
    targets: list[str] | None = None,
    cores: int = 1,
    dry_run: bool = False,
    workdir: str | Path = ".",
    snakefile: str | Path | None = None,
) -> None:
    """Run a config's matrix (its `all` target, or `targets`: rule names or files) in `workdir`.

    `only` and `exclude` select runs as the config's keys of the same names do (globs on run
    ids and names). `dry_run` plans without writing anything. Raises `RunFailed` if the config
    is refused (the message names the key), or if any job fails, after the others have finished.
    """
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        ExecutionSettings,
        OutputSettings,
        ResourceSettings,
    )

    workdir = Path(workdir).resolve()
    candidates = (workdir / "workflow/Snakefile", workdir / "Snakefile", REPO / "workflow/Snakefile")
    snakefile = Path(snakefile) if snakefile else next((p for p in candidates if p.exists()), None)
    if snakefile is None:
        raise FileNotFoundError(
            f"no workflow/Snakefile in {workdir} or {REPO}; pass snakefile= (the checkout's workflow/Snakefile)"
        )
    config = {
        k: ",".join(v) if isinstance(v, list) else v for k, v in (("only", only), ("exclude", exclude)) if v is not None
    }
    try:
        with SnakemakeApi(OutputSettings(dryrun=dry_run, printshellcmds=True, show_failed_logs=True)) as api:
            workflow = api.workflow(
                resource_settings=ResourceSettings(cores=cores),
                config_settings=ConfigSettings(configfiles=[Path(configfile).resolve()], config=config),
                snakefile=snakefile.resolve(),
                workdir=workdir,
            )
            dag = workflow.dag(DAGSettings(targets=set(targets or ["all"]), force_incomplete=True))
            dag.execute_workflow(
                executor="dryrun" if dry_run else "local", execution_settings=ExecutionSettings(keep_going=True)
            )
    except Exception as e:  # snakemake's WorkflowError (a config refused, a failed job) and friends
        raise RunFailed(f"{configfile}: {e}") from e


def load(run_dir: str | Path, merged: bool = False):
    """(model, tokenizer) of a finished run folder (results/<matrix>/runs/<run_id>): its base with the
    trained adapter on top, or with `merged` its merged model. The adapter must come from the
    settings the run records (a stale one raises `models.StaleAdapter`)."""
    from peftlab.models import load_run

    _, model, tokenizer = load_run(Path(run_dir), merged=merged)
    return model, tokenizer
