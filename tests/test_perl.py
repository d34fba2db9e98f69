"""PeRL's own config file (tests/seeds/perl_example.yaml, its README's example verbatim) read as it is."""

from __future__ import annotations

import pytest
import yaml

from conftest import ROOT, planned_jobs, snakemake
from peftlab.config import ConfigError, plan

EXAMPLE = ROOT / "tests/seeds/perl_example.yaml"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_every_key_of_the_example_maps_to_the_run_it_describes():
    p = plan(example(), EXAMPLE)
    assert p.cfg["description"] == "Human-readable description"
    assert list(p.runs) == ["Countdown-Tasks-3to4/DeepSeek-R1-Distill-Qwen-1.5B/lora_r16_s42"]
    run = p.runs["Countdown-Tasks-3to4/DeepSeek-R1-Distill-Qwen-1.5B/lora_r16_s42"]
    assert run["model"]["path"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert (run["model"]["dtype"], run["model"]["attn_implementation"]) == ("bfloat16", "sdpa")
    assert run["task"]["type"] == "rlvr" and run["task"]["data"]["hub"]["id"] == "Jiayi-Pan/Countdown-Tasks-3to4"
    assert run["task"]["rewards"] == ["countdown", "format"]
    t = run["training"]
    assert (t["max_steps"], t["save_steps"], t["logging_steps"], t["batch_size"], t["grad_accum"]) == (
        1000,
        100,
        10,
        4,
        8,
    )
    assert (t["rl"]["num_generations"], t["learning_rate"], t["seed"]) == (8, 1e-5, 42)
    assert (run["peft"]["type"], run["peft"]["r"], run["peft"]["lora_alpha"]) == ("lora", 16, 32)
    assert (run["wandb"]["mode"], run["wandb"]["project"]) == ("online", "peft-rlvr-mechanistic")
    assert run["wandb"]["log_spectral_images"] is run["wandb"]["log_gradient_images"] is True
    tracker = run["tracker"]
    assert tracker["enable_spectral_tracking"] is tracker["enable_gradient_tracking"] is True
    assert (tracker["spectral_log_frequency"], tracker["gradient_log_frequency"]) == (100, 100)


def test_tracking_turned_off_in_the_file_is_off_in_the_run():
    raw = example()
    raw["base"]["tracker"].update(enable_spectral_tracking=False, gradient_log_frequency=10)
    raw["base"]["wandb"]["log_gradient_images"] = False
    run = next(iter(plan(raw, EXAMPLE).runs.values()))
    assert (run["tracker"]["enable_spectral_tracking"], run["tracker"]["gradient_log_frequency"]) == (False, 10)
    assert run["wandb"]["log_gradient_images"] is False


def test_the_verbatim_example_dry_runs_through_snakemake(tmp_path):
    config = tmp_path / "core_example.yaml"
    config.write_text(EXAMPLE.read_text())
    proc = snakemake(tmp_path, "-n", config=config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc)["train_run"] == 1
    assert "runs/Countdown-Tasks-3to4/DeepSeek-R1-Distill-Qwen-1.5B/lora_r16_s42/tracking" in proc.stdout
    assert "tables/tracking_alignment.png" in proc.stdout  # the matrix-level comparison is planned
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda c: c["base"]["training"].update(use_vllm=True),
            r"base.training.use_vllm: True is not supported: .*vLLM",
        ),
        (
            lambda c: c["base"]["training"].update(use_liger_kernel=True),
            r"base.training.use_liger_kernel: True is not supported",
        ),
        (
            lambda c: c["base"]["training"].update(optim="adafactor"),
            r"base.training.optim: no peftlab equivalent; allowed in a PeRL file: ",
        ),
        (
            lambda c: c["base"]["model"].update(device_map="auto"),
            r"base.model.device_map: not a model key peftlab knows",
        ),
        (lambda c: c["base"]["wandb"].update(tags=["x"]), r"base.wandb.tags: no peftlab equivalent"),
        (lambda c: c["base"]["tracker"].update(svd_every=5), r"base.tracker.*svd_every"),
        (
            lambda c: c["base"]["training"].update(report_to=["tensorboard"]),
            r"base.training.report_to: \['tensorboard'\]",
        ),
        (
            lambda c: c["base"]["dataset"].update(dataset_name_or_path="openai/gsm8k"),
            r"base.dataset.dataset_name_or_path: peftlab has no task for 'openai/gsm8k'; PeRL datasets it "
            r"knows: Jiayi-Pan/Countdown",
        ),
        (lambda c: c["experiments"][0]["common"].update(debug=True), r"experiments\[0\].common.*debug"),
    ],
)
def test_a_key_without_an_equivalent_is_refused_with_the_reason(edit, message):
    raw = example()
    edit(raw)
    with pytest.raises(ConfigError, match=message):
        plan(raw, EXAMPLE)


def test_report_to_nothing_or_use_wandb_false_turns_wandb_off():
    for edit in (
        lambda c: c["base"]["training"].update(report_to=[]),
        lambda c: c["base"]["wandb"].update(use_wandb=False),
    ):
        raw = example()
        edit(raw)
        assert next(iter(plan(raw, EXAMPLE).runs.values()))["wandb"]["mode"] == "disabled"
