"""Forgetting at evaluation (peftlab.forgetting): linear CKA on hand-worked matrices, the reference texts,
the loss rise of real tiny runs, the `forgetting` record of eval.json, and which stages the key reruns."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from peftlab import artifacts, dataset, evaluate, forgetting, numerics
from peftlab import spec as spec_module
from peftlab.models import load_model, load_tokenizer, load_trained
from peftlab.spec import RunSpec, TaskSpec, fingerprint
from peftlab.train import train

STEPS = {
    "max_steps": 4,
    "batch_size": 8,
    "logging_steps": 1,
    "save_steps": 100,
    "check_reload": False,
    "on_degenerate": "warn",
}
GENERATED = {"generator": "sentiment", "num": 8, "seed": 0}


# --- linear CKA -------------------------------------------------------------------------------------


def test_linear_cka_on_hand_worked_matrices():
    # one column each: CKA is the squared correlation. x - mean = (-1, 0, 1), y - mean = (-1, 1, 0):
    # (x.y)^2 / (|x|^2 |y|^2) = 1 / (2 * 2)
    assert forgetting.linear_cka(
        torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[1.0], [3.0], [2.0]])
    ) == pytest.approx(0.25)
    # centred already: y^T x = (1*1 + (-1)(-1), 0) = (2, 0), so ||y^T x||^2 = 4; x^T x = diag(2, 2), ||.||_F = sqrt(8);
    # y^T y = 2: CKA = 4 / (sqrt(8) * 2) = 1/sqrt(2)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    y = torch.tensor([[1.0], [0.0], [-1.0], [0.0]])
    assert forgetting.linear_cka(x, y) == pytest.approx(1 / math.sqrt(2))
    assert forgetting.linear_cka(x, y) == pytest.approx(forgetting.linear_cka(y, x))  # symmetric


def test_linear_cka_is_one_up_to_rotation_scale_and_shift_and_not_otherwise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))  # orthogonal
    assert forgetting.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert forgetting.linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    assert forgetting.linear_cka(x, 2 * x + 3) == pytest.approx(1.0, abs=1e-12)
    stretched = x * torch.tensor([1.0, 1.0, 1.0, 1.0, 10.0], dtype=torch.float64)  # not isotropic: CKA sees it
    assert forgetting.linear_cka(x, stretched) < 0.99
    assert 0 <= forgetting.linear_cka(x, torch.randn(12, 5, generator=g, dtype=torch.float64)) < 1


# --- the reference texts ----------------------------------------------------------------------------


def test_a_reference_file_is_one_text_a_line_or_jsonl_texts(tmp_path):
    (tmp_path / "ref.txt").write_text("first text\n\nsecond text\nthird\n")
    assert forgetting.reference_texts({"file": str(tmp_path / "ref.txt"), "num": 2, "seed": 0}) == [
        "first text",
        "second text",
    ]
    (tmp_path / "ref.jsonl").write_text(
        json.dumps({"text": "two\nlines"}) + "\n" + json.dumps({"text": "b", "id": 2}) + "\n"
    )
    assert forgetting.reference_texts({"file": str(tmp_path / "ref.jsonl"), "num": 64, "seed": 0}) == [
        "two\nlines",
        "b",
    ]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"body": "b"}) + "\n")
    with pytest.raises(
        forgetting.ReferenceTextError, match=r'bad.jsonl, line 2: needs an object with a string "text" field'
    ):
        forgetting.read_texts(tmp_path / "bad.jsonl")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(forgetting.ReferenceTextError, match="holds no text"):
        forgetting.read_texts(tmp_path / "blank.txt")


def test_generated_reference_texts_are_seeded_and_never_the_tasks_own_rows(tmp_path):
    texts = forgetting.reference_texts(GENERATED)
    assert len(texts) == 8 and texts == forgetting.reference_texts(GENERATED)
    assert texts != forgetting.reference_texts({**GENERATED, "seed": 1})
    dataset.generate({"generator": "sentiment", "num_train": 200, "num_eval": 50, "seed": 0}, tmp_path)
    for split in ("train", "eval"):  # another seed stream than the task's splits at the same seed
        rows = [json.loads(line)["text"] for line in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
        assert texts != rows[:8]
    arith = forgetting.reference_texts({"generator": "gsm8k_arith", "num": 2, "seed": 0})
    assert all(t.count("\n") == 2 and "####" in t for t in arith)  # the question, then the two-line answer


def test_pretraining_texts_are_a_built_models_held_out_corpus(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    dataset.generate({"generator": "gsm8k_arith", "num_train": 20, "num_eval": 5, "seed": 0}, raw)
    corpus = {
        "name": "arith",
        "type": "sft",
        "data": {"files": {"train": str(raw / "train.jsonl"), "eval": str(raw / "eval.jsonl")}},
    }
    folder = tmp_path / "model"
    folder.mkdir()
    artifacts.write_json(folder / forgetting.BUILD_RECORD, {"spec": {"corpus_task": corpus}})
    model = spec_module.ModelSpec(name="tiny", path=str(folder), build={"corpus_task": "arith"})
    texts = forgetting.reference_texts({"pretraining": True, "num": 3, "seed": 0}, model)
    answers = [json.loads(line)["answer"] for line in (raw / "eval.jsonl").read_text().splitlines()]
    assert texts == answers[:3]  # an sft corpus pretrains on the responses
    with pytest.raises(forgetting.ReferenceTextError, match="not one the pipeline builds"):
        forgetting.reference_texts({"pretraining": True, "num": 3, "seed": 0}, dataclasses.replace(model, build=None))


# --- the measure on models ----------------------------------------------------------------------


def test_a_classifier_compared_with_itself_has_cka_one(in_tiny):
    spec = in_tiny("lora", model="minilm")
    tok = load_tokenizer(spec.model)
    model = load_model(spec.model, spec.task, tok)
    assert not forgetting.has_lm_head(model)
    out = forgetting.measure(
        model, tok, forgetting.reference_texts(GENERATED), base=model, batch_size=3
    )  # batches of 3, 3, 2
    assert out["measure"] == "cka_drift" and out["texts"] == 8
    assert out["cka"] == pytest.approx(1.0, abs=1e-9) and out["value"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.numerics  # the batched, padded loss against the model's own, one text at a time
@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_the_loss_is_the_models_own_on_bos_text_eos(arch, in_tiny):
    """A decoder scores `bos text eos` as a language model; an encoder-decoder reads it and predicts it (its own
    target):
    for one text, the model's own loss on those ids. The padded batch of two gives their token-weighted mean."""
    from peftlab.tiny import tiny_t5

    spec = in_tiny("lora")
    tok = load_tokenizer(spec.model)
    torch.manual_seed(0)
    model = (
        load_model(spec.model, spec.task, tok)
        if arch == "llama"
        else tiny_t5(tok, {"hidden_size": 16, "num_heads": 2, "num_layers": 1}).eval()
    )
    texts = forgetting.reference_texts(GENERATED)[:2]
    rows = forgetting.lm_rows(tok, texts, max_length=128)
    assert all(r[0] == tok.bos_token_id and r[-1] == tok.eos_token_id for r in rows)
    with torch.no_grad():
        own = [model(input_ids=torch.tensor([r]), labels=torch.tensor([r])).loss.item() for r in rows]
    scored = [len(r) - (arch == "llama") for r in rows]  # a decoder predicts every token but the first
    assert forgetting.has_lm_head(model)
    out = forgetting.measure(model, tok, texts, base=model)
    assert out["measure"] == "loss_rise" and out["value"] == 0.0 and out["tokens"] == sum(scored)
    expected = sum(x * n for x, n in zip(own, scored)) / sum(scored)
    assert abs(out["base_loss"] - expected) <= _rise_tolerance({"base_loss": expected})


