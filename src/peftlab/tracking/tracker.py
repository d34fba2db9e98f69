"""The tracker: a TrainerCallback that records ΔW's spectra and the gradients of every adapted layer while a run trains.

Spectral records are taken at step 0, every `spectral_log_frequency` steps and at the end;
gradient records at step 1, every `gradient_log_frequency` steps and at the last step.
W's SVD is computed once per layer, when the tracker is built (before training, so also
on a resume, from the model as initialised). Gradient norms are read before clipping
(the clipped norms divided by the clip coefficient, which the tracker takes from the
Trainer's own clipping), and the update-to-weight ratio ‖θ_after − θ_before‖ / ‖θ_before‖
from the optimiser step itself.

Intruder dimensions (peftlab.tracking.spectra.intruders: top-`intruder_k` left singular vectors of
the fine-tuned weight W + (ΔW − ΔW₀) far from every one of W's) are counted per layer at the end,
and every `intruder_log_frequency` steps when it is set, as the quantity `intruders` of the
`delta` rows. With `sharpness_probe`, the largest eigenvalue of the loss Hessian in the trainable
parameters (peftlab.tracking.sharpness) is estimated when training begins, before the first
optimiser step, on the run's first `sharpness_batches` training batches.

Only the first process records (the gradients it sees are already averaged over every
process). The history so far is written into each checkpoint before the Trainer writes
its trainer_state.json there, so a complete checkpoint always holds it, and a resumed
run continues it: its history equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import TrainerCallback

from peftlab.tracking import layers as tl
from peftlab.tracking import sharpness, spectra

log = logging.getLogger(__name__)

SPECTRAL = "spectral.parquet"
GRADIENTS = "gradients.parquet"
SPECTRAL_COLUMNS = ["step", "layer", "depth", "module", "kind", "quantity", "value"]
GRADIENT_COLUMNS = ["step", "layer", "depth", "module", "role", "quantity", "value"]
SHARPNESS = "sharpness.json"
INTRUDERS = "intruders"  # the quantity of the intruder-dimension rows
SNAPSHOT_ON_CPU = 50_000_000  # trainable parameters above which the pre-step copy goes to the CPU (full fine-tuning)


def subspace_k(spec, default_r: int) -> int:
    """The dimension of W's top and bottom subspaces: tracker.subspace_k, else the adapter's rank, else peft.r's
    default."""
    return spec.tracker.subspace_k or spec.peft.r or default_r


def no_delta_reason(method) -> str | None:
    """Why a method has no weight update to analyse (prompt learning, bottleneck adapters), or None."""
    return None if method.mergeable else f"{method.name}: {method.not_mergeable_reason}"


class Tracker(TrainerCallback):
    def __init__(self, settings, model, method, k: int, max_steps: int, rank: int = 0):
        """Build it right after the adapter is attached (W's SVDs are taken from the model as initialised)."""
        self.settings, self.method, self.k, self.max_steps = settings, method, k, max_steps
        self.record_spectral = settings.enable_spectral_tracking and rank == 0
        self.record_gradients = settings.enable_gradient_tracking and rank == 0
        self.probe_sharpness = settings.sharpness_probe and rank == 0
        self.reason = no_delta_reason(method) if self.record_spectral else None
        self.spectral_rows: list[tuple] = []
        self.gradient_rows: list[tuple] = []
        self.sharpness: dict | None = None
        self.trainer, self.fixed_loss = None, True
        self.seconds = {"setup": 0.0, "spectral": 0.0, "intruders": 0.0, "gradients": 0.0, "sharpness": 0.0}
        self.resumed_at = self.final_step = None
        self.armed = False
        self._clip_total = None
        start = time.perf_counter()
        self.layers, self.bases = [], {}
        if self.record_spectral and self.reason is None:
            device = (
                torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
            )  # the model may not be there yet
            self.layers = tl.adapted(model, full=method.name == "full", init_changes_base=method.init_changes_base)
            self.bases = {layer.name: spectra.basis(layer.weight().to(device), k) for layer in self.layers}
            if not self.layers:
                self.reason = f"{method.name}: no adapted linear layer to analyse"
        self.model = model
        self.roles = tl.roles(model) if self.record_gradients else {}
        self.seconds["setup"] = time.perf_counter() - start

    # --- the schedule
    def spectral_due(self, step: int) -> bool:
        return (
            self.record_spectral and not self.reason and (step == 0 or step % self.settings.spectral_log_frequency == 0)
        )

    def intruders_due(self, step: int) -> bool:
        every = self.settings.intruder_log_frequency
        return (
            self.record_spectral
            and not self.reason
            and self.settings.intruder_k > 0
            and bool(every)
            and step > 0
            and step % every == 0
        )

    def gradients_due(self, step: int) -> bool:
        return self.record_gradients and (
            step == 1 or step % self.settings.gradient_log_frequency == 0 or step == self.max_steps
        )

    # --- spectral records
    def log_spectral(self, step: int) -> None:
        # recorded already (the end of a run whose last step is due)
        if any(r[0] == step and r[5] != INTRUDERS for r in self.spectral_rows):
            return
        start = time.perf_counter()
        rows = []
        for layer in self.layers:
            w = self.bases[layer.name]
            for kind, got in (("delta", layer.delta()), ("update", layer.update())):
                if got is None:
                    continue
                how, parts = got
                if w.s.device != parts[0].device:  # the Trainer has moved the model since the SVDs were taken
                    w = self.bases[layer.name] = spectra.moved(w, parts[0].device)
                u, s, v = spectra.svd_factored(*parts) if how == "factors" else spectra.svd_dense(*parts)
                shape = (u.shape[0], v.shape[0])
                for q, value in spectra.quantities(u, s, v, w, shape, self.settings.singular_values).items():
                    rows.append((step, layer.name, layer.depth, layer.kind, kind, q, value))
        self.spectral_rows.extend(rows)
        self.seconds["spectral"] += time.perf_counter() - start

    def log_intruders(self, step: int) -> None:
        """Each layer's intruder dimensions among the top-k left singular vectors of W + (ΔW − ΔW₀), against W's."""
        s = self.settings
        if s.intruder_k <= 0 or any(r[0] == step and r[5] == INTRUDERS for r in self.spectral_rows):
            return
        start = time.perf_counter()
        for layer in self.layers:
            how, parts = layer.change()
            count = spectra.intruders(
                layer.pretrained(), parts if how == "factors" else parts[0], s.intruder_k, s.intruder_threshold
            )
            self.spectral_rows.append((step, layer.name, layer.depth, layer.kind, "delta", INTRUDERS, float(count)))
        self.seconds["intruders"] += time.perf_counter() - start

    # --- the sharpness probe
    def probe(self, args) -> None:
        """The top Hessian eigenvalue at initialisation (peftlab.tracking.sharpness), over the run's first training
        batches."""
        if not self.fixed_loss:
            self.sharpness = {
                "reason": f"{self.method.name}: the run's loss is GRPO's, over completions it samples as it trains"
            }
            return
        start = time.perf_counter()
        trainer = self.trainer
        device = next(p for p in self.model.parameters() if p.requires_grad).device
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            batches = sharpness.first_batches(
                trainer.train_dataset,
                trainer._get_train_sampler(),
                trainer.data_collator,
                args.per_device_train_batch_size,
                self.settings.sharpness_batches,
                device,
            )
        try:
            self.sharpness = sharpness.hessian_eigenvalue(
                self.model, batches, context=trainer.compute_loss_context_manager
            )
        # (a layer without a double backward, say a 4-bit base's: the run trains on)
        except Exception as e:  # noqa: BLE001
            log.exception("the sharpness probe failed; the run trains without it")
            self.sharpness = {"reason": f"not measured: {type(e).__name__}: {e}"}
            return
        finally:
            self.seconds["sharpness"] += time.perf_counter() - start
        log.info(
            "sharpness at initialisation: top Hessian eigenvalue %.4g (%d batches, %d iterations, %.1f s)",
            self.sharpness["top_eigenvalue"],
            self.sharpness["batches"],
            self.sharpness["iterations"],
            self.sharpness["seconds"],
        )

    # --- gradient records
    def attach(self, trainer, fixed_loss: bool = True) -> None:
        """Read the Trainer's own pre-clipping total norm, so the recorded gradient norms are the unclipped ones; keep
        the Trainer for the sharpness probe's batches (`fixed_loss`: the loss is a function of a batch, not GRPO's)."""
        self.trainer, self.fixed_loss = trainer, fixed_loss
        clip = getattr(trainer, "_clip_grad_norm", None)
        if clip is None:
            return

        def clip_and_note(model):
            total = clip(model)
            if self.armed:
                self._clip_total = float(total)
            return total

        trainer._clip_grad_norm = clip_and_note

    def on_step_begin(self, args, state, control, **kwargs):
        self.armed = self.gradients_due(state.global_step + 1)
        self._clip_total = None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not self.armed:
            return
        start = time.perf_counter()
        params = [(n, p) for n, p in self.model.named_parameters() if n in self.roles]
        with torch.no_grad():
            grads = torch.stack(
                [
                    p.grad.float().norm() if p.grad is not None else p.new_zeros((), dtype=torch.float32)
                    for _, p in params
                ]
            )
            coef = 1.0
            if self._clip_total is not None and args.max_grad_norm and args.max_grad_norm > 0:
                coef = min(1.0, args.max_grad_norm / (self._clip_total + 1e-6))
            self._grads = dict(zip((n for n, _ in params), (grads / coef).tolist()))
            self._coef = coef
            on_cpu = sum(p.numel() for _, p in params) > SNAPSHOT_ON_CPU
            self._before = {
                n: p.detach().to("cpu" if on_cpu else p.device, dtype=torch.float32, copy=True) for n, p in params
            }
        self.seconds["gradients"] += time.perf_counter() - start

    def on_optimizer_step(self, args, state, control, **kwargs):
        if not self.armed:
            return
        start = time.perf_counter()
        step = state.global_step + 1
        sums: dict[tuple[str, str], list[float]] = {}
        with torch.no_grad():
            names = list(self._before)
            current = dict(self.model.named_parameters())
            norms = torch.stack([self._before[n].norm() for n in names]).tolist()
            moved = torch.stack(
                [(current[n].detach().float().to(self._before[n].device) - self._before[n]).norm() for n in names]
            ).tolist()
        for n, param_norm, update_norm in zip(names, norms, moved):
            acc = sums.setdefault(self.roles[n], [0.0, 0.0, 0.0])
            acc[0] += self._grads[n] ** 2
            acc[1] += param_norm**2
            acc[2] += update_norm**2
        for (layer, role), (g2, p2, u2) in sums.items():
            base = (step, layer, tl.depth(layer), layer.rsplit(".", 1)[-1], role)
            self.gradient_rows += [
                (*base, "grad_norm", g2**0.5),
                (*base, "param_norm", p2**0.5),
                (*base, "update_norm", u2**0.5),
            ]
            if p2 > 0:
                self.gradient_rows.append((*base, "update_ratio", (u2 / p2) ** 0.5))
        self.gradient_rows.append((step, "(all)", None, "(all)", "(all)", "clip_coef", self._coef))
        self._before = self._grads = None
        self.armed = False
        self.seconds["gradients"] += time.perf_counter() - start
        self._to_wandb(args, step, gradients=True)

    # --- the Trainer's events
    def on_train_begin(self, args, state, control, **kwargs):
        if self.resumed_at is None and state.global_step == 0 and self.spectral_due(0):
            self.log_spectral(0)
            self._to_wandb(args, 0)
        if self.probe_sharpness and self.sharpness is None and state.global_step == 0 and self.trainer is not None:
            self.probe(args)

    def on_step_end(self, args, state, control, **kwargs):
        spectral, intruders = self.spectral_due(state.global_step), self.intruders_due(state.global_step)
        if spectral:
            self.log_spectral(state.global_step)
        if intruders:
            self.log_intruders(state.global_step)
        if spectral or intruders:
            self._to_wandb(args, state.global_step)
        if control.should_save and (self.record_spectral or self.record_gradients or self.sharpness):
            self.save_history(Path(args.output_dir) / f"checkpoint-{state.global_step}" / "tracking")

    def finish(self, step: int) -> None:
        """The record at the end of training (`step`: the step of the weights the run keeps, the best
        evaluated checkpoint's with load_best_model_at_end)."""
        self.final_step = step
        if self.record_spectral and not self.reason:
            self.log_spectral(step)
            self.log_intruders(step)

    # --- history: into each checkpoint, back from the one a run resumes
    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        spectral = pd.DataFrame(self.spectral_rows, columns=SPECTRAL_COLUMNS).astype({"depth": "Int64"})
        gradients = pd.DataFrame(self.gradient_rows, columns=GRADIENT_COLUMNS).astype({"depth": "Int64"})
        return spectral, gradients

    def save_history(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        spectral, gradients = self.frames()
        spectral.to_parquet(folder / SPECTRAL, index=False)
        gradients.to_parquet(folder / GRADIENTS, index=False)
        if self.sharpness is not None:
            (folder / SHARPNESS).write_text(json.dumps(self.sharpness))

    def restore(self, checkpoint: str | None) -> None:
        """Continue the history written into the checkpoint a run resumes from."""
        if checkpoint is None or not (self.record_spectral or self.record_gradients or self.probe_sharpness):
            return
        checkpoint = Path(checkpoint)
        folder, step = checkpoint / "tracking", int(checkpoint.name.rsplit("-", 1)[-1])
        self.resumed_at = step
        if self.probe_sharpness and (folder / SHARPNESS).exists():  # probed when the run began: not again mid-run
            self.sharpness = json.loads((folder / SHARPNESS).read_text())
        if not (folder / SPECTRAL).exists():
            log.warning("%s holds no tracking history; the tracking record starts at step %d", checkpoint, step)
            return
        spectral, gradients = pd.read_parquet(folder / SPECTRAL), pd.read_parquet(folder / GRADIENTS)
        self.spectral_rows = [
            tuple(r) for r in spectral[spectral["step"] <= step].astype(object).itertuples(index=False)
        ]
        self.gradient_rows = [
            tuple(r) for r in gradients[gradients["step"] <= step].astype(object).itertuples(index=False)
        ]
        self.spectral_rows = [tuple(None if pd.isna(x) else x for x in r) for r in self.spectral_rows]
        self.gradient_rows = [tuple(None if pd.isna(x) else x for x in r) for r in self.gradient_rows]
        log.info(
            "tracking history restored from %s: %d spectral and %d gradient rows", folder, len(spectral), len(gradients)
        )

    # --- the record
    def summary(self) -> dict:
        s = self.settings
        spectral, gradients = self.frames()
        return {
            "spectral": {
                "enabled": s.enable_spectral_tracking,
                "frequency": s.spectral_log_frequency,
                "reason": self.reason,
                "subspace_k": self.k,
                "layers": len(self.layers),
                "steps": sorted(spectral.loc[spectral["quantity"] != INTRUDERS, "step"].unique().tolist()),
                "low_rank_layers": sum(
                    layer.how in ("lora", "adalora", "vera") or hasattr(layer.module, "delta_factors")
                    for layer in self.layers
                ),
                "intruders": {
                    "k": s.intruder_k,
                    "threshold": s.intruder_threshold,
                    "steps": sorted(spectral.loc[spectral["quantity"] == INTRUDERS, "step"].unique().tolist()),
                },
            },
            "gradients": {
                "enabled": s.enable_gradient_tracking,
                "frequency": s.gradient_log_frequency,
                "steps": sorted(gradients["step"].unique().tolist()),
                "roles": sorted(gradients.loc[gradients["role"] != "(all)", "role"].unique().tolist()),
            },
            "sharpness": self.sharpness,  # None unless tracker.sharpness_probe
            "final_step": self.final_step,  # the step of the weights the run keeps
            "resumed_at": self.resumed_at,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def _to_wandb(self, args, step: int, gradients: bool = False) -> None:
        """The step's layer-averaged scalars (ΔW's, or each role's gradient norm) into the run's wandb run, when it
        reports there."""
        if "wandb" not in (args.report_to or []):
            return
        import wandb

        if wandb.run is None:
            return
        if gradients:
            rows = pd.DataFrame(
                [r for r in self.gradient_rows if r[0] == step and r[5] == "grad_norm"], columns=GRADIENT_COLUMNS
            )
            scalars = {
                f"tracking/grad_norm/{role}": float(v) for role, v in rows.groupby("role")["value"].mean().items()
            }
        else:
            rows = pd.DataFrame(
                [r for r in self.spectral_rows if r[0] == step and r[4] == "delta"], columns=SPECTRAL_COLUMNS
            )
            means = rows.groupby("quantity")["value"].mean()
            keys = ("rel_norm", "align_top", "align_bottom", "effective_rank", "stable_rank", INTRUDERS)
            scalars = {f"tracking/{k}": float(means[k]) for k in keys if k in means}
        wandb.log({**scalars, "train/global_step": step})
