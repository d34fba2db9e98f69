"""The tiny offline models: a tokenizer trained on a task's texts and a small Llama (or T5), briefly pretrained.

`tiny_llama` and `tiny_t5` give the architectures from a model's `build` section (the cost plan
builds them on the meta device); `build_tiny` trains the tokenizer and pretrains the model
(`python -m peftlab.build` writes it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from peftlab import dataset, tasks
from peftlab.methods.targets import BUILT_MAX_POSITIONS
from peftlab.spec import TaskSpec

log = logging.getLogger(__name__)


def build_tiny(spec: dict, out: Path) -> dict:
    """Train a byte-level BPE tokenizer on the corpus task's training texts, init a small
    Llama (or T5, for seq2seq tasks) and pretrain it briefly.

    The tokenizer sees every text of the task; pretraining sees what
    its task type's `corpus_texts` gives (for a prompt -> response task: the responses),
    so the base knows the vocabulary and the answer format while the prompt -> response
    mapping is left for fine-tuning to learn.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    b = spec["build"]
    task = TaskSpec.from_dict(spec["corpus_task"])
    tokenizer_texts, pretrain_texts = tasks.of(task).corpus_texts(task, dataset.load_raw(task)["train"])
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        tokenizer_texts,
        trainers.BpeTrainer(
            vocab_size=b["vocab_size"],
            special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(b["seed"])
    model = (tiny_t5 if b["arch"] == "t5" else tiny_llama)(tok, b)
    losses = _pretrain(model, tok, pretrain_texts, b["pretrain_steps"], b["seed"])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {
        "arch": b["arch"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tok),
        "pretrain_losses": losses,
    }


def tiny_t5(tok, b: dict):
    """A small T5 (encoder-decoder); the decoder starts from the pad token, as T5's does."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=len(tok),
        d_model=b["hidden_size"],
        d_kv=b["hidden_size"] // b["num_heads"],
        d_ff=4 * b["hidden_size"],
        num_layers=b["num_layers"],
        num_heads=b["num_heads"],
        dropout_rate=0.0,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    return T5ForConditionalGeneration(config)


def tiny_llama(tok, b: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=b["hidden_size"],
        intermediate_size=4 * b["hidden_size"],
        num_hidden_layers=b["num_layers"],
        num_attention_heads=b["num_heads"],
        num_key_value_heads=b["num_heads"],
        max_position_embeddings=BUILT_MAX_POSITIONS,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


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
        loss = model(**batch, labels=labels).loss  # a T5 learns to copy: the text in, the same text out
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 50 == 0 or step == steps - 1:
            losses.append(round(loss.item(), 4))
    return losses
