"""Real-token training throughput: peftlab's trainer vs a plain pad-to-max-length Trainer.

    python bench/throughput.py [--steps 30] [--rounds 2] [--threads 2]

Same model (a small Llama, LoRA r=16 on every linear layer), same variable-length
data (16 to 256 tokens, uniform), same batch size and step count, in one process.
peftlab pads each batch dynamically and groups examples of similar length
(`peftlab.train.train`); the baseline pads every example to the maximum length
and samples at random. Only real (non-padding) tokens count. Prints both rates
and their ratio.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import datasets
import torch
import transformers
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainingArguments

from peftlab.matrix import expand
from peftlab.spec import RunSpec
from peftlab.train import train
from peftlab.validate import load_config

MAX_LEN, VOCAB = 256, 1024


def make_model(root: Path, hidden: int, layers: int) -> None:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i + 3 for i in range(VOCAB - 3)}}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")), pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_LEN,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")


def make_data(data_dir: str, n: int) -> None:
    """Variable-length token rows, tokenised already (so the task's data files are never read)."""
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(3, VOCAB) for _ in range(rng.randint(16, MAX_LEN))]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids, "length": len(ids)})
    ds = datasets.Dataset.from_list(rows)
    datasets.DatasetDict({"train": ds, "eval": ds.select(range(8))}).save_to_disk(data_dir)


def spec_for(root: Path, steps: int, batch: int) -> RunSpec:
    """The run's spec, planned from a one-run config by the pipeline's own validation and expansion."""
    raw = {
        "tasks": {"bench": {"type": "sft", "data": {"files": {"train": "unread.jsonl", "eval": "unread.jsonl"}}, "max_length": MAX_LEN}},
        "models": {"bench": {"path": str(root / "model")}},
        "peft": {"type": "lora", "r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "training": {
            "learning_rate": 1e-4,
            "max_steps": steps,
            "batch_size": batch,
            "warmup_ratio": 0.0,
            "lr_scheduler": "constant",
            "save_steps": 10_000,
            "logging_steps": 10,
            "check_reload": False,
        },
        "wandb": {"mode": "disabled"},
        "sweep": [{"task": "bench", "model": "bench"}],
    }
    runs, _ = expand(load_config(raw, check_files=False), root=str(root))
    return RunSpec.from_dict(next(iter(runs.values())))


def pad_to_max_baseline(spec: RunSpec, root: Path) -> float:
    """A plain Trainer: every example padded to MAX_LEN, random order. Returns real tokens/s."""
    tok = transformers.AutoTokenizer.from_pretrained(spec.model.path)
    model = get_peft_model(
        LlamaForCausalLM.from_pretrained(spec.model.path),
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    ds = datasets.load_from_disk(spec.data_dir)["train"]

    def pad(rows):
        out = {k: torch.zeros(len(rows), MAX_LEN, dtype=torch.long) for k in ("input_ids", "attention_mask")}
        out["labels"] = torch.full((len(rows), MAX_LEN), -100)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            out["input_ids"][i, :n], out["attention_mask"][i, :n], out["labels"][i, :n] = (
                torch.tensor(r["input_ids"]),
                1,
                torch.tensor(r["labels"]),
            )
        return out

    t = spec.training
    args = TrainingArguments(
        output_dir=str(root / "baseline"),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        logging_steps=10,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=ds.select_columns(["input_ids", "attention_mask", "labels"]),
        data_collator=pad,
        processing_class=tok,
    )
    result = trainer.train()
    return trainer.state.num_input_tokens_seen / result.metrics["train_runtime"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps for each trainer")
    p.add_argument("--batch", type=int, default=8, help="examples per step")
    p.add_argument("--hidden", type=int, default=256, help="model width")
    p.add_argument("--layers", type=int, default=4, help="decoder layers")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of both trainers; the best of each is compared")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_model(root, hidden=args.hidden, layers=args.layers)
        spec = spec_for(root, args.steps, args.batch)
        make_data(spec.data_dir, n=args.steps * args.batch * 2)
        baseline, ours = [], []
        for i in range(args.rounds):  # alternate, so warm-up favours neither
            baseline.append(pad_to_max_baseline(spec, root))
            ours.append(train(spec, root / f"adapter{i}", root / f"train{i}.json", root / "checkpoints")["tokens_per_s"])
    print(
        f"model: Llama hidden {args.hidden} x {args.layers} layers, LoRA r=16 all-linear; {args.steps} steps x batch {args.batch}; "
        f"lengths 16..{MAX_LEN}; best of {args.rounds} alternating rounds, {args.threads} threads"
    )
    print(f"baseline (pad to {MAX_LEN}, random order):  {max(baseline):8.0f} real tokens/s   rounds: {[round(x) for x in baseline]}")
    print(f"peftlab (dynamic padding, length-grouped): {max(ours):8.0f} real tokens/s   rounds: {[round(x) for x in ours]}")
    print(f"ratio peftlab / baseline: {max(ours) / max(baseline):.2f}x")


if __name__ == "__main__":
    main()
