"""The sharpness probe (peftlab.tracking.sharpness, `tracker.sharpness_probe`): the top Hessian eigenvalue of a
quadratic loss whose Hessian is known, of the tiny Llama's loss against its dense Hessian, the tracker's record at
initialisation (and across a resume), and the learning-rate tables that show it beside the chosen rate."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import TrainerControl, TrainerState

from peftlab import artifacts, methods, tables, tasks, trainers
from peftlab import search as lr_search
from peftlab.dataset import split
from peftlab.methods import targets
from peftlab.models import load_model, load_tokenizer
from peftlab.tracking import sharpness
from peftlab.tracking.tracker import Tracker


class Quadratic(torch.nn.Module):
    """loss = ½ · scale · xᵀ A x over the trainable x, plus a frozen y with a far larger curvature that the probe must
    not see."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.register_buffer("a", a)
        self.x = torch.nn.Parameter(torch.randn(a.shape[0], generator=torch.Generator().manual_seed(1)))
        self.y = torch.nn.Parameter(torch.ones(2), requires_grad=False)

    def forward(self, scale=1.0):
        return {"loss": 0.5 * scale * self.x @ self.a @ self.x + 1000 * self.y.square().sum()}


def with_eigenvalues(values: list[float]) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(len(values), len(values), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    return ((q * torch.tensor(values, dtype=torch.float64)) @ q.T).float()


def test_the_probe_finds_the_largest_eigenvalue_of_a_known_hessian_within_one_percent():
    # the most negative eigenvalue has the largest magnitude: power iteration would find -15; the probe wants +9
    model = Quadratic(with_eigenvalues([-15.0, 9.0, 6.0, 3.0, 2.0, 1.0, 0.5, -1.0]))
    found = sharpness.hessian_eigenvalue(model, [{}])
    assert found["top_eigenvalue"] == pytest.approx(9.0, rel=0.01) and found["converged"] and found["batches"] == 1
    # the mean over batches: scales 1 and 3 give the Hessian 2A
    two = sharpness.hessian_eigenvalue(model, [{"scale": torch.tensor(1.0)}, {"scale": torch.tensor(3.0)}])
    assert two["top_eigenvalue"] == pytest.approx(18.0, rel=0.01) and two["batches"] == 2
    assert model.training  # given back in the mode it came in
    # two parameters (too few for ARPACK): the whole Hessian [[3, 1], [1, 3]], eigenvalues 4 and 2
    small = sharpness.hessian_eigenvalue(Quadratic(torch.tensor([[3.0, 1.0], [1.0, 3.0]])), [{}])
    assert small["top_eigenvalue"] == pytest.approx(4.0, rel=1e-6) and small["iterations"] == 2


def tiny_trainer(spec, tmp_path: Path, tracker_settings=None):
    """The run's model, tracker and Trainer, built as peftlab.train builds them (nothing trained)."""
    method = methods.get(spec.peft.type)
    tok = load_tokenizer(spec.model)
    base = load_model(spec.model, spec.task, tok)
    ctx = methods.Context(
        "CAUSAL_LM", total_steps=10, targets=targets.resolve(base, spec.peft.target_modules, method.default_targets)
    )
    model = methods.attach(base, spec.peft, ctx)
    tracker = Tracker(tracker_settings or spec.tracker, model, method, k=8, max_steps=10)
    common = trainers.arguments(spec, str(tmp_path / "checkpoints"), report_to=[])
    trainer = tasks.of(spec.task).trainer(
        spec, model, tok, split(spec.data_dir, "train"), None, common, [tracker], None
    )
    tracker.attach(trainer)
    return model, tracker, trainer


def test_on_the_tiny_llama_the_probe_is_the_dense_hessians_largest_eigenvalue(in_tiny, tmp_path):
    """LoRA r=1 on the first block's v_proj (128 trainable numbers), one batch of four: the dense Hessian, column by
    column, against the probe."""
    spec = in_tiny("lora", batch_size=4)
    spec = dataclasses.replace(
        spec, peft=dataclasses.replace(spec.peft, r=1, lora_alpha=2, target_modules=["layers.0.self_attn.v_proj"])
    )
    model, tracker, trainer = tiny_trainer(spec, tmp_path)
    batches = sharpness.first_batches(
        trainer.train_dataset,
        trainer._get_train_sampler(),
        trainer.data_collator,
        spec.training.batch_size,
        1,
        torch.device("cpu"),
    )
    found = sharpness.hessian_eigenvalue(model, batches)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = tuple(p.detach() for n, p in model.named_parameters() if p.requires_grad)
    model.eval()

    def loss(*tensors):
        return torch.func.functional_call(model, dict(zip(names, tensors)), args=(), kwargs=batches[0])["loss"]

    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernel has no double backward
        blocks = torch.autograd.functional.hessian(loss, params, vectorize=True)
    dense = torch.cat(
        [torch.cat([b.reshape(p.numel(), q.numel()) for b, q in zip(row, params)], 1) for row, p in zip(blocks, params)]
    )
    top = float(np.linalg.eigvalsh(dense.double().numpy())[-1])
    assert dense.shape == (128, 128) and top > 0
    assert found["converged"] and found["top_eigenvalue"] == pytest.approx(top, rel=2e-3)


def test_the_tracker_probes_before_the_first_step_and_keeps_it_across_a_resume(in_tiny, tmp_path, monkeypatch):
    spec = in_tiny("ia3", batch_size=4)
    settings = dataclasses.replace(spec.tracker, sharpness_probe=True, sharpness_batches=2)
    model, tracker, trainer = tiny_trainer(spec, tmp_path, settings)
    rng = torch.get_rng_state()
    tracker.on_train_begin(trainer.args, TrainerState(), TrainerControl())
    record = tracker.summary()["sharpness"]
    assert record["batches"] == 2 and record["converged"] and record["iterations"] >= 2 and record["seconds"] > 0
    assert 0 < record["top_eigenvalue"] < math.inf and tracker.seconds["sharpness"] >= record["seconds"]
    assert (
        torch.equal(torch.get_rng_state(), rng) and model.training
    )  # the run trains as it would have without the probe
    # the history a checkpoint holds carries it; a run resumed from there does not probe again (its weights have moved)
    tracker.save_history(tmp_path / "checkpoint-4" / "tracking")
    resumed = Tracker(settings, model, methods.get("ia3"), k=8, max_steps=10)
    resumed.attach(trainer)
    resumed.restore(str(tmp_path / "checkpoint-4"))
    state = TrainerState()
    state.global_step = 4
    resumed.on_train_begin(trainer.args, state, TrainerControl())
    assert resumed.summary()["sharpness"] == record
    # off by default, and GRPO's loss is not a function of a batch: the reason is recorded instead
    assert not Tracker(spec.tracker, model, methods.get("ia3"), k=8, max_steps=10).probe_sharpness
    grpo = Tracker(settings, model, methods.get("ia3"), k=8, max_steps=10)
    grpo.attach(trainer, fixed_loss=False)
    grpo.on_train_begin(trainer.args, TrainerState(), TrainerControl())
    assert "GRPO" in grpo.summary()["sharpness"]["reason"]
    # a model the probe cannot differentiate twice trains on, with the reason recorded

    def no_double_backward(*args, **kwargs):
        raise RuntimeError("derivative for aten::something_backward is not implemented")

    monkeypatch.setattr(sharpness, "hessian_eigenvalue", no_double_backward)
    failing = Tracker(settings, model, methods.get("ia3"), k=8, max_steps=10)
    failing.attach(trainer)
    failing.on_train_begin(trainer.args, TrainerState(), TrainerControl())
    assert failing.summary()["sharpness"] == {
        "reason": "not measured: RuntimeError: derivative for aten::something_backward is not implemented"
    }


SELECTION = {
    "cell": "arith/tiny-llama/ia3/search",
    "rates": [0.003, 0.03],
    "seeds": [0],
    "validation_share": 0.1,
    "validation_seed": 0,
    "metric": "loss",
    "greater_is_better": False,
    "candidates": [
        {"rate": 0.003, "mean": 1.8, "scores": {"0": 1.8}},
        {"rate": 0.03, "mean": 1.1, "scores": {"0": 1.1}},
    ],
    "best_rate": 0.03,
    "best_score": 1.1,
    "at_edge": True,
}


def final_run(root: Path, seed: int, value: float | None, cell: str = SELECTION["cell"]) -> Path:
    run = root / f"s{seed}"
    run.mkdir(parents=True)
    probed = (
        None
        if value is None
        else {"top_eigenvalue": value, "batches": 4, "iterations": 21, "converged": True, "seconds": 1.0}
    )
    artifacts.write_json(
        run / "train.json", {"spec": {"run_id": f"s{seed}", "lr_search": {"cell": cell}}, "sharpness": probed}
    )
    return run


def test_the_learning_rate_tables_show_the_mean_sharpness_of_the_final_runs_beside_the_chosen_rate(tmp_path):
    runs = [
        final_run(tmp_path / "runs", 1, 0.12),
        final_run(tmp_path / "runs", 2, 0.14),
        final_run(tmp_path / "runs", 3, None),
    ]
    runs.append(final_run(tmp_path / "runs", 4, 19.0, cell="arith/tiny-llama/lora/search-r8"))  # another cell's
    assert lr_search.sharpness_by_cell([artifacts.read_json(r / "train.json") for r in runs]) == pytest.approx(
        {"arith/tiny-llama/ia3/search": 0.13, "arith/tiny-llama/lora/search-r8": 19.0}
    )
    artifacts.write_json(tmp_path / "sel.json", SELECTION)
    (tmp_path / "tables").mkdir()
    assert tables.lr_tables([tmp_path / "sel.json"], tmp_path / "tables", runs) == 1
    best = pd.read_csv(tmp_path / "tables/best_lr.csv")
    assert best.loc[best["chosen"], "sharpness"].tolist() == pytest.approx([0.13])
    assert best.loc[~best["chosen"], "sharpness"].isna().all()
    md = (tmp_path / "tables/best_lr.md").read_text()
    assert "| λ_max at init |" in md and "| 0.03 (edge) | 0.13 | 0.003: 1.8, **0.03: 1.1** |" in md
    assert (tmp_path / "tables/lr_search.png").exists()
    # no final run probed: the column is empty in best_lr.csv and best_lr.md has none
    assert "λ_max" not in lr_search.markdown([SELECTION], {})
    assert all(row["sharpness"] is None for row in lr_search.table([SELECTION]))


def test_a_tracked_run_records_its_sharpness_and_each_layers_intruders(in_tiny, tmp_path):
    from peftlab.train import train

    spec = in_tiny("lora", max_steps=2, save_steps=1000, logging_steps=1)
    spec = dataclasses.replace(
        spec, tracker=dataclasses.replace(spec.tracker, sharpness_probe=True, sharpness_batches=2)
    )
    record = train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "checkpoints")
    tracked = artifacts.read_json(tmp_path / "tracking/tracking.json")
    assert record["sharpness"] == tracked["sharpness"] and record["sharpness"]["top_eigenvalue"] > 0
    assert record["sharpness"]["batches"] == 2 and record["sharpness"]["converged"]
    spectral = pd.read_parquet(tmp_path / "tracking/spectral.parquet")
    counts = spectral[spectral["quantity"] == "intruders"]
    assert sorted(counts["layer"]) == sorted(f"model.layers.{i}.self_attn.{m}_proj" for i in (0, 1) for m in "qv")
    assert set(counts["step"]) == {2} and counts["value"].between(0, 10).all()
    assert tracked["spectral"]["intruders"] == {"k": 10, "threshold": 0.5, "steps": [2]}
