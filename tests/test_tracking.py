"""Mechanistic tracking (peftlab.tracking): the spectral quantities against values computed by hand,
the low-rank path against a dense SVD, the physics of real methods at initialisation, the config,
and intruder dimensions (planted by hand, and counted per layer by the tracker)."""

from __future__ import annotations

import dataclasses
import math
import sys
import types

import pandas as pd
import pytest
import torch

from conftest import load_test_config
from peftlab import artifacts, methods
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
    ctx = methods.Context(
        "CAUSAL_LM", total_steps=10, targets=targets.resolve(base, spec.peft.target_modules, method.default_targets)
    )
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
    tracker.spectral_rows = [
        (5, "l.0.q", 0, "q", "delta", "rel_norm", 0.2),
        (5, "l.1.q", 1, "q", "delta", "rel_norm", 0.4),
    ]
    tracker._to_wandb(types.SimpleNamespace(report_to=["wandb"]), 5)
    assert logged == [{"tracking/rel_norm": pytest.approx(0.3), "train/global_step": 5}]
    tracker._to_wandb(types.SimpleNamespace(report_to=[]), 5)
    assert len(logged) == 1
    tracker.gradient_rows = [
        (1, "l.0.q", 0, "q", "lora_B", "grad_norm", 2.0),
        (1, "l.1.q", 1, "q", "lora_B", "grad_norm", 4.0),
    ]
    tracker._to_wandb(types.SimpleNamespace(report_to=["wandb"]), 1, gradients=True)
    assert logged[-1] == {"tracking/grad_norm/lora_B": 3.0, "train/global_step": 1}
    report._images_to_wandb(tmp_path, ["heatmap_rel_norm.png", "heatmap_grad_lora_B.png"], True, False)
    assert logged[-1] == {"tracking/heatmap_rel_norm": ("image", str(tmp_path / "heatmap_rel_norm.png"))}


# --- intruder dimensions (Shuttleworth et al. 2024): spectra.intruders and the tracker's per-layer count
def planted(
    w: torch.Tensor, u_w: torch.Tensor, v_w: torch.Tensor, s: float, seed: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) for W' = W + s·u vᵀ: u a unit vector orthogonal to every left singular vector of W (columns of u_w),
    v = W's last right singular vector (its smallest singular value σ_n)."""
    r = torch.randn(w.shape[0], generator=torch.Generator().manual_seed(seed), dtype=w.dtype)
    u = r - u_w @ (u_w.T @ r)
    return u / u.norm(), v_w[:, -1]


@pytest.mark.numerics
def test_one_planted_new_direction_is_exactly_one_intruder():
    u_w, s_w, v_w, w = known_weight()  # 48 × 32, σ = 10 … 1: W's left vectors leave 16 output directions free
    k, eps, s = 10, 0.5, 20.0  # s is above W's 10th singular value (7.39): the new direction is the top one
    u, v = planted(w, u_w, v_w, s)
    # W' = Σ_{i<n} σ_i u_i v_iᵀ + (σ_n u_n + s u) v_nᵀ: one new left vector (σ_n u_n + s u)/√(σ_n² + s²), the top one
    # (singular value √401 > 10), whose largest |cos| with W's is σ_n/√(σ_n² + s²); then W's own u_1 … u_9
    hand = torch.tensor([s_w[-1] / math.sqrt(s_w[-1] ** 2 + s**2)] + [1.0] * 9, dtype=torch.float64)
    for delta in (s * torch.outer(u, v), (s * u[:, None], v[None, :])):  # dense, and as factors B A
        cast = delta.float() if torch.is_tensor(delta) else tuple(x.float() for x in delta)
        torch.testing.assert_close(spectra.intruder_similarity(w.float(), cast, k).double(), hand, atol=1e-5, rtol=0)
        assert spectra.intruders(w.float(), cast, k, eps) == 1
    # below W's 10th singular value the same direction is no longer among the top 10: no intruder
    assert spectra.intruders(w.float(), (2.0 * u[:, None]).float() @ v[None, :].float(), k, eps) == 0


