"""Metric functions against hand-computed values."""

import pytest

from peftlab import metrics


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Tom has 3 + 4 = 7 apples.\n#### 7", "7"),
        ("#### 1,000", "1,000"),
        ("so the answer is\n####  -12.5 dollars", "-12.5"),
        ("no marker 42", None),
        ("#### 3\n#### 5", "5"),
    ],
)
def test_extract_gsm8k(text, expected):
    assert metrics.extract_answer(text, "gsm8k") == expected


def test_numbers_compare_numerically():
    assert metrics.answers_equal("18", "18.0")
    assert metrics.answers_equal("1,000", "1000")
    assert not metrics.answers_equal("18", "81")
    assert not metrics.answers_equal(None, "1")


def test_exact_match():
    preds = ["x = 5\n#### 5", "#### 6", "nothing", "#### 1,000.0"]
    refs = ["#### 5", "#### 7", "#### 1", "#### 1000"]
    assert metrics.exact_match(preds, refs) == pytest.approx(0.5)


def test_classification_metrics_by_hand():
    labels = [0, 0, 1, 1, 1]
    preds = [0, 1, 1, 1, 0]
    out = metrics.classification(labels, preds)
    assert out["accuracy"] == pytest.approx(3 / 5)
    # class 0: P=1/2 R=1/2 F1=1/2; class 1: P=2/3 R=2/3 F1=2/3; macro = 7/12
    assert out["macro_f1"] == pytest.approx(7 / 12)
