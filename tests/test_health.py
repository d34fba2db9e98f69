"""peftlab.health: a run that exits 0 but learned nothing is flagged, with what was seen.

The thresholds against hand-worked series, then real tiny runs that should trip each flag (and
one that should not), `training.on_degenerate: fail`, and status's view of a flagged run."""

from __future__ import annotations

import math

import pytest
import torch

from peftlab import artifacts, health, runstate, status, train


def test_a_falling_loss_is_ok_with_the_margin_worked_by_hand():
    values = [4, 3, 2.5, 2, 1.8, 1.6, 1.5, 1.4]  # 8 logs: the final value is the mean of the last 2
    verdict = health.assess(values, [1.0] * 8, moved=0.1, weight_norm=10.0)
    assert verdict["status"] == health.OK and verdict["flags"] == [] and verdict["reasons"] == []
    # noise: successive differences -1, -.5, -.5, -.2, -.2, -.1, -.1: sqrt(1.6 / 14); margin 2 x noise x sqrt(1 + 1/2)
    m = verdict["measures"]
    assert m["start"] == 4 and m["final"] == pytest.approx(1.45) and m["lowest"] == pytest.approx(1.45)
    assert m["margin"] == pytest.approx(2 * math.sqrt(1.6 / 14) * math.sqrt(1.5))


def test_a_flat_noisy_loss_is_no_learning():
    verdict = health.assess([2.0, 2.1, 1.9, 2.0, 2.1, 1.9, 2.0, 2.05], [1.0] * 8, moved=0.1, weight_norm=10.0)
    assert verdict["status"] == health.NO_LEARNING
    # differences .1 -.2 .1 .1 -.2 .1 .05: noise sqrt(.1225 / 14) = .0935, margin 2 x .0935 x sqrt(1.5) = .229
    assert verdict["reasons"] == ["the loss went from 2 to 2.025, not down by more than the margin 0.23"]


def test_a_small_drop_within_the_noise_is_no_learning_but_beyond_it_is_ok():
    noisy = [2.0, 2.2, 1.8, 2.2, 1.8, 2.1, 1.9, 1.85]  # down 0.125, noise about 0.26
    assert health.assess(noisy, [1.0] * 8, 0.1, 10.0)["status"] == health.NO_LEARNING
    clean = [2.0, 1.98, 1.96, 1.94, 1.92, 1.9, 1.88, 1.86]  # down 0.13 with no noise: 1% of the start is the margin
    assert health.assess(clean, [1.0] * 8, 0.1, 10.0)["status"] == health.OK


def test_a_rising_loss_blew_up():
    verdict = health.assess([2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5], [1.0] * 8, 0.1, 10.0)
    assert verdict["status"] == health.BLEW_UP and verdict["reasons"][0].startswith("the loss rose from 2 to 5.25")


def test_a_loss_that_climbs_back_most_of_its_fall_blew_up():
    # smoothed (window 2) lowest 1, final 3.25: it climbed back 2.25 of the 3 it fell; half would be 1.5
    verdict = health.assess([4, 3, 2, 1, 1, 2, 3, 3.5], [1.0] * 8, 0.1, 10.0)
    assert verdict["status"] == health.BLEW_UP
    assert verdict["reasons"] == ["the loss climbed back from its lowest 1 to 3.25, having started at 4"]
    settles = health.assess(
        [4, 3, 2, 1, 1, 1.4, 1.2, 1.3], [1.0] * 8, 0.1, 10.0
    )  # back up 0.25 of 3: noise, not a blow-up
    assert settles["status"] == health.OK


def test_vanished_gradients_for_three_logs_in_a_row_collapsed_and_two_do_not():
    falling = [4, 3, 2.5, 2, 1.8, 1.6, 1.5, 1.4]
    verdict = health.assess(falling, [1, 1, 0, 0, 0, 1, 1, 1], 0.1, 10.0)
    assert verdict["status"] == health.COLLAPSED and verdict["measures"]["vanished_grad_logs"] == 3
    assert verdict["reasons"] == ["the gradient norm was 0 for 3 logged intervals in a row"]
    assert health.assess(falling, [1, 1, 0, 0, 1, 0, 0, 1], 0.1, 10.0)["status"] == health.OK
    # negligible against the weights: below 1e-8 x their norm (1e-7 for a norm of 10) counts, above it does not
    assert health.assess(falling, [1, 1, 9e-8, 9e-8, 9e-8, 1, 1, 1], 0.1, 10.0)["status"] == health.COLLAPSED
    assert health.assess(falling, [1, 1, 2e-7, 2e-7, 2e-7, 1, 1, 1], 0.1, 10.0)["status"] == health.OK


def test_every_flag_is_listed_worst_first_and_non_finite_is_diverged():
    verdict = health.assess([2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5], [1, 0, 0, 0, 0, 0, 0, 0], 1e-9, 10.0)
    assert (
        verdict["flags"] == [health.COLLAPSED, health.BLEW_UP, health.NO_LEARNING]
        and verdict["status"] == health.COLLAPSED
    )
    assert health.assess([2, 1, float("nan"), 1], [1.0] * 4, 0.1, 10.0)["status"] == health.DIVERGED
    assert health.assess([2, 1.5, 1, 0.5], [1.0, float("inf"), 1, 1], 0.1, 10.0)["status"] == health.DIVERGED


