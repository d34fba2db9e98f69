"""Matrix expansion: a validated config -> one resolved spec per run, and every step's spec. Pure: touches no file.

`plan` is the whole of it for one config file: the validated config, the runs, every step's spec,
every run's resources and the matrix's folder (the workflow calls it once per Snakemake start;
`python -m peftlab.config` prints it).

Two matrix forms expand to the same table:

  sweep:                          # form 1: every combination of the axes
    - {task: sst, model: minilm, method: [lora, dora], rank: [8, 16], seed: [1, 2]}

  base: {task: countdown, model: r1-1.5b, peft: {type: lora, r: 16}}
  experiments:                    # form 2 (PeRL): named runs overriding `base`
    - {name: dora_s42, peft: {type: dora}, common: {seed: 42}}
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
from pathlib import Path
from typing import NamedTuple

from peftlab import launch, methods, metrics, paths, tasks
from peftlab import search as lr_search
from peftlab.schema import SAFE_NAME, ConfigError, json_copy
from peftlab.spec import RunSpec
from peftlab.validate import AXES, check_cell, check_holdout, load_config, task_spec


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = (
            _deep_merge(out[k], v)
            if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options"
            else copy.deepcopy(v)
        )
    return out


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _cells(cfg: dict):
    """Yield (where, cell, axes shown in the run id or None for a named experiment, resources levels, lr_search or None)
    for every run.

    The resources levels are the (key path, value) pairs that override the model's
    resources, outermost first: a preset in one replaces what the levels before it set.
    """
    defaults = {"peft": cfg["peft"], "training": cfg["training"], "tracker": cfg["tracker"], "outputs": cfg["outputs"]}
    for i, block in enumerate(cfg.get("sweep", [])):
        axes = {a: _as_list(block[a]) for a in AXES if a in block}
        for axis in axes:
            section, *rest = AXES[axis]
            if rest and rest[0] in block.get(section, {}):
                raise ConfigError(
                    f"sweep[{i}]: both the axis {axis!r} and {section}.{rest[0]} are set; the axis would "
                    "silently win, so keep one of them"
                )
        search = block["lr_search"] if "lr_search" in block else cfg["lr_search"]
        if search is not None and ("lr" in axes or "learning_rate" in block.get("training", {})):
            key = "the lr axis" if "lr" in axes else "training.learning_rate"
            raise ConfigError(
                f"sweep[{i}]: both lr_search and {key} are set; the search picks each cell's rate, so keep one of them"
            )
        fixed = _deep_merge(defaults, {k: block[k] for k in ("peft", "training", "tracker", "outputs") if k in block})
        levels = [(f"sweep[{i}].resources", block.get("resources"))]
        for values in itertools.product(*axes.values()):
            cell = json_copy(fixed)
            for axis, value in zip(axes, values):
                *parents, leaf = AXES[axis]
                target = cell
                for p in parents:
                    target = target[p]
                target[leaf] = value
            yield f"sweep[{i}]", cell, [a for a in ("lr", "train_size") if a in axes], levels, search
    if cfg["lr_search"] is not None and cfg.get("experiments"):
        raise ConfigError(
            "lr_search: a learning-rate search runs per sweep block; named experiments (base, experiments) set "
            "their own "
            "training.learning_rate, so write the matrix as sweep blocks to search it"
        )
    base = cfg.get("base", {})
    base_levels = [("base.resources", base.get("resources"))]
    base = _deep_merge(defaults, {k: v for k, v in base.items() if k != "resources"})
    for i, exp in enumerate(cfg.get("experiments", [])):
        cell = _deep_merge(base, {k: v for k, v in exp.items() if k != "resources"})
        common = cell.pop("common", {})
        if "seed" in common:
            cell["training"]["seed"] = common["seed"]
        yield (
            f"experiments[{i}]",
            cell,
            None,
            [*base_levels, (f"experiments[{i}].resources", exp.get("resources"))],
            None,
        )


def _parts(cell: dict, method: methods.Method, shown_axes, seed: bool = True) -> list[str]:
    """A sweep run id's settings part, e.g. [r8, s1, n100] (without the seed: its search cell's)."""
    parts = [f"r{cell['peft']['r']}"] if method.uses_rank else []
    if seed:
        parts.append(f"s{cell['training']['seed']}")
    if "lr" in shown_axes:
        parts.append(f"lr{cell['training']['learning_rate']:g}")
    if "train_size" in shown_axes:
        size = cell["training"]["train_size"]
        parts.append(f"n{size}" if size is not None else "nall")  # train_size: [1000, null] -> n1000, nall
    return parts


def _run_id(cell: dict, method: methods.Method, shown_axes) -> str:
    if shown_axes is None:  # named experiment
        return f"{cell['task']}/{cell['model']}/{cell['name']}"
    return f"{cell['task']}/{cell['model']}/{method.name}/{'-'.join(_parts(cell, method, shown_axes))}"


def _search_metric(where: str, search: dict, task: str, cfg: dict) -> str:
    """lr_search.metric as the task reports it: main -> the task's main metric, loss -> eval_loss."""
    spec = task_spec(task, cfg["tasks"][task])
    metric = {"main": tasks.main_metric(spec), "loss": lr_search.LOSS}.get(search["metric"], search["metric"])
    reported = tasks.of(spec).metric_names(spec)
    if metric not in reported:
        raise ConfigError(
            f"{where}.lr_search.metric: {search['metric']!r} is not reported for task {task!r}; "
            f"allowed: main, {'loss, ' if lr_search.LOSS in reported else ''}{', '.join(reported)}"
        )
    return metric


