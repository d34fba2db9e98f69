"""Task metrics, computed locally with numpy and scikit-learn (no hub)."""

from __future__ import annotations

import math
import re

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def classification(labels, predictions) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro")),
    }


def extract_answer(text: str, fmt: str = "gsm8k") -> str | None:
    """The final answer: after the last '#### ' for gsm8k; the last number otherwise."""
    if fmt == "gsm8k":
        if "####" not in text:
            return None
        text = text.rsplit("####", 1)[1]
        match = _NUMBER.search(text)
        return match.group(0) if match else (text.strip().splitlines() or [None])[0]
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def answers_equal(predicted: str | None, reference: str | None) -> bool:
    """Numbers compare numerically ('1,000' == '1000.0'); anything else as stripped text."""
    if predicted is None or reference is None:
        return False
    try:
        return math.isclose(float(predicted.replace(",", "")), float(reference.replace(",", "")), rel_tol=0, abs_tol=1e-6)
    except ValueError:
        return predicted.strip() == reference.strip()


def exact_match(predictions: list[str], references: list[str], fmt: str = "gsm8k") -> float:
    hits = [answers_equal(extract_answer(p, fmt), extract_answer(r, fmt)) for p, r in zip(predictions, references)]
    return float(np.mean(hits)) if hits else 0.0
