"""Task metrics, computed locally with numpy, scipy, scikit-learn and rouge-score (no hub).

- classification: accuracy, macro-F1, F1/precision/recall (of class 1 for two
  classes, macro otherwise; GLUE's F1 for MRPC and QQP), Matthews correlation (CoLA);
- regression (STS-B): Pearson and Spearman correlation, MSE;
- generation: exact match of the final answer (GSM8K's `#### n`, MATH's `\\boxed{…}`,
  the last number, or the whole text), numbers compared numerically; ROUGE-1/2/L.

And the metric registry (`METRICS`, `metric`): one row per metric holding everything the
tables, plots, statistics and task types know of it: its display name, its direction, its
range, its per-example form and its paired test. A new metric is one row (`register`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
ANSWER_FORMATS = ("gsm8k", "boxed", "last_number", "text", "none")


def classification(labels, predictions, num_labels: int = 2) -> dict[str, float]:
    # imported here: the workflow imports this module through the task registry when it
    # plans a matrix, and scikit-learn's import alone is a second of every Slurm job's start
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, precision_score, recall_score

    binary = {"average": "binary", "pos_label": 1} if num_labels == 2 else {"average": "macro"}
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "f1": float(f1_score(labels, predictions, zero_division=0, **binary)),
        "precision": float(precision_score(labels, predictions, zero_division=0, **binary)),
        "recall": float(recall_score(labels, predictions, zero_division=0, **binary)),
        "mcc": float(matthews_corrcoef(labels, predictions)),
    }


def regression(labels, predictions) -> dict[str, float]:
    from scipy import stats

    labels, predictions = np.asarray(labels, dtype=float), np.asarray(predictions, dtype=float)
    constant = np.ptp(predictions) == 0 or np.ptp(labels) == 0  # a correlation is undefined; report 0, not NaN
    return {
        "pearson": 0.0 if constant else float(stats.pearsonr(labels, predictions)[0]),
        "spearman": 0.0 if constant else float(stats.spearmanr(labels, predictions)[0]),
        "mse": float(np.mean((labels - predictions) ** 2)),
    }


def last_boxed(text: str) -> str | None:
    r"""The contents of the last `\boxed{…}` (or `\fbox{…}`), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_ = text.find("{", start)
    if open_ < 0:
        return None
    depth = 0
    for i in range(open_, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_ + 1 : i].strip()
    return None


def extract_answer(text: str, fmt: str = "gsm8k") -> str | None:
    """The final answer of a solution or a model's output, by the task's `answer_format`.

    gsm8k: what follows the last '####' (its first number); boxed: the last \\boxed{…};
    last_number: the last number in the text; text: the whole text, stripped.
    """
    if fmt == "gsm8k":
        if "####" not in text:
            return None
        text = text.rsplit("####", 1)[1]
        match = _NUMBER.search(text)
        return match.group(0) if match else (text.strip().splitlines() or [None])[0]
    if fmt == "boxed":
        return last_boxed(text)
    if fmt == "last_number":
        numbers = _NUMBER.findall(text)
        return numbers[-1] if numbers else None
    if fmt == "text":
        return text.strip()
    raise ValueError(f"answer_format {fmt!r}; allowed: {', '.join(a for a in ANSWER_FORMATS if a != 'none')}")


def as_number(text: str) -> float | None:
    """'1,000' -> 1000.0, '$18.00' -> 18.0, '\\frac{1}{2}' -> None (not a plain number)."""
    t = text.strip().strip("$").replace(",", "").rstrip(".")
    t = t.removeprefix("\\$").strip()
    try:
        return float(t)
    except ValueError:
        return None


def answers_equal(predicted: str | None, reference: str | None) -> bool:
    """Numbers compare numerically ('1,000' == '1000.0'); anything else as stripped text."""
    if predicted is None or reference is None:
        return False
    a, b = as_number(predicted), as_number(reference)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=0, abs_tol=1e-6)
    return predicted.strip() == reference.strip()


def exact_matches(predictions: list[str], references: list[str], fmt: str = "gsm8k") -> list[bool]:
    """Per example: does the extracted final answer equal the reference's?"""
    return [answers_equal(extract_answer(p, fmt), extract_answer(r, fmt)) for p, r in zip(predictions, references)]


def exact_match(predictions: list[str], references: list[str], fmt: str = "gsm8k") -> float:
    hits = exact_matches(predictions, references, fmt)
    return float(np.mean(hits)) if hits else 0.0


ROUGE = ("rouge1", "rouge2", "rougeL")


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    """Per-example ROUGE-1/2/L F-measure (rouge-score, Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
    return {k: [s[k].fmeasure for s in scores] for k in ROUGE}


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure, as the summarisation papers report it."""
    return {k: float(np.mean(v)) if v else 0.0 for k, v in rouge_scores(predictions, references).items()}


