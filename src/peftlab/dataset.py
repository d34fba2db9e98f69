"""Task data: generated datasets written to disk, loading from files or the hub, checks, tokenisation, splits.

What a task reads and how it tokenises is its task type's (peftlab.tasks); this module
loads the splits, checks them (columns, empty texts, labels) and maps the type's encoder.
`python -m peftlab.data` writes generated and tokenised data with it; training, evaluation,
inference and the tiny model's build read it.

Tokenised data is a DatasetDict on disk with splits `train` and `eval` plus
`meta.json`; it is shared by every run on that task and model.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from pathlib import Path

import datasets

from peftlab import tasks
from peftlab.generators import GENERATORS
from peftlab.spec import HoldoutSpec, TaskSpec

log = logging.getLogger(__name__)


def generate(d: dict, out: Path) -> dict[str, int]:
    """Write train.jsonl and eval.jsonl from a task's `data` section; the eval split has its own seed stream."""
    gen = GENERATORS[d["generator"]]
    counts = {}
    for split, n, salt in (("train", d["num_train"], 0), ("eval", d["num_eval"], 1)):
        rows = gen(n, random.Random(f"{d['seed']}-{salt}"))
        with open(out / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        counts[split] = len(rows)
    return counts


# --- loading --------------------------------------------------------------------------

_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_raw(task: TaskSpec) -> datasets.DatasetDict:
    """The task's train and eval splits, from local files or the hub, with `columns` renamed in each split that has
    them (the held-out split may come from another dataset with its own names: MetaMathQA's query, GSM8K's question)."""
    splits = _load_splits(task)
    unused = [c for c in task.columns if not any(c in part.column_names for part in splits.values())]
    if unused:
        raise DataError(
            f"tasks.{task.name}.columns: no split has column(s) {unused}; the data has {splits.column_names}"
        )
    return datasets.DatasetDict(
        {
            split: part.rename_columns({a: b for a, b in task.columns.items() if a in part.column_names})
            for split, part in splits.items()
        }
    )


def eval_names(task: TaskSpec) -> dict[str, str | None]:
    """{split of the tokenised data: its name in eval.json}: one held-out split is `eval` (no name);
    named ones ({matched: …, mismatched: …}) are `eval` for the first and `eval_<name>` for the rest."""
    source = task.data["files"]["eval"] if "files" in task.data else task.data.get("hub", {}).get("eval_split", "eval")
    if not isinstance(source, dict):
        return {"eval": None}
    return {("eval" if i == 0 else f"eval_{name}"): name for i, name in enumerate(source)}


def _sources(task: TaskSpec, key: str) -> dict[str, str]:
    """{split of the loaded data: file or hub split} for `key` (train or eval)."""
    d = task.data
    value = d["files"][key] if "files" in d else d["hub"][f"{key}_split"]
    if key == "train":
        return {"train": value}
    return {split: value if name is None else value[name] for split, name in eval_names(task).items()}


def _load_splits(task: TaskSpec) -> datasets.DatasetDict:
    d = task.data
    if "files" not in d and "hub" not in d:
        raise ValueError(f"tasks.{task.name}.data: generated data must be written by `generate` first")
    sources = {**_sources(task, "train"), **_sources(task, "eval")}
    if "hub" in d:
        h = d["hub"]
        eval_from = (h["eval_id"], h["eval_subset"]) if h.get("eval_id") else (h["id"], h["subset"])
        return datasets.DatasetDict(
            {
                split: datasets.load_dataset(*((h["id"], h["subset"]) if split == "train" else eval_from), split=source)
                for split, source in sources.items()
            }
        )
    fmt = d.get("format")
    return datasets.DatasetDict(
        {split: load_file(file, f"tasks.{task.name}.data.files", fmt) for split, file in sources.items()}
    )


class DataError(ValueError):
    """A data file or its rows cannot be used; the message names the file, the column and the rows."""


def load_file(file: str | Path, where: str, fmt: str | None = None) -> datasets.Dataset:
    """The rows of one local csv, tsv, json, jsonl or parquet file; `where` names it in errors.

    `fmt` (a task's `data.format`) reads a file whose extension says otherwise, such as
    GLUE's msr_paraphrase_train.txt as tsv.
    """
    path = Path(file)
    kind = fmt or path.suffix.lstrip(".")
    if path.is_dir():
        raise DataError(f"{where}: {file} is a folder; give a data file")
    if not path.exists():
        raise DataError(f"{where}: {file} does not exist")
    if "." + kind not in _FORMATS:
        raise DataError(
            f"{where}: {file}: unsupported file type {path.suffix!r}; allowed: {', '.join(_FORMATS)}, or set "
            "the task's data.format"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{where}: {file} is empty")
    if kind in ("json", "jsonl") and path.read_bytes().lstrip()[:1] != b"[":  # JSON lines: name the first broken one
        with open(path) as f:
            for n, line in enumerate(f, 1):
                try:
                    line.strip() and json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{where}: {file} line {n}: not valid JSON ({e.msg}): {line.strip()[:80]!r}"
                    ) from None
    kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if kind == "tsv" else {}  # GLUE TSVs hold bare quotes
    try:
        ds = datasets.load_dataset(_FORMATS["." + kind], data_files=str(path), split="train", **kwargs)
    except Exception as e:  # the loaders' own errors bury the file in a traceback
        raise DataError(
            f"{where}: {file} cannot be read as {kind}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if len(ds) == 0:
        raise DataError(f"{where}: {file} has no rows")
    return ds


def required_columns(task: TaskSpec) -> list[str]:
    return tasks.of(task).columns(task)


def check_columns(task: TaskSpec, ds: datasets.DatasetDict) -> None:
    for split, part in ds.items():
        missing = [c for c in required_columns(task) if c not in part.column_names]
        if missing:
            renamed = f" (after renaming {task.columns})" if task.columns else ""
            raise DataError(
                f"task {task.name!r}, split {split}: missing column(s) {missing}; the data has "
                f"{part.column_names}{renamed}; "
                "set the task's text_fields / label_field / prompt_field / response_field, or rename with `columns:`"
            )


def _source(task: TaskSpec, split: str) -> str | None:
    """The file (or hub split) a split of the loaded data came from."""
    if not (task.data.get("files") or task.data.get("hub")):
        return None
    return _sources(task, "train" if split == "train" else "eval").get(split)


def _lines(task: TaskSpec, source: str | None, rows: list[int]) -> str:
    """Rows (0-based) as the file's line numbers: a csv or tsv file has a header line first."""
    kind = task.data.get("format") or Path(str(source)).suffix.lstrip(".")
    header = 1 if kind in ("csv", "tsv") else 0
    shown = ", ".join(str(r + 1 + header) for r in rows[:5])
    return f"line{'s' if len(rows) > 1 else ''} {shown}{f' and {len(rows) - 5} more' if len(rows) > 5 else ''}"


def label_names(task: TaskSpec, ds: datasets.DatasetDict) -> list[str] | None:
    """The class names string labels map to, in id order (None: the labels are numbers, or the type has no classes)."""
    return tasks.of(task).class_names(task, ds)


def check_rows(task: TaskSpec, ds: datasets.DatasetDict, names: list[str] | None) -> None:
    """Refuse data that would train on something else than it says: null or empty texts, and labels
    that are null, out of range, fractional, or names not in `names`. Errors name the file, the
    column and the first offending lines."""
    ttype = tasks.of(task)
    label = ttype.label_column(task)
    texts = [c for c in required_columns(task) if c != label]
    if names is not None and len(names) != task.num_labels:
        raise DataError(
            f"task {task.name!r}: the labels name {len(names)} classes {names}, but num_labels is "
            f"{task.num_labels}; set num_labels or label_names"
        )
    for split, part in ds.items():
        source = _source(task, split)
        where = f"task {task.name!r}, {source or split}"
        for column in texts:
            bad = [i for i, v in enumerate(part[column]) if v is None or (isinstance(v, str) and not v.strip())]
            if bad:
                raise DataError(f"{where}: column {column!r} is null or empty on {_lines(task, source, bad)}")
        if label is None:
            continue
        values = part[label]
        bad, allowed = ttype.label_problems(task, values, names)
        if bad:
            shown = ", ".join(repr(values[i]) for i in bad[:5])
            raise DataError(
                f"{where}: column {label!r} holds {shown} on {_lines(task, source, bad)}; a label is {allowed}"
            )


def check_lengths(task: TaskSpec, limit: int | None) -> None:
    """A task's max_length must fit the model's position embeddings (longer inputs would index past them)."""
    if limit is not None and task.max_length > limit:
        raise DataError(f"tasks.{task.name}.max_length: {task.max_length} is more than the model's {limit} positions")


# --- tokenisation ---------------------------------------------------------------------


def tokenize(task: TaskSpec, tokenizer, raw: datasets.DatasetDict) -> datasets.DatasetDict:
    """The task type's token ids and labels (peftlab.tasks), plus `length`, after checking columns and rows."""
    check_columns(task, raw)
    names = label_names(task, raw)
    check_rows(task, raw, names)
    ttype = tasks.of(task)
    encode = ttype.encoder(task, tokenizer, {n: i for i, n in enumerate(names or [])})
    keep = ttype.kept_columns(task)  # raw columns that stay beside the tokens (rlvr: what the rewards read)

    def with_length(batch):
        out = encode(batch)
        out["length"] = [len(x) for x in out["input_ids"]]
        return out

    return datasets.DatasetDict(
        {
            split: part.map(
                with_length,
                batched=True,
                remove_columns=[c for c in part.column_names if c not in keep],
                desc=f"tokenize {split}",
            )
            for split, part in raw.items()
        }
    )


def split(data_dir: str | Path, name: str = "train") -> datasets.Dataset:
    """One split of a run's tokenised data, opening that split's files only (a search run never opens the evaluation
    split's)."""
    return datasets.load_from_disk(str(Path(data_dir) / name))


def holdout(ds: datasets.Dataset, share: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(the rest, the held-out validation rows): `share` of `ds` (a number of examples when it is 1 or
    more) drawn with `seed`, both in file order.

    The draw depends on the split's size, the share and the seed only, so every search run of
    a task and model is scored on the same rows, whatever its method, rate or training seed.
    """
    n = len(ds)
    k = HoldoutSpec(share, seed).size(n)
    if not 0 < k < n:
        raise ValueError(
            f"lr_search.validation_share={share} of {n} training examples holds out {k}; it must leave both "
            "parts non-empty"
        )
    order = random.Random(seed).sample(range(n), n)
    return ds.select(sorted(order[k:])), ds.select(sorted(order[:k]))
