"""What a matrix will cost before it is submitted: device-hours and disk per run and in total, from the config alone.

    python -m peftlab.cost config/experiments/core_1.5B.yaml                 # peak and MFU of an H100 in bf16
    python -m peftlab.cost config/test.yaml --peak-tflops 2 --mfu 1 --json
    python -m peftlab.cost config/test.yaml --validate                       # predicted against measured, on finished
                                                                             # runs

Nothing trains and no weight is loaded: each model is built from its config on the meta
device (a model the pipeline builds, from its `build` section), and each run's method is
attached to it, which gives the exact total and trainable parameter counts.

Time per run, by what is known. Each stage's work is counted in FLOPs: training tokens × FLOPs
per token (6 N for full fine-tuning, 4 N for a PEFT method: no weight gradients of the frozen
base; + 2 N with gradient checkpointing), evaluation tokens × 2 N, and N for merging.
- **measured**: finished runs (their Snakemake benchmark files) on the same kind of machine
  (nodes, GPUs, GPU model, partition, constraint, threads) give, stage by stage, a line
  seconds = a + b × work with a ≥ 0 and b ≥ 0 (`fit`), from the closest peers that exist:
  runs of the same task, model and method; else of the same task and model;
- **machine**: else the same line over every finished run on that kind of machine: a measured
  rate of this machine, not an H100's peak;
- **compute**: with nothing measured, work over `--peak-tflops` × `--mfu` per device (merging: 0).

The line is fitted with both coefficients kept at or above 0 together (the best line through the
origin, or the best constant, where the free line breaks either), so its prediction lies between
the peers' mean and their mean scaled by work: it never extrapolates a slope that noise gave
runs of nearly equal length. (Fitting freely and then clipping the intercept to 0 did: two
seeds of the demo 3 tokens apart gave a slope of their difference in seconds per 3 tokens,
and hours for runs of 45 s.)
The same token count, from the config, is used for the runs fitted and the run predicted, so a
bias of the count cancels.

Training tokens are the steps × global batch × mean example length: from the tokenised
data's meta.json when it exists, else `max_length` (an upper bound; the row says `est`).
Device-hours count every GPU of a run (nodes × GPUs; a CPU run counts as one device).

Disk per run: the adapter (trainable parameters in float32; the whole model for `full`),
kept checkpoints (each: weights and Adam's two moments), and the merged model in the
model's dtype where `outputs.merge` keeps it.

`--validate` predicts every finished run's wall time (all stages) from the *other* finished
runs (leave one out) and judges the plan run by run: it prints each run's predicted against
measured seconds, the share within GOAL_FACTOR (2×) and the worst ratio (the larger of
predicted/measured and measured/predicted), and exits 1 when any run is off by more than
FAIL_FACTOR (3×), or when no run has finished. The matrix's total is printed, not judged: a
sum hides runs off in both directions.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from peftlab import artifacts, cli, launch, paths
from peftlab import search as lr_search
from peftlab.checkpoints import kept_steps
from peftlab.matrix import plan
from peftlab.schema import ConfigError, load_yaml
from peftlab.spec import HoldoutSpec, OutputsSpec

H100_BF16_TFLOPS = 989.0  # dense bf16 peak of an H100 SXM
DEFAULT_MFU = 0.4
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
STAGES = ("train_run", "evaluate_run", "merge_run")
GOAL_FACTOR = 2.0  # --validate reports the share of runs predicted within this factor
FAIL_FACTOR = 3.0  # --validate fails when a run's prediction is off by more than this factor
PEERS = (("task", "model", "method"), ("task", "model"), ())  # closest first; () is every run of the machine


@dataclass
class Cost:
    run_id: str
    total_params: int
    trainable_params: int
    train_tokens: float
    tokens_estimated: bool  # from max_length, not the tokenised data
    devices: int
    seconds: dict  # per stage
    source: str  # measured | machine | compute (module docstring)
    adapter_bytes: int
    checkpoint_bytes: int
    merged_bytes: int
    search: bool = False  # a search run of a learning-rate search (peftlab.lr_search)
    steps: float = 0.0  # optimizer steps it is expected to train (a halving rung: the share of rates it promotes)
    grid_steps: int = 0  # a search run's steps in a full grid search (rung 0's runs stand for their rate and seed)

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
    peft = (
        replace(spec.peft, type="lora") if method.init_changes_base else spec.peft
    )  # PiSSA's SVD init needs real weights; LoRA's shapes
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
    from peftlab import tasks
    from peftlab.models import load_config

    folder = Path(spec.model.path)
    if spec.model.build and not (folder / "config.json").exists():  # not built yet: the build's own config
        from peftlab import tiny

        b = {**spec.model.build}
        vocab = _Vocab(b.get("vocab_size", 512))
        make = tiny.tiny_t5 if b.get("arch") == "t5" else tiny.tiny_llama
        return make(vocab, b)
    return tasks.of(spec.task).model_from_config(load_config(spec.model), spec.task, spec.model.trust_remote_code)


class _Vocab:
    """Stands in for a tokenizer the pipeline has not trained yet: its size and special ids are all a model's config
    needs."""

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
    steps = t["max_steps"] or math.ceil(seen / batch)
    share = lr_search.rung_steps(run.get("rung"), steps) / steps  # a halving rung trains its part of the steps
    return seen * length * share, eval_tokens, meta is None, steps


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
    trained = artifacts.read_json(record)
    if "tokens_seen" not in trained:  # a search run that diverged, or a halving search pruned: it trained no budget
        return None
    return {"seconds": seconds, "tokens": trained["tokens_seen"]}


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares seconds = a + b × work over (work, seconds), with a ≥ 0 and b ≥ 0 together.

    Where the free line breaks a bound, the best line on that bound: through the origin (b =
    Σxy/Σx²) or a constant (the mean), whichever fits better; the origin on a tie (one point, or
    equal work), so a longer run is predicted longer. Clipping only the intercept would keep a
    slope that noise gave points of nearly equal work, and extrapolate it to zero work.
    """
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return (0.0, my / mx) if mx > 0 else (my, 0.0)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    if b >= 0 and my - b * mx >= 0:
        return my - b * mx, b
    lines = [(0.0, sum(x * y for x, y in points) / sum(x * x for x, _ in points)), (my, 0.0)]
    return min(lines, key=lambda ab: sum((ab[0] + ab[1] * x - y) ** 2 for x, y in points))


