"""Config checks a schema cannot express: names against the registries and the config's own
sections, files, and each run's settings against its method, model and task type.

Every problem is a `ConfigError` whose message starts with the key path.
"""

from __future__ import annotations

import copy
import string
from pathlib import Path

from peftlab import methods, perl, rewards, tasks
from peftlab import search as lr_search
from peftlab.generators import GENERATORS
from peftlab.methods import targets
from peftlab.schema import SAFE_NAME, ConfigError, schema, validate
from peftlab.spec import HoldoutSpec, TaskSpec

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


def config_schema() -> dict:
    """The config schema with the allowed values it leaves to a registry filled in from it: a task's `type`
    (peftlab.tasks), each with its summary. A new task type is its own file and its row in the registry."""
    full = copy.deepcopy(schema())
    node = full["properties"]["tasks"]["additionalProperties"]["properties"]["type"]
    node["enum"] = list(tasks.TASK_TYPES)
    node["description"] = "; ".join(f"{t.name}: {t.summary}" for t in tasks.TASK_TYPES.values())
    return full


def load_config(raw: dict, check_files: bool = True) -> dict:
    """Validate a raw config dict; return a copy with every default filled in."""
    cfg = validate(_spelled_targets(perl.translate(raw)), config_schema())
    _check_names(cfg, check_files)
    return cfg


def _spelled_targets(raw: dict) -> dict:
    """`target_modules` as written -> as the spec records it. Empty (YAML's bare `target_modules:`,
    null) is every linear layer, as in the PEFT Playground; `default` is the method's own
    choice for the architecture, which the spec records as null, as it does a key left out."""
    out = copy.deepcopy(raw)
    base = out.get("base") if isinstance(out.get("base"), dict) else {}
    items = [
        x for key in ("sweep", "experiments") if isinstance(out.get(key), list) for x in out[key] if isinstance(x, dict)
    ]
    for peft in [out.get("peft"), base.get("peft"), *(x.get("peft") for x in items)]:
        if isinstance(peft, dict) and "target_modules" in peft:
            value = peft["target_modules"]
            peft["target_modules"] = "all-linear" if value is None else None if value == "default" else value
    return out


def task_spec(name: str, task: dict) -> TaskSpec:
    """A validated config's task as the stages will read it."""
    return TaskSpec.from_dict({"name": name, **task})


