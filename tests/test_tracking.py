"""Mechanistic tracking (peftlab.tracking): the spectral quantities against values computed by hand,
the low-rank path against a dense SVD, the physics of real methods at initialisation, and the config."""

from __future__ import annotations

import math
import sys
import types

import pandas as pd
import pytest
import torch

from conftest import load_test_config
from peftlab import methods
from peftlab.config import ConfigError, plan
from peftlab.methods import targets
from peftlab.models import load_model, load_tokenizer
from peftlab.spec import TrackerSpec
from peftlab.tracking import report, spectra
from peftlab.tracking.tracker import Tracker


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def known_weight(m=48, n=32):
    """W = U diag(s) Vᵀ with s = 10, 9, ..., distinct and known."""
    u, v = orthonormal(m, n, 0), orthonormal(n, n, 1)
    s = torch.linspace(10, 1, n, dtype=torch.float64)
    return u, s, v, (u * s) @ v.T


def close(a: float, b: float, scale: float, rel: float = 1e-5) -> bool:
    return abs(a - b) <= rel * scale


@pytest.mark.numerics
def test_a_known_delta_gives_its_singular_values_ranks_and_alignment_exactly():
    u, _, v, w = known_weight()
    k = 2
    basis = spectra.basis(w.float(), k)
    # ΔW = 3 u1 v1ᵀ + 1 u2 v2ᵀ (W's top two directions) + 2 u_last v_lastᵀ (its smallest)
    delta = 3 * torch.outer(u[:, 0], v[:, 0]) + 1 * torch.outer(u[:, 1], v[:, 1]) + 2 * torch.outer(u[:, -1], v[:, -1])
    q = spectra.quantities(*spectra.svd_dense(delta.float()), basis, tuple(delta.shape), top=4)
    sv = [3.0, 2.0, 1.0]
    energy = sum(x * x for x in sv)
    p = [x / sum(sv) for x in sv]
    hand = {
        "sv_1": 3.0,
        "sv_2": 2.0,
        "sv_3": 1.0,
        "fro_norm": math.sqrt(energy),
        "spectral_norm": 3.0,
        "rel_norm": math.sqrt(energy) / float(torch.linalg.norm(w)),
        "numerical_rank": 3.0,
        "effective_rank": math.exp(-sum(x * math.log(x) for x in p)),
        "stable_rank": energy / 9.0,
        "condition_number": 3.0,
        "align_top_left": (9 + 1) / energy,
        "align_top_right": (9 + 1) / energy,
        "align_bottom_left": 4 / energy,
        "align_bottom_right": 4 / energy,
        "align_top": 10 / energy,
        "align_bottom": 4 / energy,
    }
    for key, value in hand.items():
        assert close(q[key], value, max(abs(value), 1.0)), (key, q[key], value)
    assert q["sv_4"] == pytest.approx(0.0, abs=1e-5 * 3)


@pytest.mark.numerics
@pytest.mark.parametrize("m,n,r", [(300, 200, 16), (128, 512, 8), (64, 64, 1)])
def test_the_low_rank_path_equals_a_dense_svd(m, n, r):
    g = torch.Generator().manual_seed(m + n + r)
    w = torch.randn(m, n, generator=g)
    b, a = torch.randn(m, r, generator=g) * 0.1, torch.randn(r, n, generator=g)
    basis = spectra.basis(w, r)
    low = spectra.quantities(*spectra.svd_factored(b, a), basis, (m, n), top=r)
    dense = spectra.quantities(*spectra.svd_dense(b @ a), basis, (m, n), top=r)
    s1 = dense["sv_1"]
    for key, value in dense.items():
        # singular values and norms to their scale (ΔW's largest singular value); shares and ranks as they are
        scale = s1 if key.startswith("sv_") or "norm" in key else max(abs(value), 1.0)
        if key == "condition_number":  # s1 / s_min: relative to itself, s_min carries both paths' rounding
            scale = value * 1e2
        assert close(low[key], value, scale), (key, low[key], value)
    assert set(low) == set(dense)


def test_a_zero_delta_is_recorded_as_zero_not_nan():
    _, _, _, w = known_weight()
    basis = spectra.basis(w.float(), 4)
    b, a = torch.zeros(48, 4), torch.randn(4, 32)  # LoRA at init: B = 0
    q = spectra.quantities(*spectra.svd_factored(b, a), basis, (48, 32), top=4)
    assert q["fro_norm"] == q["rel_norm"] == q["numerical_rank"] == q["effective_rank"] == q["stable_rank"] == 0.0
    assert all(q[f"sv_{i}"] == 0.0 for i in range(1, 5))
    assert not any(k.startswith("align") or k == "condition_number" for k in q)  # undefined for a zero ΔW: left out
    assert all(math.isfinite(v) for v in q.values())


def attached(spec):
    """The tiny Llama with the run's method attached, as training starts."""
    method = methods.get(spec.peft.type)
    base = load_model(spec.model, spec.task, load_tokenizer(spec.model))
    ctx = methods.Context("CAUSAL_LM", total_steps=10, targets=targets.resolve(base, spec.peft.target_modules, method.default_targets))
    return methods.attach(base, spec.peft, ctx), method


