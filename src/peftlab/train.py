"""Train one run: a plain function of its resolved spec.

    python -m peftlab.train --spec results/specs/runs/<run_id>.json \
        --adapter results/runs/<run_id>/adapter --record results/runs/<run_id>/train.json \
        --checkpoints results/checkpoints/<run_id>

Reads top to bottom: set up (data, model, adapter), train with the transformers
Trainer (dynamic padding, length-grouped batches in a seeded order, checkpoints
every `save_steps`; rlvr tasks: TRL's GRPOTrainer with the task's rewards), save
the adapter in peft's format, check that it reloads onto an untouched base with
the same logits, write train.json, drop the checkpoints.

A run started again after being killed resumes from its last complete checkpoint.
Checkpoints live outside the run's declared outputs (Snakemake deletes those
before it reruns a failed job).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import socket
from pathlib import Path

import datasets
import torch
import transformers
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, DataCollatorWithPadding, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from peftlab import artifacts, cli, methods, rewards
from peftlab.methods import targets
from peftlab.models import device_of, load_model, load_tokenizer, peft_task_type
from peftlab.spec import RunSpec, TaskSpec, WandbSpec

log = logging.getLogger(__name__)
RELOAD_TOLERANCE = 1e-5


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from `seed + epoch`, so a resumed run sees exactly the same batches."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))


class Trainer(transformers.Trainer):
    """The transformers Trainer with a seeded length-grouped order and the method's own optimizer (LoRA+)."""

    def __init__(self, *args, lengths: list[int], make_optimizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lengths, self.make_optimizer = lengths, make_optimizer

    def _get_train_sampler(self, train_dataset=None):
        # Grouped by the global batch: every process draws the same order, and the
        # Accelerate loader hands process i every i-th per-device batch of it, so a
        # step sees the examples a single process with the global batch would.
        mega_batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return SeededLengthGroupedSampler(mega_batch, self.lengths, self.args.seed)

    def create_optimizer(self, model=None):
        if self.make_optimizer is None or self.optimizer is not None:
            return super().create_optimizer(model)
        self.optimizer = self.make_optimizer(self.model, self.args)
        return self.optimizer


def train_subset(ds: datasets.Dataset, size: int | None, seed: int) -> datasets.Dataset:
    """The first `size` examples of a seeded shuffle (all, in file order, when size is None).

    The seed is `training.data_seed`, the same for every run by default, so runs that
    differ in seed see the same examples and smaller sizes are subsets of larger ones.
    """
    if size is None:
        return ds
    if size > len(ds):
        raise ValueError(f"training.train_size={size} but the training split has only {len(ds)} examples")
    return ds.shuffle(seed=seed).select(range(size))


def collator(task: TaskSpec, tokenizer):
    if task.type == "classification":
        return DataCollatorWithPadding(tokenizer)
    if task.packing:  # one row per batch, position ids restart per example, so attention stays within each
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)


def model_columns(ds: datasets.Dataset) -> list[str]:
    """The tokenised columns a model's forward takes (BERT-style pairs keep their token_type_ids)."""
    return [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels") if c in ds.column_names]


def last_checkpoint(folder: Path) -> str | None:
    """Newest checkpoint-N whose trainer_state.json (written last) exists."""
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


def probe_batch(ds: datasets.Dataset, tokenizer, task: TaskSpec, n: int = 8) -> dict[str, torch.Tensor]:
    """A fixed padded batch (the first n eval examples) for logit comparisons.

    An encoder-decoder's batch keeps its labels: the decoder's inputs are made from them.
    """
    rows = ds.select(range(min(n, len(ds))))
    seq2seq = task.type == "seq2seq"
    columns = [c for c in model_columns(rows) if c != "labels" or seq2seq]
    pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100) if seq2seq else DataCollatorWithPadding(tokenizer)
    return dict(pad(rows.select_columns(columns).to_list()))