@pytest.mark.numerics
def test_rescaling_ws_own_singular_values_makes_no_intruder_even_when_it_reorders_them():
    u_w, s_w, v_w, w = known_weight()
    # W' = U diag(c·σ) Vᵀ with c = 100/σ²: W' = U diag(100/σ) Vᵀ, W's bottom directions now its top ones
    tuned = (u_w * (100 / s_w)) @ v_w.T
    similarity = spectra.intruder_similarity(w.float(), (tuned - w).float(), 10)
    torch.testing.assert_close(similarity.double(), torch.ones(10, dtype=torch.float64), atol=1e-5, rtol=0)
    assert spectra.intruders(w.float(), (tuned - w).float(), 10, 0.5) == 0
    assert spectra.intruders(w.float(), torch.zeros(48, 32), 10, 0.5) == 0  # no change at all


def test_the_tracker_counts_intruders_per_layer_at_the_end(in_tiny, tmp_path):
    """LoRA on the tiny Llama's up_proj (256 × 64: W's left vectors leave 192 output directions free); layer 0's
    adapter is set to one planted new direction, layer 1's left at B = 0."""
    spec = in_tiny("lora")
    spec = dataclasses.replace(spec, peft=dataclasses.replace(spec.peft, target_modules=["up_proj"]))
    model, method = attached(spec)
    tracker = Tracker(spec.tracker, model, method, k=spec.peft.r, max_steps=10)
    assert [layer.name for layer in tracker.layers] == ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"]
    tracker.log_intruders(3)  # B = 0 in every layer: W' = W, nothing new
    first = tracker.layers[0]
    w = first.weight().double()
    u_w, s_w, vh_w = torch.linalg.svd(w, full_matrices=False)
    s = 2 * float(s_w[0])  # above W's largest: the planted direction is the top singular vector
    u, v = planted(w, u_w, vh_w.T, s)
    with torch.no_grad():  # ΔW = scaling · B A = s u v_nᵀ
        m = first.module
        m.lora_A["default"].weight.zero_()
        m.lora_B["default"].weight.zero_()
        m.lora_A["default"].weight[0] = v.float()
        m.lora_B["default"].weight[:, 0] = (s / m.scaling["default"]) * u.float()
    tracker.finish(7)
    spectral, _ = tracker.frames()
    counts = spectral[spectral["quantity"] == "intruders"]
    assert set(counts["kind"]) == {"delta"} and (counts.loc[counts["step"] == 3, "value"] == 0).all()
    final = counts[counts["step"] == 7].set_index("layer")["value"].to_dict()
    assert final == {"model.layers.0.mlp.up_proj": 1.0, "model.layers.1.mlp.up_proj": 0.0}
    info = tracker.summary()["spectral"]["intruders"]
    assert info == {"k": 10, "threshold": 0.5, "steps": [3, 7]} and tracker.seconds["intruders"] > 0
    # the run's tracking folder and the matrix row: per layer mean and the total over the layers
    record = report.write_run(tracker, tmp_path / "tracking", spec.run_id, "f")
    assert "heatmap_intruders.png" in record["plots"]  # counted at two steps (at the end only, no heatmap is drawn)
    artifacts.write_json(tmp_path / "train.json", {"spec": spec.to_dict()})
    row = report.run_final(tmp_path)
    assert (row["intruders"], row["intruders_total"], row["step"]) == (0.5, 1.0, 7)


def test_intruders_are_counted_at_their_own_frequency_and_can_be_turned_off(in_tiny):
    spec = in_tiny("lora")
    model, method = attached(spec)
    every = Tracker(dataclasses.replace(spec.tracker, intruder_log_frequency=5), model, method, k=8, max_steps=10)
    assert [s for s in range(11) if every.intruders_due(s)] == [5, 10]
    assert not any(
        Tracker(spec.tracker, model, method, k=8, max_steps=10).intruders_due(s) for s in range(11)
    )  # null: the end only
    off = Tracker(dataclasses.replace(spec.tracker, intruder_k=0), model, method, k=8, max_steps=10)
    off.finish(10)
    spectral, _ = off.frames()
    assert (
        len(spectral)
        and "intruders" not in set(spectral["quantity"])
        and off.summary()["spectral"]["intruders"]["steps"] == []
    )