# --- the metric registry ---------------------------------------------------------------
# How a metric is compared on two settings' per-example predictions (predictions.jsonl) over
# the seeds both ran, the example as the unit (peftlab.stats.example_test): `per_example` turns a
# run's rows into an array, one row per example. With no `statistic` the metric is the mean of
# its one column (correctness, ROUGE), averaged over the seeds and tested by paired permutation;
# with one, the metric is recomputed from each resample of the examples (paired bootstrap).


@dataclass(frozen=True)
class Metric:
    name: str
    display: str
    higher_is_better: bool = True
    bounds: tuple[float, float] | None = None  # its range: intervals are clipped to it
    per_example: Callable[[list[dict]], np.ndarray] | None = None  # None: no per-example test
    statistic: Callable[[np.ndarray], float] | None = None

    @property
    def paired_test(self) -> str | None:
        """The per-example test the tables run on it: "paired permutation", "paired bootstrap" or None."""
        if self.per_example is None:
            return None
        return "paired permutation" if self.statistic is None else "paired bootstrap"


def column(name: str) -> Callable[[list[dict]], np.ndarray]:
    """Per example: one recorded column (`correct`, a ROUGE score)."""
    return lambda rows: np.array([[float(r[name])] for r in rows], dtype=float)


def loss_rows(rows: list[dict]) -> np.ndarray:
    return np.array([[r["loss_sum"], r["tokens"]] for r in rows], dtype=float)


def pairs(rows: list[dict]) -> np.ndarray:
    """Per example: (prediction, reference) as numbers."""
    return np.array([[float(r["prediction"]), float(r["reference"])] for r in rows], dtype=float)


def mean_loss(x: np.ndarray) -> float:
    return float(x[:, 0].sum() / max(x[:, 1].sum(), 1))


def pearson_pairs(x: np.ndarray) -> float:
    """Pearson's r of rows (prediction, reference); 0 for a constant side, as `regression` reports it."""
    if np.ptp(x[:, 0]) == 0 or np.ptp(x[:, 1]) == 0:
        return 0.0
    return float(np.corrcoef(x[:, 0], x[:, 1])[0, 1])


def spearman_pairs(x: np.ndarray) -> float:
    from scipy import stats

    if np.ptp(x[:, 0]) == 0 or np.ptp(x[:, 1]) == 0:
        return 0.0
    return float(stats.spearmanr(x[:, 0], x[:, 1])[0])


def _sklearn(name: str, **kw) -> Callable[[np.ndarray], float]:
    """A scikit-learn metric of rows (prediction, reference), imported when first used."""

    def statistic(x: np.ndarray) -> float:
        import sklearn.metrics

        return float(getattr(sklearn.metrics, name)(x[:, 1], x[:, 0], **kw))

    return statistic


SHARE, CORRELATION, POSITIVE = (0.0, 1.0), (-1.0, 1.0), (0.0, math.inf)
METRICS: dict[str, Metric] = {}


def register(m: Metric) -> Metric:
    """Add (or replace) a metric's row: every reader of a metric's properties reads it from here."""
    METRICS[m.name] = m
    return m


for _m in (
    Metric("accuracy", "accuracy", bounds=SHARE, per_example=column("correct")),
    Metric("exact_match", "exact match", bounds=SHARE, per_example=column("correct")),
    Metric(
        "macro_f1",
        "macro-F1",
        bounds=SHARE,
        per_example=pairs,
        statistic=_sklearn("f1_score", average="macro", zero_division=0),
    ),
    Metric("f1", "F1", bounds=SHARE),
    Metric("precision", "precision", bounds=SHARE),
    Metric("recall", "recall", bounds=SHARE),
    Metric(
        "mcc", "Matthews correlation", bounds=CORRELATION, per_example=pairs, statistic=_sklearn("matthews_corrcoef")
    ),
    Metric("pearson", "Pearson r", bounds=CORRELATION, per_example=pairs, statistic=pearson_pairs),
    Metric("spearman", "Spearman rho", bounds=CORRELATION, per_example=pairs, statistic=spearman_pairs),
    Metric(
        "mse",
        "MSE",
        higher_is_better=False,
        bounds=POSITIVE,
        per_example=pairs,
        statistic=lambda x: float(((x[:, 0] - x[:, 1]) ** 2).mean()),
    ),
    Metric(
        "eval_loss", "eval loss", higher_is_better=False, bounds=POSITIVE, per_example=loss_rows, statistic=mean_loss
    ),
    Metric(
        "perplexity",
        "perplexity",
        higher_is_better=False,
        bounds=POSITIVE,
        per_example=loss_rows,
        statistic=lambda x: float(np.exp(min(mean_loss(x), 50))),
    ),
    *(Metric(r, f"ROUGE-{r[5:]}", bounds=SHARE, per_example=column(r)) for r in ROUGE),
    Metric("format", "format", bounds=SHARE),  # rlvr: the share of completions in the answer format
):
    register(_m)


def metric(name: str) -> Metric:
    """A metric's row; a name with none (a reward's mean, a custom task's metric) is higher-is-better, unbounded,
    untested."""
    return METRICS.get(name) or Metric(name, name)