def work(run: dict, total: int) -> dict[str, float]:
    """Each stage's work in FLOPs (merging: N), the x of `fit`: comparable across methods and models."""
    train_tokens, eval_tokens, _, _ = tokens(run)
    per_token = (6 if run["peft"]["type"] == "full" else 4) * total + (
        2 * total if run["training"]["gradient_checkpointing"] else 0
    )
    return {"train_run": train_tokens * per_token, "evaluate_run": eval_tokens * 2 * total, "merge_run": float(total)}


def machine(r: launch.Resources) -> tuple:
    """What makes two runs' seconds comparable: the kind and number of devices they ran on."""
    return (r.nodes, r.gpus, r.gpu_model, r.partition, r.constraint, r.threads)


def peer_key(run: dict, kind: tuple, level: tuple[str, ...]) -> tuple:
    names = {"task": run["task"]["name"], "model": run["model"]["name"], "method": run["peft"]["type"]}
    return (kind, *(names[k] for k in level))


def from_measured(run_id: str, runs: dict, works: dict, known: dict, kinds: dict) -> tuple[dict, str] | None:
    """(seconds per stage, source) from the closest finished peers (PEERS) on the same machine, or None."""
    seconds, source = {}, None
    for stage in STAGES:
        for level in PEERS:
            key = peer_key(runs[run_id], kinds[run_id], level)
            peers = [k for k in known if peer_key(runs[k], kinds[k], level) == key and stage in known[k]["seconds"]]
            if peers:
                a, b = fit([(works[k][stage], known[k]["seconds"][stage]) for k in peers])
                seconds[stage] = a + b * works[run_id][stage]
                source = source or ("measured" if level else "machine")
                break
    return (seconds, source) if "train_run" in seconds else None


