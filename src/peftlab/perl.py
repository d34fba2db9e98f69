"""PeRL's config files, read as they are: its `base` + `experiments` layout with its own key names.

A PeRL file (../shared/seeds/perl_configs.md) names its model and dataset inside `base`
and uses TrainingArguments' and GRPOConfig's names for training:

  base:
    description: ...
    model: {model_name_or_path: deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B, dtype: bfloat16, attn_implementation: sdpa}
    dataset: {dataset_name_or_path: Jiayi-Pan/Countdown-Tasks-3to4}
    training: {max_steps: 1000, per_device_train_batch_size: 4, gradient_accumulation_steps: 8, num_generations: 8, ...}
    tracker: {enable_spectral_tracking: true, ...}       # peftlab's own tracker section, the same keys
    wandb: {use_wandb: true, project: peft-rlvr-mechanistic, ...}
  experiments:
    - {name: lora_r16_s42, peft: {type: lora, r: 16, lora_alpha: 32}, training: {learning_rate: 1e-05}, common: {seed: 42}}

`translate` rewrites such a file into peftlab's form before validation; `peftlab.validate`
calls it on every config, so `snakemake --configfile <a PeRL file>` runs it. Every key
is mapped or refused with the reason: none is dropped. Keys the file leaves out take
peftlab's defaults (config.schema.yaml), not PeRL's runner's.
"""  # noqa: E501

from __future__ import annotations

import copy
import re

from peftlab.schema import ConfigError

# PeRL's datasets, as peftlab tasks. A file may instead define a task under `tasks:` whose data.hub.id is the dataset.
DATASETS = {
    "Jiayi-Pan/Countdown-Tasks-3to4": {
        "type": "rlvr",
        "data": {
            "hub": {"id": "Jiayi-Pan/Countdown-Tasks-3to4", "train_split": "train[1000:]", "eval_split": "train[:200]"}
        },
        "prompt_field": "target",
        "prompt_template": (
            "Using the numbers {nums}, create an equation that equals {target}. You can use basic arithmetic "
            "operations "
            "(+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. And "
            "return the "
            "final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
        ),
        "chat_template": True,
        "rewards": ["countdown", "format"],
        "max_length": 512,
        "max_new_tokens": 1024,
    },
}

MODEL_KEYS = {  # PeRL's (and the PEFT Playground's) model keys -> peftlab's models.<name> keys
    "model_name_or_path": "path",
    "name_or_path": "path",
    "dtype": "dtype",
    "torch_dtype": "dtype",
    "attn_implementation": "attn_implementation",
    "revision": "revision",
    "tokenizer_name": "tokenizer_name",
    "trust_remote_code": "trust_remote_code",
}
TRAINING_KEYS = {  # TrainingArguments' names -> peftlab's training keys
    "learning_rate": "learning_rate",
    "max_steps": "max_steps",
    "num_train_epochs": "epochs",
    "save_steps": "save_steps",
    "logging_steps": "logging_steps",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "warmup_ratio": "warmup_ratio",
    "weight_decay": "weight_decay",
    "lr_scheduler_type": "lr_scheduler",
    "max_grad_norm": "max_grad_norm",
    "bf16": "bf16",
    "gradient_checkpointing": "gradient_checkpointing",
    "seed": "seed",
}
RL_KEYS = (
    "num_generations",
    "loss_type",
    "max_completion_length",
    "beta",
    "temperature",
    "epsilon",
    "scale_rewards",
)  # GRPOConfig's
OFF_ONLY = {  # accepted when off (what peftlab does anyway), refused when on
    "use_vllm": "peftlab's GRPO samples with transformers' generate; vLLM generation is not supported",
    "use_liger_kernel": "Liger kernels are not installed with peftlab",
}


def is_perl(raw: dict) -> bool:
    """Whether a raw config is in PeRL's layout: a `base` naming its model or dataset inline, or carrying PeRL's
    sections."""
    base = raw.get("base")
    return isinstance(base, dict) and (
        isinstance(base.get("model"), dict) or any(k in base for k in ("dataset", "tracker", "wandb", "description"))
    )


def translate(raw: dict) -> dict:
    """A PeRL file -> the same matrix in peftlab's form (other configs are returned unchanged)."""
    if not is_perl(raw):
        return raw
    out = copy.deepcopy(raw)
    out.setdefault("tasks", {})
    out.setdefault("models", {})
    base = out["base"]
    if "description" in base:
        out["description"] = base.pop("description")
    _wandb(out, base.pop("wandb", None), base.get("training", {}).get("report_to"))
    for where, part in [
        ("base", base),
        *((f"experiments[{i}]", e) for i, e in enumerate(out.get("experiments") or [])),
    ]:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("model"), dict):
            part["model"] = _model(where, part["model"], out["models"])
        if "dataset" in part:
            part["task"] = _dataset(where, part.pop("dataset"), out["tasks"])
        if isinstance(part.get("training"), dict):
            part["training"] = _training(where, part["training"])
        if "wandb" in part:
            raise ConfigError(f"{where}.wandb: one wandb section per file, in base; an experiment cannot have its own")
    return out


