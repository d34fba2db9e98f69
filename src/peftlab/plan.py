"""What a matrix will cost before it is submitted: device-hours and disk per run and in total, from the config alone.

    python -m peftlab.plan config/experiments/core_1.5B.yaml --cost                 # peak and MFU of an H100 in bf16
    python -m peftlab.plan config/test.yaml --cost --peak-tflops 2 --mfu 1 --json
    python -m peftlab.plan config/test.yaml --cost --validate                       # predicted against measured, on finished runs

Nothing trains and no weight is loaded: each model is built from its config on the meta
device (a model the pipeline builds, from its `build` section), and each run's method is
attached to it, which gives the exact total and trainable parameter counts.

Time per run, by what is known:
- **measured**: where runs of the same task and model have finished (their Snakemake
  benchmark files and train.json), a least-squares line seconds = a + b × training tokens
  per stage, fitted on them (evaluation and merging: their mean);
- **compute**: otherwise training tokens × FLOPs per token (6 N for full fine-tuning, 4 N for
  a PEFT method: no weight gradients of the frozen base; + 2 N with gradient checkpointing),
  evaluation tokens × 2 N, over `--peak-tflops` × `--mfu` per device.

Training tokens are the steps × global batch × mean example length: from the tokenised
data's meta.json when it exists, else `max_length` (an upper bound; the row says `est`).
Device-hours count every GPU of a run (nodes × GPUs; a CPU run counts as one device).

Disk per run: the adapter (trainable parameters in float32; the whole model for `full`),
kept checkpoints (each: weights and Adam's two moments), and the merged model in the
model's dtype where `outputs.merge` keeps it.

`--validate` predicts every finished run's wall time from the *other* finished runs (leave one
out) and prints predicted against measured, run by run and for the matrix.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from peftlab import artifacts, cli, paths
from peftlab.checkpoints import kept_steps
from peftlab.config import load_yaml, plan
from peftlab.schema import ConfigError
from peftlab.spec import HoldoutSpec, OutputsSpec

H100_BF16_TFLOPS = 989.0  # dense bf16 peak of an H100 SXM
DEFAULT_MFU = 0.4
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
STAGES = ("train_run", "evaluate_run", "merge_run")


@dataclass
class Cost:
    run_id: str
    total_params: int
    trainable_params: int
    train_tokens: float
    tokens_estimated: bool  # from max_length, not the tokenised data
    devices: int
    seconds: dict  # per stage
    source: str  # measured | compute
    adapter_bytes: int
    checkpoint_bytes: int
    merged_bytes: int
    search: bool = False  # a search run of a learning-rate search (peftlab.lr_search)

    @property
    def device_hours(self) -> float:
        return sum(self.seconds.values()) * self.devices / 3600

    @property
    def disk_bytes(self) -> int:
        return self.adapter_bytes + self.checkpoint_bytes + self.merged_bytes


def parameters(run: dict) -> tuple[int, int]:
    """(total, trainable) parameters of a run's model with its method attached, counted on the meta device."""
    from accelerate import init_empty_weights

    from peftlab import methods, tasks
    from peftlab.methods import targets
    from peftlab.spec import RunSpec

    spec = RunSpec.from_dict(run)
    with init_empty_weights():
        base = meta_model(spec)
    total = base.num_parameters()
    method = methods.get(spec.peft.type)
    peft = replace(spec.peft, type="lora") if method.init_changes_base else spec.peft  # PiSSA's SVD init needs real weights; LoRA's shapes
    ctx = methods.Context(
        task_type=tasks.of(spec.task).peft_task_type,
        total_steps=1,
        targets=targets.resolve(base, peft.target_modules, method.default_targets),
    )
    with init_empty_weights():
        model = methods.attach(base, peft, ctx)
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def meta_model(spec):
    """The run's base model with its task type's head, from its config alone (call inside init_empty_weights)."""
    import transformers

    from peftlab import tasks
    from peftlab.models import load_config

    folder = Path(spec.model.path)
    if spec.model.build and not (folder / "config.json").exists():  # not built yet: the build's own config
        from peftlab import build

        b = {**spec.model.build}
        vocab = _Vocab(b.get("vocab_size", 512))
        make = build._tiny_t5 if b.get("arch") == "t5" else build._tiny_llama
        return make(vocab, b)
    config = load_config(spec.model)
    ttype = tasks.of(spec.task)
    if spec.task.type == "classification":
        config.num_labels = spec.task.num_labels
        auto = transformers.AutoModelForSequenceClassification
    else:
        auto = transformers.AutoModelForSeq2SeqLM if ttype.encoder_decoder else transformers.AutoModelForCausalLM
    return auto.from_config(config, trust_remote_code=spec.model.trust_remote_code)