def predict(
    which: list[str],
    runs: dict[str, dict],
    counts: dict,
    peak_tflops: float,
    mfu: float,
    known: dict[str, dict],
    kinds: dict,
) -> dict[str, Cost]:
    """The Cost of each run in `which`; `known` holds the finished runs' measurements to predict from, `kinds` each
    run's machine."""
    works = {run_id: work(runs[run_id], counts[run_id][0]) for run_id in {*which, *known}}
    out = {}
    for run_id in which:
        run = runs[run_id]
        total, trainable = counts[run_id]
        train_tokens, _, estimated, steps = tokens(run)
        full = run["peft"]["type"] == "full"
        devices = kinds[run_id][0] * max(kinds[run_id][1], 1)
        rate = peak_tflops * 1e12 * mfu * devices
        w = works[run_id]
        seconds, source = from_measured(run_id, runs, works, known, kinds) or (
            {"train_run": w["train_run"] / rate, "evaluate_run": w["evaluate_run"] / rate, "merge_run": 0.0},
            "compute",
        )
        if (share := lr_search.trained_share(run.get("rung"))) < 1:  # a halving rung: only the rates it promotes train
            seconds = {stage: v * share for stage, v in seconds.items()}
        dtype_bytes = BYTES[run["model"]["dtype"]]
        adapter = total * dtype_bytes if full else trainable * 4
        every = run["training"]["save_steps"]  # the Trainer saves every save_steps and at the last step
        kept = len(kept_steps(sorted({*range(every, steps + 1, every), steps}), run["outputs"]["checkpoints"]))
        saves = not full and OutputsSpec.from_dict(run["outputs"]).keeps_merged(total)
        out[run_id] = Cost(
            run_id, total, trainable, train_tokens, estimated, devices, seconds, source,
            adapter, kept * (adapter + 2 * trainable * 4), total * dtype_bytes if saves else 0,
            run.get("holdout") is not None, lr_search.expected_steps(run.get("rung"), steps),
            steps if run.get("holdout") is not None and not (run.get("rung") or {}).get("index") else 0,
        )  # fmt: skip
    return out


def cost(
    configfile: str | Path, peak_tflops: float = H100_BF16_TFLOPS, mfu: float = DEFAULT_MFU, leave_one_out: bool = False
) -> dict:
    """{"runs": {run_id: Cost}, "measured": {run_id: seconds} of finished runs} for a config; leave_one_out predicts
    each finished run without it."""
    p = plan(load_yaml(configfile), configfile)
    kinds = {run_id: machine(r) for run_id, r in p.resources.items()}
    counts, cache = {}, {}
    for run_id, run in p.runs.items():
        key = json.dumps(
            [run["model"], run["task"]["type"], run["task"].get("num_labels"), run["peft"]], sort_keys=True
        )
        counts[run_id] = cache[key] if key in cache else cache.setdefault(key, parameters(run))
    known = {run_id: m for run_id in p.runs if (m := measured(p.root, run_id))}
    if not leave_one_out:
        return {"runs": predict(list(p.runs), p.runs, counts, peak_tflops, mfu, known, kinds), "measured": known}
    costs = {}
    for run_id in known:
        others = {k: v for k, v in known.items() if k != run_id}
        costs.update(predict([run_id], p.runs, counts, peak_tflops, mfu, others, kinds))
    return {"runs": costs, "measured": known}


def human_hours(h: float) -> str:
    return f"{h * 3600:.0f} s" if h < 1 / 60 else f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"


def report(result: dict, validate: bool) -> str:

    costs, known = result["runs"], result["measured"]
    lines = [f"{'run':<44} {'params':>9} {'trainable':>9} {'tokens':>9} {'from':>8} {'device-h':>9} {'disk':>9}"]
    for c in costs.values():
        est = "~" if c.tokens_estimated else ""
        lines.append(
            f"{c.run_id:<44} {c.total_params / 1e6:>8.1f}M {c.trainable_params / 1e6:>8.3f}M "
            f"{est}{c.train_tokens:>8.3g} {c.source:>8}"
            f" {human_hours(c.device_hours):>9} {artifacts.human_bytes(c.disk_bytes):>9}"
        )
    hours = sum(c.device_hours for c in costs.values())
    disk = {
        k: sum(getattr(c, k) for c in costs.values()) for k in ("adapter_bytes", "checkpoint_bytes", "merged_bytes")
    }
    lines.append(
        f"\n{len(costs)} runs: {human_hours(hours)} device time; disk {artifacts.human_bytes(sum(disk.values()))} "
        f"(adapters {artifacts.human_bytes(disk['adapter_bytes'])}, checkpoints "
        f"{artifacts.human_bytes(disk['checkpoint_bytes'])}, merged "
        f"{artifacts.human_bytes(disk['merged_bytes'])})"
    )
    search = [c for c in costs.values() if c.search]
    if search:
        share = sum(c.device_hours for c in search) / hours if hours else 0.0
        lines.append(
            f"of which the learning-rate search: {len(search)} search runs, "
            f"{sum(c.steps for c in search):,.0f} training steps (a full grid: {sum(c.grid_steps for c in search):,}), "
            f"{human_hours(sum(c.device_hours for c in search))} device time "
            f"({share:.0%} of the matrix), disk {artifacts.human_bytes(sum(c.disk_bytes for c in search))}"
        )
    if any(c.tokens_estimated for c in costs.values()):
        lines.append("~: tokens from max_length (no tokenised data yet), an upper bound")
    if validate:
        lines += validation_lines(validation(costs, known))
    return "\n".join(lines)


