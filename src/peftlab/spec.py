"""The resolved spec of one run, typed: what `python -m peftlab.train|evaluate|merge` reads.

`peftlab.matrix.plan` validates a user's config (schema, defaults) and expands it into
these; `RunSpec.from_dict` is strict, so a spec file with a missing or unknown
key fails when it is read, not halfway through a job.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from peftlab.schema import json_copy, schema_default


class _Strict:
    def to_dict(self) -> dict:
        """The plain dict: what dataclasses.asdict gives, without its deepcopy of every leaf."""
        return {f.name: v.to_dict() if isinstance(v := getattr(self, f.name), _Strict) else json_copy(v) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict):
        """Build from a dict that has every required key and no unknown one."""
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        required = {f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        unknown, missing = set(d) - names, required - set(d)
        if unknown or missing:
            raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; expected {sorted(names)}")
        return cls(**d)


def _default(*path: str):
    """A dataclass field whose default is the schema's (copied per instance), so a default has one home."""
    value = schema_default(*path)
    return field(default_factory=lambda: copy.deepcopy(value))


def _task(key: str):
    return _default("tasks", key)


def _model(key: str):
    return _default("models", key)


@dataclass(frozen=True)
class TaskSpec(_Strict):
    name: str
    type: str  # a task type of peftlab.tasks.TASK_TYPES: classification | sft | lm | seq2seq | rlvr
    data: dict[str, Any]  # {generator: ...} | {files: {train, eval}} | {hub: {...}}
    columns: dict[str, str] = _task("columns")  # renames applied on loading: {name in the data: name used here}
    text_fields: list[str] = _task("text_fields")
    label_field: str = _task("label_field")
    num_labels: int = _task("num_labels")  # 1: regression (STS-B)
    label_names: list[str] | None = _task("label_names")  # class names in id order (string labels map to their position)
    prompt_field: str = _task("prompt_field")
    response_field: str = _task("response_field")
    prompt_template: str = _task("prompt_template")
    chat_template: bool = _task("chat_template")  # wrap the prompt in the tokenizer's chat template
    packing: bool = _task("packing")  # sft/lm: padding-free batches (DataCollatorWithFlattening)
    answer_format: str = _task("answer_format")  # gsm8k | boxed | last_number | text | none
    rouge: bool = _task("rouge")  # sft: also ROUGE of the generations (seq2seq always)
    rewards: list[str] = _task("rewards")  # rlvr: reward functions by name; the first is the correctness reward
    metric: str | None = _task("metric")  # the main metric in tables and plots; None: the task type's
    max_length: int = _task("max_length")
    max_new_tokens: int = _task("max_new_tokens")
    eval_batch_size: int = _task("eval_batch_size")


@dataclass(frozen=True)
class ModelSpec(_Strict):
    name: str
    path: str  # hub id, local folder, or package:<module>
    build: dict[str, Any] | None = None  # set for models the pipeline builds
    dtype: str = _model("dtype")  # float32 | bfloat16 | float16: what the weights load in
    attn_implementation: str | None = _model("attn_implementation")  # None: transformers' choice
    revision: str | None = _model("revision")  # hub branch, tag or commit
    tokenizer_name: str | None = _model("tokenizer_name")  # None: the model's own tokenizer
    trust_remote_code: bool = _model("trust_remote_code")


@dataclass(frozen=True)
class PeftSpec(_Strict):
    type: str
    r: int | None
    lora_alpha: float
    lora_dropout: float
    target_modules: str | list[str] | None
    options: dict[str, Any]
    loraplus_lr_ratio: float = _default("peft", "loraplus_lr_ratio")  # lora_plus: B's learning rate / A's


