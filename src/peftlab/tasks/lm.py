"""lm: causal language modelling of text_fields[0].

Tokenised: the text, labels = input_ids. Evaluated: eval loss and perplexity.
Inference continues the given text.
"""

from __future__ import annotations

from peftlab.tasks.base import CausalLM, loss_rows, prompt_ids, with_perplexity


class Lm(CausalLM):
    name = "lm"
    summary = "causal language modelling of text_fields[0]"

    def columns(self, task):
        return task.text_fields[:1]

    def corpus_texts(self, task, rows):
        texts = [str(r[task.text_fields[0]]) for r in rows]
        return texts, texts

    def encoder(self, task, tokenizer, label_ids):
        def encode(batch):
            enc = tokenizer([str(t) for t in batch[task.text_fields[0]]], truncation=True, max_length=task.max_length)
            return {**enc, "labels": enc["input_ids"]}

        return encode

    def metric_names(self, task):
        return ["eval_loss", "perplexity"]

    def default_metric(self, task):
        return "perplexity"

    def evaluate(self, task, model, tokenizer, ds):
        from peftlab import compute

        losses = compute.example_losses(model, tokenizer, ds, task.eval_batch_size)
        return {**with_perplexity(compute.mean_loss(losses)), "predictions": loss_rows(losses)}

    def input_column(self, task):
        return task.text_fields[0]

    def answer(self, task, model, tokenizer, rows, label_names, max_new_tokens):
        from peftlab import compute

        prompts = [str(r[task.text_fields[0]]) for r in rows]
        texts = compute.generate(
            model, tokenizer, prompt_ids(task, tokenizer, prompts), max_new_tokens, task.eval_batch_size
        )
        return [{"output": t} for t in texts]