def _searched(
    where: str, cell: dict, method, shown_axes, search: dict, cfg: dict
) -> tuple[dict, list[tuple[str, dict]]]:
    """A cell under a learning-rate search: (the final run's lr_search spec, [(search run id, its cell)])."""
    cell_name = lr_search.cell_id(
        cell["task"], cell["model"], method.name, _parts(cell, method, shown_axes, seed=False)
    )
    search = lr_search.resolved(search)
    check_holdout(where, cell, search["validation_share"], cfg["tasks"][cell["task"]])
    final = {
        "cell": cell_name,
        "rates": search["rates"],
        "seeds": search["seeds"],
        "validation_share": search["validation_share"],
        "validation_seed": search["validation_seed"],
        "metric": _search_metric(where, search, cell["task"], cfg),
        "halving": search["halving"],
    }
    rungs = lr_search.ladder(len(search["rates"]), search["halving"])
    if search["halving"] is not None:
        _check_ladder(where, rungs, cell["training"]["max_steps"])
    runs = []
    for step in rungs:
        for seed in search["seeds"]:
            for rate in search["rates"]:
                c = json_copy(cell)
                c["training"].update(seed=seed, learning_rate=rate, eval_steps=None, load_best_model_at_end=False)
                # a search run's adapter is scored, never merged or kept; a rung below the last keeps its last
                # checkpoint, which the next rung resumes
                last = step["rung"] == len(rungs) - 1
                c["outputs"] = {"merge": "none", "checkpoints": "none" if last else "last"}
                c["tracker"].update(enable_spectral_tracking=False, enable_gradient_tracking=False)
                c["holdout"] = {"share": search["validation_share"], "seed": search["validation_seed"]}
                rung = None
                if search["halving"] is not None:
                    rung = step["rung"]
                    below = rungs[rung - 1]["share"] if rung else None
                    c["rung"] = {
                        "index": rung,
                        "share": step["share"],
                        "below": below,
                        "search": lr_search.search_keys(final),
                    }
                runs.append((lr_search.search_run_id(cell_name, seed, rate, rung), c))
    return final, runs


def _check_ladder(where: str, rungs: list[dict], max_steps: int | None) -> None:
    """A halving ladder whose rungs end at distinct steps (checked where the run's steps are known: max_steps)."""
    if not max_steps:
        return
    steps = [lr_search.stop_step(r["share"], max_steps) for r in rungs]
    if len(set(steps)) < len(steps) or steps[-1] > max_steps:
        raise ConfigError(
            f"{where}.lr_search.halving: its rungs would end at steps {steps} of training.max_steps={max_steps}; "
            "each rung must train longer than the one before: raise max_steps or min_share, or lower eta"
        )


def site_presets(cfg: dict) -> dict[str, launch.Resources]:
    """The config's `resource_presets`, resolved (each may start from a built-in preset)."""
    try:
        return {name: launch.resolve(keys) for name, keys in cfg["resource_presets"].items()}
    except launch.ResourcesError as e:
        raise ConfigError(f"resource_presets: {e}") from None


def run_resources(cfg: dict, model: str, levels, presets: dict[str, launch.Resources]) -> launch.Resources:
    """Top-level resources, then the model's, then each level's (a sweep block's, or base's and an experiment's)."""
    r = launch.Resources()
    for where, value in [
        ("resources", cfg["resources"]),
        (f"models.{model}.resources", cfg["models"][model].get("resources")),
        *levels,
    ]:
        try:
            r = launch.resolve(value, r, presets)
        except launch.ResourcesError as e:
            raise ConfigError(f"{where}: {e}") from None
    return r