def _model(where: str, model: dict, models: dict) -> str:
    unknown = sorted(set(model) - set(MODEL_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}.model.{unknown[0]}: not a model key peftlab knows; allowed: {', '.join(MODEL_KEYS)}"
        )
    entry = {MODEL_KEYS[k]: v for k, v in model.items()}
    if "path" not in entry:
        raise ConfigError(f"{where}.model.model_name_or_path: required (a hub id or a local folder)")
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", str(entry["path"]).rstrip("/").rsplit("/", 1)[-1]).lstrip(".") or "model"
    taken = next((n for n, m in models.items() if m == entry), None)
    if taken:
        return taken
    unique, i = name, 2
    while unique in models:
        unique, i = f"{name}-{i}", i + 1
    models[unique] = entry
    return unique


def _dataset(where: str, dataset, tasks: dict) -> str:
    if not isinstance(dataset, dict) or set(dataset) != {"dataset_name_or_path"}:
        raise ConfigError(f"{where}.dataset: give exactly dataset_name_or_path (a hub id); found {dataset!r}")
    name = dataset["dataset_name_or_path"]
    for task_name, task in tasks.items():
        if isinstance(task, dict) and task.get("data", {}).get("hub", {}).get("id") == name:
            return task_name
    if name not in DATASETS:
        raise ConfigError(
            f"{where}.dataset.dataset_name_or_path: peftlab has no task for {name!r}; PeRL datasets it knows: "
            f"{', '.join(DATASETS)}; "
            f"or define one under tasks: with data.hub.id: {name}"
        )
    task_name = re.sub(r"[^A-Za-z0-9._+-]", "-", name.rsplit("/", 1)[-1])
    tasks[task_name] = copy.deepcopy(DATASETS[name])
    return task_name


def _training(where: str, training: dict) -> dict:
    out, rl = {}, {}
    for key, value in training.items():
        if key in TRAINING_KEYS:
            out[TRAINING_KEYS[key]] = value
        elif key in RL_KEYS:
            rl[key] = value
        elif key in OFF_ONLY:
            if value:
                raise ConfigError(
                    f"{where}.training.{key}: {value!r} is not supported: {OFF_ONLY[key]}; set it to false"
                )
        elif key == "report_to":
            if where != "base":
                raise ConfigError(
                    f"{where}.training.report_to: set it in base.training; wandb settings are one per file"
                )
        elif key in (
            "batch_size",
            "grad_accum",
            "epochs",
            "lr_scheduler",
            "rl",
            "train_size",
            "data_seed",
            "warmup_ratio",
            "check_reload",
        ):
            out[key] = value  # peftlab's own names are fine in a PeRL file too
        else:
            allowed = [*TRAINING_KEYS, *RL_KEYS, *OFF_ONLY, "report_to"]
            raise ConfigError(
                f"{where}.training.{key}: no peftlab equivalent; allowed in a PeRL file: {', '.join(allowed)}"
            )
    if rl:
        out["rl"] = {**out.get("rl", {}), **rl}
    return out


def _wandb(out: dict, wandb, report_to) -> None:
    """PeRL's wandb section and training.report_to -> peftlab's top-level wandb."""
    if report_to is not None:
        targets = [report_to] if isinstance(report_to, str) else list(report_to)
        if set(targets) - {"wandb", "none"}:
            raise ConfigError(
                f"base.training.report_to: {report_to!r}; peftlab reports to wandb or nothing ([wandb], [] or none)"
            )
        if "wandb" not in targets:
            out["wandb"] = {**out.get("wandb", {}), "mode": "disabled"}
    if wandb is None:
        return
    settings = dict(out.get("wandb") or {})
    for key, value in wandb.items():
        if key == "use_wandb":
            if not value:
                settings["mode"] = "disabled"
            elif settings.get("mode") != "disabled":
                settings.setdefault("mode", "online")
        elif key == "offline":
            if value and settings.get("mode") != "disabled":
                settings["mode"] = "offline"
        elif key in ("project", "entity", "log_spectral_images", "log_gradient_images"):
            settings[key] = value
        else:
            raise ConfigError(
                f"base.wandb.{key}: no peftlab equivalent; allowed: use_wandb, offline, project, entity, "
                "log_spectral_images, log_gradient_images"
            )
    out["wandb"] = settings
