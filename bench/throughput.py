"""Real-token training throughput of peftlab's trainer against its peers' trainers, in one run.

    python bench/throughput.py [--steps 30] [--rounds 2] [--threads 2] [--peak-tflops 989]

Same model (a Llama built from a config, random weights, LoRA r=16 on every linear
layer), same variable-length data (16 to --max-len tokens, uniform), same optimizer
steps, in one process. The contenders:

- pad-to-max: a plain transformers Trainer, every example padded to --max-len, random order;
- TRL's SFTTrainer four ways: padded per batch (its default), the same with the
  Trainer's `group_by_length` sampling (peftlab's order), `padding_free`
  (batches flattened into one sequence) and `packing` (best-fit-decreasing bins of
  --max-len tokens, padding-free; its batch holds as many bins as carry the other
  contenders' tokens per step);
- peftlab's trainer as a run trains (`peftlab.train.train`): padded per batch with
  length-grouped order (the default), and `packing: true` (padding-free, as TRL's
  `padding_free`).

Only real (non-padding) tokens count. Each contender runs once per round, the rounds
alternate so warm-up favours none, and the best round of each counts. Prints each rate,
its ratio to pad-to-max, and peftlab's best against TRL's best. On a GPU it also prints
MFU: tokens/s × 4 N FLOPs per token (forward and input gradients; the frozen base has
no weight gradients) over --peak-tflops.

Like for like: every setting that changes speed is read back from each trainer's own
arguments and model after it ran (gradient checkpointing, precision, attention kernel,
batch size, optimizer, longest sequence, steps) and printed as a table. A ratio is
printed only between contenders that agree on all of them; one that differs is named
with the setting, and left out of "TRL's best". (TRL's SFTConfig turns gradient
checkpointing and bf16 on by default: every contender here sets both off on a CPU.)
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path

import datasets
import torch
import transformers
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainingArguments

from peftlab import trainers
from peftlab.matrix import expand
from peftlab.models import load_model
from peftlab.spec import RunSpec
from peftlab.train import train
from peftlab.validate import load_config

MAX_LEN, VOCAB = 256, 1024
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")


def make_model(root: Path, hidden: int, layers: int, heads: int = 4, max_len: int = MAX_LEN) -> None:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i + 3 for i in range(VOCAB - 3)}}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_len,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")


def make_data(data_dir: str, n: int, max_len: int = MAX_LEN) -> None:
    """Variable-length token rows, tokenised already (so the task's data files are never read)."""
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(3, VOCAB) for _ in range(rng.randint(16, max_len))]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids, "length": len(ids)})
    ds = datasets.Dataset.from_list(rows)
    datasets.DatasetDict({"train": ds, "eval": ds.select(range(8))}).save_to_disk(data_dir)


def spec_for(root: Path, steps: int, batch: int, packing: bool = False, max_len: int = MAX_LEN) -> RunSpec:
    """The run's spec, planned from a one-run config by the pipeline's own validation and expansion."""
    raw = {
        "tasks": {
            "bench": {
                "type": "sft",
                "data": {"files": {"train": "unread.jsonl", "eval": "unread.jsonl"}},
                "max_length": max_len,
                "packing": packing,
            }
        },
        "models": {"bench": {"path": str(root / "model")}},
        "peft": {"type": "lora", **LORA},
        "training": {
            "learning_rate": 1e-4,
            "max_steps": steps,
            "batch_size": batch,
            "warmup_ratio": 0.0,
            "lr_scheduler": "constant",
            "save_steps": 10_000,
            "logging_steps": 10,
            "check_reload": False,
            "bf16": torch.cuda.is_available(),
        },
        "wandb": {"mode": "disabled"},
        "sweep": [{"task": "bench", "model": "bench"}],
    }
    runs, _ = expand(load_config(raw, check_files=False), root=str(root))
    return RunSpec.from_dict(next(iter(runs.values())))


def common_args(root: Path, name: str, steps: int, batch: int) -> dict:
    """The TrainingArguments every peer shares with peftlab's run: same steps, optimizer, schedule, precision, no
    checkpointing."""
    return dict(
        # TRL's SFTConfig turns it on by default; peftlab's runs leave it off unless asked
        gradient_checkpointing=False,
        output_dir=str(root / name),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        warmup_steps=0,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        seed=0,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        logging_steps=10,
        dataloader_num_workers=0,
    )


