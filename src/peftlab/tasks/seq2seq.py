"""seq2seq: prompt -> response on an encoder-decoder (T5, BART).

Tokenised: the formatted prompt as input_ids, the response as labels. Evaluated:
ROUGE-1/2/L of the generations, eval loss and perplexity. Inference answers the
generated text.
"""

from __future__ import annotations

from peftlab.tasks.base import (
    Supervised,
    format_prompt,
    generation_rows,
    packed_or_padded,
    prompt_ids,
    prompt_response_columns,
    prompt_response_corpus,
    rows_of,
    samples,
    with_perplexity,
)


class Seq2Seq(Supervised):
    name = "seq2seq"
    summary = "prompt -> response on an encoder-decoder (T5, BART)"
    peft_task_type = "SEQ_2_SEQ_LM"
    encoder_decoder = True
    generates = True
    loss_kwargs = False  # T5 returns a per-batch mean

    def columns(self, task):
        return prompt_response_columns(task)

    def corpus_texts(self, task, rows):
        return prompt_response_corpus(task, rows)

    def encoder(self, task, tokenizer, label_ids):
        def encode(batch):
            enc = tokenizer(
                [format_prompt(task, r) for r in rows_of(batch)], truncation=True, max_length=task.max_length
            )
            targets = [str(a) for a in batch[task.response_field]]
            labels = tokenizer(text_target=targets, truncation=True, max_length=task.max_length)["input_ids"]
            return {**enc, "labels": labels, "response": targets}

        return encode

    def load_model(self, path, task, tokenizer, label_names, kwargs):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM.from_pretrained(path, **kwargs)

    def collator(self, task, tokenizer):
        return packed_or_padded(task, tokenizer)

    def metric_names(self, task):
        return ["rouge1", "rouge2", "rougeL", "eval_loss", "perplexity"]

    def default_metric(self, task):
        return "rougeL"

    def evaluate(self, task, model, tokenizer, ds):
        from peftlab import compute, metrics

        texts = compute.generate(model, tokenizer, ds["input_ids"], task.max_new_tokens, task.eval_batch_size)
        losses = compute.example_losses(model, tokenizer, ds, task.eval_batch_size)
        scores = metrics.rouge_scores(texts, ds["response"])
        return {
            **metrics.rouge(texts, ds["response"]),
            **with_perplexity(compute.mean_loss(losses)),
            "samples": samples(ds["response"], texts),
            "predictions": generation_rows(ds["response"], texts, losses, **scores),
        }

    def input_column(self, task):
        return task.prompt_field

    def answer(self, task, model, tokenizer, rows, label_names, max_new_tokens):
        from peftlab import compute

        prompts = [format_prompt(task, r, tokenizer) for r in rows]
        texts = compute.generate(
            model, tokenizer, prompt_ids(task, tokenizer, prompts), max_new_tokens, task.eval_batch_size
        )
        return [{"output": t} for t in texts]
