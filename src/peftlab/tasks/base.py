"""What a task type is: the pieces every stage asks of it, checked when the type's class is defined.

A task type is a subclass of `TaskType` that defines every name in `TaskType.REQUIRED`
(a subclass that leaves one out fails when its module is imported, naming what is
missing). Every method takes the task's `TaskSpec` first. Modules here import only
light packages at the top: the config parser (every Snakemake start) reads the task
types' names and metrics, so torch, transformers and datasets are imported inside the
methods that use them.
"""

from __future__ import annotations

import math
import string
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:
    import datasets

    from peftlab.spec import RunSpec, TaskSpec


class TaskType:
    """One task type: how its data reads, tokenises, trains, evaluates and answers."""

    # data
    name: ClassVar[str]  # the config's tasks.<name>.type
    summary: ClassVar[str]  # one line for the config reference: what the type trains and evaluates
    rewarded: ClassVar[bool] = False  # trains on `rewards` (and keeps a run's training.rl); others refuse rewards
    generates: ClassVar[bool] = (
        False  # evaluates generated text: needs a decoder or an encoder-decoder, not an encoder-only model
    )

    def columns(self, task: TaskSpec) -> list[str]:
        """The columns it reads from every split of the data."""
        raise NotImplementedError

    def corpus_texts(self, task: TaskSpec, rows: datasets.Dataset) -> tuple[list[str], list[str]]:
        """(texts a built model's tokenizer learns from, texts its base is pretrained on)."""
        raise NotImplementedError

    def encoder(self, task: TaskSpec, tokenizer, label_ids: dict[str, int]) -> Callable[[dict], dict]:
        """A batched `datasets.map` function: raw columns -> token ids, labels and whatever evaluation reads."""
        raise NotImplementedError

    # model and training
    peft_task_type: ClassVar[str]  # peft's TaskType: SEQ_CLS | CAUSAL_LM | SEQ_2_SEQ_LM
    encoder_decoder: ClassVar[
        bool
    ]  # needs an encoder-decoder (a built model's arch t5); its probe batch keeps the labels
    # The model divides its loss by the global `num_items_in_batch` (the Trainer passes it when
    # the forward takes **kwargs, and then skips dividing by the accumulation steps). Causal LMs
    # do; sequence-classification heads and T5 return a per-batch mean, so they must say False,
    # or their gradient is grad_accum x processes too large.
    loss_kwargs: ClassVar[bool]

    def load_model(self, path: str, task: TaskSpec, tokenizer, label_names: list[str] | None, kwargs: dict[str, Any]):
        """The base model with this type's head, from `path` (kwargs: dtype, quantization_config)."""
        raise NotImplementedError

    def model_from_config(self, config, task: TaskSpec, trust_remote_code: bool = False):
        """The base with this type's head from a model's config alone (the cost plan counts its
        parameters on the meta device): a causal LM, or a seq2seq LM for an encoder-decoder type."""
        import transformers

        auto = transformers.AutoModelForSeq2SeqLM if self.encoder_decoder else transformers.AutoModelForCausalLM
        return auto.from_config(config, trust_remote_code=trust_remote_code)

    def collator(self, task: TaskSpec, tokenizer):
        """The training batches' collator (None when the trainer batches by itself)."""
        raise NotImplementedError

    def trainer(
        self, spec: RunSpec, model, tokenizer, train_ds, validation, args: dict, callbacks: list, make_optimizer
    ):
        """The transformers (or TRL) trainer of one run; `args` are the TrainingArguments every type shares.
        `validation`: the rows held out of the training split that in-training evaluation reads (None without it)."""
        raise NotImplementedError

    # evaluation and inference
    def metric_names(self, task: TaskSpec) -> list[str]:
        """The metrics evaluation reports for this task; `tasks.<name>.metric` picks among them."""
        raise NotImplementedError

    def default_metric(self, task: TaskSpec) -> str:
        """The metric tables compare runs by when the task names none."""
        raise NotImplementedError

    def evaluate(self, task: TaskSpec, model, tokenizer, ds: datasets.Dataset) -> dict:
        """The metrics on one held-out split of the tokenised data, and under `predictions` one row per
        example ({id, prediction, reference}, plus `correct` for accuracy-like metrics and any per-example
        scores: rouge1/2/L, loss_sum and tokens), which the tables' paired tests read."""
        raise NotImplementedError

    def input_column(self, task: TaskSpec) -> str:
        """The column a bare string fills when `peftlab.infer` is given text."""
        raise NotImplementedError

    def answer(
        self, task: TaskSpec, model, tokenizer, rows: list[dict], label_names, max_new_tokens: int
    ) -> list[dict]:
        """What `peftlab.infer` prints per input row (besides the input)."""
        raise NotImplementedError

    # optional pieces, with defaults
    def kind(self, task: TaskSpec) -> str:
        """How error messages name its metric family (classification with one label: regression)."""
        return self.name

    def label_column(self, task: TaskSpec) -> str | None:
        """The column of labels, checked by `label_problems` (None: every read column is text)."""
        return None

    def class_names(self, task: TaskSpec, ds: datasets.DatasetDict) -> list[str] | None:
        """The names string labels map to, in id order (None: no named classes)."""
        return None

    def label_problems(self, task: TaskSpec, values: list, names: list[str] | None) -> tuple[list[int], str]:
        """(rows whose label cannot be used, what a label must be)."""
        return [], ""

    def kept_columns(self, task: TaskSpec) -> list[str]:
        """Raw columns that stay beside the tokens (what a reward reads)."""
        return []

    REQUIRED: ClassVar[tuple[str, ...]] = (
        "name",
        "summary",
        "peft_task_type",
        "encoder_decoder",
        "loss_kwargs",
        "columns",
        "corpus_texts",
        "encoder",
        "load_model",
        "collator",
        "trainer",
        "metric_names",
        "default_metric",
        "evaluate",
        "input_column",
        "answer",
    )

    def __init_subclass__(cls, partial: bool = False, **kwargs):
        """A concrete type must define every REQUIRED name; `partial=True` marks a shared base."""
        super().__init_subclass__(**kwargs)
        if partial:
            return
        missing = [n for n in cls.REQUIRED if not hasattr(cls, n) or getattr(cls, n) is getattr(TaskType, n, None)]
        if missing:
            raise TypeError(
                f"task type {cls.__name__} ({cls.__module__}) lacks {', '.join(missing)}; see "
                "peftlab.tasks.base.TaskType"
            )