def _check_names(cfg: dict, check_files: bool) -> None:
    """Cross-references that a schema cannot express."""
    problems = []
    for name, task in cfg["tasks"].items():
        spec = task_spec(name, task)
        ttype = tasks.of(spec)
        reported = ttype.metric_names(spec)
        if task["metric"] is not None and task["metric"] not in reported:
            problems.append(
                f"tasks.{name}.metric: {task['metric']!r} is not reported for {ttype.kind(spec)} tasks; "
                f"allowed: {', '.join(reported)}"
            )
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(task["prompt_template"]) if f is not None]
            if "" in fields or any(f[0].isdigit() for f in fields if f):
                raise ValueError("a field needs a name: {prompt} or a column's name")
        except ValueError as e:
            problems.append(f"tasks.{name}.prompt_template: {e}; write literal braces doubled, as in \\boxed{{{{}}}}")
        if ttype.rewarded and not task["rewards"]:
            problems.append(
                f"tasks.{name}.rewards: an {ttype.name} task needs at least one reward; allowed: "
                f"{', '.join(rewards.REWARDS)}"
            )
        if not ttype.rewarded and task["rewards"]:
            rewarded = ", ".join(t.name for t in tasks.TASK_TYPES.values() if t.rewarded)
            problems.append(f"tasks.{name}.rewards: only {rewarded} tasks have rewards (this one is {task['type']})")
        gen = task["data"].get("generator")
        if gen is not None:
            if gen not in GENERATORS:
                problems.append(
                    f"tasks.{name}.data.generator: unknown generator {gen!r}; allowed: {', '.join(sorted(GENERATORS))}"
                )
        hub = task["data"].get("hub") or {}
        if hub.get("eval_subset") is not None and hub.get("eval_id") is None:
            problems.append(
                f"tasks.{name}.data.hub.eval_subset: is the config of eval_id's dataset; set eval_id, or use subset"
            )
        for split, file in data_files(task).items():
            if check_files and not Path(file).exists():
                problems.append(f"tasks.{name}.data.files.{split}: file {file!r} does not exist")
        names = task["label_names"]
        if names is not None and len(names) != task["num_labels"]:
            problems.append(
                f"tasks.{name}.label_names: {len(names)} names for num_labels={task['num_labels']}; give one "
                "name per class"
            )
        if names is not None and len(set(names)) != len(names):
            problems.append(f"tasks.{name}.label_names: {names} names a class twice")
        problems += _reference_problems(f"tasks.{name}.reference", task["reference"], check_files)
    for name, model in cfg["models"].items():
        if "path" in model and (problem := _model_path_problem(model["path"])):
            problems.append(f"models.{name}.path: {problem}")
        if "build" in model:
            for key in [
                k for k in ("revision", "tokenizer_name", "trust_remote_code") if model[k] not in (None, False)
            ]:
                problems.append(
                    f"models.{name}.{key}: a model the pipeline builds has its own tokenizer and code; {key} is "
                    "for a `path` model"
                )
        corpus = model.get("build", {}).get("corpus_task")
        if corpus is not None and corpus not in cfg["tasks"]:
            problems.append(
                f"models.{name}.build.corpus_task: unknown task {corpus!r}; defined in tasks: "
                f"{', '.join(sorted(cfg['tasks']))}"
            )
    searches = [("lr_search", cfg["lr_search"])] + [
        (f"sweep[{i}].lr_search", b.get("lr_search")) for i, b in enumerate(cfg.get("sweep", []))
    ]
    problems += [p for where, search in searches if (p := _lr_range_problem(where, search))]
    if cfg["tables"]["reference"] not in methods.METHODS:
        problems.append(
            f"tables.reference: unknown method {cfg['tables']['reference']!r}; allowed: "
            f"{', '.join(sorted(methods.METHODS))}"
        )
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


REFERENCE_SOURCES = ("file", "generator", "pretraining")  # a task's `reference:` names exactly one (peftlab.forgetting)


def _reference_problems(where: str, ref: dict | None, check_files: bool) -> list[str]:
    """A task's reference texts for the forgetting measure: one source, a file that exists, a known generator.
    (`pretraining` against the runs' models: check_cell.)"""
    if ref is None:
        return []
    given = [k for k in REFERENCE_SOURCES if k in ref]
    if len(given) != 1:
        return [f"{where}: set exactly one of: {'; '.join(REFERENCE_SOURCES)} (given: {', '.join(given) or 'none'})"]
    if check_files and "file" in ref and not Path(ref["file"]).is_file():
        return [f"{where}.file: file {ref['file']!r} does not exist"]
    if "generator" in ref and ref["generator"] not in GENERATORS:
        return [f"{where}.generator: unknown generator {ref['generator']!r}; allowed: {', '.join(sorted(GENERATORS))}"]
    return []


def reference_files(task: dict) -> list[str]:
    """A task's reference file, if it names one: an input of the evaluate rule, so editing it re-evaluates."""
    ref = task.get("reference") or {}
    return [ref["file"]] if "file" in ref else []


def _lr_range_problem(where: str, search: dict | None) -> str | None:
    """Why a learning-rate `range` gives no ascending grid of distinct rates (peftlab.search.candidates)."""
    if not search or "range" not in search:
        return None
    r = search["range"]
    if r["low"] >= r["high"]:
        return (
            f"{where}.range: low {r['low']:g} is not below high {r['high']:g}; give low < high (the candidates "
            "ascend from low to high)"
        )
    rates = lr_search.candidates(search)
    distinct = sorted(set(rates))
    if len(distinct) < len(rates):
        return (
            f"{where}.range: its {len(rates)} candidates round to {len(distinct)} distinct rate(s) "
            f"({', '.join(f'{x:g}' for x in distinct)}) "
            "at 3 significant digits; widen low..high or lower count"
        )
    return None


