"""Train one run: a plain function of its resolved spec.

    python -m peftlab.train --spec results/default/specs/train_run/<run_id>.json \
        --adapter results/default/runs/<run_id>/adapter --record results/default/runs/<run_id>/train.json \
        --checkpoints results/default/checkpoints/<run_id>

Reads top to bottom: set up (data, model, adapter), train with the task type's
trainer (peftlab.trainers: dynamic padding and length-grouped batches in a seeded
order; rlvr: TRL's GRPOTrainer with the task's rewards), checkpointing every
`save_steps`, save the adapter in peft's format, check that it reloads onto an untouched base with
the same logits (within `numerics.RELOAD_ULPS` of their scale), write train.json,
keep the checkpoints `outputs.checkpoints` asks for (none, the last, or every N steps:
each with an adapter that evaluate reads) and drop the rest.

A run started again after being killed resumes from its last complete checkpoint,
but only one written from the same training settings: the checkpoint folder holds
the fingerprint of the spec's training part (`spec.fingerprint`), and a mismatch
discards it. A trainer holds a lock on the folder while it runs, so a second one
started on the same run refuses; the kernel drops the lock of a dead process.
Checkpoints live outside the run's declared outputs (Snakemake deletes those
before it reruns a failed job). A non-finite loss or gradient norm stops training
at the logging step that sees it.

The tracker (peftlab.tracking, the spec's `tracker` section) records ΔW's spectrum and the
gradients of every adapted layer while the run trains, into tracking/ beside train.json.

A search run at a rung of a successive-halving search (`spec.rung`, peftlab.search.ladder) is a run of
its rung's share of the steps, its schedule (warm-up, decay) scaled to that budget; above rung 0 it first
reads its rung's promotion: a rate the promotion dropped is recorded as pruned at once, and a kept one
resumes the rung below's last checkpoint (its weights, optimiser state and step) and goes on to its own
budget, the schedule restarting at its own horizon (peftlab.search explains why).

With `training.eval_steps` the task type's own evaluation runs during training
(train.json's `evaluations`); with `load_best_model_at_end` the adapter saved and
checked is the best evaluation's checkpoint, not the last step's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
import os
import shutil
import socket
from pathlib import Path

import datasets
import torch
import transformers
from transformers import TrainerCallback, TrainerState

from peftlab import artifacts, cli, health, methods, numerics, observe, search, tasks, trainers
from peftlab.checkpoints import KeepEvery, claimed, last_checkpoint, prune, step_of
from peftlab.compute import device_of, logits
from peftlab.dataset import holdout, split
from peftlab.methods import targets
from peftlab.models import (
    RUN_FILE,
    load_model,
    load_tokenizer,
    load_trained,
    probe_batch,
    run_marker,
    trained_label_names,
)
from peftlab.schema import schema_default
from peftlab.spec import RunSpec, fingerprint
from peftlab.tracking import report
from peftlab.tracking.tracker import Tracker, subspace_k

log = logging.getLogger(__name__)


RUNG_BELOW = "rung_below"  # in a halving rung's checkpoint folder: the origin of the checkpoint it resumed


class Diverged(RuntimeError):
    """The training loss or gradient norm stopped being a finite number."""


class Guard(TrainerCallback):
    """Logs at every checkpoint and at the end, so the logged losses cover every step (a
    resumed run's record included), and stops at the first non-finite loss or gradient norm."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or control.should_training_stop:
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            if key in (logs or {}) and not numerics.finite(logs[key]):
                finite = [e for e in state.log_history if "loss" in e and numerics.finite(e["loss"])]
                last = (
                    f"the last finite loss was {finite[-1]['loss']:.4g} at step {finite[-1]['step']}"
                    if finite
                    else "no loss was finite"
                )
                raise Diverged(
                    f"training diverged: {key} is {logs[key]} at step {state.global_step}; {last}. "
                    "Lower training.learning_rate or set training.max_grad_norm"
                )


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


def mean_loss(log_history: list[dict]) -> float | None:
    """The training loss averaged over every step: each logged loss is the mean since the
    previous log, so it weighs by its interval (Guard logs at every checkpoint, so a resumed
    run's history has no gap)."""
    total, previous = 0.0, 0
    for e in log_history:
        if "loss" in e:
            total += e["loss"] * (e["step"] - previous)
            previous = e["step"]
    return total / previous if previous else None


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


def total_steps(t, examples: int, world_size: int = 1) -> int:
    """Optimiser steps the run will take, as the Trainer counts them (AdaLoRA schedules its budget over these).

    GRPO's batch counts completions: each prompt appears num_generations times.
    """
    if t.max_steps:
        return t.max_steps
    batches = math.ceil(examples * t.rl.get("num_generations", 1) / (t.batch_size * world_size))
    return math.ceil(t.epochs * max(math.ceil(batches / t.grad_accum), 1))


def train(
    spec: RunSpec,
    adapter: Path,
    record_path: Path,
    checkpoints: Path,
    tracking: Path | None = None,
    promotion: Path | None = None,
    resume_rung: Path | None = None,
) -> dict:
    """Train the run described by `spec`; write the adapter folder, the tracking folder
    (by default beside the record), then the record JSON.

    Under torchrun every process trains (the Trainer picks nccl on GPUs, gloo on CPU);
    the first one holds the checkpoint folder, saves, checks and records, and returns
    the record; the others return {}.

    A halving search's run above rung 0 (`spec.rung`) reads `promotion`, its rung's promotion file, and
    resumes the checkpoint folder `resume_rung` of the rung below.
    """
    rank, world_size = distributed()
    if world_size != spec.world_size:
        raise RuntimeError(
            f"{spec.run_id}: started as {world_size} process(es), but its resources give a world size of "
            f"{spec.world_size}; "
            "start it with the command peftlab.launch.launcher gives (the workflow does)"
        )
    fp = fingerprint(spec.to_dict(), "train_run")
    tracking = tracking or record_path.parent / report.TRACKING
    if spec.rung is not None and spec.rung.index > 0:
        if promotion is None or resume_rung is None:
            raise ValueError(f"{spec.run_id}: a run at rung {spec.rung.index} needs its promotion and the rung below")
        kept = search.promoted(promotion, spec.rung)
        if spec.training.learning_rate not in kept:
            reason = (
                f"rung {spec.rung.index - 1}'s promotion ({promotion}) kept {', '.join(f'{r:g}' for r in kept)}, "
                f"not {spec.training.learning_rate:g}"
            )
            return (
                unscored(spec, "pruned", reason, adapter, record_path, tracking, checkpoints, fp) if rank == 0 else {}
            )
    with claimed(checkpoints, fp) if rank == 0 else contextlib.nullcontext():
        try:
            return _train(spec, adapter, record_path, checkpoints, tracking, fp, resume_rung)
        except Diverged as e:
            if spec.holdout is None or rank != 0:
                raise
            log.warning("%s: %s; recorded as a diverged candidate of its learning-rate search", spec.run_id, e)
            return unscored(spec, "diverged", str(e), adapter, record_path, tracking, checkpoints, fp)


def unscored(
    spec: RunSpec, why: str, reason: str, adapter: Path, record_path: Path, tracking: Path, checkpoints: Path, fp: str
) -> dict:
    """A search run that ends without an adapter to score, as a result, not a failure: `diverged` (its candidate rate
    scores as the worst, peftlab.search) or `pruned` (a halving search's promotion dropped its rate). Its adapter
    folder holds the reason instead of weights, which evaluate reads."""
    if why == "pruned":
        log.info("%s: pruned: %s", spec.run_id, reason)
    shutil.rmtree(checkpoints, ignore_errors=True)
    with artifacts.atomic_dir(adapter) as tmp:
        artifacts.write_json(tmp / RUN_FILE, run_marker(spec, fp, **{why: reason}))
    with artifacts.atomic_dir(tracking) as tmp:
        (tmp / f"{why.upper()}.txt").write_text(reason + "\n")
    verdict = None
    if why == "diverged":
        verdict = {
            "status": health.DIVERGED,
            "flags": [health.DIVERGED],
            "reasons": [reason],
            "measures": {},
            "thresholds": health.THRESHOLDS,
        }
    record = {
        "run_id": spec.run_id,
        "fingerprint": fp,
        why: reason,
        "health": verdict,
        **artifacts.Provenance(spec.to_dict()).record(),
    }
    artifacts.write_json(record_path, record)
    return record


def resume_rung_below(checkpoints: Path, below: Path, steps: int) -> str:
    """This run's start from the rung below: the last checkpoint of its checkpoint folder `below`, checked to be that
    rung's last step (`steps`, the end of its budget), copied into this run's folder; the copy's path.

    The copy's origin is kept beside it (RUNG_BELOW: the origin's trainer state, which holds its losses): when the
    rung below has trained again since, this run's own checkpoints descend from weights that are gone, and are
    dropped, so a rerun never resumes them."""
    found = last_checkpoint(below)
    state = TrainerState.load_from_json(str(Path(found) / "trainer_state.json")) if found else None
    if state is None or (state.global_step, state.max_steps) != (steps, steps):
        got = f"step {state.global_step} of {state.max_steps}" if state else "no checkpoint"
        raise RuntimeError(
            f"{below} holds {got}, not the rung below's last checkpoint (step {steps} of {steps}); rerun that rung "
            "(snakemake --forcerun on its train.json)"
        )
    origin = hashlib.sha256((Path(found) / "trainer_state.json").read_bytes()).hexdigest()
    marker = checkpoints / RUNG_BELOW
    if marker.exists() and marker.read_text().strip() != origin:
        for own in checkpoints.glob("checkpoint-*"):
            log.warning("dropping %s: it resumed a checkpoint of the rung below that has been trained again", own)
            shutil.rmtree(own)
    if last_checkpoint(checkpoints):  # this run's own, resumed from this very origin: go on from it
        return last_checkpoint(checkpoints)
    partial = checkpoints / f".copying-{Path(found).name}"  # outside checkpoint-*: a kill mid-copy leaves no checkpoint
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(found, partial)
    marker.write_text(origin + "\n")
    target = checkpoints / Path(found).name
    partial.rename(target)
    log.info("resuming the rung below's checkpoint %s", found)
    return str(target)


class RestartSchedule(TrainerCallback):
    """A resumed halving rung's schedule, restarted: the optimiser state of the rung below holds the rate its decay
    ended at (about 0), which the Trainer's first step would use; set it to this rung's schedule at the resumed step."""

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        lambdas = getattr(lr_scheduler, "lr_lambdas", None)
        if optimizer is None or lambdas is None:
            return
        for group, base, rate in zip(optimizer.param_groups, lr_scheduler.base_lrs, lambdas):
            group["lr"] = base * rate(lr_scheduler.last_epoch)


def _train(
    spec: RunSpec,
    adapter: Path,
    record_path: Path,
    checkpoints: Path,
    tracking: Path,
    fp: str,
    resume_rung: Path | None,
) -> dict:
    prov = artifacts.Provenance(spec.to_dict())
    task, t = spec.task, spec.training
    method = methods.get(spec.peft.type)
    rank, world_size = distributed()
    transformers.set_seed(t.seed)

    # --- set up: data, model, adapter
    # training never opens the evaluation split: a search run holds out its validation share (which
    # evaluate scores it on), a run that evaluates while it trains holds out training.validation_share
    train_ds, validation = split(spec.data_dir, "train"), None
    if spec.holdout is not None:
        train_ds, validation = holdout(train_ds, spec.holdout.share, spec.holdout.seed)
    elif t.eval_steps:
        train_ds, validation = holdout(train_ds, t.validation_share, t.validation_seed)
    probe_rows = validation if validation is not None else train_ds  # the reload check's batch
    train_ds = train_subset(train_ds, t.train_size, t.data_seed)
    tokenizer = load_tokenizer(spec.model)
    base = load_model(
        spec.model, task, tokenizer, quantization=methods.quantization(spec.peft), label_names=trained_label_names(spec)
    )
    total_params = base.num_parameters()  # counts a 4-bit base's packed weights as the parameters they hold
    steps = total_steps(t, len(train_ds), world_size)
    trainer_spec, below = spec, None
    if spec.rung is not None:  # a halving rung: a run of the rung's budget, its schedule's warm-up and decay included
        below = search.stop_step(spec.rung.below, steps) if spec.rung.below is not None else None
        steps = search.stop_step(spec.rung.share, steps)
        if below is not None and below >= steps:
            raise ValueError(
                f"{spec.run_id}: rung {spec.rung.index} would end at step {steps}, where the rung below ended "
                f"({below}); raise the run's steps or lr_search.halving.min_share, or lower eta"
            )
        trainer_spec = dataclasses.replace(spec, training=dataclasses.replace(t, max_steps=steps))
    ctx = methods.Context(
        task_type=tasks.of(task).peft_task_type,
        total_steps=steps,
        targets=targets.resolve(base, spec.peft.target_modules, method.default_targets),
    )
    model = methods.attach(base, spec.peft, ctx)
    trainable = sum(x.numel() for x in model.parameters() if x.requires_grad)
    movement = health.Movement(model)  # the initialisation, before any checkpoint is loaded
    tracker = Tracker(spec.tracker, model, method, subspace_k(spec, schema_default("peft", "r")), ctx.total_steps, rank)
    checkpoints.mkdir(parents=True, exist_ok=True)
    initial = checkpoints / "initial_adapter"
    if rank == 0 and method.init_changes_base and not (initial / "adapter_config.json").exists():
        with artifacts.atomic_dir(initial) as tmp:
            model.save_pretrained(tmp)

    # --- train
    common = trainers.arguments(trainer_spec, str(checkpoints), report_to=observe.wandb_setup(spec, fp, total_params))
    trainer_callbacks = [
        Guard(),
        observe.Progress(spec.run_id),
        *(callbacks(model) if (callbacks := methods.hook(method, "callbacks")) else []),
        tracker,
        *([KeepEvery(keep)] if isinstance(keep := spec.outputs.checkpoints, int) else []),
        *([RestartSchedule()] if below is not None else []),
    ]
    make_optimizer = (
        functools.partial(optimizer, p=spec.peft) if (optimizer := methods.hook(method, "optimizer")) else None
    )
    trainer = tasks.of(task).trainer(
        trainer_spec, model, tokenizer, train_ds, validation, common, trainer_callbacks, make_optimizer
    )
    tracker.attach(trainer, fixed_loss=not tasks.of(task).rewarded)
    args = trainer.args
    if torch.distributed.is_initialized():  # the first process has claimed the folder (and dropped stale checkpoints)
        torch.distributed.barrier()
    resume = last_checkpoint(checkpoints)
    if below is not None and rank == 0:
        resume = resume_rung_below(checkpoints, resume_rung, below)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        resume = last_checkpoint(checkpoints)
    tracker.restore(resume)
    tokens_before, runtime = 0, 0.0
    if (
        resume
        and (done := TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))).global_step
        >= done.max_steps
        and done.max_steps == ctx.total_steps  # a halving rung's copy of the rung below's last checkpoint has fewer
    ):
        # a run that finished training and failed after it (say, in the reload check): resuming
        # would take one more step past the target, so take the finished weights as they are
        keep = done.best_model_checkpoint if t.load_best_model_at_end and done.best_model_checkpoint else resume
        log.info("%s already holds the final step %d; loading %s instead of training", resume, done.global_step, keep)
        trainer._load_from_checkpoint(keep)
        trainer.state = done
    else:
        if resume:
            log.info("resuming from %s", resume)
            tokens_before = artifacts.read_json(Path(resume) / "trainer_state.json")["num_input_tokens_seen"]
        artifacts.reset_peak_memory()  # the CUDA peak from here on is training's (the weights already loaded included)
        runtime = trainer.train(resume_from_checkpoint=resume).metrics["train_runtime"]
    peak = artifacts.peak_memory_mb()  # before the reload check puts a second copy of the model on the device
    state = trainer.state
    ran_on = hosts()
    if rank != 0:  # the other processes are done; the first saves, checks and records
        return {}
    kept = trainers.evaluations(state, t).get("best")  # load_best_model_at_end: the weights are that checkpoint's
    tracker.finish(kept["checkpoint_step"] if kept else state.global_step)
    verdict = judge(spec, state.log_history, movement)

    # --- save, then check the saved adapter against the model in memory
    probe = probe_batch(probe_rows, tokenizer, task)
    trained_logits = logits(model, probe)
    if not numerics.finite(trained_logits):
        raise Diverged(
            f"{spec.run_id}: the trained model gives non-finite logits on the probe batch; the adapter is broken"
        )
    with artifacts.atomic_dir(adapter) as tmp:
        methods.save(model, tmp, initial if method.init_changes_base else None)
        tokenizer.save_pretrained(tmp)
        artifacts.write_json(
            tmp / RUN_FILE, run_marker(spec, fp)
        )  # with the spec: a searched run's, at the rate its search picked
    reload_diff = reload_tol = None
    if t.check_reload:
        reloaded, device = load_trained(spec, adapter, tokenizer), device_of(model)
        if (
            device.type != "cpu"
        ):  # compare on one device: a GPU's kernels differ from the CPU's by more than the tolerance
            reloaded.to(device)
        reload_diff = numerics.max_abs_diff(logits(reloaded, probe), trained_logits)
        reload_tol = numerics.tolerance(trained_logits, numerics.RELOAD_ULPS)
        if not numerics.within(reload_diff, reload_tol):
            shutil.rmtree(adapter)
            raise RuntimeError(
                f"{spec.run_id}: adapter reloaded onto the untouched base differs by {reload_diff:.3g} > "
                f"{reload_tol:.3g}"
            )

    with artifacts.atomic_dir(tracking) as tmp:
        tracked = report.write_run(
            tracker, tmp, spec.run_id, fp, (spec.wandb.log_spectral_images, spec.wandb.log_gradient_images)
        )

    kept = keep_checkpoints(
        spec, trainer, model, tokenizer, checkpoints, initial if method.init_changes_base else None, fp
    )

    losses = [
        {"step": e["step"], "loss": e["loss"], "grad_norm": e.get("grad_norm")}
        for e in state.log_history
        if "loss" in e
    ]
    rl_rewards = [
        {"step": e["step"], "reward": e["reward"]} for e in state.log_history if "reward" in e
    ]  # GRPO's mean reward
    session_tokens = state.num_input_tokens_seen - tokens_before  # real (non-padding) tokens since start or resume
    record = {
        "run_id": spec.run_id,
        "fingerprint": fp,
        "losses": losses,
        "first_loss": losses[0]["loss"] if losses else None,
        "final_loss": losses[-1]["loss"] if losses else None,
        "train_loss": mean_loss(state.log_history),  # every step, across a resume
        "health": verdict,  # peftlab.health: ok, or what went wrong (collapsed, blew up, no learning)
        "steps": state.global_step,
        "epochs": state.epoch,
        "examples": len(train_ds),
        "tokens_seen": state.num_input_tokens_seen,
        "tokens_per_s": session_tokens / runtime if runtime else None,
        # the Trainer's train_runtime: trainer.train() of this session (0 when it loaded finished weights)
        "train_runtime_s": runtime,
        "trainable_params": trainable,
        "total_params": total_params,
        "trainable_share": trainable / total_params,
        **({"rewards": rl_rewards} if tasks.of(task).rewarded else {}),
        **trainers.evaluations(state, t),
        # what chose anything chosen during training (the kept checkpoint): never the evaluation split
        "validation": {"split": "train", "held_out": len(validation), "used_for": "in-training evaluation"}
        if t.eval_steps
        else None,
        "resumed_from": resume,
        "tracking": {
            "spectral_steps": tracked["spectral"]["steps"],
            "gradient_steps": tracked["gradients"]["steps"],
            "seconds": tracked["seconds"],
        },
        "sharpness": tracked["sharpness"],  # tracker.sharpness_probe: the top Hessian eigenvalue at initialisation
        "reload_max_abs_diff": reload_diff,
        "reload_tolerance": reload_tol,
        "checkpoints": kept,  # outputs.checkpoints: each kept one's step and the adapter folder that evaluate reads
        "adapter_bytes": artifacts.disk_bytes(adapter),
        "checkpoint_bytes": artifacts.disk_bytes(checkpoints) if kept else 0,
        "world_size": args.world_size,
        "hosts": ran_on,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        **prov.record(),
        "peak_memory": peak,  # as training ended (artifacts.peak_memory_mb), not the end of the job's
    }
    artifacts.write_json(record_path, record)
    observe.log_health(spec, fp, verdict)
    if not kept:
        shutil.rmtree(checkpoints, ignore_errors=True)
    return record


