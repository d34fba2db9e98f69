"""Validate configs and list their runs (the plan itself is peftlab.matrix.plan).

    python -m peftlab.config config/config.yaml     # validate, and list the run ids
    python -m peftlab.config --all                  # validate every config under config/
    python -m peftlab.config config/config.yaml --training-args   # each run's TrainingArguments

By concern: `peftlab.schema` reads a config (strict YAML, the schema and its
defaults), `peftlab.validate` checks what the schema cannot, `peftlab.matrix`
expands the matrix (`plan` joins them; the workflow calls it once per Snakemake start),
and `peftlab.paths` names every file. The names below are importable from here too.
"""

from __future__ import annotations

from pathlib import Path

from peftlab import paths
from peftlab.matrix import DEFAULT_CONFIG, Plan, expand_matrix, matrix_name, plan, selected
from peftlab.schema import ConfigError, load_yaml
from peftlab.validate import data_files, load_config

__all__ = [
    "DEFAULT_CONFIG",
    "ConfigError",
    "Plan",
    "data_files",
    "expand_matrix",
    "load_config",
    "load_yaml",
    "matrix_name",
    "plan",
    "selected",
]


def main(argv=None):
    """Validate configs.

    python -m peftlab.config CONFIG.yaml [--only GLOBS] [--exclude GLOBS]   # print its run ids, one per line
    python -m peftlab.config CONFIG.yaml --training-args                      # print each run's TrainingArguments
                                                                              # (JSON)
    python -m peftlab.config --all                                            # validate every config under config/
    """
    import argparse
    import json
    import sys

    p = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", help="config file(s)")
    p.add_argument("--all", action="store_true", help="every *.yaml under config/ (or under the folders given)")
    p.add_argument(
        "--only", help="keep runs whose id or name matches one of these comma-separated globs (as --config only=...)"
    )
    p.add_argument("--exclude", help="drop runs whose id or name matches one of these comma-separated globs")
    p.add_argument(
        "--training-args",
        action="store_true",
        help="print every run's resolved TrainingArguments (GRPOConfig for rlvr) as JSON",
    )
    args = p.parse_args(argv)
    files = [Path(c) for c in args.configs]
    if args.all:
        folders = [f for f in files if f.is_dir()] or [Path("config")]
        files = [f for f in files if not f.is_dir()] + sorted(y for d in folders for y in d.rglob("*.yaml"))
    if not files:
        p.error("give a config file, or --all")
    failed = []
    for file in files:
        raw = load_yaml(file)
        raw.update({k: v for k, v in (("only", args.only), ("exclude", args.exclude)) if v is not None})
        try:
            p_ = plan(raw, file)
        except ConfigError as e:
            if len(files) == 1:
                sys.exit(f"{file}: {e}")
            failed.append(file)
            print(f"{file}: {e}", file=sys.stderr)
            continue
        if args.training_args:
            print(json.dumps({run_id: training_arguments(p_, run_id) for run_id in p_.runs}, indent=2))
        elif len(files) > 1:
            print(f"{file}: {len(p_.runs)} runs")
        else:
            print(*p_.runs, sep="\n")
    if failed:
        sys.exit(f"{len(failed)} of {len(files)} configs are invalid: {', '.join(map(str, failed))}")


def training_arguments(p: Plan, run_id: str) -> dict:
    """What a run's trainer is built from: peftlab's TrainingArguments, its extra ones, and GRPO's (rlvr)."""
    from peftlab import trainers
    from peftlab.spec import RunSpec

    spec = RunSpec.from_dict(p.runs[run_id])
    return {**trainers.arguments(spec, paths.checkpoints(p.root, run_id)), **spec.training.rl}


if __name__ == "__main__":
    main()