# --- pieces several types share -------------------------------------------------------------


def template_fields(template: str) -> list[str]:
    """The {names} a prompt template uses, besides {prompt}."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f and f != "prompt"]


def format_prompt(task: TaskSpec, row: dict, tokenizer=None) -> str:
    """The prompt text of one example: the template over its columns, in the chat template if asked."""
    text = task.prompt_template.format(**{**row, "prompt": row[task.prompt_field]})
    if task.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def rows_of(batch: dict) -> list[dict]:
    """A batched map's columns as rows."""
    return [dict(zip(batch, values)) for values in zip(*batch.values())]


def with_perplexity(loss: float) -> dict[str, float]:
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50))}


def loss_rows(losses: list[tuple[float, int]]) -> list[dict]:
    """Per-example records of a loss-scored split: the summed cross-entropy and the tokens it is over."""
    return [{"id": i, "loss_sum": s, "tokens": n} for i, (s, n) in enumerate(losses)]


def generation_rows(
    references: list[str], generated: list[str], losses: list[tuple[float, int]] | None = None, **per_example
) -> list[dict]:
    """Per-example records of a generative split: the output, the reference, and any per-example scores."""
    rows = [{"id": i, "prediction": g, "reference": r} for i, (g, r) in enumerate(zip(generated, references))]
    for name, values in per_example.items():
        for row, v in zip(rows, values):
            row[name] = v
    for row, (s, n) in zip(rows, losses or []):
        row.update(loss_sum=s, tokens=n)
    return rows


def samples(references: list[str], generated: list[str], n: int = 5) -> list[dict]:
    return [{"reference": r, "generated": g} for r, g in zip(references[:n], generated[:n])]


def causal_lm(path: str, kwargs: dict):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def prompt_ids(task: TaskSpec, tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of prompts for generation, cut to the task's last max_length tokens (a chat template has its own
    special tokens)."""
    return [tokenizer(p, add_special_tokens=not task.chat_template)["input_ids"][-task.max_length :] for p in prompts]


def packed_or_padded(task, tokenizer):
    """Causal LM batches: padding-free (`packing`: position ids restart per example, so attention stays within each) or
    padded."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if task.packing:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)


def prompt_response_columns(task: TaskSpec) -> list[str]:
    """A prompt -> response type's columns: the prompt, the response and any other column its template names."""
    return list(dict.fromkeys([task.prompt_field, task.response_field, *template_fields(task.prompt_template)]))


def prompt_response_corpus(task: TaskSpec, rows) -> tuple[list[str], list[str]]:
    """A prompt -> response type's corpus: the tokenizer learns both sides; the base is pretrained on the
    responses only, so it knows the vocabulary and the answer format and the mapping is left for fine-tuning."""
    return [f"{r[task.prompt_field]} {r[task.response_field]}" for r in rows], [
        str(r[task.response_field]) for r in rows
    ]


class Supervised(TaskType, partial=True):
    """Types trained with peftlab's Trainer on labelled token batches (every type but rlvr)."""

    def trainer(self, spec, model, tokenizer, train_ds, validation, args, callbacks, make_optimizer):
        from peftlab import trainers

        eval_ds = evaluate_fn = None
        if spec.training.eval_steps:  # the type's own evaluation on the validation share, every eval_steps
            eval_ds = validation

            def evaluate_fn(m):
                return self.evaluate(spec.task, m, tokenizer, eval_ds)

        collator = self.collator(spec.task, tokenizer)
        return trainers.supervised(
            model,
            tokenizer,
            train_ds,
            args,
            callbacks,
            make_optimizer,
            collator,
            self.loss_kwargs,
            eval_ds,
            evaluate_fn,
        )


class CausalLM(Supervised, partial=True):
    """Supervised types on a decoder (sft, lm): AutoModelForCausalLM, which divides its loss by the global token
    count."""

    peft_task_type = "CAUSAL_LM"
    encoder_decoder = False
    generates = True
    loss_kwargs = True

    def load_model(self, path, task, tokenizer, label_names, kwargs):
        return causal_lm(path, kwargs)

    def collator(self, task, tokenizer):
        return packed_or_padded(task, tokenizer)