def expand(cfg: dict, root: str = paths.RESULTS) -> tuple[dict[str, dict], dict[str, launch.Resources]]:
    """Validated config -> ({run_id: resolved run spec}, {run_id: its training job's resources}). Pure: touches no file.

    The spec holds what changes a run's result (so editing it reruns the run): of the
    resources, only the world size, which sets the global batch. Memory, time limits,
    partitions and GPU models are not in it: raising a time limit reruns nothing.
    """
    runs: dict[str, dict] = {}
    resources: dict[str, launch.Resources] = {}
    presets = site_presets(cfg)
    searches: dict[str, dict] = {}  # search cell -> its lr_search spec
    for where, cell, shown_axes, levels, search in _cells(cfg):
        check_cell(where, cell, cfg)
        method = methods.METHODS[cell["peft"]["type"]]
        if not method.uses_rank:
            cell["peft"]["r"] = None
        run_id = _run_id(cell, method, shown_axes)
        if ".." in run_id.split("/") or not all(SAFE_NAME.match(p) for p in run_id.split("/")):
            raise ConfigError(f"{where}: run id {run_id!r} is not path-safe")
        task, model = cell["task"], cell["model"]
        # GRPO settings (defaults from the schema) belong to runs of rewarded task types only, so a top-level `rl`
        # reruns nothing else
        if not tasks.TASK_TYPES[cfg["tasks"][task]["type"]].rewarded:
            cell["training"]["rl"] = {}
        t = cell["training"]
        if t["eval_steps"]:  # the spec records which metric picks the best evaluation, and which way
            t["metric_for_best_model"] = t["metric_for_best_model"] or tasks.main_metric(
                task_spec(task, cfg["tasks"][task])
            )
            if t["greater_is_better"] is None:
                t["greater_is_better"] = metrics.metric(t["metric_for_best_model"]).higher_is_better
        res = run_resources(cfg, model, levels, presets)
        rl, t = cell["training"]["rl"], cell["training"]
        if rl and (t["batch_size"] * t["grad_accum"] * res.world_size) % rl["num_generations"]:
            raise ConfigError(
                f"{where}.training: GRPO samples rl.num_generations={rl['num_generations']} completions per "
                "prompt, so batch_size x grad_accum x "
                f"processes ({t['batch_size']} x {t['grad_accum']} x {res.world_size}) must be a multiple of it"
            )
        found = [(run_id, cell)]
        if search is not None:
            final, search_runs = _searched(where, cell, method, shown_axes, search, cfg)
            if searches.setdefault(final["cell"], final) != final:
                raise ConfigError(
                    f"{where}.lr_search: cell {final['cell']!r} is searched twice with different settings "
                    f"({searches[final['cell']]} and {final}); give its blocks one lr_search"
                )
            cell["training"]["learning_rate"], cell["lr_search"] = None, final
            found += search_runs
        for rid, c in found:
            spec = {
                "run_id": rid,
                "task": {"name": task, **cfg["tasks"][task]},
                "model": model_spec(cfg, model, root),
                "peft": c["peft"],
                "training": c["training"],
                "world_size": res.world_size,
                "wandb": {**cfg["wandb"], "dir": root},  # wandb writes to <dir>/wandb
                "data_dir": paths.data(root, task, model),
                "tracker": c["tracker"],
                "outputs": c["outputs"],
                "holdout": c.get("holdout"),
                "lr_search": c.get("lr_search"),
                "rung": c.get("rung"),
            }
            spec = RunSpec.from_dict(spec).to_dict()  # canonical form: exactly what the stages read and record
            if rid in runs and (runs[rid], resources[rid]) != (spec, res):
                raise ConfigError(
                    f"{where}: run id {rid!r} appears twice with different settings; add the differing value as "
                    "a sweep axis (lr, train_size) or split it into a named experiment"
                )
            runs[rid], resources[rid] = spec, res
    # only/exclude pick final runs; a kept final run keeps its cell's search runs
    finals = [r for r, s in runs.items() if s["holdout"] is None]
    keep = set(selected(finals, cfg["only"], cfg["exclude"]))
    cells = {runs[r]["lr_search"]["cell"] for r in keep if runs[r]["lr_search"]}
    keep |= {r for r, s in runs.items() if s["holdout"] is not None and lr_search.cell_of(r) in cells}
    return {k: runs[k] for k in runs if k in keep}, {k: resources[k] for k in runs if k in keep}


def _globs(value) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [g.strip() for g in items if str(g).strip()]


