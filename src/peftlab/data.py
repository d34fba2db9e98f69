"""Task data: generated datasets written to disk, loading from files or the hub, tokenisation.

Per task type, tokenisation gives:
- classification: input_ids of one or two text fields, integer labels (float for regression);
- sft: prompt + response, labels -100 on the prompt (loss on the response only);
- lm: the text, labels = input_ids;
- seq2seq: the source as input_ids, the target as labels (encoder-decoder);
- rlvr: the formatted `prompt` text (GRPOTrainer tokenises it) and its ids, plus
  the columns the rewards read.

    python -m peftlab.data generate --spec results/default/specs/data_generate/sentiment.json --out results/default/raw/sentiment
    python -m peftlab.data tokenize --spec results/default/specs/data_tokenize/sentiment/minilm.json --out results/default/data/sentiment/minilm

Tokenised data is a DatasetDict on disk with splits `train` and `eval` plus
`meta.json`; it is shared by every run on that task and model.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import string
from pathlib import Path

import datasets

from peftlab import artifacts, cli, rewards
from peftlab.generators import GENERATORS
from peftlab.spec import ModelSpec, TaskSpec

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
    """The task's train and eval splits, from local files or the hub, with `columns` renamed."""
    return _load_splits(task).rename_columns(task.columns) if task.columns else _load_splits(task)


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
        return datasets.DatasetDict({split: datasets.load_dataset(h["id"], h["subset"], split=source) for split, source in sources.items()})
    fmt = d.get("format")
    return datasets.DatasetDict({split: load_file(file, f"tasks.{task.name}.data.files", fmt) for split, file in sources.items()})


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
            f"{where}: {file}: unsupported file type {path.suffix!r}; allowed: {', '.join(_FORMATS)}, or set the task's data.format"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{where}: {file} is empty")
    if kind in ("json", "jsonl") and path.read_bytes().lstrip()[:1] != b"[":  # JSON lines: name the first broken one
        with open(path) as f:
            for n, line in enumerate(f, 1):
                try:
                    line.strip() and json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: {file} line {n}: not valid JSON ({e.msg}): {line.strip()[:80]!r}") from None
    kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if kind == "tsv" else {}  # GLUE TSVs hold bare quotes
    try:
        ds = datasets.load_dataset(_FORMATS["." + kind], data_files=str(path), split="train", **kwargs)
    except Exception as e:  # the loaders' own errors bury the file in a traceback
        raise DataError(f"{where}: {file} cannot be read as {kind}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if len(ds) == 0:
        raise DataError(f"{where}: {file} has no rows")
    return ds


def template_fields(template: str) -> list[str]:
    """The {names} a prompt template uses, besides {prompt}."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f and f != "prompt"]


def required_columns(task: TaskSpec) -> list[str]:
    if task.type == "classification":
        return [*task.text_fields, task.label_field]
    if task.type == "lm":
        return task.text_fields[:1]
    if task.type == "rlvr":
        reward_columns = [c for c in rewards.columns(task.rewards) if c != "answer"]
        answer = [task.response_field] if "math" in task.rewards else []
        return list(dict.fromkeys([task.prompt_field, *template_fields(task.prompt_template), *reward_columns, *answer]))
    return list(dict.fromkeys([task.prompt_field, task.response_field, *template_fields(task.prompt_template)]))


def check_columns(task: TaskSpec, ds: datasets.DatasetDict) -> None:
    for split, part in ds.items():
        missing = [c for c in required_columns(task) if c not in part.column_names]
        if missing:
            renamed = f" (after renaming {task.columns})" if task.columns else ""
            raise DataError(
                f"task {task.name!r}, split {split}: missing column(s) {missing}; the data has {part.column_names}{renamed}; "
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
    """The class names string labels map to, in id order: the task's label_names, else the sorted names
    of the training split; None when the labels are numbers already."""
    if task.type != "classification" or task.num_labels == 1:
        return None
    if task.label_names is not None:
        return list(task.label_names)
    values = [v for v in ds["train"][task.label_field] if v is not None]
    if not any(isinstance(v, str) for v in values):
        return None
    return sorted({str(v) for v in values})


def trained_label_names(spec) -> list[str] | None:
    """A run's class names: its task's label_names, or those tokenising found (meta.json of its data)."""
    if spec.task.label_names is not None:
        return list(spec.task.label_names)
    meta = Path(spec.data_dir) / "meta.json"
    return artifacts.read_json(meta).get("label_names") if meta.exists() else None


def check_rows(task: TaskSpec, ds: datasets.DatasetDict, names: list[str] | None) -> None:
    """Refuse data that would train on something else than it says: null or empty texts, and labels
    that are null, out of range, fractional, or names not in `names`. Errors name the file, the
    column and the first offending lines."""
    label = task.label_field if task.type == "classification" else None
    texts = [c for c in required_columns(task) if c != label]
    if names is not None and len(names) != task.num_labels:
        raise DataError(
            f"task {task.name!r}: the labels name {len(names)} classes {names}, but num_labels is {task.num_labels}; set num_labels or label_names"
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
        if task.num_labels == 1:
            bad = [i for i, v in enumerate(values) if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v]
            if bad:
                raise DataError(f"{where}: column {label!r} needs a number for regression (num_labels 1) on {_lines(task, source, bad)}")
            continue
        if names is not None:
            bad = [i for i, v in enumerate(values) if str(v) not in names and not (isinstance(v, int) and 0 <= v < len(names))]
            allowed = f"one of {names}"
        else:
            bad = [
                i
                for i, v in enumerate(values)
                if not isinstance(v, (int, float))
                or isinstance(v, bool)
                or not math.isfinite(v)
                or v != int(v)
                or not 0 <= v < task.num_labels
            ]
            allowed = (
                f"an integer from 0 to {task.num_labels - 1} (num_labels {task.num_labels}); class names need label_names or string labels"
            )
        if bad:
            shown = ", ".join(repr(values[i]) for i in bad[:5])
            raise DataError(f"{where}: column {label!r} holds {shown} on {_lines(task, source, bad)}; a label is {allowed}")


def check_lengths(task: TaskSpec, limit: int | None) -> None:
    """A task's max_length must fit the model's position embeddings (longer inputs would index past them)."""
    if limit is not None and task.max_length > limit:
        raise DataError(f"tasks.{task.name}.max_length: {task.max_length} is more than the model's {limit} positions")


def format_prompt(task: TaskSpec, row: dict, tokenizer=None) -> str:
    """The prompt text of one example: the template over its columns, in the chat template if asked."""
    text = task.prompt_template.format(**{**row, "prompt": row[task.prompt_field]})
    if task.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return text


def corpus_texts(task: TaskSpec, rows: datasets.Dataset) -> tuple[list[str], list[str]]:
    """(texts a built model's tokenizer learns from, texts its base is pretrained on).

    For prompt -> response tasks the base sees only the responses, so it knows the
    vocabulary and the answer format while the mapping is left for fine-tuning.
    """
    if task.type in ("classification", "lm"):
        fields = task.text_fields if task.type == "classification" else task.text_fields[:1]
        texts = [" ".join(str(r[f]) for f in fields) for r in rows]
        return texts, texts
    if task.type == "rlvr":  # prompts, followed by their reference solutions where the data has them
        solutions = rows[task.response_field] if task.response_field in rows.column_names else [""] * len(rows)
        texts = [format_prompt(task, r) + str(s) for r, s in zip(rows, solutions)]
        return texts, texts
    return [f"{r[task.prompt_field]} {r[task.response_field]}" for r in rows], [str(r[task.response_field]) for r in rows]


# --- tokenisation ---------------------------------------------------------------------


def tokenize(task: TaskSpec, tokenizer, raw: datasets.DatasetDict) -> datasets.DatasetDict:
    """Token ids plus `length`; SFT labels are -100 on the prompt so loss is on the response only.

    SFT eval rows keep `prompt_ids` and the reference `response` for generation.
    """
    check_columns(task, raw)
    names = label_names(task, raw)
    check_rows(task, raw, names)
    max_len = task.max_length
    keep: list[str] = []  # raw columns that stay beside the tokens (rlvr: what the rewards read)

    def rows(batch):
        return [dict(zip(batch, values)) for values in zip(*batch.values())]

    if task.type == "classification":
        fields, label = task.text_fields, task.label_field
        ids = {n: i for i, n in enumerate(names or [])}

        def as_label(x):  # regression: MSE on float labels; classes: an id, or a name's position in `names`
            return float(x) if task.num_labels == 1 else ids[x] if isinstance(x, str) else int(x)

        def encode(batch):
            enc = tokenizer(*[batch[f] for f in fields], truncation=True, max_length=max_len)
            return {**enc, "labels": [as_label(x) for x in batch[label]]}

    elif task.type == "lm":

        def encode(batch):
            enc = tokenizer([str(t) for t in batch[task.text_fields[0]]], truncation=True, max_length=max_len)
            return {**enc, "labels": enc["input_ids"]}

    elif task.type == "seq2seq":

        def encode(batch):
            enc = tokenizer([format_prompt(task, r) for r in rows(batch)], truncation=True, max_length=max_len)
            targets = [str(a) for a in batch[task.response_field]]
            labels = tokenizer(text_target=targets, truncation=True, max_length=max_len)["input_ids"]
            return {**enc, "labels": labels, "response": targets}

    elif task.type == "rlvr":
        keep = [c for c in required_columns(task) if c != task.response_field]

        def encode(batch):
            prompts = [format_prompt(task, r, tokenizer) for r in rows(batch)]
            enc = tokenizer(prompts, truncation=True, max_length=max_len)
            out = {**enc, "prompt": prompts}
            if "math" in task.rewards:
                out["answer"] = [str(a) for a in batch[task.response_field]]
            return out

    else:  # sft

        def encode(batch):
            out = {"input_ids": [], "attention_mask": [], "labels": [], "prompt_ids": [], "response": []}
            for row in rows(batch):
                a = str(row[task.response_field])
                prompt = format_prompt(task, row, tokenizer)
                p_ids = tokenizer(prompt, add_special_tokens=not task.chat_template)["input_ids"]  # a chat template has its own
                r_ids = tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                ids = (p_ids + r_ids)[:max_len]
                out["input_ids"].append(ids)
                out["attention_mask"].append([1] * len(ids))
                out["labels"].append(([-100] * len(p_ids) + r_ids)[:max_len])
                out["prompt_ids"].append(p_ids[:max_len])
                out["response"].append(a)
            return out

    def with_length(batch):
        out = encode(batch)
        out["length"] = [len(x) for x in out["input_ids"]]
        return out

    return datasets.DatasetDict(
        {
            split: part.map(
                with_length, batched=True, remove_columns=[c for c in part.column_names if c not in keep], desc=f"tokenize {split}"
            )
            for split, part in raw.items()
        }
    )


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("command", choices=["generate", "tokenize"])
    p.add_argument("--out", required=True, help="folder to write")
    args = p.parse_args(argv)
    spec = cli.start(args)
    prov = artifacts.Provenance(spec)
    try:
        run(args.command, spec, args.out, prov)
    except DataError as e:  # one line that names the file, the column and the rows; no traceback to dig through
        raise SystemExit(f"data error: {e}") from None


def run(command: str, spec: dict, out: str, prov: artifacts.Provenance) -> None:
    """Generate raw data, or tokenise a task for a model, into `out` (written whole or not at all)."""
    with artifacts.atomic_dir(out) as tmp:
        if command == "generate":
            meta = {"counts": generate(spec["data"], tmp)}
        else:
            from transformers import AutoConfig

            from peftlab.methods.targets import max_positions
            from peftlab.models import load_tokenizer, resolve_path

            task, model = TaskSpec.from_dict(spec["task"]), ModelSpec.from_dict(spec["model"])
            check_lengths(task, max_positions(AutoConfig.from_pretrained(resolve_path(model.path)).to_dict()))
            raw = load_raw(task)
            ds = tokenize(task, load_tokenizer(model), raw)
            ds.save_to_disk(str(tmp))
            lengths = ds["train"]["length"]
            meta = {
                "label_names": label_names(task, raw),
                "counts": {k: len(v) for k, v in ds.items()},
                "mean_train_length": sum(lengths) / len(lengths),
                "max_train_length": max(lengths),
            }
        artifacts.write_json(tmp / "meta.json", {**meta, **prov.record()})
    log.info("%s -> %s: %s", command, out, meta)


if __name__ == "__main__":
    main()
