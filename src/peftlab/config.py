"""Config -> validated config -> experiment table (one resolved spec per run).

Two matrix forms expand to the same table:

  sweep:                          # form 1: every combination of the axes
    - {task: sst, model: minilm, method: [lora, dora], rank: [8, 16], seed: [1, 2]}

  base: {task: countdown, model: r1-1.5b, peft: {type: lora, r: 16}}
  experiments:                    # form 2 (PeRL): named runs overriding `base`
    - {name: dora_s42, peft: {type: dora}, common: {seed: 42}}

`load_config` validates (schema, then names against the method registry and the
config's own `tasks:`/`models:`) and `expand_matrix` is the pure expansion. Every
problem is a `ConfigError` whose message starts with the key path.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import re
import string
from pathlib import Path
from typing import NamedTuple

import jsonschema
import yaml

from peftlab import launch, methods
from peftlab.generators import GENERATORS
from peftlab.methods import targets
from peftlab.spec import RunSpec

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
RESULTS = "results"
DEFAULT_CONFIG = "config/config.yaml"

# sweep axis -> where its value goes in a run
AXES = {
    "task": ("task",),
    "model": ("model",),
    "method": ("peft", "type"),
    "rank": ("peft", "r"),
    "seed": ("training", "seed"),
    "lr": ("training", "learning_rate"),
    "train_size": ("training", "train_size"),
}


# GRPO settings of an rlvr run that its config leaves out (TRL's GRPOConfig names)
RL_DEFAULTS = {
    "num_generations": 8,
    "loss_type": "grpo",
    "max_completion_length": 256,
    "beta": 0.0,
    "temperature": 1.0,
    "epsilon": 0.2,
    "scale_rewards": "group",
}

# what evaluation reports per task type; `tasks.<name>.metric` picks the main one among them
TASK_METRICS = {
    "classification": ["accuracy", "macro_f1", "f1", "precision", "recall", "mcc"],
    "regression": ["pearson", "spearman", "mse"],
    "sft": ["exact_match", "eval_loss", "perplexity", "rouge1", "rouge2", "rougeL"],
    "lm": ["eval_loss", "perplexity"],
    "seq2seq": ["rouge1", "rouge2", "rougeL", "eval_loss", "perplexity"],
    "rlvr": ["accuracy", "format"],  # plus mean_reward, each reward's mean
}


def metric_kind(task: dict) -> str:
    """The TASK_METRICS key of a task: its type, or regression for a one-label classification."""
    return "regression" if task["type"] == "classification" and task["num_labels"] == 1 else task["type"]


class ConfigError(ValueError):
    """A config problem, found before any job starts."""


def _with_defaults(validator_class):
    """jsonschema validator that also fills in `default:` values."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def key_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    where = key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"{where}: unknown key(s) {', '.join(map(repr, extra))}; allowed: {', '.join(allowed)}"
    if error.validator == "oneOf":
        choices = [" + ".join(s.get("required", [])) for s in error.validator_value]
        if all(choices):
            return f"{where}: set exactly one of: {'; '.join(choices)}"
    if error.validator in ("oneOf", "anyOf") and error.context:
        # the branch the value was meant for: not the one whose type it does not have
        meant = [e for e in error.context if e.validator != "type"] or error.context
        return _describe(jsonschema.exceptions.best_match(meant))
    if error.validator == "pattern":
        return f"{where}: {error.instance!r} is not path-safe; use letters, digits, '.', '_', '+', '-' (no '/', no leading '.')"
    return f"{where}: {error.message}"


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""


def _mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"{Path(node.start_mark.name).name} line {key_node.start_mark.line + 1}: key {key!r} appears twice in one section "
                f"(first on line {seen[key] + 1}); YAML would silently keep only the last"
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(path: str | Path) -> dict:
    """A config file, with every mapping's keys checked for duplicates."""
    with open(path) as f:
        return yaml.load(f, Loader=_StrictLoader) or {}


# YAML 1.1 (PyYAML's, and so Snakemake's) reads 1e-5 as a string: a float there needs a dot in
# its mantissa (1.0e-5). Users write 1e-5 (the PeRL seed writes 1e-05); it is a number.
_EXP_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _numbers(obj):
    """obj with every string that spells a number in exponent notation read as that number."""
    if isinstance(obj, str) and _EXP_NUMBER.match(obj):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


