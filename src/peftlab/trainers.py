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


# TrainingArguments that peftlab sets from a run's spec: the key a config sets each with.
# `training.extra` may not set them (peftlab.validate refuses them, naming the key).
FROM_SPEC = {
    "output_dir": "the workflow (results/<matrix>/checkpoints/<run_id>)",
    "seed": "training.seed",
    "learning_rate": "training.learning_rate",
    "num_train_epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "per_device_train_batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.grad_accum",
    "warmup_steps": "training.warmup_ratio",
    "warmup_ratio": "training.warmup_ratio",
    "weight_decay": "training.weight_decay",
    "lr_scheduler_type": "training.lr_scheduler",
    "max_grad_norm": "training.max_grad_norm",
    "logging_steps": "training.logging_steps",
    "save_strategy": "training.save_steps",
    "save_steps": "training.save_steps",
    "save_total_limit": (
        "peftlab (the last two checkpoints, and the best one with load_best_model_at_end; "
        "outputs.checkpoints: every N keeps more)"
    ),
    "report_to": "the wandb section",
    "run_name": "the run id",
    "include_num_input_tokens_seen": "peftlab (train.json's tokens_seen)",
    "use_cpu": "peftlab (a GPU when there is one)",
    "bf16": "training.bf16",
    "activation_checkpointing": "training.gradient_checkpointing",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "dataloader_num_workers": "peftlab (0: the seeded order is built in the main process)",
    "disable_tqdm": "peftlab (logs instead of progress bars)",
    "eval_strategy": "training.eval_steps",
    "eval_steps": "training.eval_steps",
    "per_device_eval_batch_size": "tasks.<name>.eval_batch_size",
    "load_best_model_at_end": "training.load_best_model_at_end",
    "metric_for_best_model": "training.metric_for_best_model",
    "greater_is_better": "training.greater_is_better",
}


def arguments(spec, output_dir: str, report_to: list[str] | None = None) -> dict:
    """The TrainingArguments (GRPOConfig's, for rlvr, plus `training.rl`) of a run: FROM_SPEC's keys, then
    `training.extra`."""
    import torch

    t = spec.training
    args = dict(
        output_dir=output_dir,
        seed=t.seed,  # also seeds the batch order (SeededLengthGroupedSampler)
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        # a float below 1 is a share of the steps (transformers 5 took warmup_ratio into warmup_steps)
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        # outputs.checkpoints: every N prunes with peftlab.checkpoints.KeepEvery instead
        save_total_limit=None if isinstance(spec.outputs.checkpoints, int) else 2,
        report_to=report_to if report_to is not None else ([] if spec.wandb.mode == "disabled" else ["wandb"]),
        run_name=spec.run_id,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
        bf16=t.bf16,
        activation_checkpointing=t.gradient_checkpointing,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if t.eval_steps:  # the plan has filled in the metric (the task's main one by default) and its direction
        args.update(
            eval_strategy="steps",
            eval_steps=t.eval_steps,
            per_device_eval_batch_size=spec.task.eval_batch_size,
            load_best_model_at_end=t.load_best_model_at_end,
            metric_for_best_model=eval_key(t.metric_for_best_model) if t.metric_for_best_model else None,
            greater_is_better=t.greater_is_better,
        )
    return {**args, **t.extra}


def eval_key(metric: str) -> str:
    """A task metric's name in the Trainer's logs: eval_<name> (eval_loss stays eval_loss)."""
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def evaluations(state, t) -> dict:
    """train.json's record of in-training evaluation: every evaluation, and the best one when it was kept."""
    if not t.eval_steps:
        return {}
    history = [
        {k: v for k, v in e.items() if k == "step" or k.startswith("eval_")}
        for e in state.log_history
        if any(k.startswith("eval_") for k in e)
    ]
    best = None
    if t.load_best_model_at_end and state.best_model_checkpoint:
        best = {"checkpoint_step": int(state.best_model_checkpoint.rsplit("-", 1)[-1]), "value": state.best_metric}
    return {"evaluations": history, "best": best}


class Trainer(transformers.Trainer):
    """The transformers Trainer with a seeded length-grouped order and the method's own optimizer (LoRA+).

    With `evaluate_fn`, evaluation during training is the task type's own (its real
    metrics, as the evaluation step computes them), not the Trainer's loss loop.
    """

    def __init__(self, *args, lengths: list[int], make_optimizer=None, evaluate_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lengths, self.make_optimizer, self.evaluate_fn = lengths, make_optimizer, evaluate_fn

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        if self.evaluate_fn is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        training = self.model.training
        self.model.eval()
        with torch.no_grad():
            found = self.evaluate_fn(self.model)
        self.model.train(training)
        metrics = {eval_key(k): v for k, v in found.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

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


def supervised(
    model,
    tokenizer,
    train_ds: datasets.Dataset,
    args: dict,
    callbacks,
    make_optimizer,
    collator,
    loss_kwargs: bool,
    eval_ds=None,
    evaluate_fn=None,
):
    """peftlab's Trainer on the tokenised columns, with the task type's collator (and its evaluation, when
    `evaluate_fn`).

    `loss_kwargs` is the task type's: whether the model divides its loss by the global
    `num_items_in_batch` (see TaskType.loss_kwargs). The Trainer assumes every model whose
    forward takes **kwargs does, which would scale a per-batch-mean loss wrongly.
    """
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=train_ds.select_columns(model_columns(train_ds)),
        eval_dataset=eval_ds.select_columns(model_columns(eval_ds)) if eval_ds is not None else None,
        data_collator=collator,
        processing_class=tokenizer,
        lengths=train_ds["length"],
        callbacks=callbacks,
        make_optimizer=make_optimizer,
        evaluate_fn=evaluate_fn,
    )
    trainer.model_accepts_loss_kwargs = trainer.model_accepts_loss_kwargs and loss_kwargs
    return trainer


def grpo(
    model,
    tokenizer,
    train_ds: datasets.Dataset,
    args: dict,
    callbacks,
    make_optimizer,
    reward_names: list[str],
    rl: dict,
):
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