class _Vocab:
    """Stands in for a tokenizer the pipeline has not trained yet: its size and special ids are all a model's config needs."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def tokens(run: dict) -> tuple[float, float, bool, int]:
    """(training tokens, evaluation tokens, estimated, optimizer steps) of a run: steps × global batch × mean length."""
    t, task = run["training"], run["task"]
    meta_path = Path(run["data_dir"]) / "meta.json"
    meta = artifacts.read_json(meta_path) if meta_path.exists() else None
    length = meta["mean_train_length"] if meta else task["max_length"]
    data = task["data"]
    available = meta["counts"]["train"] if meta else data.get("num_train")
    eval_examples = (meta["counts"].get("eval") if meta else data.get("num_eval")) or 0
    if run.get("holdout") and available:  # a search run: trains on the rest, is evaluated on its validation share
        eval_examples = HoldoutSpec.from_dict(run["holdout"]).size(available)
        available -= eval_examples
    examples = t["train_size"] or available or 0
    batch = t["batch_size"] * t["grad_accum"] * run["world_size"]
    seen = t["max_steps"] * batch if t["max_steps"] else math.ceil(t["epochs"] * examples)
    eval_tokens = eval_examples * (length + task.get("max_new_tokens", 0))
    return seen * length, eval_tokens, meta is None, t["max_steps"] or math.ceil(seen / batch)


def measured(root: str, run_id: str) -> dict | None:
    """A finished run's seconds per stage (its Snakemake benchmarks) and training tokens (train.json), or None."""
    record = Path(paths.train_record(root, run_id))
    seconds = {}
    for stage in STAGES:
        bench = Path(paths.benchmark(root, stage, run_id))
        rows = list(csv.DictReader(bench.open(), delimiter="\t")) if bench.exists() else []
        if rows:
            seconds[stage] = float(rows[-1]["s"])
    if not record.exists() or "train_run" not in seconds:
        return None
    return {"seconds": seconds, "tokens": artifacts.read_json(record)["tokens_seen"]}


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares seconds = a + b × tokens over (tokens, seconds), a and b at least 0; one point: through it."""
    if len(points) == 1 or len({x for x, _ in points}) == 1:
        mean = sum(y for _, y in points) / len(points)
        return 0.0, mean / max(points[0][0], 1.0)
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    b = max(b, 0.0)
    return max(my - b * mx, 0.0), b


def predict(
    which: list[str], runs: dict[str, dict], counts: dict, peak_tflops: float, mfu: float, known: dict[str, dict], devices: dict
) -> dict[str, Cost]:
    """The Cost of each run in `which`; `known` holds the finished runs' measurements to predict from."""
    by_cell: dict[tuple, list[dict]] = {}
    for run_id, m in known.items():
        r = runs[run_id]
        by_cell.setdefault((r["task"]["name"], r["model"]["name"]), []).append(m)
    out = {}
    for run_id in which:
        run = runs[run_id]
        total, trainable = counts[run_id]
        train_tokens, eval_tokens, estimated, steps = tokens(run)
        full = run["peft"]["type"] == "full"
        flops_per_token = (6 if full else 4) * total + (2 * total if run["training"]["gradient_checkpointing"] else 0)
        rate = peak_tflops * 1e12 * mfu * devices[run_id]
        same = by_cell.get((run["task"]["name"], run["model"]["name"]), [])
        if same:
            a, b = fit([(m["tokens"], m["seconds"]["train_run"]) for m in same])
            seconds = {"train_run": a + b * train_tokens}
            for stage in STAGES[1:]:
                values = [m["seconds"][stage] for m in same if stage in m["seconds"]]
                seconds[stage] = sum(values) / len(values) if values else 0.0
            source = "measured"
        else:
            seconds = {"train_run": train_tokens * flops_per_token / rate, "evaluate_run": eval_tokens * 2 * total / rate, "merge_run": 0.0}
            source = "compute"
        dtype_bytes = BYTES[run["model"]["dtype"]]
        adapter = total * dtype_bytes if full else trainable * 4
        every = run["training"]["save_steps"]  # the Trainer saves every save_steps and at the last step
        kept = len(kept_steps(sorted({*range(every, steps + 1, every), steps}), run["outputs"]["checkpoints"]))
        saves = not full and OutputsSpec.from_dict(run["outputs"]).keeps_merged(total)
        out[run_id] = Cost(
            run_id, total, trainable, train_tokens, estimated, devices[run_id], seconds, source,
            adapter, kept * (adapter + 2 * trainable * 4), total * dtype_bytes if saves else 0, run.get("holdout") is not None,
        )  # fmt: skip
    return out