def load_config(raw: dict, check_files: bool = True) -> dict:
    """Validate a raw config dict; return a copy with every default filled in."""
    cfg = _numbers(copy.deepcopy(raw))
    schema = load_yaml(SCHEMA_PATH)
    errors = sorted(_Validator(schema).iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(dict.fromkeys(map(_describe, errors))))
    _check_names(cfg, check_files)
    return cfg


def _check_names(cfg: dict, check_files: bool) -> None:
    """Cross-references that a schema cannot express."""
    problems = []
    for name, task in cfg["tasks"].items():
        metric, kind = task["metric"], metric_kind(task)
        if metric is not None and metric not in TASK_METRICS[kind]:
            problems.append(f"tasks.{name}.metric: {metric!r} is not reported for {kind} tasks; allowed: {', '.join(TASK_METRICS[kind])}")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(task["prompt_template"]) if f is not None]
            if "" in fields or any(f[0].isdigit() for f in fields if f):
                raise ValueError("a field needs a name: {prompt} or a column's name")
        except ValueError as e:
            problems.append(f"tasks.{name}.prompt_template: {e}; write literal braces doubled, as in \\boxed{{{{}}}}")
        if task["type"] == "rlvr" and not task["rewards"]:
            problems.append(f"tasks.{name}.rewards: an rlvr task needs at least one reward; allowed: countdown, math, format")
        if task["type"] != "rlvr" and task["rewards"]:
            problems.append(f"tasks.{name}.rewards: only rlvr tasks have rewards (this one is {task['type']})")
        gen = task["data"].get("generator")
        if gen is not None:
            if gen not in GENERATORS:
                problems.append(f"tasks.{name}.data.generator: unknown generator {gen!r}; allowed: {', '.join(sorted(GENERATORS))}")
        for split, file in data_files(task).items():
            if check_files and not Path(file).exists():
                problems.append(f"tasks.{name}.data.files.{split}: file {file!r} does not exist")
        names = task["label_names"]
        if names is not None and len(names) != task["num_labels"]:
            problems.append(f"tasks.{name}.label_names: {len(names)} names for num_labels={task['num_labels']}; give one name per class")
        if names is not None and len(set(names)) != len(names):
            problems.append(f"tasks.{name}.label_names: {names} names a class twice")
    for name, model in cfg["models"].items():
        if "path" in model and (problem := _model_path_problem(model["path"])):
            problems.append(f"models.{name}.path: {problem}")
        corpus = model.get("build", {}).get("corpus_task")
        if corpus is not None and corpus not in cfg["tasks"]:
            problems.append(
                f"models.{name}.build.corpus_task: unknown task {corpus!r}; defined in tasks: {', '.join(sorted(cfg['tasks']))}"
            )
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def _model_path_problem(path: str) -> str | None:
    """Why a model path cannot load, where that is knowable offline: a local folder that is
    missing or holds no config.json, or a `package:` that ships no model folder. A hub id
    (org/name, or a bare legacy name such as gpt2) is left to load time."""
    if path.startswith("package:"):
        module = path.removeprefix("package:")
        if targets._config_json(path) is None:
            return f"{path!r}: no installed package {module!r} ships a Hugging Face model folder (a config.json in it or in its model/)"
        return None
    local = Path(path).expanduser()
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1 or local.exists()
    if looks_local and not (local / "config.json").exists():
        what = "is not a model folder (no config.json in it)" if local.is_dir() else "does not exist"
        return f"{path!r} {what}; give a local Hugging Face model folder, a hub id such as Qwen/Qwen3-1.7B, or package:<module>"
    return None


