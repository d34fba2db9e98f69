"""sft: prompt -> response on a causal LM, the loss on the response only.

Tokenised: prompt + response + EOS, labels -100 on the prompt; eval rows keep
`prompt_ids` and the reference `response` for generation. Evaluated: eval loss and
perplexity on the response tokens, exact match of the extracted final answer
(answer_format), ROUGE when `rouge: true`. Inference answers the generated text and,
for a number-like answer format, the extracted answer.
"""

from __future__ import annotations

from peftlab.tasks.base import (
    CausalLM,
    format_prompt,
    generation_rows,
    prompt_ids,
    prompt_response_columns,
    prompt_response_corpus,
    rows_of,
    samples,
    with_perplexity,
)


class Sft(CausalLM):
    name = "sft"
    summary = "prompt -> response on a causal LM, loss on the response"

    def columns(self, task):
        return prompt_response_columns(task)

    def corpus_texts(self, task, rows):
        return prompt_response_corpus(task, rows)

    def encoder(self, task, tokenizer, label_ids):
        def encode(batch):
            out = {"input_ids": [], "attention_mask": [], "labels": [], "prompt_ids": [], "response": []}
            for row in rows_of(batch):
                a = str(row[task.response_field])
                prompt = format_prompt(task, row, tokenizer)
                p_ids = tokenizer(prompt, add_special_tokens=not task.chat_template)[
                    "input_ids"
                ]  # a chat template has its own
                r_ids = tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                ids = (p_ids + r_ids)[: task.max_length]
                out["input_ids"].append(ids)
                out["attention_mask"].append([1] * len(ids))
                out["labels"].append(([-100] * len(p_ids) + r_ids)[: task.max_length])
                out["prompt_ids"].append(p_ids[: task.max_length])
                out["response"].append(a)
            return out

        return encode

    def metric_names(self, task):
        return ["exact_match", "eval_loss", "perplexity", "rouge1", "rouge2", "rougeL"]

    def default_metric(self, task):
        if task.answer_format == "none":
            return "rougeL" if task.rouge else "perplexity"
        return "exact_match"

    def evaluate(self, task, model, tokenizer, ds):
        from peftlab import compute, metrics

        losses = compute.example_losses(
            model, tokenizer, ds, task.eval_batch_size
        )  # right padding: positions match training
        result = with_perplexity(compute.mean_loss(losses))
        texts = compute.generate(model, tokenizer, ds["prompt_ids"], task.max_new_tokens, task.eval_batch_size)
        per_example = {}
        if task.answer_format != "none":
            per_example["correct"] = metrics.exact_matches(texts, ds["response"], task.answer_format)
            result["exact_match"] = sum(per_example["correct"]) / max(len(texts), 1)
        if task.rouge:
            per_example.update(metrics.rouge_scores(texts, ds["response"]))
            result.update(metrics.rouge(texts, ds["response"]))
        rows = generation_rows(ds["response"], texts, losses, **per_example)
        return {**result, "samples": samples(ds["response"], texts), "predictions": rows}

    def input_column(self, task):
        return task.prompt_field

    def answer(self, task, model, tokenizer, rows, label_names, max_new_tokens):
        from peftlab import compute, metrics

        prompts = [format_prompt(task, r, tokenizer) for r in rows]
        texts = compute.generate(
            model, tokenizer, prompt_ids(task, tokenizer, prompts), max_new_tokens, task.eval_batch_size
        )
        if task.answer_format in ("none", "text"):
            return [{"output": t} for t in texts]
        return [{"output": t, "answer": metrics.extract_answer(t, task.answer_format)} for t in texts]