def check_holdout(where: str, cell: dict, share: float, task: dict, key: str = "lr_search.validation_share") -> None:
    """A validation share (a learning-rate search's, or `training.validation_share` of a run that evaluates while
    it trains) against the generated training split it is drawn from (peftlab.dataset.holdout), and the cell's
    train_size against what it leaves. The size of other data (files, the hub) is known when a job reads it."""
    if "generator" not in task["data"]:
        return
    n, size = task["data"]["num_train"], cell["training"]["train_size"]
    k = HoldoutSpec(share, 0).size(n)
    if not 0 < k < n:
        raise ConfigError(
            f"{where}.{key}: {share:g} holds out {k} of the {n} training examples task {cell['task']!r} generates "
            "(data.num_train); both parts must be non-empty: allowed a share below 1 (such as 0.1) or 1 to "
            f"{n - 1} examples"
        )
    if size is not None and size > n - k:
        raise ConfigError(
            f"{where}.train_size: {size} is more than the {n - k} training examples left once {key} holds out {k} "
            f"of the {n} task {cell['task']!r} generates; lower train_size or {key.rsplit('.', 1)[-1]}"
        )


def _check_architecture(where: str, cell: dict, model: dict, ttype: tasks.TaskType) -> None:
    """A task type against what a `path` model's family can load as: an encoder-only model generates nothing,
    and a seq2seq task needs an encoder-decoder. (A built model's arch is checked in check_cell.)"""
    fam = targets.family(model)
    if fam is None:
        return
    if ttype.generates and fam in targets.ENCODER_ONLY:
        runs = ", ".join(t.name for t in tasks.TASK_TYPES.values() if not t.generates)
        decoders = ", ".join(f for f in targets.LINEAR if f not in targets.ENCODER_ONLY + targets.ENCODER_DECODER)
        raise ConfigError(
            f"{where}.model: {cell['model']!r} is an encoder-only model ({fam} family), which cannot generate "
            f"text for {ttype.name} task "
            f"{cell['task']!r}; it runs {runs} tasks; give a decoder ({decoders} family) or an encoder-decoder "
            f"({', '.join(targets.ENCODER_DECODER)})"
        )
    if ttype.encoder_decoder and fam not in targets.ENCODER_DECODER:
        needs = ", ".join(t.name for t in tasks.TASK_TYPES.values() if t.encoder_decoder)
        raise ConfigError(
            f"{where}.model: {cell['model']!r} is a decoder-only model ({fam} family), which cannot run "
            f"{ttype.name} task {cell['task']!r}; "
            f"{needs} tasks need an encoder-decoder ({', '.join(targets.ENCODER_DECODER)} family)"
        )


def _model_path_problem(path: str) -> str | None:
    """Why a model path cannot load, where that is knowable offline: a local folder that is
    missing or holds no config.json, or a `package:` that ships no model folder. A hub id
    (org/name, or a bare legacy name such as gpt2) is left to load time."""
    if path.startswith("package:"):
        module = path.removeprefix("package:")
        if targets._config_json(path) is None:
            return (
                f"{path!r}: no installed package {module!r} ships a Hugging Face model folder (a config.json in it "
                "or in its model/)"
            )
        return None
    local = Path(path).expanduser()
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1 or local.exists()
    if looks_local and not (local / "config.json").exists():
        what = "is not a model folder (no config.json in it)" if local.is_dir() else "does not exist"
        return (
            f"{path!r} {what}; give a local Hugging Face model folder, a hub id such as Qwen/Qwen3-1.7B, or "
            "package:<module>"
        )
    return None