def data_files(task: dict) -> dict[str, str]:
    """A task's local data files by key path under data.files (train, eval or eval.<name>)."""
    out = {}
    for split, value in task["data"].get("files", {}).items():
        out.update({f"{split}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {split: value})
    return out


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options" else copy.deepcopy(v)
    return out


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _cells(cfg: dict):
    """Yield (where, cell, axes shown in the run id or None for a named experiment, resources levels) for every run.

    The resources levels are the (key path, value) pairs that override the model's
    resources, outermost first: a preset in one replaces what the levels before it set.
    """
    defaults = {"peft": cfg["peft"], "training": cfg["training"]}
    for i, block in enumerate(cfg.get("sweep", [])):
        axes = {a: _as_list(block[a]) for a in AXES if a in block}
        for axis in axes:
            section, *rest = AXES[axis]
            if rest and rest[0] in block.get(section, {}):
                raise ConfigError(
                    f"sweep[{i}]: both the axis {axis!r} and {section}.{rest[0]} are set; the axis would silently win, so keep one of them"
                )
        fixed = _deep_merge(defaults, {k: block[k] for k in ("peft", "training") if k in block})
        levels = [(f"sweep[{i}].resources", block.get("resources"))]
        for values in itertools.product(*axes.values()):
            cell = copy.deepcopy(fixed)
            for axis, value in zip(axes, values):
                *parents, leaf = AXES[axis]
                target = cell
                for p in parents:
                    target = target[p]
                target[leaf] = value
            yield f"sweep[{i}]", cell, [a for a in ("lr", "train_size") if a in axes], levels
    base = cfg.get("base", {})
    base_levels = [("base.resources", base.get("resources"))]
    base = _deep_merge(defaults, {k: v for k, v in base.items() if k != "resources"})
    for i, exp in enumerate(cfg.get("experiments", [])):
        cell = _deep_merge(base, {k: v for k, v in exp.items() if k != "resources"})
        common = cell.pop("common", {})
        if "seed" in common:
            cell["training"]["seed"] = common["seed"]
        yield f"experiments[{i}]", cell, None, [*base_levels, (f"experiments[{i}].resources", exp.get("resources"))]


def _run_id(cell: dict, method: methods.Method, shown_axes) -> str:
    if shown_axes is None:  # named experiment
        return f"{cell['task']}/{cell['model']}/{cell['name']}"
    parts = [f"r{cell['peft']['r']}"] if method.uses_rank else []
    parts.append(f"s{cell['training']['seed']}")
    if "lr" in shown_axes:
        parts.append(f"lr{cell['training']['learning_rate']:g}")
    if "train_size" in shown_axes:
        parts.append(f"n{cell['training']['train_size']}")
    return f"{cell['task']}/{cell['model']}/{method.name}/{'-'.join(parts)}"


def _check_cell(where: str, cell: dict, cfg: dict) -> None:
    for key, section in (("task", "tasks"), ("model", "models")):
        if key not in cell:
            raise ConfigError(f"{where}.{key}: required; set it here or in base")
        value = cell[key]
        if not isinstance(value, str) or value not in cfg[section]:
            raise ConfigError(f"{where}.{key}: unknown {key} {value!r}; defined in {section}: {', '.join(sorted(cfg[section]))}")
    mtype = cell["peft"]["type"]
    if mtype not in methods.METHODS:
        raise ConfigError(f"{where}.peft.type: unknown method {mtype!r}; allowed: {', '.join(sorted(methods.METHODS))}")
    method, model, task_type = methods.METHODS[mtype], cfg["models"][cell["model"]], cfg["tasks"][cell["task"]]["type"]
    if task_type in method.unsupported_task_types:
        raise ConfigError(f"{where}.peft.type: {mtype} cannot run on {task_type} task {cell['task']!r}: {method.not_supported_reason}")
    try:
        targets.check(cell["peft"]["target_modules"], model, f"{where}.peft.target_modules")
    except targets.TargetError as e:
        raise ConfigError(str(e)) from None
    for axis, path in AXES.items():
        value = cell
        for p in path:
            value = value[p]
        if axis in ("rank", "seed", "train_size") and value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{where}.{axis}: {value!r} is not an integer")
        if axis == "seed" and not 0 <= value < 2**32:
            raise ConfigError(f"{where}.seed: {value} is outside 0 to 2^32-1, the seeds numpy and torch accept")
        if axis == "lr" and (not isinstance(value, (int, float)) or value <= 0):
            raise ConfigError(f"{where}.lr: {value!r} is not a positive number")
    _check_method_settings(where, cell, method, model, cfg["tasks"][cell["task"]])
    data, size = cfg["tasks"][cell["task"]]["data"], cell["training"]["train_size"]
    if "generator" in data and isinstance(size, int) and size > data["num_train"]:
        raise ConfigError(
            f"{where}.train_size: {size} is more than the {data['num_train']} training examples task {cell['task']!r} generates (data.num_train)"
        )
    arch = model.get("build", {}).get("arch")
    if arch is not None and (arch == "t5") != (task_type == "seq2seq"):
        raise ConfigError(
            f"{where}.model: {cell['model']!r} builds a {arch} model, which cannot run {task_type} task {cell['task']!r}; seq2seq tasks need arch t5, the others llama"
        )
    for part in cell.get("name", "x"), cell["task"], cell["model"]:
        if not SAFE_NAME.match(part):
            raise ConfigError(f"{where}: name {part!r} is not path-safe")


# peft keys with a place of their own in the spec: set in `options`, the run id and the tables would not know
FIRST_CLASS_PEFT = ("r", "lora_alpha", "lora_dropout", "target_modules", "loraplus_lr_ratio")
QLORA_MULTIPLE = 32  # bitsandbytes' packed 4-bit CPU kernels (AVX512-BF16 CPUs) need layer widths in multiples of 32


def _check_method_settings(where: str, cell: dict, method: methods.Method, model: dict, task: dict) -> None:
    """Settings that would train something other than what the run records, caught before any job starts."""
    p = cell["peft"]
    for key in p["options"]:
        if key in FIRST_CLASS_PEFT:
            raise ConfigError(f"{where}.peft.options.{key}: set peft.{key} instead; the run id, the spec and the tables read peft.{key}")
        if key in method.fixed and p["options"][key] != method.fixed[key]:
            raise ConfigError(
                f"{where}.peft.options.{key}: {p['options'][key]!r} contradicts method {method.name} ({key}={method.fixed[key]!r}); pick the method instead"
            )
    if p["options"]:
        try:
            methods.check_options(p)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}.peft.options: method {method.name} refuses {p['options']}: {e}") from None
    shape = targets.model_config(model)
    if shape is None:
        return
    hidden = targets.width(shape)
    if method.uses_rank and hidden is not None and p["r"] > hidden:
        raise ConfigError(f"{where}.peft.r: rank {p['r']} is above the model's width {hidden}; a rank is at most the layer's smaller side")
    if method.quantized and hidden is not None:
        wide = {k: shape[k] for k in ("hidden_size", "intermediate_size", "d_model", "d_ff") if isinstance(shape.get(k), int)}
        odd = {k: v for k, v in wide.items() if v % QLORA_MULTIPLE}
        if odd:
            raise ConfigError(
                f"{where}.peft.type: {method.name} quantises the base with bitsandbytes, whose packed 4-bit CPU path needs layer widths "
                f"that are multiples of {QLORA_MULTIPLE}; {cell['model']!r} has {odd}"
            )
    limit = targets.max_positions(shape)
    if limit is not None and task["max_length"] > limit:
        raise ConfigError(
            f"{where}: task {cell['task']!r} has max_length {task['max_length']}, but model {cell['model']!r} has position embeddings "
            f"for {limit} tokens; set tasks.{cell['task']}.max_length to at most {limit}"
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
    for where, value in [("resources", cfg["resources"]), (f"models.{model}.resources", cfg["models"][model].get("resources")), *levels]:
        try:
            r = launch.resolve(value, r, presets)
        except launch.ResourcesError as e:
            raise ConfigError(f"{where}: {e}") from None
    return r


def expand(cfg: dict, root: str = RESULTS) -> tuple[dict[str, dict], dict[str, launch.Resources]]:
    """Validated config -> ({run_id: resolved run spec}, {run_id: its training job's resources}). Pure: touches no file.

    The spec holds what changes a run's result (so editing it reruns the run): of the
    resources, only the world size, which sets the global batch. Memory, time limits,
    partitions and GPU models are not in it: raising a time limit reruns nothing.
    """
    runs: dict[str, dict] = {}
    resources: dict[str, launch.Resources] = {}
    presets = site_presets(cfg)
    for where, cell, shown_axes, levels in _cells(cfg):
        _check_cell(where, cell, cfg)
        method = methods.METHODS[cell["peft"]["type"]]
        if not method.uses_rank:
            cell["peft"]["r"] = None
        run_id = _run_id(cell, method, shown_axes)
        if ".." in run_id.split("/") or not all(SAFE_NAME.match(p) for p in run_id.split("/")):
            raise ConfigError(f"{where}: run id {run_id!r} is not path-safe")
        task, model = cell["task"], cell["model"]
        # GRPO settings belong to rlvr runs only, so a top-level `rl` reruns nothing else
        cell["training"]["rl"] = {**RL_DEFAULTS, **cell["training"]["rl"]} if cfg["tasks"][task]["type"] == "rlvr" else {}
        res = run_resources(cfg, model, levels, presets)
        rl, t = cell["training"]["rl"], cell["training"]
        if rl and (t["batch_size"] * t["grad_accum"] * res.world_size) % rl["num_generations"]:
            raise ConfigError(
                f"{where}.training: GRPO samples rl.num_generations={rl['num_generations']} completions per prompt, so batch_size x grad_accum x "
                f"processes ({t['batch_size']} x {t['grad_accum']} x {res.world_size}) must be a multiple of it"
            )
        spec = {
            "run_id": run_id,
            "task": {"name": task, **cfg["tasks"][task]},
            "model": model_spec(cfg, model, root),
            "peft": cell["peft"],
            "training": cell["training"],
            "world_size": res.world_size,
            "wandb": {**cfg["wandb"], "dir": root},  # wandb writes to <dir>/wandb
            "data_dir": data_dir(task, model, root),
        }
        spec = RunSpec.from_dict(spec).to_dict()  # canonical form: exactly what the stages read and record
        if run_id in runs and (runs[run_id], resources[run_id]) != (spec, res):
            raise ConfigError(
                f"{where}: run id {run_id!r} appears twice with different settings; add the differing value as a sweep axis (lr, train_size) or split it into a named experiment"
            )
        runs[run_id], resources[run_id] = spec, res
    keep = selected(list(runs), cfg["only"], cfg["exclude"])
    return {k: runs[k] for k in keep}, {k: resources[k] for k in keep}


def _globs(value) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [g.strip() for g in items if str(g).strip()]


def selected(run_ids: list[str], only=None, exclude=None) -> list[str]:
    """The run ids that `only` keeps and `exclude` does not drop (PeRL's --only/--exclude).

    Each is a glob, a list of globs or a comma-separated string of them, matched
    against the whole run id and against its last part (an experiment's name).
    `only` that matches nothing is an error: a typo must not plan an empty matrix.
    """
    only, exclude = _globs(only), _globs(exclude)

    def hit(run_id: str, globs: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(run_id, g) or fnmatch.fnmatchcase(run_id.rsplit("/", 1)[-1], g) for g in globs)

    keep = [r for r in run_ids if (not only or hit(r, only)) and not hit(r, exclude)]
    if not keep:
        raise ConfigError(
            f"only={','.join(only) or '-'} exclude={','.join(exclude) or '-'}: no run is left of {len(run_ids)}; "
            f"run ids look like {run_ids[0] if run_ids else '(none)'}"
        )
    return keep


def expand_matrix(cfg: dict, root: str = RESULTS) -> dict[str, dict]:
    """Validated config -> {run_id: resolved run spec}. Pure: touches no file."""
    return expand(cfg, root)[0]


def model_spec(cfg: dict, name: str, root: str = RESULTS) -> dict:
    model = cfg["models"][name]
    if "build" in model:
        return {"name": name, "path": f"{root}/models/{name}", "build": model["build"]}
    return {"name": name, "path": model["path"]}


def data_dir(task: str, model: str, root: str = RESULTS) -> str:
    return f"{root}/data/{task}/{model}"


STAGES = ("data_generate", "model_build", "data_tokenize", "train_run", "evaluate_run", "merge_run")


def step_specs(cfg: dict, runs: dict[str, dict], root: str = RESULTS) -> dict[str, dict[str, dict]]:
    """Every spec file the workflow writes: {rule: {key: spec}}, written to <root>/specs/<rule>/<key>.json.

    Train, evaluate and merge read the same run spec from three files, so that each
    file is rewritten (and its stage rerun) only when what that stage reads changes.
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
    return specs


def raw_files(task: str, root: str = RESULTS) -> dict[str, str]:
    return {split: f"{root}/raw/{task}/{split}.jsonl" for split in ("train", "eval")}


def task_files(task: dict, root: str = RESULTS) -> dict:
    """The task with generated data replaced by the files the generate rule writes."""
    if "generator" not in task["data"]:
        return task
    return {**task, "data": {"files": raw_files(task["name"], root)}}


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
    root = f"{RESULTS}/{name}"
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