def at_init(spec) -> tuple[pd.DataFrame, Tracker]:
    model, method = attached(spec)
    tracker = Tracker(spec.tracker, model, method, k=spec.peft.r, max_steps=10)
    tracker.log_spectral(0)
    spectral, _ = tracker.frames()
    return spectral[spectral["kind"] == "delta"].pivot_table(index="layer", columns="quantity", values="value"), tracker


def test_pissa_starts_in_the_top_subspace_of_w_and_milora_in_the_bottom(in_tiny):
    pissa, tracker = at_init(in_tiny("pissa"))
    assert len(pissa) == 4  # q and v of both layers
    assert (pissa["align_top_left"] > 0.99).all() and (pissa["align_top_right"] > 0.99).all()
    assert (pissa["align_bottom"] < 0.01).all()
    # ΔW₀ is W's top-r part, so its singular values are W's r largest
    for layer in tracker.layers:
        top = tracker.bases[layer.name].s[: layer.module.r["default"]]
        got = torch.tensor([pissa.loc[layer.name, f"sv_{i + 1}"] for i in range(len(top))], dtype=torch.float32)
        torch.testing.assert_close(got, top.cpu(), rtol=1e-4, atol=1e-5 * float(top[0]))

    milora, _ = at_init(in_tiny("milora"))
    assert (milora["align_bottom_left"] > 0.99).all() and (milora["align_bottom_right"] > 0.99).all()
    assert (milora["align_top"] < 0.01).all()


def test_lora_starts_at_a_zero_delta_recorded_as_zero(in_tiny):
    lora, _ = at_init(in_tiny("lora"))
    assert len(lora) == 4 and (lora["fro_norm"] == 0).all() and (lora["effective_rank"] == 0).all()
    assert "align_top" not in lora and not lora.isna().any().any()


def test_a_method_without_a_weight_delta_says_why_and_still_tracks_gradients(in_tiny):
    spec = in_tiny("prompt_tuning")
    model, method = attached(spec)
    tracker = Tracker(spec.tracker, model, method, k=8, max_steps=10)
    assert tracker.reason == f"prompt_tuning: {method.not_mergeable_reason}" and tracker.layers == []
    assert tracker.record_gradients and tracker.roles  # its prompt embedding is tracked


def test_the_tracker_section_is_perls_and_overridable_per_sweep_block_and_experiment():
    raw = load_test_config()
    raw["tracker"] = {"spectral_log_frequency": 20}
    raw["sweep"][0]["tracker"] = {"enable_gradient_tracking": False}
    runs = plan(raw).runs
    first, other = runs["arith/tiny-llama/lora/r8-s1"]["tracker"], runs["arith/tiny-llama/dora/r8-s1"]["tracker"]
    assert (first["spectral_log_frequency"], first["enable_gradient_tracking"]) == (20, False)
    assert (other["spectral_log_frequency"], other["enable_gradient_tracking"]) == (20, True)
    assert TrackerSpec(**other) == TrackerSpec(spectral_log_frequency=20)
    raw["tracker"] = {"spectral_every": 5}
    with pytest.raises(ConfigError, match="spectral_every"):
        plan(raw)
    raw["tracker"] = {"gradient_log_frequency": 0}
    with pytest.raises(ConfigError, match="gradient_log_frequency"):
        plan(raw)


def test_layer_averages_and_images_go_to_wandb_when_it_is_on(monkeypatch, tmp_path):
    logged = []
    fake = types.SimpleNamespace(run=object(), log=lambda d: logged.append(d), Image=lambda path: ("image", path))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tracker = Tracker.__new__(Tracker)
    tracker.spectral_rows = [(5, "l.0.q", 0, "q", "delta", "rel_norm", 0.2), (5, "l.1.q", 1, "q", "delta", "rel_norm", 0.4)]
    tracker._to_wandb(types.SimpleNamespace(report_to=["wandb"]), 5)
    assert logged == [{"tracking/rel_norm": pytest.approx(0.3), "train/global_step": 5}]
    tracker._to_wandb(types.SimpleNamespace(report_to=[]), 5)
    assert len(logged) == 1
    tracker.gradient_rows = [(1, "l.0.q", 0, "q", "lora_B", "grad_norm", 2.0), (1, "l.1.q", 1, "q", "lora_B", "grad_norm", 4.0)]
    tracker._to_wandb(types.SimpleNamespace(report_to=["wandb"]), 1, gradients=True)
    assert logged[-1] == {"tracking/grad_norm/lora_B": 3.0, "train/global_step": 1}
    report._images_to_wandb(tmp_path, ["heatmap_rel_norm.png", "heatmap_grad_lora_B.png"], True, False)
    assert logged[-1] == {"tracking/heatmap_rel_norm": ("image", str(tmp_path / "heatmap_rel_norm.png"))}
