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


def test_binary_f1_precision_recall_and_mcc_by_hand():
    # TP = 2, FN = 1, TN = 1, FP = 1
    out = metrics.classification([1, 1, 1, 0, 0], [1, 1, 0, 0, 1])
    assert (
        out["precision"] == pytest.approx(2 / 3)
        and out["recall"] == pytest.approx(2 / 3)
        and out["f1"] == pytest.approx(2 / 3)
    )
    # (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3 * 3 * 2 * 2)
    assert out["mcc"] == pytest.approx(1 / 6)


def test_three_classes_report_macro_f1_precision_recall():
    out = metrics.classification([0, 1, 2, 2], [0, 2, 2, 2], num_labels=3)
    # per class (P, R): 0: (1, 1); 1: (0, 0); 2: (2/3, 1) -> macro P = 5/9, macro R = 2/3
    assert (
        out["precision"] == pytest.approx(5 / 9) and out["recall"] == pytest.approx(2 / 3) and out["accuracy"] == 0.75
    )


def test_regression_pearson_spearman_by_hand():
    out = metrics.regression([1, 2, 3, 4], [1, 3, 2, 4])
    # deviations (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5): covariance 4, variances 5 and 5
    assert (
        out["pearson"] == pytest.approx(0.8)
        and out["spearman"] == pytest.approx(0.8)
        and out["mse"] == pytest.approx(0.5)
    )
    out = metrics.regression([1, 2, 3, 4], [1, 4, 9, 16])  # monotone, not linear
    assert out["spearman"] == pytest.approx(1.0) and out["pearson"] == pytest.approx(25 / (5 * 129) ** 0.5)
    assert metrics.regression([1, 2, 3], [2, 2, 2])["pearson"] == 0.0  # constant predictions: no correlation, not NaN


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so the answer is $\\boxed{18}$.", "18"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # the last one, nested braces kept
        ("\\boxed{1,000}", "1,000"),
        ("\\boxed{x", None),  # unbalanced
        ("no box", None),
    ],
)
def test_extract_boxed(text, expected):
    assert metrics.extract_answer(text, "boxed") == expected


def test_boxed_and_last_number_exact_match_compare_numbers():
    assert metrics.exact_match(
        ["\\boxed{1,000}", "\\boxed{18.0}", "\\boxed{7}"], ["\\boxed{1000}", "\\boxed{18}", "\\boxed{8}"], "boxed"
    ) == pytest.approx(2 / 3)
    assert metrics.exact_match(["The answer is: 12", "it is 3.50"], ["so 12", "3.5"], "last_number") == 1.0
    assert metrics.answers_equal("$18.00", "18") and metrics.answers_equal("\\frac{1}{2}", "\\frac{1}{2}")
    assert not metrics.answers_equal("\\frac{1}{2}", "0.5")  # not a plain number: compared as text


def test_rouge_by_hand():
    out = metrics.rouge(["the cat sat on the mat"], ["the cat sat on a mat"])
    # unigrams: 5 of 6 shared each way; bigrams: 3 of 5; longest common subsequence: 5 of 6
    assert (
        out["rouge1"] == pytest.approx(5 / 6)
        and out["rouge2"] == pytest.approx(3 / 5)
        and out["rougeL"] == pytest.approx(5 / 6)
    )
    assert metrics.rouge(["x y"], ["a b"])["rouge1"] == 0.0