def _rise_tolerance(record: dict) -> float:
    """Rounding between two float32 computations of a loss: numerics' reload bound, scaled to the loss."""
    return numerics.tolerance(torch.tensor(record["base_loss"]), numerics.RELOAD_ULPS)


@pytest.mark.numerics  # the base's loss and the tuned model's, two computations of one function
@pytest.mark.parametrize(
    "method", ["lora", "full"]
)  # the base: the adapter disabled; a base loaded beside the tuned model
def test_a_run_at_learning_rate_0_forgets_nothing_and_eval_json_records_it(method, in_tiny, tmp_path):
    spec = in_tiny(method, learning_rate=0.0, **STEPS)
    spec = dataclasses.replace(
        spec, task=dataclasses.replace(spec.task, reference=dict(GENERATED, generator="gsm8k_arith"))
    )
    train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "checkpoints")
    spec_file = tmp_path / "spec.json"
    artifacts.write_json(spec_file, spec.to_dict())
    evaluate.main(
        ["--spec", str(spec_file), "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "eval.json")]
    )
    record = artifacts.read_json(tmp_path / "eval.json")["forgetting"]
    assert record.keys() == {"measure", "texts", "tokens", "base_loss", "tuned_loss", "value", "seconds"}
    assert record["measure"] == "loss_rise" and record["texts"] == 8 and record["tokens"] > 8 and record["seconds"] > 0
    assert 0 < record["base_loss"] < 20
    assert abs(record["value"]) <= _rise_tolerance(record)
    assert record["value"] == record["tuned_loss"] - record["base_loss"]


def test_a_classifier_run_records_its_drift_and_none_without_a_reference(in_tiny, tmp_path):
    spec = in_tiny("lora", model="minilm", learning_rate=0.003, **STEPS)
    spec = dataclasses.replace(spec, task=dataclasses.replace(spec.task, reference=GENERATED))
    train(spec, tmp_path / "adapter", tmp_path / "train.json", tmp_path / "checkpoints")
    record, _ = evaluate.evaluate(spec, str(tmp_path / "adapter"))
    drift = record["forgetting"]
    assert drift.keys() == {"measure", "texts", "cka", "value", "seconds"}
    assert drift["measure"] == "cka_drift" and drift["texts"] == 8
    assert 0 < drift["value"] < 0.5 and drift["value"] == pytest.approx(
        1 - drift["cka"]
    )  # trained a little: drifted a little
    unset, _ = evaluate.evaluate(
        dataclasses.replace(spec, task=dataclasses.replace(spec.task, reference=None)), str(tmp_path / "adapter")
    )
    assert "forgetting" not in unset


def _lm_run(in_tiny, tmp_path, name: str, texts: list[str], reference: dict) -> RunSpec:
    """A LoRA run of an lm task on `texts`, tokenised for the tiny Llama as the measure scores a text, `bos text eos`
    (as it was pretrained; the lm type alone would drop both, and the model would learn that format instead)."""
    folder = tmp_path / name
    folder.mkdir()
    base = in_tiny("lora", learning_rate=0.003, **{**STEPS, "max_steps": 12})
    tok = load_tokenizer(base.model)
    for split, rows in (("train", texts), ("eval", texts[:4])):
        (folder / f"{split}.jsonl").write_text(
            "".join(json.dumps({"text": tok.bos_token + t + tok.eos_token}) + "\n" for t in rows)
        )
    files = {"train": str(folder / "train.jsonl"), "eval": str(folder / "eval.jsonl")}
    task = TaskSpec.from_dict(
        {"name": name, "type": "lm", "data": {"files": files}, "max_length": 64, "reference": reference}
    )
    dataset.tokenize(task, tok, dataset.load_raw(task)).save_to_disk(folder / "data")
    artifacts.write_json(folder / "data/meta.json", {})
    return dataclasses.replace(base, run_id=f"{name}/tiny-llama/lora/test", task=task, data_dir=str(folder / "data"))


def test_training_on_the_reference_forgets_less_than_training_on_unrelated_text(in_tiny, tmp_path):
    answers = forgetting.reference_texts({"generator": "gsm8k_arith", "num": 64, "seed": 0})
    answers = [t.split("\n", 1)[1] for t in answers]  # the answers: the text the tiny Llama was pretrained on
    (tmp_path / "reference.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in answers))
    reference = {"file": str(tmp_path / "reference.jsonl"), "num": 64, "seed": 0}
    unrelated = forgetting.reference_texts({"generator": "sentiment", "num": 64, "seed": 0})
    rises = {}
    for name, texts in (("same", answers), ("other", unrelated)):
        spec = _lm_run(in_tiny, tmp_path, name, texts, reference)
        train(spec, tmp_path / name / "adapter", tmp_path / name / "train.json", tmp_path / name / "checkpoints")
        tok = load_tokenizer(spec.model)
        model = load_trained(spec, tmp_path / name / "adapter", tok)
        rises[name] = forgetting.measure(model, tok, forgetting.reference_texts(reference), max_length=64)["value"]
    # its own text: learnt further, or kept (measured -0.0015); other text: forgotten (measured +0.29)
    assert rises["same"] < 0.01 < 0.1 < rises["other"], rises


# --- which stages read the key ------------------------------------------------------------------


def test_the_reference_reruns_evaluation_alone(in_tiny):
    run_stages = ("data_tokenize", "train_run", "evaluate_run", "merge_run")  # the stages whose spec holds the task
    assert [stage for stage in run_stages if spec_module.reads(stage, "task.reference")] == ["evaluate_run"]
    assert not spec_module.reads("model_build", "corpus_task.reference")
    run = in_tiny("lora").to_dict()
    set_ = {**run, "task": {**run["task"], "reference": GENERATED}}
    for stage in ("data_tokenize", "train_run", "merge_run"):
        assert fingerprint(set_, stage) == fingerprint(run, stage)
    assert fingerprint(set_, "evaluate_run") != fingerprint(run, "evaluate_run")
