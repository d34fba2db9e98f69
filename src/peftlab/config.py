"""Config -> the plan of a matrix: the validated config, one resolved spec per run, every step's spec.

    python -m peftlab.config config/config.yaml     # validate, and list the run ids

By concern: `peftlab.schema` reads a config (strict YAML, the schema and its
defaults), `peftlab.validate` checks what the schema cannot, `peftlab.matrix`
expands the matrix, and `peftlab.paths` names every file. `plan` joins them;
the workflow calls it once per Snakemake start.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from peftlab import launch, paths
from peftlab.matrix import expand, expand_matrix, selected, step_specs
from peftlab.schema import SAFE_NAME, ConfigError, load_yaml
from peftlab.validate import data_files, load_config

__all__ = ["ConfigError", "Plan", "data_files", "expand_matrix", "load_config", "load_yaml", "matrix_name", "plan", "selected"]

DEFAULT_CONFIG = "config/config.yaml"


class Plan(NamedTuple):
    cfg: dict  # the validated config, defaults filled in
    runs: dict[str, dict]  # run_id -> resolved run spec
    specs: dict[str, dict[str, dict]]  # every step's spec: {rule: {key: spec}}
    resources: dict[str, launch.Resources]  # run_id -> its training job's resources
    root: str  # results/<matrix name>: every file of this matrix lies under it


def matrix_name(cfg: dict, configfile: str | Path = DEFAULT_CONFIG) -> str:
    """The matrix's `name:`, else its config file's name (config/test.yaml: test), and `default` for config/config.yaml."""
    if cfg.get("name"):
        return cfg["name"]
    stem = Path(configfile).stem
    return "default" if stem == "config" else stem


def plan(raw: dict, configfile: str | Path = DEFAULT_CONFIG) -> Plan:
    """raw config -> the validated config, the runs, every step's spec and every run's resources.

    Every path lies under results/<matrix name>/, so two matrices in one checkout never
    write to each other's runs, models, data or tables.
    """
    cfg = load_config(raw)
    name = matrix_name(cfg, configfile)
    if not SAFE_NAME.match(name):
        raise ConfigError(f"name: {name!r} is not path-safe (it names the folder results/<name>); set `name:` in the config")
    root = paths.root(name)
    runs, resources = expand(cfg, root)
    return Plan(cfg, runs, step_specs(cfg, runs, root), resources, root)


def main(argv=None):
    """`python -m peftlab.config CONFIG.yaml [--only GLOBS] [--exclude GLOBS]`: validate a config and print its run ids, one per line."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("config", help="config file")
    p.add_argument("--only", help="keep runs whose id or name matches one of these comma-separated globs (as --config only=...)")
    p.add_argument("--exclude", help="drop runs whose id or name matches one of these comma-separated globs")
    args = p.parse_args(argv)
    raw = load_yaml(args.config)
    raw.update({k: v for k, v in (("only", args.only), ("exclude", args.exclude)) if v is not None})
    try:
        runs = expand_matrix(load_config(raw))
    except ConfigError as e:
        sys.exit(f"{args.config}: {e}")
    print(*runs, sep="\n")


if __name__ == "__main__":
    main()
