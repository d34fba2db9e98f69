"""The rlvr rewards against hand-checked completions."""

import pytest

from peftlab import rewards


@pytest.mark.parametrize(
    "completion,score",
    [
        ("<think>3*2=6, 6+5=11</think> <answer>3 * 2 + 5</answer>", 1.0),
        ("<answer>(5 + 3) * 2 - 5</answer>", 0.0),  # 5 used twice
        ("<answer>3 * 5</answer>", 0.0),  # 2 unused
        ("<answer>5 + 3 + 2</answer>", 0.0),  # every number once, but 10, not 11
        ("<answer>5 / (3 - 3) + 2</answer>", 0.0),  # division by zero, and 3 twice
        ("<answer>__import__('os')</answer>", 0.0),  # not arithmetic: never evaluated
        ("<answer>11</answer>", 0.0),
        ("<answer>1</answer> then <answer>2 * 3 + 5</answer>", 1.0),  # the last answer counts
        ("3 * 2 + 5", 0.0),  # no answer tag
        ("<answer>(2 * 3) + 5.0</answer>", 0.0),  # 5.0 is not one of the numbers
    ],
)
def test_countdown(completion, score):
    assert rewards.countdown([completion], nums=[[3, 5, 2]], target=[11]) == [score]


def test_countdown_accepts_division_to_the_target():
    assert rewards.countdown_score("<answer>(8 - 2) / 3</answer>", [2, 3, 8], 2) == 1.0


@pytest.mark.parametrize(
    "completion,answer,score",
    [
        ("so \\boxed{18.0}", "Janet makes 18\n#### 18", 1.0),
        ("so \\boxed{18}", "\\boxed{18}", 1.0),
        ("<answer>1,000</answer>", "1000", 1.0),
        ("so \\boxed{17}", "#### 18", 0.0),
        ("eighteen", "18", 0.0),
    ],
)
def test_math(completion, answer, score):
    assert rewards.math([completion], answer=[answer]) == [score]


@pytest.mark.parametrize(
    "completion,score",
    [
        ("<think>x</think> <answer>1 + 2</answer>", 1.0),
        ("<answer>3</answer>\n", 1.0),
        ("answer: 3", 0.0),
        ("<answer>3</answer> and more", 0.0),
        ("<answer>1</answer><answer>2</answer>", 0.0),
        ("<answer></answer>", 0.0),
    ],
)
def test_format(completion, score):
    assert rewards.format([completion]) == [score]