def cost(configfile: str | Path, peak_tflops: float = H100_BF16_TFLOPS, mfu: float = DEFAULT_MFU, leave_one_out: bool = False) -> dict:
    """{"runs": {run_id: Cost}, "measured": {run_id: seconds} of finished runs} for a config; leave_one_out predicts each finished run without it."""
    p = plan(load_yaml(configfile), configfile)
    devices = {run_id: r.nodes * max(r.gpus, 1) for run_id, r in p.resources.items()}
    counts, cache = {}, {}
    for run_id, run in p.runs.items():
        key = json.dumps([run["model"], run["task"]["type"], run["task"].get("num_labels"), run["peft"]], sort_keys=True)
        counts[run_id] = cache[key] if key in cache else cache.setdefault(key, parameters(run))
    known = {run_id: m for run_id in p.runs if (m := measured(p.root, run_id))}
    if not leave_one_out:
        return {"runs": predict(list(p.runs), p.runs, counts, peak_tflops, mfu, known, devices), "measured": known}
    costs = {}
    for run_id in known:
        others = {k: v for k, v in known.items() if k != run_id}
        costs.update(predict([run_id], p.runs, counts, peak_tflops, mfu, others, devices))
    return {"runs": costs, "measured": known}


def human_hours(h: float) -> str:
    return f"{h * 3600:.0f} s" if h < 1 / 60 else f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"


def report(result: dict, validate: bool) -> str:
    from peftlab.tables import human_bytes

    costs, known = result["runs"], result["measured"]
    lines = [f"{'run':<44} {'params':>9} {'trainable':>9} {'tokens':>9} {'from':>8} {'device-h':>9} {'disk':>9}"]
    for c in costs.values():
        est = "~" if c.tokens_estimated else ""
        lines.append(
            f"{c.run_id:<44} {c.total_params / 1e6:>8.1f}M {c.trainable_params / 1e6:>8.3f}M {est}{c.train_tokens:>8.3g} {c.source:>8}"
            f" {human_hours(c.device_hours):>9} {human_bytes(c.disk_bytes):>9}"
        )
    hours = sum(c.device_hours for c in costs.values())
    disk = {k: sum(getattr(c, k) for c in costs.values()) for k in ("adapter_bytes", "checkpoint_bytes", "merged_bytes")}
    lines.append(
        f"\n{len(costs)} runs: {human_hours(hours)} device time; disk {human_bytes(sum(disk.values()))} "
        f"(adapters {human_bytes(disk['adapter_bytes'])}, checkpoints {human_bytes(disk['checkpoint_bytes'])}, merged {human_bytes(disk['merged_bytes'])})"
    )
    search = [c for c in costs.values() if c.search]
    if search:
        share = sum(c.device_hours for c in search) / hours if hours else 0.0
        lines.append(
            f"of which the learning-rate search: {len(search)} search runs, {human_hours(sum(c.device_hours for c in search))} device time "
            f"({share:.0%} of the matrix), disk {human_bytes(sum(c.disk_bytes for c in search))}"
        )
    if any(c.tokens_estimated for c in costs.values()):
        lines.append("~: tokens from max_length (no tokenised data yet), an upper bound")
    if validate:
        predicted = sum(sum(costs[r].seconds.values()) for r in known)
        actual = sum(sum(m["seconds"].values()) for m in known.values())
        ratios = sorted(sum(costs[r].seconds.values()) / sum(m["seconds"].values()) for r, m in known.items())
        lines.append(
            f"validation, leave one out over {len(known)} finished runs: predicted {predicted:.0f} s against measured {actual:.0f} s "
            f"(ratio {predicted / actual:.2f}); per run {ratios[0]:.2f} to {ratios[-1]:.2f}, median {ratios[len(ratios) // 2]:.2f}"
            if known
            else "validation: no finished run to compare with"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the matrix's config file")
    p.add_argument("--cost", action="store_true", help="print the cost plan (the default and only plan today)")
    p.add_argument(
        "--peak-tflops", type=float, default=H100_BF16_TFLOPS, help=f"each device's peak (default {H100_BF16_TFLOPS}: H100 bf16 dense)"
    )
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU, help=f"the share of the peak training reaches (default {DEFAULT_MFU})")
    p.add_argument("--validate", action="store_true", help="predict each finished run from the others and compare with what it took")
    p.add_argument("--json", action="store_true", help="one JSON object: every run's cost and the totals")
    args = p.parse_args(argv)
    cli.one_line_errors()
    try:
        result = cost(args.config, args.peak_tflops, args.mfu, leave_one_out=args.validate)
    except ConfigError as e:
        sys.exit(f"{args.config}: {e}")
    if args.json:
        runs = {k: {**asdict(c), "device_hours": c.device_hours, "disk_bytes": c.disk_bytes} for k, c in result["runs"].items()}
        print(json.dumps({"runs": runs, "measured": result["measured"]}, indent=1))
    else:
        print(report(result, args.validate))


if __name__ == "__main__":
    main()
