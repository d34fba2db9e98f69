"""Answer new inputs with a trained run: its adapter on the untouched base, or its merged model.

    python -m peftlab.infer --run results/default/runs/<run_id> --input "Tom has 3 pens ..."
    python -m peftlab.infer --run results/default/runs/<run_id> --merged --inputs questions.jsonl --out answers.json

An input is the task's prompt text (sft, seq2seq, rlvr; the run's prompt template
and chat template are applied), the text (classification with one field, lm), or
a JSON object with the task's columns (sentence pairs; Countdown's nums and target).
`--inputs` reads one input per line of a .txt file, or the rows of a .jsonl/.json/.csv/.tsv/.parquet
file. Generation is greedy and batched. The answers go to `--out` as JSON, or to stdout.

Output per input: classification: the label and the class probabilities (regression:
the score); generative tasks: the generated text and, where the task defines one,
the extracted final answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from peftlab import artifacts, data, metrics, rewards
from peftlab.evaluate import generate, load_trained
from peftlab.models import device_of, load_model
from peftlab.spec import RunSpec

log = logging.getLogger(__name__)


def read_inputs(path: Path) -> list:
    if path.suffix == ".txt":
        return [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return data.load_file(path, "--inputs").to_list()
    except ValueError as e:
        raise SystemExit(f"{e}, .txt") from None


def as_row(task, item) -> dict:
    """An input as a row of the task's columns: a string fills the prompt (or the one text) column."""
    if isinstance(item, dict):
        return item
    column = task.text_fields[0] if task.type in ("classification", "lm") else task.prompt_field
    return {column: item}


def load(run: Path, merged: bool):
    """(spec, model, tokenizer) of a finished run folder."""
    spec = RunSpec.from_dict(artifacts.read_json(run / "train.json")["spec"])
    if not merged:
        model, tokenizer = load_trained(spec, str(run / "adapter"))
        return spec, model, tokenizer
    if (run / "merged" / "NOT_MERGED.txt").exists():
        raise SystemExit(f"{run}/merged: {(run / 'merged' / 'NOT_MERGED.txt').read_text().strip()}; use the adapter (drop --merged)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "merged")
    return spec, load_model(spec.model, spec.task, tokenizer, path=str(run / "merged")).eval(), tokenizer


@torch.no_grad()
def answer(spec: RunSpec, model, tokenizer, items: list, max_new_tokens: int | None = None) -> list[dict]:
    task = spec.task
    rows = [as_row(task, item) for item in items]
    missing = sorted({c for r in rows for c in data.required_columns(task) if c not in r} - {task.label_field, task.response_field})
    if missing:
        raise SystemExit(f"an input lacks the column(s) {missing} that task {task.name!r} reads; give a JSON object with them")
    if torch.cuda.is_available():
        model.to("cuda")
    if task.type == "classification":
        enc = tokenizer(
            *[[str(r[f]) for r in rows] for f in task.text_fields],
            truncation=True,
            max_length=task.max_length,
            padding=True,
            return_tensors="pt",
        )
        logits = model(**enc.to(device_of(model))).logits.float().cpu()
        if task.num_labels == 1:
            return [{"input": item, "score": float(s)} for item, s in zip(items, logits[:, 0])]
        probs = logits.softmax(-1)
        names = data.trained_label_names(spec)  # string labels: answer with the class names
        return [
            {
                "input": item,
                "label": names[int(p.argmax())] if names else int(p.argmax()),
                "probabilities": [round(float(x), 6) for x in p],
                **({"label_names": names} if names else {}),
            }
            for item, p in zip(items, probs)
        ]
    if task.type == "lm":
        prompts = [str(r[task.text_fields[0]]) for r in rows]
    else:
        prompts = [data.format_prompt(task, r, tokenizer) for r in rows]
    ids = [tokenizer(p, add_special_tokens=not task.chat_template)["input_ids"][-task.max_length :] for p in prompts]
    texts = generate(model, tokenizer, ids, max_new_tokens or task.max_new_tokens, task.eval_batch_size)
    out = []
    for item, text in zip(items, texts):
        record = {"input": item, "output": text}
        if task.type == "sft" and task.answer_format not in ("none", "text"):
            record["answer"] = metrics.extract_answer(text, task.answer_format)
        if task.type == "rlvr":
            record["answer"] = rewards.last_answer_tag(text)
        out.append(record)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="a finished run folder: results/default/runs/<run_id>")
    p.add_argument("--merged", action="store_true", help="use the merged model (merged/) instead of base + adapter")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="one input: text, or a JSON object of the task's columns")
    src.add_argument("--inputs", type=Path, help="a file of inputs: .txt (one per line), .jsonl, .json, .csv, .tsv, .parquet")
    p.add_argument("--out", type=Path, help="JSON file for the answers (default: stdout)")
    p.add_argument("--max-new-tokens", type=int, help="generation budget (default: the task's max_new_tokens)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not (args.run / "train.json").exists():
        raise SystemExit(f"--run {args.run}: no train.json; give a finished run folder (results/default/runs/<run_id>)")
    if args.input is not None:
        try:
            item = json.loads(args.input)
        except json.JSONDecodeError:
            item = args.input
        items = [item if isinstance(item, dict) else args.input]
    else:
        items = read_inputs(args.inputs)
    spec, model, tokenizer = load(args.run, args.merged)
    answers = answer(spec, model, tokenizer, items, args.max_new_tokens)
    if args.out:
        artifacts.write_json(args.out, answers)
        log.info("%d answer(s) -> %s", len(answers), args.out)
    else:
        json.dump(answers, sys.stdout, indent=2, default=str)
        print()


if __name__ == "__main__":
    main()