@dataclass(frozen=True)
class TrainingSpec(_Strict):
    seed: int
    learning_rate: float | None  # None: a final run whose lr_search picks it (RunSpec.with_learning_rate)
    epochs: float
    max_steps: int | None
    batch_size: int
    grad_accum: int
    warmup_ratio: float
    weight_decay: float
    lr_scheduler: str
    max_grad_norm: float
    train_size: int | None
    data_seed: int
    save_steps: int
    logging_steps: int
    check_reload: bool
    bf16: bool = _default("training", "bf16")  # bfloat16 mixed precision
    gradient_checkpointing: bool = _default(
        "training", "gradient_checkpointing"
    )  # recompute activations in the backward pass (less memory, ~30% slower)
    eval_steps: int | None = _default("training", "eval_steps")  # in-training evaluation every N steps, on the validation share
    validation_share: float = _default("training", "validation_share")  # with eval_steps: held out of the training split
    validation_seed: int = _default("training", "validation_seed")
    metric_for_best_model: str | None = _default("training", "metric_for_best_model")  # None: the task's main metric
    greater_is_better: bool | None = _default("training", "greater_is_better")  # None: by the metric
    load_best_model_at_end: bool = _default("training", "load_best_model_at_end")  # keep the best evaluated checkpoint
    on_degenerate: str = _default("training", "on_degenerate")  # warn | fail: a flagged run (peftlab.health) fails its job
    extra: dict[str, Any] = _default("training", "extra")  # more TrainingArguments, as they are
    rl: dict[str, Any] = field(default_factory=dict)  # rlvr: GRPO settings (num_generations, loss_type, beta, ...); {} for other types


@dataclass(frozen=True)
class WandbSpec(_Strict):
    mode: str  # offline | online | disabled
    project: str
    entity: str | None
    dir: str
    log_spectral_images: bool = _default("wandb", "log_spectral_images")  # the tracker's ΔW heatmaps and spectra
    log_gradient_images: bool = _default("wandb", "log_gradient_images")  # the tracker's gradient heatmaps


@dataclass(frozen=True)
class TrackerSpec(_Strict):
    """PeRL's tracker section (peftlab.tracking): what is recorded about each adapted layer while a run trains."""

    enable_spectral_tracking: bool = _default("tracker", "enable_spectral_tracking")
    enable_gradient_tracking: bool = _default("tracker", "enable_gradient_tracking")
    spectral_log_frequency: int = _default("tracker", "spectral_log_frequency")
    gradient_log_frequency: int = _default("tracker", "gradient_log_frequency")
    subspace_k: int | None = _default("tracker", "subspace_k")  # None: the adapter's rank
    singular_values: int = _default("tracker", "singular_values")  # how many of ΔW's largest are recorded


AUTO_SAVE_BELOW = 1_000_000_000  # outputs.merge: auto keeps the merged model of a base smaller than this (parameters)


@dataclass(frozen=True)
class OutputsSpec(_Strict):
    """What a run keeps on disk besides its adapter."""

    merge: str = _default("outputs", "merge")  # auto | save | check | none (peftlab.merge)
    checkpoints: str | int = _default("outputs", "checkpoints")  # none | last | every N steps (peftlab.checkpoints.kept_steps)

    def keeps_merged(self, params: int) -> bool:
        """Whether the merge keeps its merged model of a base with `params` parameters (peftlab.plan asks too)."""
        return self.merge == "save" or (self.merge == "auto" and params < AUTO_SAVE_BELOW)


@dataclass(frozen=True)
class HoldoutSpec(_Strict):
    """A search run's validation (peftlab.lr_search): `share` of the training split, drawn with
    `seed`, is held out of training, and the run is evaluated on it instead of the evaluation split."""

    share: float  # a share of the training split, or a number of examples when 1 or more
    seed: int

    def size(self, n: int) -> int:
        """How many of a training split's `n` examples are held out (peftlab.plan counts them too)."""
        return round(self.share * n) if self.share < 1 else int(self.share)


@dataclass(frozen=True)
class LrSearchSpec(_Strict):
    """A final run's learning-rate search (peftlab.lr_search): the cell whose selection sets
    training.learning_rate (None in the spec until the train step reads the selection)."""

    cell: str
    rates: list[float]
    seeds: list[int]
    validation_share: float
    validation_seed: int
    metric: str  # the task metric selected on (eval_loss: the validation loss)


