"""The trainers the task types train with: peftlab's Trainer (supervised types) and TRL's GRPOTrainer (rlvr).

A task type's `trainer` builds one of these from the arguments every run shares
(`peftlab.train` assembles them from the run's spec).
"""

from __future__ import annotations

import datasets
import torch
import transformers
from transformers import TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from peftlab import rewards
from peftlab.compute import model_columns


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


def supervised(model, tokenizer, train_ds: datasets.Dataset, args: dict, callbacks, make_optimizer, collator, loss_kwargs: bool):
    """peftlab's Trainer on the tokenised columns, with the task type's collator.

    `loss_kwargs` is the task type's: whether the model divides its loss by the global
    `num_items_in_batch` (see TaskType.loss_kwargs). The Trainer assumes every model whose
    forward takes **kwargs does, which would scale a per-batch-mean loss wrongly.
    """
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=train_ds.select_columns(model_columns(train_ds)),
        data_collator=collator,
        processing_class=tokenizer,
        lengths=train_ds["length"],
        callbacks=callbacks,
        make_optimizer=make_optimizer,
    )
    trainer.model_accepts_loss_kwargs = trainer.model_accepts_loss_kwargs and loss_kwargs
    return trainer


def grpo(model, tokenizer, train_ds: datasets.Dataset, args: dict, callbacks, make_optimizer, reward_names: list[str], rl: dict):
    """TRL's GRPOTrainer on the peft model: the task's rewards, its prompts, the run's `training.rl`.

    The rewards read their columns from the dataset. With beta > 0 the reference
    is the base itself (peft's adapter switched off), so no second copy is loaded.
    """
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(**args, **rl)
    return GRPOTrainer(
        model=model,
        reward_funcs=[rewards.REWARDS[r] for r in reward_names],
        args=config,
        train_dataset=train_ds.select_columns(["prompt", *rewards.columns(reward_names)]),
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=(make_optimizer(model, config) if make_optimizer else None, None),
    )
