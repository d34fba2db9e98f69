"""rlvr: GRPO (TRL) on prompts with verifiable rewards.

Tokenised: the formatted `prompt` text (GRPOTrainer tokenises it) and its ids, plus
the columns the rewards read. Evaluated on greedy answers: accuracy (the first reward
scores 1), the share in the answer format, and the mean of every reward. Inference
answers the generated text and the last <answer> tag in it.
"""

from __future__ import annotations

from peftlab import rewards
from peftlab.tasks.base import TaskType, causal_lm, format_prompt, prompt_ids, rows_of, template_fields


class Rlvr(TaskType):
    name = "rlvr"
    summary = "GRPO on prompts with verifiable rewards"
    rewarded = True
    generates = True
    peft_task_type = "CAUSAL_LM"
    encoder_decoder = False
    loss_kwargs = False  # GRPOTrainer computes and scales its own loss

    def columns(self, task):
        reward_columns = [c for c in rewards.columns(task.rewards) if c != "answer"]
        answer = [task.response_field] if "math" in task.rewards else []
        return list(
            dict.fromkeys([task.prompt_field, *template_fields(task.prompt_template), *reward_columns, *answer])
        )

    def kept_columns(self, task):
        return [c for c in self.columns(task) if c != task.response_field]

    def corpus_texts(self, task, rows):
        # prompts, followed by their reference solutions where the data has them
        solutions = rows[task.response_field] if task.response_field in rows.column_names else [""] * len(rows)
        texts = [format_prompt(task, r) + str(s) for r, s in zip(rows, solutions)]
        return texts, texts

    def encoder(self, task, tokenizer, label_ids):
        def encode(batch):
            prompts = [format_prompt(task, r, tokenizer) for r in rows_of(batch)]
            enc = tokenizer(prompts, truncation=True, max_length=task.max_length)
            out = {**enc, "prompt": prompts}
            if "math" in task.rewards:
                out["answer"] = [str(a) for a in batch[task.response_field]]
            return out

        return encode

    def load_model(self, path, task, tokenizer, label_names, kwargs):
        return causal_lm(path, kwargs)

    def collator(self, task, tokenizer):
        return None  # GRPOTrainer batches the prompts itself

    def trainer(self, spec, model, tokenizer, train_ds, validation, args, callbacks, make_optimizer):
        from peftlab import trainers

        return trainers.grpo(
            model, tokenizer, train_ds, args, callbacks, make_optimizer, spec.task.rewards, spec.training.rl
        )

    def metric_names(self, task):
        return ["accuracy", "format"]  # plus mean_reward, each reward's mean

    def default_metric(self, task):
        return "accuracy"

    def evaluate(self, task, model, tokenizer, ds):
        from peftlab import compute

        texts = compute.generate(model, tokenizer, ds["input_ids"], task.max_new_tokens, task.eval_batch_size)
        columns = {c: ds[c] for c in rewards.columns(task.rewards)}
        scores = {r: rewards.REWARDS[r](texts, **columns) for r in task.rewards}
        correct = scores[task.rewards[0]]
        return {
            "accuracy": sum(s == 1.0 for s in correct) / max(len(correct), 1),
            "format": sum(map(rewards.format_score, texts)) / max(len(texts), 1),
            "mean_reward": {r: sum(v) / max(len(v), 1) for r, v in scores.items()},
            "samples": [
                {"prompt": p[-200:], "generated": g, "score": s}
                for p, g, s in zip(ds["prompt"][:5], texts[:5], correct[:5])
            ],
            "predictions": [
                {
                    "id": i,
                    "prediction": g,
                    "reference": {c: v[i] for c, v in columns.items()},
                    "correct": s == 1.0,
                    "reward": s,
                }
                for i, (g, s) in enumerate(zip(texts, correct))
            ],
        }

    def input_column(self, task):
        return task.prompt_field

    def answer(self, task, model, tokenizer, rows, label_names, max_new_tokens):
        from peftlab import compute

        prompts = [format_prompt(task, r, tokenizer) for r in rows]
        texts = compute.generate(
            model, tokenizer, prompt_ids(task, tokenizer, prompts), max_new_tokens, task.eval_batch_size
        )
        return [{"output": t, "answer": rewards.last_answer_tag(t)} for t in texts]