@dataclass(frozen=True)
class RunSpec(_Strict):
    run_id: str
    task: TaskSpec
    model: ModelSpec
    peft: PeftSpec
    training: TrainingSpec
    wandb: WandbSpec
    world_size: int  # training processes (nodes x processes per node); sets the global batch
    data_dir: str  # tokenised data (datasets on disk)
    tracker: TrackerSpec = field(default_factory=TrackerSpec)
    outputs: OutputsSpec = field(default_factory=OutputsSpec)
    holdout: HoldoutSpec | None = None  # a search run's validation share
    lr_search: LrSearchSpec | None = None  # a final run whose rate a search picks

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        parts = {
            "task": TaskSpec,
            "model": ModelSpec,
            "peft": PeftSpec,
            "training": TrainingSpec,
            "wandb": WandbSpec,
            "tracker": TrackerSpec,
            "outputs": OutputsSpec,
            "holdout": HoldoutSpec,
            "lr_search": LrSearchSpec,
        }
        return super().from_dict({k: parts[k].from_dict(v) if k in parts and v is not None else v for k, v in d.items()})

    def with_learning_rate(self, rate: float) -> RunSpec:
        """This spec at `rate`: a searched run as it trains, once its cell's selection is known."""
        return dataclasses.replace(self, training=dataclasses.replace(self.training, learning_rate=rate))


# --- which keys rerun which stage ------------------------------------------------------
# Each rule of the workflow reads one spec file, which its job writes as it starts; the rule
# reruns when the stage's fingerprint changes (Snakemake's params trigger). A fingerprint is a hash of the
# spec without the keys below: keys the stage does not read, or that cannot change what
# it writes. Editing one of them reruns nothing at that stage; editing any other key
# reruns the stage and everything after it. The table in docs/config.md is made from this one.
EVAL_ONLY = ("task.max_new_tokens", "task.eval_batch_size", "task.metric", "task.rouge", "task.answer_format")
NOT_READ: dict[str, tuple[str, ...]] = {
    "data_generate": (),  # its spec is the task's `data` section alone
    # a build writes float32 weights and its own tokenizer, whatever the model's loading keys say
    "model_build": tuple(k.replace("task.", "corpus_task.") for k in EVAL_ONLY)
    + ("corpus_task.max_length", "dtype", "attn_implementation", "revision", "tokenizer_name", "trust_remote_code"),
    "data_tokenize": EVAL_ONLY + ("model.dtype", "model.attn_implementation"),  # reads the tokenizer, not the weights
    # logging and checkpoint intervals, the reload check and wandb change no weight (the tracker
    # changes none either, but what it records is the train step's output, so it retrains)
    "train_run": EVAL_ONLY
    + ("training.logging_steps", "training.save_steps", "training.check_reload", "training.on_degenerate", "wandb", "outputs.merge"),
    # a retrained adapter reruns both through the adapter itself
    "evaluate_run": ("training", "world_size", "wandb", "tracker", "outputs", "lr_search"),
    # outputs.merge is hashed even at its default: before it existed every merge was saved in
    # float32, so a finished matrix's merges rerun once (no training) to follow the new rule
    "merge_run": EVAL_ONLY + ("training", "world_size", "wandb", "tracker", "outputs.checkpoints", "lr_search"),
    "lr_select": (),  # its spec is the cell's search alone (peftlab.search.select_spec)
}


# what a stage with nothing in NOT_READ reads: its spec is a part of the run's (docs/config.md's table)
SPEC_OF = {
    "data_generate": "its spec is the task's `data` section alone",
    "lr_select": "its spec is the cell's search alone: rates, seeds, validation share and seed, metric",
}


