"""Task data: generated datasets written to disk, loading from files or the hub, tokenisation.

    python -m peftlab.data generate --spec results/specs/raw/sentiment.json --out results/raw/sentiment
    python -m peftlab.data tokenize --spec results/specs/data/sentiment/minilm.json --out results/data/sentiment/minilm

Tokenised data is a DatasetDict on disk with splits `train` and `eval` plus
`meta.json`; it is shared by every run on that task and model.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import datasets

from peftlab import artifacts, cli
from peftlab.generators import GENERATORS
from peftlab.spec import ModelSpec, TaskSpec

log = logging.getLogger(__name__)


def generate(task: TaskSpec, out: Path) -> dict[str, int]:
    """Write train.jsonl and eval.jsonl; the eval split has its own seed stream."""
    d = task.data
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
    """The task's train and eval splits, from local files or the hub."""
    d = task.data
    if "files" in d:
        splits = {}
        for split in ("train", "eval"):
            path = Path(d["files"][split])
            fmt = _FORMATS.get(path.suffix)
            if fmt is None:
                raise ValueError(
                    f"tasks.{task.name}.data.files.{split}: unsupported file type {path.suffix!r}; allowed: {', '.join(_FORMATS)}"
                )
            kwargs = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
            splits[split] = datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
        return datasets.DatasetDict(splits)
    if "hub" in d:
        h = d["hub"]
        return datasets.DatasetDict(
            {
                "train": datasets.load_dataset(h["id"], h["subset"], split=h["train_split"]),
                "eval": datasets.load_dataset(h["id"], h["subset"], split=h["eval_split"]),
            }
        )
    raise ValueError(f"tasks.{task.name}.data: generated data must be written by `generate` first")


def required_columns(task: TaskSpec) -> list[str]:
    if task.type == "classification":
        return [*task.text_fields, task.label_field]
    return [task.prompt_field, task.response_field]


def check_columns(task: TaskSpec, ds: datasets.DatasetDict) -> None:
    for split, part in ds.items():
        missing = [c for c in required_columns(task) if c not in part.column_names]
        if missing:
            raise ValueError(f"task {task.name!r}, split {split}: missing column(s) {missing}; the data has {part.column_names}")


# --- tokenisation ---------------------------------------------------------------------


def sft_prompt(task: TaskSpec, prompt: str) -> str:
    return task.prompt_template.format(prompt=prompt)


def tokenize(task: TaskSpec, tokenizer, raw: datasets.DatasetDict) -> datasets.DatasetDict:
    """Token ids plus `length`; SFT labels are -100 on the prompt so loss is on the response only.

    SFT eval rows keep `prompt_ids` and the reference `response` for generation.
    """
    check_columns(task, raw)
    max_len = task.max_length

    if task.type == "classification":
        fields, label = task.text_fields, task.label_field

        def encode(batch):
            enc = tokenizer(*[batch[f] for f in fields], truncation=True, max_length=max_len)
            return {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": batch[label],
                "length": [len(x) for x in enc["input_ids"]],
            }

    else:
        prompts, responses = task.prompt_field, task.response_field

        def encode(batch):
            out = {"input_ids": [], "attention_mask": [], "labels": [], "length": [], "prompt_ids": [], "response": []}
            for q, a in zip(batch[prompts], batch[responses]):
                p_ids = tokenizer(sft_prompt(task, str(q)))["input_ids"]
                r_ids = tokenizer(str(a), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                ids = (p_ids + r_ids)[:max_len]
                labels = ([-100] * len(p_ids) + r_ids)[:max_len]
                out["input_ids"].append(ids)
                out["attention_mask"].append([1] * len(ids))
                out["labels"].append(labels)
                out["length"].append(len(ids))
                out["prompt_ids"].append(p_ids[:max_len])
                out["response"].append(str(a))
            return out

    return datasets.DatasetDict(
        {split: part.map(encode, batched=True, remove_columns=part.column_names, desc=f"tokenize {split}") for split, part in raw.items()}
    )


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("command", choices=["generate", "tokenize"])
    p.add_argument("--out", required=True, help="folder to write")
    args = p.parse_args(argv)
    spec = cli.start(args)
    prov = artifacts.Provenance(spec)
    with artifacts.atomic_dir(args.out) as tmp:
        if args.command == "generate":
            meta = {"counts": generate(TaskSpec.from_dict(spec), tmp)}
        else:
            from peftlab.models import load_tokenizer

            task = TaskSpec.from_dict(spec["task"])
            ds = tokenize(task, load_tokenizer(ModelSpec.from_dict(spec["model"])), load_raw(task))
            ds.save_to_disk(str(tmp))
            lengths = ds["train"]["length"]
            meta = {
                "counts": {k: len(v) for k, v in ds.items()},
                "mean_train_length": sum(lengths) / len(lengths),
                "max_train_length": max(lengths),
            }
        artifacts.write_json(tmp / "meta.json", {**meta, **prov.record()})
    log.info("%s -> %s: %s", args.command, args.out, meta)


if __name__ == "__main__":
    main()