def data_files(task: dict) -> dict[str, str]:
    """A task's local data files by key path under data.files (train, eval or eval.<name>)."""
    out = {}
    for split, value in task["data"].get("files", {}).items():
        out.update({f"{split}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {split: value})
    return out


def check_cell(where: str, cell: dict, cfg: dict) -> None:
    for key, section in (("task", "tasks"), ("model", "models")):
        if key not in cell:
            raise ConfigError(f"{where}.{key}: required; set it here or in base")
        value = cell[key]
        if not isinstance(value, str) or value not in cfg[section]:
            raise ConfigError(
                f"{where}.{key}: unknown {key} {value!r}; defined in {section}: {', '.join(sorted(cfg[section]))}"
            )
    mtype = cell["peft"]["type"]
    if mtype not in methods.METHODS:
        raise ConfigError(f"{where}.peft.type: unknown method {mtype!r}; allowed: {', '.join(sorted(methods.METHODS))}")
    method, model, task_type = methods.METHODS[mtype], cfg["models"][cell["model"]], cfg["tasks"][cell["task"]]["type"]
    if task_type in method.unsupported_task_types:
        raise ConfigError(
            f"{where}.peft.type: {mtype} cannot run on {task_type} task {cell['task']!r}: {method.not_supported_reason}"
        )
    if method.linear_only and targets.family(model) == "gpt2":
        conv = sorted(m.name for m in methods.METHODS.values() if m.impl and not m.linear_only)
        raise ConfigError(
            f"{where}.peft.type: peft's {mtype} adapts torch.nn.Linear layers only, and GPT-2's "
            f"({cell['model']!r}) are Conv1D; "
            f"methods that adapt them: {', '.join(conv)}"
        )
    try:
        targets.check(cell["peft"]["target_modules"], model, f"{where}.peft.target_modules")
    except targets.TargetError as e:
        raise ConfigError(str(e)) from None
    for axis, path in AXES.items():
        value = cell
        for p in path:
            value = value[p]
        if (
            axis in ("rank", "seed", "train_size")
            and value is not None
            and (not isinstance(value, int) or isinstance(value, bool))
        ):
            raise ConfigError(f"{where}.{axis}: {value!r} is not an integer")
        if axis == "seed" and not 0 <= value < 2**32:
            raise ConfigError(f"{where}.seed: {value} is outside 0 to 2^32-1, the seeds numpy and torch accept")
        if axis == "lr" and (not isinstance(value, (int, float)) or value <= 0):
            raise ConfigError(f"{where}.lr: {value!r} is not a positive number")
    _check_method_settings(where, cell, method, model, cfg["tasks"][cell["task"]])
    _check_training(where, cell["training"], task_spec(cell["task"], cfg["tasks"][cell["task"]]))
    keep, save_steps = cell["outputs"]["checkpoints"], cell["training"]["save_steps"]
    if isinstance(keep, int) and keep % save_steps:
        raise ConfigError(
            f"{where}.outputs.checkpoints: every {keep} steps is not a multiple of training.save_steps "
            f"({save_steps}); only saved steps can be kept"
        )
    data, size = cfg["tasks"][cell["task"]]["data"], cell["training"]["train_size"]
    if "generator" in data and isinstance(size, int) and size > data["num_train"]:
        raise ConfigError(
            f"{where}.train_size: {size} is more than the {data['num_train']} training examples task "
            f"{cell['task']!r} generates (data.num_train)"
        )
    if "path" in model:
        _check_architecture(where, cell, model, tasks.TASK_TYPES[task_type])
    if cell["training"]["eval_steps"]:
        check_holdout(
            where, cell, cell["training"]["validation_share"], cfg["tasks"][cell["task"]], "training.validation_share"
        )
    if (cfg["tasks"][cell["task"]]["reference"] or {}).get("pretraining") and "build" not in model:
        raise ConfigError(
            f"tasks.{cell['task']}.reference.pretraining: model {cell['model']!r} ({where}.model) is not one "
            "the pipeline builds, "
            "so its pre-training corpus is unknown; give the reference a file or a generator"
        )
    arch = model.get("build", {}).get("arch")
    if arch is not None and (arch == "t5") != tasks.TASK_TYPES[task_type].encoder_decoder:
        needs_t5 = ", ".join(t.name for t in tasks.TASK_TYPES.values() if t.encoder_decoder)
        raise ConfigError(
            f"{where}.model: {cell['model']!r} builds a {arch} model, which cannot run {task_type} task "
            f"{cell['task']!r}; {needs_t5} tasks need arch t5, the others llama"
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
            raise ConfigError(
                f"{where}.peft.options.{key}: set peft.{key} instead; the run id, the spec and the tables read "
                f"peft.{key}"
            )
        if key in method.fixed and p["options"][key] != method.fixed[key]:
            raise ConfigError(
                f"{where}.peft.options.{key}: {p['options'][key]!r} contradicts method {method.name} "
                f"({key}={method.fixed[key]!r}); pick the method instead"
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
        raise ConfigError(
            f"{where}.peft.r: rank {p['r']} is above the model's width {hidden}; a rank is at most the layer's "
            "smaller side"
        )
    k = cell["tracker"]["subspace_k"]
    if k is not None and hidden is not None and k > hidden:
        raise ConfigError(
            f"{where}.tracker.subspace_k: {k} is above the width {hidden} of model {cell['model']!r}; W's top-k "
            "and bottom-k singular "
            f"subspaces have at most {hidden} dimensions: allowed: 1 to {hidden}, or null (the adapter's rank)"
        )
    if method.quantized and hidden is not None:
        wide = {
            k: shape[k]
            for k in ("hidden_size", "intermediate_size", "d_model", "d_ff")
            if isinstance(shape.get(k), int)
        }
        odd = {k: v for k, v in wide.items() if v % QLORA_MULTIPLE}
        if odd:
            raise ConfigError(
                f"{where}.peft.type: {method.name} quantises the base with bitsandbytes, whose packed 4-bit CPU "
                "path needs layer widths "
                f"that are multiples of {QLORA_MULTIPLE}; {cell['model']!r} has {odd}"
            )
    limit = targets.max_positions(shape)
    if limit is not None and task["max_length"] > limit:
        raise ConfigError(
            f"{where}: task {cell['task']!r} has max_length {task['max_length']}, but model {cell['model']!r} "
            "has position embeddings "
            f"for {limit} tokens; set tasks.{cell['task']}.max_length to at most {limit}"
        )


def _check_training(where: str, t: dict, task: TaskSpec) -> None:
    """In-training evaluation and `extra` TrainingArguments, against the task and transformers."""
    ttype = tasks.of(task)
    if t["eval_steps"] and t["max_steps"] and t["eval_steps"] > t["max_steps"]:
        raise ConfigError(
            f"{where}.training.eval_steps: {t['eval_steps']} is above max_steps {t['max_steps']}, so training "
            "would never evaluate; "
            f"allowed: 1 to {t['max_steps']}, or null (evaluate after training only)"
        )
    if t["eval_steps"] and ttype.rewarded:
        raise ConfigError(
            f"{where}.training.eval_steps: {ttype.name} runs train with TRL's GRPOTrainer and are evaluated "
            "after training only"
        )
    if t["load_best_model_at_end"]:
        if not t["eval_steps"]:
            raise ConfigError(
                f"{where}.training.load_best_model_at_end: needs training.eval_steps (the best model is the "
                "best evaluated checkpoint)"
            )
        if t["save_steps"] % t["eval_steps"]:
            raise ConfigError(
                f"{where}.training.save_steps: {t['save_steps']} must be a multiple of eval_steps "
                f"{t['eval_steps']} with load_best_model_at_end "
                "(only a saved checkpoint can be loaded back)"
            )
    metric = t["metric_for_best_model"]
    if metric is not None and metric not in ttype.metric_names(task):
        raise ConfigError(
            f"{where}.training.metric_for_best_model: {metric!r} is not reported for {ttype.kind(task)} tasks; "
            f"allowed: {', '.join(ttype.metric_names(task))}"
        )
    if t["extra"]:
        _check_extra(where, t["extra"], ttype.rewarded)


def _check_extra(where: str, extra: dict, rewarded: bool) -> None:
    import dataclasses

    from peftlab.trainers import FROM_SPEC

    if rewarded:
        from trl import GRPOConfig as Arguments
    else:
        from transformers import TrainingArguments as Arguments
    fields = {f.name for f in dataclasses.fields(Arguments) if f.init}
    rl_keys = schema()["definitions"]["training"]["properties"]["rl"]["properties"]
    for key in extra:
        if rewarded and key in rl_keys:
            raise ConfigError(f"{where}.training.extra.{key}: set training.rl.{key}, GRPO's own settings")
        if key in FROM_SPEC:
            raise ConfigError(
                f"{where}.training.extra.{key}: set by {FROM_SPEC[key]}; set it there, so the spec and the "
                "tables record it"
            )
        if key not in fields:
            close = sorted(f for f in fields if key.lower().replace("-", "_") in f or f in key)[:5]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"{where}.training.extra.{key}: not an argument of transformers' {Arguments.__name__}{hint}"
            )
