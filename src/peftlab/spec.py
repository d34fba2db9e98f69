"""The resolved spec of one run, typed: what `python -m peftlab.train|evaluate|merge` reads.

`peftlab.matrix.plan` validates a user's config (schema, defaults) and expands it into
these; `RunSpec.from_dict` is strict, so a spec file with a missing or unknown
key fails when it is read, not halfway through a job. The fields of a config section's
spec are the schema's keys of that section (`config_keys`), so a key, its type, default
and description have one home: config.schema.yaml.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import operator
from dataclasses import dataclass, field
from typing import Any

from peftlab.schema import json_copy, keys_of, schema_default


class _Strict:
    def to_dict(self) -> dict:
        """The plain dict: what dataclasses.asdict gives, without its deepcopy of every leaf."""
        return {
            f.name: v.to_dict() if isinstance(v := getattr(self, f.name), _Strict) else json_copy(v)
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, d: dict):
        """Build from a dict that has every required key and no unknown one. (The dataclass's own __init__ refuses
        them too, but one at a time, as a TypeError; this names the spec and every unknown and missing key at once.)"""
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        required = {
            f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        unknown, missing = set(d) - names, required - set(d)
        if unknown or missing:
            raise ValueError(
                f"{cls.__name__}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; expected "
                f"{sorted(names)}"
            )
        return cls(**d)


def _default(section: str, key: str):
    """A dataclass field whose default is the schema's (copied per instance)."""
    value = schema_default(section, key)
    return field(default_factory=lambda: copy.deepcopy(value))


_TYPES = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "array": list,
    "object": dict,
    "null": type(None),
}


def _type(node: dict):
    """A key's Python type, from its schema `type` (Any where it has none, as in a oneOf)."""
    kinds = node.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    return functools.reduce(operator.or_, [_TYPES[k] for k in kinds]) if kinds else Any


def config_keys(section: str, optional_from: str | None = None, skip: tuple[str, ...] = (), first: str | None = None):
    """Class decorator: a frozen dataclass whose fields are the schema's keys of a config section.

    The fields, in this order (the order of to_dict and of the spec files): the class's own field `first`;
    the section's keys before `optional_from`, which a spec must hold; the class's other own fields; then
    the keys from `optional_from` on, which a spec written before they existed lacks: it reads as their
    schema default. `skip`: keys of the config section that a run spec does not hold.
    """

    def make(cls):
        keys = {k: node for k, node in keys_of(section).items() if k not in skip}
        names = list(keys)
        cut = names.index(optional_from) if optional_from else len(names)
        own = dict(cls.__dict__.get("__annotations__", {}))
        fields = {first: own.pop(first)} if first else {}
        fields |= {k: _type(keys[k]) for k in names[:cut]} | own | {k: _type(keys[k]) for k in names[cut:]}
        for k in names[cut:]:
            setattr(cls, k, _default(section, k))
        cls.__annotations__ = fields
        return dataclass(frozen=True)(cls)

    return make


@config_keys("tasks", first="name", optional_from="columns")
class TaskSpec(_Strict):
    """A task of the config's `tasks:`, under its name."""

    name: str


@config_keys("models", first="name", optional_from="dtype", skip=("resources", "build"))
class ModelSpec(_Strict):
    """A model of the config's `models:`, under its name (`path` of a built model: where the pipeline writes it)."""

    name: str
    build: dict[str, Any] | None = None  # the config's build section, for models the pipeline builds


@config_keys("peft", optional_from="loraplus_lr_ratio")
class PeftSpec(_Strict):
    """The method and its hyperparameters (r None: a method without a rank)."""


@config_keys("training", optional_from="bf16")
class TrainingSpec(_Strict):
    """learning_rate None: a final run whose lr_search picks it (RunSpec.with_learning_rate); rl is {} but for rlvr
    tasks."""


@config_keys("wandb", optional_from="log_spectral_images")
class WandbSpec(_Strict):
    dir: str  # not a config key: the plan sets it to the matrix's folder (wandb writes to <dir>/wandb)


@config_keys("tracker", optional_from="enable_spectral_tracking")
class TrackerSpec(_Strict):
    """PeRL's tracker section (peftlab.tracking): what is recorded about each adapted layer while a run trains."""


AUTO_SAVE_BELOW = 1_000_000_000  # outputs.merge: auto keeps the merged model of a base smaller than this (parameters)


@config_keys("outputs", optional_from="merge")
class OutputsSpec(_Strict):
    """What a run keeps on disk besides its adapter: merge (peftlab.merge) and checkpoints
    (peftlab.checkpoints.kept_steps)."""

    def keeps_merged(self, params: int) -> bool:
        """Whether the merge keeps its merged model of a base with `params` parameters (peftlab.cost asks too)."""
        return self.merge == "save" or (self.merge == "auto" and params < AUTO_SAVE_BELOW)


@dataclass(frozen=True)
class HoldoutSpec(_Strict):
    """A search run's validation (peftlab.lr_search): `share` of the training split, drawn with
    `seed`, is held out of training, and the run is evaluated on it instead of the evaluation split."""

    share: float  # a share of the training split, or a number of examples when 1 or more
    seed: int

    def size(self, n: int) -> int:
        """How many of a training split's `n` examples are held out (peftlab.cost counts them too)."""
        return round(self.share * n) if self.share < 1 else int(self.share)


@dataclass(frozen=True)
class RungSpec(_Strict):
    """A search run's rung under successive halving (peftlab.search.ladder): a run of `share` of the run's steps,
    resuming the last checkpoint of the rung below (which ended at `below`, None at rung 0) if its promotion kept
    the rate; `search`: the cell's search (peftlab.search.search_keys), which that promotion must be of. Training
    hashes the budgets, not `search`: a new metric or search seed reruns the promotions, not rung 0's runs."""

    index: int
    share: float
    below: float | None
    search: dict[str, Any]