def rerun_table() -> str:
    """docs/config.md's "Which keys rerun which stages" table, made from NOT_READ (a test holds the page to it)."""
    rows = ["| rule | reruns when anything changes except |", "|---|---|"]
    for stage, keys in NOT_READ.items():
        rows.append(f"| `{stage}` | " + (", ".join(f"`{k}`" for k in keys) if keys else f"({SPEC_OF[stage]})") + " |")
    return "\n".join(rows) + "\n"


# Keys added to the spec after runs were recorded without them. Each is hashed only when it
# differs from its default, the value that reproduces what peftlab did before the key
# existed: upgrading peftlab reruns no finished run, and setting the key reruns its stages.
HASHED_WHEN_SET = (
    "model.dtype",
    "model.attn_implementation",
    "model.revision",
    "model.tokenizer_name",
    "model.trust_remote_code",
    "training.eval_steps",
    "training.metric_for_best_model",
    "training.greater_is_better",
    "training.load_best_model_at_end",
    "training.extra",
    "tracker.enable_spectral_tracking",
    "tracker.enable_gradient_tracking",
    "tracker.spectral_log_frequency",
    "tracker.gradient_log_frequency",
    "tracker.subspace_k",
    "tracker.singular_values",
    "outputs.checkpoints",
)


def reads(stage: str, path: str) -> bool:
    """Whether `stage` reads the dotted key `path` (NOT_READ names neither it nor a section above it)."""
    return not any(path == k or path.startswith(k + ".") for k in NOT_READ[stage])


def read_by_only(stage: str, other: str) -> tuple[str, ...]:
    """The keys of NOT_READ[other] that `stage` reads: what `stage` takes from its own spec, not from `other`'s output."""
    return tuple(k for k in NOT_READ[other] if reads(stage, k))


def with_keys_of(spec: dict, other: dict, paths: tuple[str, ...]) -> dict:
    """A copy of `spec` holding `other`'s value (or absence) at each dotted path of `paths`."""
    out = json_copy(spec)
    for path in paths:
        *parents, leaf = path.split(".")
        src, dst = other, out
        for p in parents:
            src, dst = (src or {}).get(p), dst.setdefault(p, {})
        if isinstance(src, dict) and leaf in src:
            dst[leaf] = json_copy(src[leaf])
        else:
            dst.pop(leaf, None)
    return out


def _pop(tree: dict, path: str, only_if=dataclasses.MISSING) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        tree = tree.get(p) or {}
    if leaf in tree and (only_if is dataclasses.MISSING or tree[leaf] == only_if):
        del tree[leaf]


def read_by(spec: dict, *stages: str) -> dict:
    """What every one of `stages` reads of `spec`: the spec less NOT_READ and keys at a HASHED_WHEN_SET default."""
    kept = json_copy(spec)
    for path in {p for stage in stages for p in NOT_READ[stage]}:
        _pop(kept, path)
    for path in HASHED_WHEN_SET:
        section, key = path.split(".", 1)
        _pop(kept, path, schema_default("models" if section == "model" else section, key))
    if not (kept.get("training") or {}).get("eval_steps"):  # the validation share is drawn for in-training evaluation only
        for key in ("validation_share", "validation_seed"):
            _pop(kept, f"training.{key}")
    for section in ("holdout", "lr_search"):  # set on the runs of a learning-rate search only
        if section in kept and kept[section] is None:
            del kept[section]
    for section in ("tracker", "outputs"):
        if kept.get(section) == {}:  # a section added later, all at its defaults, hashes as its absence did
            del kept[section]
    return kept


def fingerprint(spec: dict, *stages: str) -> str:
    """A short hash of what every one of `stages` reads of `spec` (`read_by`).

    One stage: the hash that reruns it. Two: the keys both read, on which a stage and the
    output of another that it consumes must agree (peftlab.models.trained_spec).
    """
    import hashlib
    import json

    return hashlib.sha256(json.dumps(read_by(spec, *stages), sort_keys=True).encode()).hexdigest()[:16]