def peft_model(spec: RunSpec):
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return get_peft_model(
        LlamaForCausalLM.from_pretrained(spec.model.path, dtype=dtype), LoraConfig(**LORA, task_type="CAUSAL_LM")
    )


# the settings that change speed, as the benchmark compares them (`settings`)
SPEED_KEYS = ("gradient checkpointing", "precision", "attention", "batch", "optimizer", "longest sequence", "steps")


def settings(args, model, longest: int | None) -> dict:
    """What a trainer ran with, read back from its own TrainingArguments and model."""
    precision = (
        "bf16" if args.bf16 else "fp16" if args.fp16 else str(next(model.parameters()).dtype).removeprefix("torch.")
    )
    return dict(
        zip(
            SPEED_KEYS,
            (
                bool(
                    getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False)
                ),
                precision,
                model.config._attn_implementation,
                args.per_device_train_batch_size * args.gradient_accumulation_steps,
                str(getattr(args.optim, "value", args.optim)),
                longest,
                args.max_steps,
            ),
        )
    )


def tokens_per_s(trainer, longest: int | None) -> tuple[float, dict]:
    runtime = trainer.train().metrics["train_runtime"]
    return trainer.state.num_input_tokens_seen / runtime, settings(trainer.args, trainer.model, longest)


def pad_to_max(spec: RunSpec, root: Path, steps: int, batch: int, max_len: int) -> tuple[float, dict]:
    """A plain Trainer: every example padded to max_len, random order."""

    def pad(rows):
        out = {k: torch.zeros(len(rows), max_len, dtype=torch.long) for k in ("input_ids", "attention_mask")}
        out["labels"] = torch.full((len(rows), max_len), -100)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            out["input_ids"][i, :n], out["attention_mask"][i, :n], out["labels"][i, :n] = (
                torch.tensor(r["input_ids"]),
                1,
                torch.tensor(r["labels"]),
            )
        return out

    ds = datasets.load_from_disk(spec.data_dir)["train"]
    trainer = transformers.Trainer(
        model=peft_model(spec),
        args=TrainingArguments(**common_args(root, "pad", steps, batch)),
        train_dataset=ds.select_columns(["input_ids", "attention_mask", "labels"]),
        data_collator=pad,
        processing_class=transformers.AutoTokenizer.from_pretrained(spec.model.path),
    )
    return tokens_per_s(trainer, max_len)


def trl_sft(spec: RunSpec, root: Path, steps: int, batch: int, max_len: int, **mode) -> tuple[float, dict]:
    """TRL's SFTTrainer on the same tokenised rows (it skips its own tokenisation when input_ids are there)."""
    from trl import SFTConfig, SFTTrainer

    ds = datasets.load_from_disk(spec.data_dir)["train"].select_columns(["input_ids"])
    # padding_free refuses a max_length it would not enforce: the rows are max_len at most already
    config = SFTConfig(
        **common_args(root, "trl", steps, batch), max_length=None if mode.get("padding_free") else max_len, **mode
    )
    trainer = SFTTrainer(
        model=peft_model(spec),
        args=config,
        train_dataset=ds,
        processing_class=transformers.AutoTokenizer.from_pretrained(spec.model.path),
    )
    # padding_free: no max_length, the rows are max_len long at most
    return tokens_per_s(trainer, config.max_length if config.max_length is not None else max_len)