def judge(spec: RunSpec, log_history: list[dict], movement: health.Movement) -> dict:
    """The run's health (peftlab.health), logged; under `training.on_degenerate: fail` a flagged run
    raises Degenerate before its adapter or record is written (a search run never does: its
    candidate's score says what the rate did)."""
    verdict = health.from_history(log_history, movement.moved(), movement.norm(), rewarded=tasks.of(spec.task).rewarded)
    if verdict["status"] == health.OK:
        return verdict
    line = f"{spec.run_id}: run health is {health.summary(verdict)}"
    if spec.training.on_degenerate == "fail" and spec.holdout is None:
        raise health.Degenerate(
            f"{line}. training.on_degenerate is fail, so no adapter or train.json was written; "
            "change the run's settings (training.learning_rate first), or set training.on_degenerate: warn to "
            "keep it, flagged"
        )
    log.warning("%s (training.on_degenerate: warn: kept, flagged in the tables)", line)
    return verdict


def keep_checkpoints(
    spec: RunSpec, trainer, model, tokenizer, checkpoints: Path, initial: Path | None, fp: str
) -> list[dict]:
    """Prune the checkpoint folder to `outputs.checkpoints`; give each kept checkpoint an adapter `python -m
    peftlab.evaluate` reads.

    The adapter is saved as the run's own is (methods.save: PiSSA's relative to the untouched
    base), with the run's fingerprint; for `full` the checkpoint is the model, and gets the
    fingerprint and tokenizer itself. The model's weights are the last checkpoint's afterwards.
    """
    kept = prune(checkpoints, spec.outputs.checkpoints) if spec.outputs.checkpoints != "none" else []
    out = []
    for ckpt in kept:
        target = ckpt if methods.get(spec.peft.type).impl is None else ckpt / "adapter"
        if target != ckpt:
            trainer._load_from_checkpoint(str(ckpt))
            with artifacts.atomic_dir(target) as tmp:
                methods.save(model, tmp, initial)
        tokenizer.save_pretrained(target)
        artifacts.write_json(target / RUN_FILE, run_marker(spec, fp, step=step_of(ckpt)))
        out.append({"step": step_of(ckpt), "adapter": str(target)})
    return out


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--adapter", required=True, type=Path, help="adapter folder to write (peft format)")
    p.add_argument("--record", required=True, type=Path, help="train.json to write")
    p.add_argument("--checkpoints", required=True, type=Path, help="checkpoint folder, outside every declared output")
    p.add_argument("--tracking", type=Path, help="tracking folder to write (default: tracking/ beside the record)")
    p.add_argument(
        "--lr-from", type=Path, help="a final run of a learning-rate search: its cell's selection (peftlab.lr_search)"
    )
    p.add_argument("--promotion", type=Path, help="a halving search's run above rung 0: its rung's promotion file")
    p.add_argument("--resume-rung", type=Path, help="... and the checkpoint folder of its rate's run at the rung below")
    args = p.parse_args(argv)
    spec = RunSpec.from_dict(cli.start(args))
    if spec.lr_search is not None:
        if args.lr_from is None:
            p.error(
                f"{spec.run_id}: its learning rate comes from the search of {spec.lr_search.cell}; give that "
                "selection with --lr-from"
            )
        spec = spec.with_learning_rate(search.chosen_rate(args.lr_from, spec.lr_search))
        log.info(
            "%s: training at %g, the rate its learning-rate search picked (%s)",
            spec.run_id,
            spec.training.learning_rate,
            args.lr_from,
        )
    record = train(spec, args.adapter, args.record, args.checkpoints, args.tracking, args.promotion, args.resume_rung)
    if record and "diverged" not in record and "pruned" not in record:
        log.info(
            "%s: loss %s -> %s, %s tokens/s",
            record["run_id"],
            record["first_loss"],
            record["final_loss"],
            record["tokens_per_s"],
        )


if __name__ == "__main__":
    main()
