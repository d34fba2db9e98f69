"""Evaluate a trained run with its task's metric, on the held-out split.

    python -m peftlab.evaluate --spec results/default/specs/evaluate_run/<run_id>.json \
        --adapter results/default/runs/<run_id>/adapter --out results/default/runs/<run_id>/eval.json

The adapter is loaded onto an untouched base model, as a user would load it. The
metrics are the task type's (peftlab.tasks; generation is greedy and batched):
- classification: accuracy, macro-F1, F1, precision, recall, Matthews correlation;
  regression (num_labels 1): Pearson, Spearman, MSE;
- sft: eval loss and perplexity on the response tokens; exact match of the
  extracted final answer (answer_format); ROUGE when `rouge: true`;
- lm: eval loss and perplexity;
- seq2seq: ROUGE-1/2/L of the generations, eval loss and perplexity;
- rlvr: accuracy (the first reward scores 1 on the greedy answer), the share in
  the answer format, and the mean of every reward.

A task with a `reference:` also records `forgetting` (peftlab.forgetting): the rise in
cross-entropy on the reference texts from the base to the tuned model, or for a classifier
1 − linear CKA of the two models' final hidden states.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import datasets

from peftlab import artifacts, cli, forgetting, methods, observe, tasks
from peftlab.compute import place
from peftlab.dataset import eval_names, holdout, split
from peftlab.models import RUN_FILE, load_model, load_tokenizer, load_trained, trained_label_names, trained_spec
from peftlab.spec import RunSpec

log = logging.getLogger(__name__)
PREDICTIONS = "predictions.jsonl"  # id, split, prediction, reference, and per-example correct or scores


def evaluate(spec: RunSpec, adapter: str) -> tuple[dict, list[dict]]:
    """(the record: the task's metrics on its held-out split, with named splits (MNLI's matched and
    mismatched) the first one's at the top and every one's under `splits`; the per-example
    predictions, each row naming its split).

    A search run of a learning-rate search (`spec.holdout`) is evaluated on its validation
    share of the training split instead, and never opens the evaluation split; one whose
    training diverged, or that a halving search pruned, is recorded as such, unevaluated.

    The training settings are the adapter's own (models.trained_spec): the record's spec is
    the one the adapter was trained from, with this stage's evaluation keys.
    """
    spec = trained_spec(spec, adapter, "evaluate_run")
    prov = artifacts.Provenance(spec.to_dict())
    run = artifacts.read_json(Path(adapter) / RUN_FILE)
    for why in ("diverged", "pruned"):
        if run.get(why):
            return {
                "run_id": spec.run_id,
                "trained_fingerprint": run["fingerprint"],
                "task_type": spec.task.type,
                "examples": 0,
                "metrics": {},
                why: run[why],
                **prov.record(),
            }, []
    if spec.holdout is not None:
        data = {"eval": holdout(split(spec.data_dir, "train"), spec.holdout.share, spec.holdout.seed)[1]}
        names = {"eval": None}
    else:
        data = datasets.load_from_disk(spec.data_dir)
        names = eval_names(spec.task)
    tokenizer = load_tokenizer(spec.model)
    model = place(load_trained(spec, adapter, tokenizer))
    ttype = tasks.of(spec.task)
    by_split = {split_: ttype.evaluate(spec.task, model, tokenizer, data[split_]) for split_ in names}
    predictions = [{"split": names[s] or s, **row} for s, m in by_split.items() for row in m.pop("predictions", [])]
    result = by_split["eval"]
    if names["eval"] is not None:
        result = {**result, "splits": {names[s]: m for s, m in by_split.items()}}
    examples = sum(len(data[s]) for s in names)
    record = {
        "run_id": spec.run_id,
        "trained_fingerprint": run["fingerprint"],  # the adapter evaluated: train.json's fingerprint
        "task_type": spec.task.type,
        "examples": examples,
        "metrics": result,
    }
    if spec.task.reference is not None and spec.holdout is None:  # a search run is scored on its metric alone
        record["forgetting"] = forgotten(spec, model, tokenizer)
    return {**record, **prov.record()}, predictions


def forgotten(spec: RunSpec, model, tokenizer) -> dict:
    """eval.json's `forgetting`: the tuned model against its base on the task's reference texts (peftlab.forgetting),
    with the seconds it took. A peft model's base is itself with the adapter disabled; `full` loads the base beside
    it."""
    start = time.perf_counter()
    texts = forgetting.reference_texts(spec.task.reference, spec.model)
    base = None
    if methods.get(spec.peft.type).impl is None:  # full fine-tuning: the tuned weights replaced the base's
        base = place(load_model(spec.model, spec.task, tokenizer, label_names=trained_label_names(spec)).eval())
    out = forgetting.measure(
        model, tokenizer, texts, base=base, max_length=spec.task.max_length, batch_size=spec.task.eval_batch_size
    )
    log.info("%s: forgetting (%s) %.4g on %d reference texts", spec.run_id, out["measure"], out["value"], out["texts"])
    return {**out, "seconds": round(time.perf_counter() - start, 3)}


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--adapter", required=True, help="trained adapter folder")
    p.add_argument("--out", required=True, help="eval.json to write")
    p.add_argument("--predictions", help="predictions.jsonl to write (default: beside --out)")
    args = p.parse_args(argv)
    spec = RunSpec.from_dict(cli.start(args))
    record, predictions = evaluate(spec, args.adapter)
    artifacts.write_jsonl(
        args.predictions or Path(args.out).with_name(PREDICTIONS), predictions
    )  # before eval.json, which says done
    artifacts.write_json(args.out, record)
    if "diverged" in record or "pruned" in record:
        log.info("%s: %s, nothing to evaluate", record["run_id"], "diverged" if "diverged" in record else "pruned")
        return
    observe.log_eval(RunSpec.from_dict(record["spec"]), record["trained_fingerprint"], record)
    log.info("%s: %s", record["run_id"], {k: v for k, v in record["metrics"].items() if k != "samples"})


if __name__ == "__main__":
    main()
