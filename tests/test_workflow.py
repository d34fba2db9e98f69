"""Static checks of the workflow files: lint, format, and that every config says how to run it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, load_test_config, planned_jobs, snakemake
from peftlab.config import plan


def test_snakemake_lint_reports_nothing(tmp_path):
    proc = snakemake(tmp_path, "--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_check_passes():
    files = [ROOT / "workflow/Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]
    proc = subprocess.run(["snakefmt", "--check", *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


CONFIGS = sorted((ROOT / "config").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_opens_with_its_command_and_validates(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Run:") and "snakemake" in first
    if path.name != "config.yaml":
        assert f"--configfile config/{path.relative_to(ROOT / 'config')}" in first
    with open(path) as f:
        assert plan(yaml.safe_load(f))[1]


# What a reader is shown: the README, the docs and the workflow catalog's config/README.md. config/my.yaml and
# config/my_matrix.yaml are the docs' examples of a new file's name, not files.
DOC_PAGES = [ROOT / "README.md", ROOT / "config/README.md", *sorted((ROOT / "docs").glob("*.md"))]
NAMED_CONFIG = re.compile(r"(?<![\w/.-])config/[\w./+-]+?\.yaml")
EXAMPLE_CONFIGS = {"config/my.yaml", "config/my_matrix.yaml"}


def test_every_config_the_docs_show_exists_and_is_validated_above():
    """Each config file the docs name is one of CONFIGS, which the two tests around this one validate and dry-run."""
    named = {m[0]: page.name for page in DOC_PAGES for m in NAMED_CONFIG.finditer(page.read_text())}
    assert {"config/config.yaml", "config/test.yaml", "config/experiments/core_1.5B.yaml"} <= set(
        named
    )  # the collector sees them
    missing = {name: page for name, page in named.items() if name not in EXAMPLE_CONFIGS and ROOT / name not in CONFIGS}
    assert not missing, f"config files the docs name that do not exist: {missing}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_dry_run_plans_one_training_job_per_run(path, tmp_path):
    """`snakemake -n --configfile <file>` validates and plans every run of the matrix, once."""
    with open(path) as f:
        runs = plan(yaml.safe_load(f))[1]
    proc = snakemake(tmp_path, "-n", config=path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc)
    assert jobs["train_run"] == jobs["evaluate_run"] == len(runs)


def test_python_code_passes_ruff():
    for cmd in (
        ["ruff", "check", "src", "tests", "bench", "docs"],
        ["ruff", "format", "--check", "src", "tests", "bench", "docs"],
    ):
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


# The seeds' matrices: exactly the number of training jobs each seed ran.
SEED_MATRICES = {
    "core_1.5B.yaml": 24,  # PeRL: 8 methods x 3 seeds
    "core_7B.yaml": 15,  # PeRL: 5 methods x 3 seeds
    "stress_rank.yaml": 32,  # PeRL: 4 methods x 4 ranks x 2 seeds
    "stress_data.yaml": 32,  # PeRL: 4 methods x 4 data sizes x 2 seeds
    "glue_mrpc.yaml": 9,
    "gsm8k.yaml": 6,
    "metamath_qa.yaml": 3,
    "code_feedback.yaml": 4,
    "template.yaml": 4,
    "gpt2_imdb.yaml": 2,
    "llama2_samsum_qlora.yaml": 2,
    "t5_samsum.yaml": 4,
    "playground_glue.yaml": 24,
    "playground_sva_cola.yaml": 18,
    # HF peft's method_comparison: 16 methods, seed 0 (LoRA r32/r64, IA3 and prompt tuning at 2 rates)
    "hf_method_comparison.yaml": 19,
}


# The seeds' matrices with a learning-rate search per cell (peftlab.lr_search): (final runs, search runs, selections).
LR_SEARCH_MATRICES = {
    "playground_glue_lr_search.yaml": (24, 120, 24),  # 8 tasks x 3 methods, 5 rates each
    "core_1.5B_lr_search.yaml": (24, 40, 8),  # 8 methods x 3 seeds; 5 rates x 1 search seed per method
    "hf_method_comparison_plus.yaml": (30, 42, 10),  # 10 methods x 3 seeds; 4 or 5 rates x 1 search seed per method
}


# HF peft's method_comparison/MetaMathQA as shipped (default_training_params.json, and each experiment's
# adapter_config.json and training_params.json): method -> (peft settings, learning rate). Every run: 5,000 steps of
# batch 4, AdamW, weight decay 0.1, cosine, no warmup, clipping at 1.0, seed 0, Llama-3.2-3B in bf16 without autocast.
HF_METHOD_COMPARISON = {
    "lora/r32-s0": ({"r": 32, "lora_alpha": 64}, 1e-4),
    "dora/r32-s0": ({"r": 32, "lora_alpha": 64}, 1e-4),
    "lora/r64-s0": ({"r": 64, "lora_alpha": 128}, 1e-4),
    "rslora/r64-s0": ({"r": 64, "lora_alpha": 64}, 1e-4),
    "adalora/r32-s0": (
        {"lora_alpha": 8, "options": {"init_r": 64, "target_r": 32, "tinit": 200, "tfinal": 500, "total_step": 5000}},
        1e-4,
    ),
    "loha/r32-s0": ({"r": 32, "lora_alpha": 64, "target_modules": ["q_proj", "v_proj"]}, 1e-4),
    "lokr/r32-s0-lr0.003": ({"r": 32, "lora_alpha": 64, "options": {"decompose_factor": 4}}, 3e-3),
    "oft/s0": (
        {"options": {"oft_block_size": 96, "eps": 6e-5}},
        1e-4,
    ),  # their r 32 blocks of Llama-3.2-3B's 3,072-wide q and v
    "boft/s0": ({"options": {"boft_block_size": 4, "boft_n_butterfly_factor": 1}}, 1e-4),
    "miss/r64-s0": ({"r": 64, "options": {"mini_r": 1}}, 1e-4),
    "fourierft/s0": ({"options": {"n_frequency": 1000, "scaling": 300, "random_loc_seed": 777}}, 1e-4),
    "vera/r256-s0-lr0.001": ({"r": 256, "options": {"d_initial": 0.1, "save_projection": True}}, 1e-3),
    "ia3/s0-lr0.0001": ({}, 1e-4),
    "ia3/s0-lr0.001": ({}, 1e-3),
    "prompt_tuning/s0-lr0.0001": ({"options": {"num_virtual_tokens": 200}}, 1e-4),
    "prompt_tuning/s0-lr0.001": ({"options": {"num_virtual_tokens": 200}}, 1e-3),
    "prefix_tuning/s0-lr0.001": ({"options": {"num_virtual_tokens": 200}}, 1e-3),
    "p_tuning/s0": (
        {"options": {"num_virtual_tokens": 20, "encoder_hidden_size": 3072, "encoder_num_layers": 2}},
        1e-4,
    ),
    "full/s0-lr1e-05": ({}, 1e-5),
}


def test_the_hf_method_comparison_config_is_their_protocol_and_the_plus_config_keeps_it():
    runs = plan(yaml.safe_load((ROOT / "config/experiments/hf_method_comparison.yaml").read_text())).runs
    assert sorted(r.split("/", 2)[2] for r in runs) == sorted(HF_METHOD_COMPARISON)
    for run_id, run in runs.items():
        settings, rate = HF_METHOD_COMPARISON[run_id.split("/", 2)[2]]
        t = run["training"]
        assert (t["max_steps"], t["batch_size"], t["grad_accum"], t["seed"], t["learning_rate"]) == (
            5000,
            4,
            1,
            0,
            rate,
        ), run_id
        assert (t["weight_decay"], t["lr_scheduler"], t["warmup_ratio"], t["max_grad_norm"], t["bf16"]) == (
            0.1,
            "cosine",
            0.0,
            1.0,
            False,
        )
        assert run["model"]["path"] == "meta-llama/Llama-3.2-3B" and run["model"]["dtype"] == "bfloat16"
        assert (
            run["task"]["data"]["hub"]["id"] == "meta-math/MetaMathQA"
            and run["task"]["data"]["hub"]["eval_id"] == "openai/gsm8k"
        )
        assert (run["task"]["max_length"], run["task"]["max_new_tokens"]) == (768, 300)
        for key, value in settings.items():
            got = run["peft"][key]
            assert ({k: got.get(k) for k in value} if key == "options" else got) == value, (run_id, key, got)
    plus = plan(yaml.safe_load((ROOT / "config/experiments/hf_method_comparison_plus.yaml").read_text())).runs.values()
    final = [r for r in plus if r["holdout"] is None]
    assert {r["training"]["seed"] for r in final} == {0, 1, 2} and {"pissa", "milora", "qlora"} <= {
        r["peft"]["type"] for r in final
    }
    for run in plus:  # the protocol but for the rate, which a search on held-out MetaMathQA problems picks
        t = run["training"]
        assert (t["max_steps"], t["batch_size"], t["weight_decay"], t["lr_scheduler"], run["model"]["dtype"]) == (
            5000,
            4,
            0.1,
            "cosine",
            "bfloat16",
        )


def test_every_experiment_file_has_a_count():
    assert sorted([*SEED_MATRICES, *LR_SEARCH_MATRICES]) == sorted(
        p.name for p in (ROOT / "config/experiments").glob("*.yaml")
    )


@pytest.mark.parametrize("name,counts", LR_SEARCH_MATRICES.items())
def test_a_matrix_with_a_search_plans_the_search_the_selections_and_the_final_runs(name, counts, tmp_path):
    final, search, cells = counts
    proc = snakemake(tmp_path, "-n", config=ROOT / "config/experiments" / name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc)
    assert jobs["train_run"] == jobs["evaluate_run"] == final + search
    assert (jobs["merge_run"], jobs["lr_select"]) == (final, cells)
    runs = plan(yaml.safe_load((ROOT / "config/experiments" / name).read_text())).runs
    assert sum(r["holdout"] is not None for r in runs.values()) == search


@pytest.mark.parametrize("name,count", SEED_MATRICES.items())
def test_seed_matrix_plans_its_number_of_training_jobs(name, count, tmp_path):
    proc = snakemake(tmp_path, "-n", config=ROOT / "config/experiments" / name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc)
    assert jobs["train_run"] == jobs["evaluate_run"] == jobs["merge_run"] == count
    runs = plan(yaml.safe_load((ROOT / "config/experiments" / name).read_text())).runs
    assert jobs["data_tokenize"] == len({r["data_dir"] for r in runs.values()})  # once per task and model


def test_perl_matrices_hold_103_runs_with_their_hyperparameters_under_the_seeds_names():
    runs, names, count = {}, {}, 0
    for name in "core_1.5B.yaml", "core_7B.yaml", "stress_rank.yaml", "stress_data.yaml":
        planned = plan(yaml.safe_load((ROOT / "config/experiments" / name).read_text())).runs
        # stress_rank's r16 runs share their ids with core_1.5B's, as in PeRL; each matrix has its own results/<name>/
        runs |= planned
        names[name] = {run_id.rsplit("/", 1)[1] for run_id in planned}
        count += len(planned)
    assert count == 103
    core = ["lora", "dora", "adalora", "pissa", "milora", "vera", "lora_plus", "miss"]
    assert names["core_1.5B.yaml"] == {f"{m}_r16_s{s}" for m in core for s in (42, 123, 456)}
    # PeRL's config generator: lora, dora, adalora, pissa, milora on the 7B model
    assert names["core_7B.yaml"] == {
        f"{m}_r16_s{s}" for m in ("lora", "dora", "adalora", "pissa", "milora") for s in (42, 123, 456)
    }
    stress = {run_id.rsplit("/", 1)[1].split("_d")[0] for run_id in runs if "_d1k_" in run_id}
    assert names["stress_data.yaml"] == {
        f"{m}_d{n // 1000}k_s{s}" for m in stress for n in (1000, 4000, 8500, 17000) for s in (42, 123)
    }
    assert names["stress_rank.yaml"] == {f"{m}_r{r}_s{s}" for m in stress for r in (4, 16, 64, 256) for s in (42, 123)}
    lora = runs["countdown/r1-1.5b/lora_r16_s42"]
    assert (lora["peft"]["r"], lora["peft"]["lora_alpha"], lora["training"]["learning_rate"]) == (16, 32, 1e-5)
    assert (lora["training"]["max_steps"], lora["training"]["batch_size"], lora["training"]["grad_accum"]) == (
        1000,
        4,
        8,
    )
    assert (
        lora["training"]["rl"]["num_generations"] == 8
        and lora["model"]["path"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    )
    assert (lora["wandb"]["project"], lora["wandb"]["mode"]) == ("peft-rlvr-mechanistic", "online")
    assert runs["countdown/r1-1.5b/vera_r16_s123"]["training"]["learning_rate"] == 1e-4
    assert runs["countdown/r1-7b/dora_r16_s456"]["training"]["batch_size"] == 2
    assert runs["countdown/r1-1.5b/pissa_r256_s123"]["peft"]["r"] == 256
    sizes = {r["training"]["train_size"] for k, r in runs.items() if re.search(r"_d\d+k_s", k)}
    assert sizes == {1000, 4000, 8500, 17000}
    # runs that differ only in seed, method or data size share one tokenised dataset
    assert len({r["data_dir"] for k, r in runs.items() if "r1-1.5b" in k}) == 1


# The seeds' own settings, copied from ../shared/seeds (finetune_leveling's example commands, lora-ns' task notes).
SEED_SETTINGS = {
    # finetune_with_lora.py --lora_r 8 --lora_alpha 16 --lora_dropout 0.05 --target_modules "c_attn,c_proj" ...
    "gpt2_imdb.yaml": {
        "model.path": "openai-community/gpt2",
        "peft.r": 8,
        "peft.lora_alpha": 16,
        "peft.lora_dropout": 0.05,
        "peft.target_modules": ["c_attn", "c_proj"],
        "training.epochs": 3,
        "training.learning_rate": 5e-4,
        "training.batch_size": 4,
        "training.grad_accum": 1,
    },
    "llama2_samsum_qlora.yaml": {  # finetune_with_qlora.py --quantization_type 4bit --double_quant --quant_type nf4 ...
        "model.path": "meta-llama/Llama-2-7b-hf",
        "peft.type": "qlora",
        "peft.r": 16,
        "peft.lora_alpha": 32,
        "peft.lora_dropout": 0.05,
        "peft.target_modules": ["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "up_proj"],
        "training.epochs": 3,
        "training.learning_rate": 2e-4,
        "training.batch_size": 2,
        "training.grad_accum": 4,
    },
    "gsm8k.yaml": {
        "model.path": "mistralai/Mistral-7B-v0.1",
        "peft.r": 32,
        "peft.lora_alpha": 64,
    },  # GSM8K: Mistral-7B, r=32, alpha=64
    "metamath_qa.yaml": {
        "peft.r": 16,
        "peft.lora_alpha": 32,
        "peft.target_modules": "all-linear",
    },  # r=16, alpha=32, all layers
    "code_feedback.yaml": {"peft.r": 16, "peft.lora_alpha": 32},  # CodeLlama, DeepSeek-Coder: r=16, alpha=32
}


@pytest.mark.parametrize("name", sorted(SEED_SETTINGS))
def test_seed_configs_use_the_seeds_settings(name):
    runs = plan(yaml.safe_load((ROOT / "config/experiments" / name).read_text())).runs.values()
    for key, value in SEED_SETTINGS[name].items():
        section, field = key.split(".")
        assert {json.dumps(r[section][field]) for r in runs} == {json.dumps(value)}, key
    if name in (
        "gsm8k.yaml",
        "metamath_qa.yaml",
        "code_feedback.yaml",
    ):  # lora-ns: causal LM learning rates 1e-4 to 2e-4
        assert {1e-4 <= r["training"]["learning_rate"] <= 2e-4 for r in runs} == {True}
    if name == "code_feedback.yaml":
        assert {r["model"]["path"] for r in runs} == {
            "codellama/CodeLlama-7b-hf",
            "deepseek-ai/deepseek-coder-6.7b-base",
        }
    if name == "llama2_samsum_qlora.yaml":
        from peftlab import methods
        from peftlab.spec import PeftSpec

        bnb = methods.quantization(PeftSpec(**next(iter(runs))["peft"]))
        assert (bnb.load_in_4bit, bnb.bnb_4bit_quant_type, bnb.bnb_4bit_use_double_quant) == (True, "nf4", True)


def test_one_command_validates_every_config(tmp_path):
    """lora-ns' `validate_config.py --all`: `python -m peftlab.config --all`, one line per file, non-zero if one
    fails."""
    proc = subprocess.run([sys.executable, "-m", "peftlab.config", "--all"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "config").rglob("*.yaml"))
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == files
    assert "config/experiments/core_1.5B.yaml: 24 runs" in proc.stdout.splitlines()

    (tmp_path / "good.yaml").write_text((ROOT / "config/test.yaml").read_text())
    (tmp_path / "bad.yaml").write_text((ROOT / "config/test.yaml").read_text().replace("learning_rate:", "lr:", 1))
    proc = subprocess.run(
        [sys.executable, "-m", "peftlab.config", "--all", str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    runs = len(plan(load_test_config())[1])
    assert proc.returncode != 0 and f"{tmp_path}/good.yaml: {runs} runs" in proc.stdout
    assert f"{tmp_path}/bad.yaml: invalid config:" in proc.stderr and "unknown key(s) 'lr'" in proc.stderr
    assert proc.stderr.strip().endswith(f"1 of 2 configs are invalid: {tmp_path}/bad.yaml")


def selected_names(config: Path, *args: str) -> list[str]:
    """The experiment names `python -m peftlab.config` keeps, or its error."""
    proc = subprocess.run([sys.executable, "-m", "peftlab.config", str(config), *args], capture_output=True, text=True)
    return (
        [r.rsplit("/", 1)[1] for r in proc.stdout.split()]
        if proc.returncode == 0
        else proc.stderr.strip().splitlines()[-1:]
    )


def test_the_seeds_only_and_exclude_examples_select_their_names():
    """PeRL's README, verbatim: --only "lora_r16_s42,dora_r16_s42" and --exclude "vera_r16_s42,vera_r16_s123" on
    core_1.5B."""
    config = ROOT / "config/experiments/core_1.5B.yaml"
    assert selected_names(config, "--only", "lora_r16_s42,dora_r16_s42") == ["lora_r16_s42", "dora_r16_s42"]
    kept = selected_names(config, "--exclude", "vera_r16_s42,vera_r16_s123")
    assert len(kept) == 22 and "vera_r16_s456" in kept and not {"vera_r16_s42", "vera_r16_s123"} & set(kept)
    # a glob matches across "_": lora_* is lora and lora_plus (documented); lora_r* is lora alone
    assert selected_names(config, "--only", "lora_*", "--exclude", "*_s456") == [
        "lora_r16_s42",
        "lora_r16_s123",
        "lora_plus_r16_s42",
        "lora_plus_r16_s123",
    ]
    assert selected_names(config, "--only", "lora_r*", "--exclude", "*_s456") == ["lora_r16_s42", "lora_r16_s123"]
    # a pattern that matches nothing names itself, for only and exclude alike
    (error,) = selected_names(config, "--exclude", "vera_s42,vera_r16_s123")
    assert error.endswith(
        "core_1.5B.yaml: exclude: 'vera_s42' matches no run of 24; run ids look like countdown/r1-1.5b/lora_r16_s42"
    )


def test_selection_by_name_and_glob_through_snakemake(tmp_path):
    config = ROOT / "config/experiments/core_1.5B.yaml"
    proc = snakemake(tmp_path, "-n", "--config", "only=lora_r16_s42,dora_r16_s42", config=config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc)["train_run"] == 2
    proc = snakemake(tmp_path, "-n", "--config", "only=nothing_*", config=config)
    assert proc.returncode != 0 and "only: 'nothing_*' matches no run of 24" in proc.stdout + proc.stderr


def test_no_wildcard_constraint_is_built_from_the_list_of_runs():
    """An alternation of every run id made matching a path O(runs): planning 10,000 runs took 5.9x a bare workflow's
    time (bench/dag.py)."""
    common = (ROOT / "workflow/rules/common.smk").read_text()
    block = common.split("wildcard_constraints:", 1)[1].split("\n\n", 1)[0]
    assert "RUNS" not in block and "SPECS" not in block.split("stage=")[0] and "run_id=paths.RUN_ID" in block
    from peftlab import paths

    pattern = re.compile(paths.RUN_ID)
    ids = [
        run_id
        for p in sorted((ROOT / "config").rglob("*.yaml"))
        for run_id in plan(yaml.safe_load(p.read_text()), p).runs
    ]
    assert len(ids) > 200 and all(pattern.fullmatch(run_id) for run_id in ids)
    for not_a_run in ("arith/tiny-llama", "a/b/c/d/e", "arith/tiny-llama/lora/r8-s1/adapter/x", "../b/c", "a//c"):
        assert not pattern.fullmatch(not_a_run), not_a_run


def test_a_path_that_names_no_run_is_refused_with_the_command_that_lists_them(tmp_path):
    proc = snakemake(tmp_path, "-n", "results/test/runs/arith/tiny-llama/lora/r99-s9/train.json")
    assert proc.returncode != 0
    assert "'arith/tiny-llama/lora/r99-s9' is not a run of results/test (17 runs)" in proc.stdout + proc.stderr
    assert f"python -m peftlab.config {ROOT / 'config/test.yaml'}` lists them" in proc.stdout + proc.stderr