def peftlab_run(spec: RunSpec, root: Path, name: str) -> tuple[float, dict]:
    """peftlab's trainer as a run trains; its settings read back from the TrainingArguments and model it builds for the
    run."""
    rate = train(spec, root / name / "adapter", root / name / "train.json", root / name / "checkpoints")["tokens_per_s"]
    args = TrainingArguments(**trainers.arguments(spec, str(root / name / "args")))
    return rate, settings(args, load_model(spec.model, spec.task), spec.task.max_length)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps for each trainer")
    p.add_argument("--batch", type=int, default=8, help="examples per step")
    p.add_argument("--hidden", type=int, default=256, help="model width")
    p.add_argument("--layers", type=int, default=4, help="decoder layers")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--max-len", type=int, default=MAX_LEN, help="longest example (lengths are uniform from 16)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    p.add_argument(
        "--rounds", type=int, default=2, help="alternating rounds of every trainer; the best of each is compared"
    )
    p.add_argument(
        "--peak-tflops", type=float, default=989.0, help="the device's bf16 peak, for MFU on a GPU (default: H100 SXM)"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_model(root, hidden=args.hidden, layers=args.layers, heads=args.heads, max_len=args.max_len)
        spec = spec_for(root, args.steps, args.batch, max_len=args.max_len)
        packed_spec = spec_for(root, args.steps, args.batch, packing=True, max_len=args.max_len)
        make_data(spec.data_dir, n=args.steps * args.batch * 2, max_len=args.max_len)
        mean_len = statistics.mean(datasets.load_from_disk(spec.data_dir)["train"]["length"])
        bins = max(
            1, round(args.batch * mean_len / args.max_len)
        )  # TRL packing: bins per step carrying about batch examples' tokens
        n = args.steps, args.batch, args.max_len
        contenders = {
            f"pad-to-max Trainer (pad to {args.max_len}, random order)": lambda i: pad_to_max(spec, root, *n),
            "TRL SFTTrainer, padded per batch": lambda i: trl_sft(spec, root, *n),
            "TRL SFTTrainer, padded, group_by_length": lambda i: trl_sft(
                spec, root, *n, train_sampling_strategy="group_by_length"
            ),
            "TRL SFTTrainer, padding_free": lambda i: trl_sft(spec, root, *n, padding_free=True),
            f"TRL SFTTrainer, packing (bfd, {bins} bins of {args.max_len})": lambda i: trl_sft(
                spec, root, args.steps, bins, args.max_len, packing=True
            ),
            "peftlab, padded per batch, length-grouped": lambda i: peftlab_run(spec, root, f"grouped{i}"),
            "peftlab, packing: true (padding-free)": lambda i: peftlab_run(packed_spec, root, f"packed{i}"),
        }
        rates, ran_with = {name: [] for name in contenders}, {}
        for i in range(args.rounds):  # alternate, so warm-up favours none
            for name, run in contenders.items():
                rate, ran_with[name] = run(i)
                rates[name].append(rate)
        total = sum(x.numel() for x in LlamaForCausalLM.from_pretrained(root / "model").parameters())
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} threads"
    print(
        f"model: Llama hidden {args.hidden} x {args.layers} layers ({total / 1e6:.1f}M parameters), LoRA r=16 "
        "all-linear; "
        f"{args.steps} steps x batch {args.batch}; lengths 16..{args.max_len} (mean {mean_len:.0f}); "
        f"best of {args.rounds} alternating rounds; {device}"
    )
    best = {name: max(r) for name, r in rates.items()}
    baseline = next(iter(best.values()))
    for name, rate in best.items():
        mfu = f"   MFU {rate * 4 * total / (args.peak_tflops * 1e12):.3f}" if torch.cuda.is_available() else ""
        print(
            f"{name + ':':58} {rate:9.0f} real tokens/s  {rate / baseline:5.2f}x pad-to-max{mfu}   rounds: "
            f"{[round(x) for x in rates[name]]}"
        )
    print("\nsettings read back from each trainer (a ratio is printed only between rows that agree on all):")
    print("| trainer | " + " | ".join(SPEED_KEYS) + " |\n|---|" + "---|" * len(SPEED_KEYS))
    for name, s in ran_with.items():
        print(f"| {name} | " + " | ".join(str(s[k]) for k in SPEED_KEYS) + " |")
    ours = max((n for n in best if n.startswith("peftlab")), key=best.get)
    alike, unlike = like_for_like(ran_with, ours, [n for n in best if n.startswith("TRL")])
    for name, keys in unlike.items():
        print(f"not compared: {name} differs from {ours} in {', '.join(keys)}")
    if alike:
        trl_best = max(alike, key=best.get)
        print(f"ratio peftlab's best / TRL's best: {best[ours] / best[trl_best]:.2f}x  ({ours} / {trl_best})")
    else:
        print("ratio peftlab's best / TRL's best: none (no TRL mode ran with the same settings)")
    padded, packed = list(best)[-2], list(best)[-1]
    if like_for_like(ran_with, padded, [packed])[0]:
        print(f"ratio peftlab packing / peftlab padded: {best[packed] / best[padded]:.2f}x")


def like_for_like(ran_with: dict[str, dict], ours: str, others: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(the others that ran with `ours`' speed settings, {each other one: the settings it differs in})."""
    differ = {n: [k for k in SPEED_KEYS if ran_with[n][k] != ran_with[ours][k]] for n in others}
    return [n for n, keys in differ.items() if not keys], {n: keys for n, keys in differ.items() if keys}


if __name__ == "__main__":
    main()