def test_too_few_logs_judge_nothing_from_the_loss_but_still_weights_are_no_learning():
    verdict = health.assess([2.0, 2.5], [1.0, 1.0], 0.1, 10.0)
    assert verdict["status"] == health.OK and "lower training.logging_steps" in verdict["measures"]["unjudged"]
    still = health.assess([2.0, 2.5], [1.0, 1.0], 1e-9, 10.0)
    assert still["status"] == health.NO_LEARNING and "moved 1e-09 of their norm" in still["reasons"][0]


def test_a_rewarded_run_is_judged_on_its_rewards():
    history = [
        {"step": s, "loss": 0.0, "reward": r, "grad_norm": 1.0}
        for s, r in enumerate([0.1, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    ]
    assert (
        health.from_history(history, 0.1, 10.0, rewarded=True)["status"] == health.OK
    )  # GRPO's loss of 0 says nothing
    flat = [{**e, "reward": 0.0} for e in history]
    assert health.from_history(flat, 0.1, 10.0, rewarded=True)["status"] == health.NO_LEARNING


def test_movement_counts_from_the_initial_weights():
    torch.manual_seed(0)
    layer, zero = torch.nn.Linear(8, 4), torch.nn.Linear(4, 2)
    torch.nn.init.zeros_(zero.weight), torch.nn.init.zeros_(zero.bias)
    model = torch.nn.ModuleDict({"a": layer, "b": zero})
    model["a"].bias.requires_grad_(False)  # frozen: not counted
    moving = health.Movement(model)
    assert moving.moved() == 0.0
    before = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(0.01)
    expected = (
        0.01 * math.sqrt(32) / before.double().norm().item()
    )  # every element of 32 sampled; the zero layer adds nothing
    assert moving.moved() == pytest.approx(expected, rel=1e-5)  # w + 0.01 is rounded to float32
    assert moving.norm() == pytest.approx(layer.weight.double().norm().item(), rel=1e-12)
    only_zero = health.Movement(torch.nn.ModuleDict({"b": zero}))
    with torch.no_grad():
        zero.weight.add_(0.5)
    assert only_zero.moved() == pytest.approx(1.0)  # from zero: against the weights' norm now


# --- real tiny runs: each flag tripped by the learning rate that trips it, and a healthy run


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lr", "expected", "seen"),
    [
        (5e-4, health.OK, None),
        # RMSNorm keeps the loss finite at 1e30 while every gradient is 0 (issue 29)
        (1e30, health.COLLAPSED, r"^the gradient norm was 0 for \d+ logged intervals in a row$"),
        (1e4, health.BLEW_UP, r"^the loss rose from [\d.]+ to [\d.]+ \(margin [\d.]+\)$"),
        (1e-12, health.NO_LEARNING, r"^the loss went from [\d.]+ to [\d.]+, not down by more than the margin [\d.]+$"),
    ],
)
def test_a_real_run_records_its_health(in_tiny, tmp_path, lr, expected, seen):
    spec = in_tiny("lora", learning_rate=lr, max_steps=40, logging_steps=2, save_steps=1000)
    record = train.train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "checkpoints")
    verdict = artifacts.read_json(tmp_path / "train.json")["health"]
    assert verdict["status"] == expected and verdict == record["health"]
    assert all(e["grad_norm"] is not None for e in record["losses"])  # what `collapsed` reads, kept in the record
    if seen:
        assert any(__import__("re").match(seen, r) for r in verdict["reasons"]), verdict["reasons"]
    moved = verdict["measures"]["weights_moved"]
    assert moved < health.STILL if lr == 1e-12 else moved > 1e-3


@pytest.mark.slow
def test_on_degenerate_fail_fails_the_job_and_writes_nothing_that_looks_finished(in_tiny, tmp_path):
    spec = in_tiny("lora", learning_rate=1e4, max_steps=40, logging_steps=2, save_steps=1000, on_degenerate="fail")
    with pytest.raises(
        health.Degenerate, match=r"run health is blew up: the loss rose from .*training.on_degenerate is fail"
    ) as e:
        train.train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "checkpoints")
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "train.json").exists()
    text = f"Traceback (most recent call last):\n  ...\npeftlab.health.Degenerate: {e.value}\n"
    assert runstate.classify(text)[0] == "degenerate" and runstate.error_line(text).startswith(
        "peftlab.health.Degenerate: "
    )


def test_status_lists_a_flagged_run_and_says_the_tables_leave_it_out(tmp_path):
    root = str(tmp_path / "results/m")
    ids = [f"t/m/lora/r8-s{s}" for s in range(25)]
    for i, run_id in enumerate(ids):
        run = tmp_path / "results/m/runs" / run_id
        run.mkdir(parents=True)
        for name in ("eval.json", "merge_check.json"):
            artifacts.write_json(run / name, {})
        artifacts.write_json(run / "train.json", {"health": {"status": health.COLLAPSED if i == 3 else health.OK}})
    runs = runstate.matrix_status(root, ids, tmp_path)
    assert [r.health for r in runs].count(health.COLLAPSED) == 1
    text = status.render(root, runs)
    assert "done: 25 (--verbose lists them)" in text  # more than 20 done: only the flagged one is listed
    assert "t/m/lora/r8-s3  (-, -, health: collapsed)" in text and "r8-s4 " not in text
    assert "1 done run(s) flagged by their health" in text