@torch.no_grad()
def logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's float32 logits on `batch`, computed on the model's device, returned on the CPU."""
    model.eval()
    device = device_of(model)
    return model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()


def distributed() -> tuple[int, int]:
    """(this process's rank, the number of processes), as torchrun sets them."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def hosts() -> list[str]:
    """Every training process's host name, by rank (a collective: every process must call it)."""
    if not torch.distributed.is_initialized():
        return [socket.gethostname()]
    names = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(names, socket.gethostname())
    return names


def configure_wandb(w: WandbSpec) -> list[str]:
    """The Trainer's report_to list; wandb settings go through its environment variables."""
    if w.mode == "disabled":
        return []
    os.environ["WANDB_MODE"] = w.mode
    os.environ["WANDB_PROJECT"] = w.project
    os.environ["WANDB_DIR"] = str(Path(w.dir).resolve())
    Path(w.dir).mkdir(parents=True, exist_ok=True)
    if w.entity:
        os.environ["WANDB_ENTITY"] = w.entity
    return ["wandb"]


def total_steps(t, examples: int, world_size: int = 1) -> int:
    """Optimiser steps the run will take, as the Trainer counts them (AdaLoRA schedules its budget over these).

    GRPO's batch counts completions: each prompt appears num_generations times.
    """
    if t.max_steps:
        return t.max_steps
    batches = math.ceil(examples * t.rl.get("num_generations", 1) / (t.batch_size * world_size))
    return math.ceil(t.epochs * max(math.ceil(batches / t.grad_accum), 1))


def grpo_trainer(spec: RunSpec, model, tokenizer, train_ds: datasets.Dataset, common: dict, callbacks, make_optimizer):
    """TRL's GRPOTrainer on the peft model: the task's rewards, its prompts, the run's `training.rl`.

    The rewards read their columns from the dataset. With beta > 0 the reference
    is the base itself (peft's adapter switched off), so no second copy is loaded.
    """
    from trl import GRPOConfig, GRPOTrainer

    rl, task = spec.training.rl, spec.task
    args = GRPOConfig(**common, **rl)
    columns = ["prompt", *rewards.columns(task.rewards)]
    return GRPOTrainer(
        model=model,
        reward_funcs=[rewards.REWARDS[r] for r in task.rewards],
        args=args,
        train_dataset=train_ds.select_columns(columns),
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=(make_optimizer(model, args) if make_optimizer else None, None),
    )


def train(spec: RunSpec, adapter: Path, record_path: Path, checkpoints: Path) -> dict:
    """Train the run described by `spec`; write the adapter folder, then the record JSON.

    Under torchrun every process trains (the Trainer picks nccl on GPUs, gloo on CPU);
    the first one saves, checks and records, and returns the record; the others return {}.
    """
    prov = artifacts.Provenance(spec.to_dict())
    task, t = spec.task, spec.training
    method = methods.get(spec.peft.type)
    rank, world_size = distributed()
    if world_size != spec.world_size:
        raise RuntimeError(
            f"{spec.run_id}: started as {world_size} process(es), but its resources give a world size of {spec.world_size}; "
            "start it with the command peftlab.launch.launcher gives (the workflow does)"
        )
    transformers.set_seed(t.seed)

    # --- set up: data, model, adapter
    data = datasets.load_from_disk(spec.data_dir)
    train_ds = train_subset(data["train"], t.train_size, t.data_seed)
    tokenizer = load_tokenizer(spec.model)
    base = load_model(spec.model, task, tokenizer, quantization=methods.quantization(spec.peft))
    total_params = base.num_parameters()  # counts a 4-bit base's packed weights as the parameters they hold
    ctx = methods.Context(
        task_type=peft_task_type(task),
        total_steps=total_steps(t, len(train_ds), world_size),
        targets=targets.resolve(base, spec.peft.target_modules, method.default_targets),
    )
    model = methods.attach(base, spec.peft, ctx)
    trainable = sum(x.numel() for x in model.parameters() if x.requires_grad)
    checkpoints.mkdir(parents=True, exist_ok=True)
    initial = checkpoints / "initial_adapter"
    if rank == 0 and method.init_changes_base and not (initial / "adapter_config.json").exists():
        with artifacts.atomic_dir(initial) as tmp:
            model.save_pretrained(tmp)

    # --- train
    common = dict(
        output_dir=str(checkpoints),
        seed=t.seed,  # also seeds the batch order (SeededLengthGroupedSampler)
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        report_to=configure_wandb(spec.wandb),
        run_name=spec.run_id,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
        bf16=t.bf16,
        activation_checkpointing=t.gradient_checkpointing,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer_callbacks = callbacks(model) if (callbacks := methods.hook(method, "callbacks")) else None
    make_optimizer = functools.partial(optimizer, p=spec.peft) if (optimizer := methods.hook(method, "optimizer")) else None
    if task.type == "rlvr":
        trainer = grpo_trainer(spec, model, tokenizer, train_ds, common, trainer_callbacks, make_optimizer)
    else:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=train_ds.select_columns(model_columns(train_ds)),
            data_collator=collator(task, tokenizer),
            processing_class=tokenizer,
            lengths=train_ds["length"],
            callbacks=trainer_callbacks,
            make_optimizer=make_optimizer,
        )
        # The Trainer assumes a model whose forward takes **kwargs divides its loss by the
        # global `num_items_in_batch`, and so skips the division by the accumulation steps
        # and multiplies by the number of processes. Causal LMs do; the sequence-classification
        # heads and T5 return a per-batch mean, which would make the gradient grad_accum x
        # processes too large.
        trainer.model_accepts_loss_kwargs = trainer.model_accepts_loss_kwargs and task.type in ("sft", "lm")
    args = trainer.args
    resume = last_checkpoint(checkpoints)
    tokens_before = 0
    if resume:
        log.info("resuming from %s", resume)
        tokens_before = artifacts.read_json(Path(resume) / "trainer_state.json")["num_input_tokens_seen"]
    result = trainer.train(resume_from_checkpoint=resume)
    state = trainer.state
    ran_on = hosts()
    if rank != 0:  # the other processes are done; the first saves, checks and records
        return {}

    # --- save, then check the saved adapter against the model in memory
    probe = probe_batch(data["eval"], tokenizer, task)
    trained_logits = logits(model, probe)
    with artifacts.atomic_dir(adapter) as tmp:
        methods.save(model, tmp, initial if method.init_changes_base else None)
        tokenizer.save_pretrained(tmp)
    reload_diff = None
    if t.check_reload:
        reloaded, device = methods.load(spec, adapter, tokenizer), device_of(model)
        if device.type != "cpu":  # compare on one device: a GPU's kernels differ from the CPU's by more than the tolerance
            reloaded.to(device)
        reload_diff = (logits(reloaded, probe) - trained_logits).abs().max().item()
        if reload_diff > RELOAD_TOLERANCE:
            shutil.rmtree(adapter)
            raise RuntimeError(f"{spec.run_id}: adapter reloaded onto the untouched base differs by {reload_diff:.3g} > {RELOAD_TOLERANCE}")

    losses = [{"step": e["step"], "loss": e["loss"]} for e in state.log_history if "loss" in e]
    rl_rewards = [{"step": e["step"], "reward": e["reward"]} for e in state.log_history if "reward" in e]  # GRPO's mean reward
    session_tokens = state.num_input_tokens_seen - tokens_before  # real (non-padding) tokens since start or resume
    record = {
        "run_id": spec.run_id,
        "losses": losses,
        "first_loss": losses[0]["loss"] if losses else None,
        "final_loss": losses[-1]["loss"] if losses else None,
        "train_loss": result.training_loss,
        "steps": state.global_step,
        "epochs": state.epoch,
        "examples": len(train_ds),
        "tokens_seen": state.num_input_tokens_seen,
        "tokens_per_s": session_tokens / max(result.metrics["train_runtime"], 1e-9),
        "trainable_params": trainable,
        "total_params": total_params,
        "trainable_share": trainable / total_params,
        **({"rewards": rl_rewards} if task.type == "rlvr" else {}),
        "resumed_from": resume,
        "reload_max_abs_diff": reload_diff,
        "world_size": args.world_size,
        "hosts": ran_on,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        **prov.record(),
    }
    artifacts.write_json(record_path, record)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return record


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--adapter", required=True, type=Path, help="adapter folder to write (peft format)")
    p.add_argument("--record", required=True, type=Path, help="train.json to write")
    p.add_argument("--checkpoints", required=True, type=Path, help="checkpoint folder, outside every declared output")
    args = p.parse_args(argv)
    record = train(RunSpec.from_dict(cli.start(args)), args.adapter, args.record, args.checkpoints)
    if record:
        log.info("%s: loss %s -> %s, %.0f tokens/s", record["run_id"], record["first_loss"], record["final_loss"], record["tokens_per_s"])


if __name__ == "__main__":
    main()