@config_keys("lr_search", first="cell", skip=("range",), optional_from="halving")
class LrSearchSpec(_Strict):
    """A final run's learning-rate search (peftlab.lr_search): the cell whose selection sets
    training.learning_rate (None in the spec until the train step reads the selection), and the
    search's keys as peftlab.search.resolved gives them (`rates`: the candidates, a range's too)."""

    cell: str


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
    rung: RungSpec | None = None  # a search run's rung under successive halving

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
            "rung": RungSpec,
        }
        return super().from_dict(
            {k: parts[k].from_dict(v) if k in parts and v is not None else v for k, v in d.items()}
        )

    def with_learning_rate(self, rate: float) -> RunSpec:
        """This spec at `rate`: a searched run as it trains, once its cell's selection is known."""
        return dataclasses.replace(self, training=dataclasses.replace(self.training, learning_rate=rate))


# --- which keys rerun which stage ------------------------------------------------------
# Each rule of the workflow reads one spec file, which its job writes as it starts; the rule
# reruns when the stage's fingerprint changes (Snakemake's params trigger). A fingerprint is a hash of the
# spec without the keys below: keys the stage does not read, or that cannot change what
# it writes. Editing one of them reruns nothing at that stage; editing any other key
# reruns the stage and everything after it. The table in docs/config.md is made from this one.
EVAL_ONLY = (
    "task.max_new_tokens",
    "task.eval_batch_size",
    "task.metric",
    "task.rouge",
    "task.answer_format",
    "task.reference",
)
NOT_READ: dict[str, tuple[str, ...]] = {
    "data_generate": (),  # its spec is the task's `data` section alone
    # a build writes float32 weights and its own tokenizer, whatever the model's loading keys say
    "model_build": tuple(k.replace("task.", "corpus_task.") for k in EVAL_ONLY)
    + ("corpus_task.max_length", "dtype", "attn_implementation", "revision", "tokenizer_name", "trust_remote_code"),
    "data_tokenize": EVAL_ONLY + ("model.dtype", "model.attn_implementation"),  # reads the tokenizer, not the weights
    # logging and checkpoint intervals, the reload check and wandb change no weight (the tracker
    # changes none either, but what it records is the train step's output, so it retrains)
    "train_run": EVAL_ONLY
    + (
        "training.logging_steps",
        "training.save_steps",
        "training.check_reload",
        "training.on_degenerate",
        "wandb",
        "outputs.merge",
        "rung.search",
    ),
    # a retrained adapter reruns both through the adapter itself
    "evaluate_run": ("training", "world_size", "wandb", "tracker", "outputs", "lr_search", "rung"),
    # outputs.merge is hashed even at its default: before it existed every merge was saved in
    # float32, so a finished matrix's merges rerun once (no training) to follow the new rule
    "merge_run": EVAL_ONLY + ("training", "world_size", "wandb", "tracker", "outputs.checkpoints", "lr_search", "rung"),
    "lr_select": (),  # its spec is the cell's search alone (peftlab.search.select_spec)
}


# what a stage with nothing in NOT_READ reads: its spec is a part of the run's (docs/config.md's table)
SPEC_OF = {
    "data_generate": "its spec is the task's `data` section alone",
    "lr_select": "its spec is the cell's search alone: rates, seeds, validation share and seed, metric, halving "
    "(a halving search's promotion: and its rung)",
}


def rerun_table() -> str:
    """docs/config.md's "Which keys rerun which stages" table, made from NOT_READ (a test holds the page to it)."""
    rows = ["| rule | reruns when anything changes except |", "|---|---|"]
    for stage, keys in NOT_READ.items():
        rows.append(f"| `{stage}` | " + (", ".join(f"`{k}`" for k in keys) if keys else f"({SPEC_OF[stage]})") + " |")
    return "\n".join(rows) + "\n"


# Keys added to the spec since the last release that moved every fingerprint (the one whose stage rules
# gained their fingerprints as params, so a finished matrix reran every stage once). Each is hashed only
# when it differs from the default it was added with, the value that reproduces what peftlab did before
# the key existed: upgrading reruns no finished run, and setting the key reruns its stages. Add a new
# spec key here when its default keeps the old behaviour; empty it when a release moves every fingerprint.
ADDED_KEYS: tuple[str, ...] = ("lr_search.halving",)


def reads(stage: str, path: str) -> bool:
    """Whether `stage` reads the dotted key `path` (NOT_READ names neither it nor a section above it)."""
    return not any(path == k or path.startswith(k + ".") for k in NOT_READ[stage])


def read_by_only(stage: str, other: str) -> tuple[str, ...]:
    """The keys of NOT_READ[other] that `stage` reads: what `stage` takes from its own spec, not from `other`'s
    output."""
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
    """What every one of `stages` reads of `spec`: the spec less NOT_READ and the ADDED_KEYS at their default."""
    kept = json_copy(spec)
    for path in {p for stage in stages for p in NOT_READ[stage]}:
        _pop(kept, path)
    for path in ADDED_KEYS:
        section, key = path.split(".", 1)
        _pop(kept, path, schema_default("models" if section == "model" else section, key))
    if not (kept.get("training") or {}).get(
        "eval_steps"
    ):  # the validation share is drawn for in-training evaluation only
        for key in ("validation_share", "validation_seed"):
            _pop(kept, f"training.{key}")
    for section in ("holdout", "lr_search", "rung"):  # set on the runs of a learning-rate search only
        if section in kept and kept[section] is None:
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