def validation(costs: dict[str, Cost], known: dict[str, dict]) -> dict:
    """Predicted against measured seconds, run by run: each run's factor off (≥ 1), the share within GOAL_FACTOR, those
    past FAIL_FACTOR."""
    rows = {}
    for run_id, m in known.items():
        predicted, measured_s = sum(costs[run_id].seconds.values()), sum(m["seconds"].values())
        off = max(predicted / measured_s, measured_s / predicted) if predicted > 0 and measured_s > 0 else math.inf
        rows[run_id] = {"predicted": predicted, "measured": measured_s, "off": off}
    worst = max(rows, key=lambda r: rows[r]["off"], default=None)
    return {
        "runs": rows,
        "within": sum(r["off"] <= GOAL_FACTOR for r in rows.values()) / len(rows) if rows else 0.0,
        "worst": worst,
        "failed": sorted(r for r, row in rows.items() if row["off"] > FAIL_FACTOR),
        "predicted": sum(r["predicted"] for r in rows.values()),
        "measured": sum(r["measured"] for r in rows.values()),
    }


def validation_lines(v: dict) -> list[str]:
    rows = v["runs"]
    if not rows:
        return ["validation: no finished run to compare with"]
    lines = [f"\nvalidation, leave one out over {len(rows)} finished runs (seconds, all stages):"]
    lines.append(f"{'run':<44} {'predicted':>9} {'measured':>9} {'off':>6}")
    for run_id, r in rows.items():
        mark = "  FAIL" if run_id in v["failed"] else ""
        lines.append(f"{run_id:<44} {r['predicted']:>9.1f} {r['measured']:>9.1f} {r['off']:>5.2f}x{mark}")
    worst = rows[v["worst"]]
    lines.append(
        f"{v['within']:.0%} of runs within {GOAL_FACTOR:g}x of their prediction; worst {v['worst']}, off "
        f"{worst['off']:.2f}x "
        f"(predicted {worst['predicted']:.0f} s, measured {worst['measured']:.0f} s)"
    )
    lines.append(f"matrix: predicted {v['predicted']:.0f} s against measured {v['measured']:.0f} s (a sum, not judged)")
    if v["failed"]:
        lines.append(f"FAILED: {len(v['failed'])} run(s) off by more than {FAIL_FACTOR:g}x")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the matrix's config file")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=H100_BF16_TFLOPS,
        help=f"each device's peak (default {H100_BF16_TFLOPS}: H100 bf16 dense)",
    )
    p.add_argument(
        "--mfu", type=float, default=DEFAULT_MFU, help=f"the share of the peak training reaches (default {DEFAULT_MFU})"
    )
    p.add_argument(
        "--validate",
        action="store_true",
        help=f"predict finished runs from the others; exit 1 if one is off by > {FAIL_FACTOR:g}x",
    )
    p.add_argument("--json", action="store_true", help="one JSON object: every run's cost and the totals")
    args = p.parse_args(argv)
    cli.one_line_errors()
    try:
        result = cost(args.config, args.peak_tflops, args.mfu, leave_one_out=args.validate)
    except ConfigError as e:
        sys.exit(f"{args.config}: {e}")
    if args.json:
        runs = {
            k: {**asdict(c), "device_hours": c.device_hours, "disk_bytes": c.disk_bytes}
            for k, c in result["runs"].items()
        }
        extra = {"validation": validation(result["runs"], result["measured"])} if args.validate else {}
        print(json.dumps({"runs": runs, "measured": result["measured"], **extra}, indent=1))
    else:
        print(report(result, args.validate))
    if args.validate:
        judge(validation(result["runs"], result["measured"]))


def judge(v: dict) -> None:
    """Exit 1 where the check fails: a run off by more than FAIL_FACTOR, or nothing finished to check."""
    if not v["runs"]:
        sys.exit("validation failed: no finished run to compare with")
    if v["failed"]:
        sys.exit(f"validation failed: {', '.join(v['failed'])} off by more than {FAIL_FACTOR:g}x")


if __name__ == "__main__":
    main()