def selected(run_ids: list[str], only=None, exclude=None) -> list[str]:
    """The run ids that `only` keeps and `exclude` does not drop (PeRL's --only/--exclude).

    Each is a glob, a list of globs or a comma-separated string of them, matched
    against the whole run id and against its last part (an experiment's name). A glob
    matches across `_`: `lora_*` matches lora_plus_r16_s42 too (`lora_r*` does not).
    A pattern that matches no run is an error naming it (a typo must not select or
    drop nothing in silence), and so is a selection that leaves no run.
    """
    only, exclude = _globs(only), _globs(exclude)

    def hit(run_id: str, globs: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(run_id, g) or fnmatch.fnmatchcase(run_id.rsplit("/", 1)[-1], g) for g in globs)

    example = f"run ids look like {run_ids[0] if run_ids else '(none)'}"
    for key, globs in (("only", only), ("exclude", exclude)):
        unmatched = [g for g in globs if not any(hit(r, [g]) for r in run_ids)]
        if unmatched:
            raise ConfigError(f"{key}: {', '.join(map(repr, unmatched))} matches no run of {len(run_ids)}; {example}")
    keep = [r for r in run_ids if (not only or hit(r, only)) and not hit(r, exclude)]
    if not keep:
        raise ConfigError(
            f"only={','.join(only) or '-'} exclude={','.join(exclude) or '-'}: no run is left of "
            f"{len(run_ids)}; {example}"
        )
    return keep


def expand_matrix(cfg: dict, root: str = paths.RESULTS) -> dict[str, dict]:
    """Validated config -> {run_id: resolved run spec}. Pure: touches no file."""
    return expand(cfg, root)[0]


LOADING = (
    "dtype",
    "attn_implementation",
    "revision",
    "tokenizer_name",
    "trust_remote_code",
)  # how a model's weights load


def model_spec(cfg: dict, name: str, root: str = paths.RESULTS) -> dict:
    model = cfg["models"][name]
    loading = {k: model[k] for k in LOADING}
    if "build" in model:
        return {"name": name, "path": paths.model(root, name), "build": model["build"], **loading}
    return {"name": name, "path": model["path"], **loading}


STAGES = ("data_generate", "model_build", "data_tokenize", "train_run", "evaluate_run", "merge_run", "lr_select")


def step_specs(cfg: dict, runs: dict[str, dict], root: str = paths.RESULTS) -> dict[str, dict[str, dict]]:
    """Every stage's spec: {rule: {key: spec}}, which each job writes to <root>/specs/<rule>/<key>.json as it starts.

    Train, evaluate and merge read the same run spec from three files; each stage reruns
    only when what it reads changes (its fingerprint: peftlab.spec.fingerprint).
    """
    specs: dict[str, dict[str, dict]] = {stage: {} for stage in STAGES}
    used_tasks = {r["task"]["name"] for r in runs.values()}
    used_models = {r["model"]["name"] for r in runs.values()}
    for name, model in cfg["models"].items():
        if name in used_models and "build" in model:
            used_tasks.add(model["build"]["corpus_task"])
            corpus = model["build"]["corpus_task"]
            specs["model_build"][name] = {
                **model_spec(cfg, name, root),
                "corpus_task": task_files({"name": corpus, **cfg["tasks"][corpus]}, root),
            }
    for name in sorted(used_tasks):
        if "generator" in cfg["tasks"][name]["data"]:
            specs["data_generate"][name] = {"name": name, "data": cfg["tasks"][name]["data"]}
    for run in runs.values():
        task, model = run["task"]["name"], run["model"]["name"]
        specs["data_tokenize"][f"{task}/{model}"] = {"task": task_files(run["task"], root), "model": run["model"]}
        for stage in ("train_run", "evaluate_run", "merge_run"):
            specs[stage][run["run_id"]] = run
        if run["lr_search"]:
            search = run["lr_search"]
            specs["lr_select"][search["cell"]] = lr_search.select_spec(search)
            for k in range(len(lr_search.ladder(len(search["rates"]), search["halving"])) - 1):
                specs["lr_select"][lr_search.rung_key(search["cell"], k)] = lr_search.select_spec(search, k)
    return specs


def task_files(task: dict, root: str = paths.RESULTS) -> dict:
    """The task with generated data replaced by the files the generate rule writes."""
    if "generator" not in task["data"]:
        return task
    return {**task, "data": {"files": paths.raw_files(root, task["name"])}}


DEFAULT_CONFIG = "config/config.yaml"


class Plan(NamedTuple):
    cfg: dict  # the validated config, defaults filled in
    runs: dict[str, dict]  # run_id -> resolved run spec
    specs: dict[str, dict[str, dict]]  # every step's spec: {rule: {key: spec}}
    resources: dict[str, launch.Resources]  # run_id -> its training job's resources
    root: str  # results/<matrix name>: every file of this matrix lies under it


def matrix_name(cfg: dict, configfile: str | Path = DEFAULT_CONFIG) -> str:
    """The matrix's `name:`, else its config file's name (config/test.yaml: test), and `default` for
    config/config.yaml."""
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
        raise ConfigError(
            f"name: {name!r} is not path-safe (it names the folder results/<name>); set `name:` in the config"
        )
    root = paths.root(name)
    runs, resources = expand(cfg, root)
    return Plan(cfg, runs, step_specs(cfg, runs, root), resources, root)
