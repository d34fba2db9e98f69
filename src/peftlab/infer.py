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

from peftlab import artifacts, cli, dataset, tasks
from peftlab.compute import place
from peftlab.models import NotMerged, load_run, trained_label_names
from peftlab.spec import RunSpec

log = logging.getLogger(__name__)


def read_inputs(path: Path) -> list:
    if path.suffix == ".txt":
        return [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return dataset.load_file(path, "--inputs").to_list()
    except ValueError as e:
        raise SystemExit(f"{e}, .txt") from None


def as_row(task, item) -> dict:
    """An input as a row of the task's columns: a string fills the task type's input column."""
    if isinstance(item, dict):
        return item
    return {tasks.of(task).input_column(task): item}


@torch.no_grad()
def answer(spec: RunSpec, model, tokenizer, items: list, max_new_tokens: int | None = None) -> list[dict]:
    """One answer per input: the input and what the task type answers (a label, or generated text)."""
    task = spec.task
    rows = [as_row(task, item) for item in items]
    missing = sorted(
        {c for r in rows for c in dataset.required_columns(task) if c not in r}
        - {task.label_field, task.response_field}
    )
    if missing:
        raise SystemExit(
            f"an input lacks the column(s) {missing} that task {task.name!r} reads; give a JSON object with them"
        )
    model = place(model)
    answers = tasks.of(task).answer(
        task, model, tokenizer, rows, trained_label_names(spec), max_new_tokens or task.max_new_tokens
    )
    return [{"input": item, **a} for item, a in zip(items, answers)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="a finished run folder: results/default/runs/<run_id>")
    p.add_argument("--merged", action="store_true", help="use the merged model (merged/) instead of base + adapter")
    src = p.add_mutually_exclusive_group(required=True)
    # lora-ns' inference.py spells them --input_text, --input_file and --output_file: both spellings work
    src.add_argument(
        "--input", "--input-text", "--input_text", help="one input: text, or a JSON object of the task's columns"
    )
    src.add_argument(
        "--inputs",
        "--input-file",
        "--input_file",
        type=Path,
        help="a file of inputs: .txt (one per line), .jsonl, .json, .csv, .tsv, .parquet",
    )
    p.add_argument(
        "--out", "--output-file", "--output_file", type=Path, help="JSON file for the answers (default: stdout)"
    )
    p.add_argument("--max-new-tokens", type=int, help="generation budget (default: the task's max_new_tokens)")
    args = p.parse_args(argv)
    cli.one_line_errors()
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
    try:
        spec, model, tokenizer = load_run(args.run, args.merged)
    except NotMerged as e:
        raise SystemExit(str(e)) from None
    answers = answer(spec, model, tokenizer, items, args.max_new_tokens)
    if args.out:
        artifacts.write_json(args.out, answers)
        log.info("%d answer(s) -> %s", len(answers), args.out)
    else:
        json.dump(answers, sys.stdout, indent=2, default=str)
        print()


if __name__ == "__main__":
    main()
