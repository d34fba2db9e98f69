"""Verifiable rewards for `rlvr` tasks, chosen by name in a task's `rewards:` list.

Each is a TRL reward function: `f(completions, **columns) -> list[float]`, where
`columns` are the dataset's columns for the same rows (GRPOTrainer passes them).
The first reward of a task is its correctness reward: evaluation reports the
share of held-out prompts whose greedy answer scores 1 on it.

- countdown: the expression in the last <answer>…</answer> uses each of `nums`
  exactly once, only + - * / and parentheses, and equals `target` (TinyZero, PeRL);
- math: the last \\boxed{…} (or <answer>…</answer>) equals the reference answer,
  numbers compared numerically;
- format: the completion ends with one <answer>…</answer> block.
"""

from __future__ import annotations

import ast
import operator
import re

from peftlab import metrics

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_FORMAT = re.compile(r"^(?:(?!<answer>).)*<answer>((?!</?answer>).)+</answer>\s*$", re.S)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def last_answer_tag(text: str) -> str | None:
    found = _ANSWER.findall(text)
    return found[-1].strip() if found else None


def _evaluate(node: ast.AST, used: list[int]) -> float:
    """An arithmetic expression tree's value; the integer literals it uses go into `used`."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        used.append(node.value)
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left, used), _evaluate(node.right, used))
    raise ValueError(f"not allowed in a Countdown answer: {ast.dump(node)}")


def countdown_score(completion: str, nums: list[int], target: float) -> float:
    """1.0 if the completion's answer reaches `target` using each of `nums` exactly once, else 0.0."""
    expr = last_answer_tag(completion)
    if not expr or not re.fullmatch(r"[\d+\-*/().\s]+", expr):
        return 0.0
    used: list[int] = []
    try:
        value = _evaluate(ast.parse(expr, mode="eval"), used)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return 0.0
    if sorted(used) != sorted(int(n) for n in nums):
        return 0.0
    return 1.0 if abs(value - float(target)) < 1e-5 else 0.0


def countdown(completions: list[str], nums: list[list[int]], target: list[float], **_) -> list[float]:
    return [countdown_score(c, n, t) for c, n, t in zip(completions, nums, target)]


def math_score(completion: str, reference: str) -> float:
    predicted = metrics.last_boxed(completion) or last_answer_tag(completion)
    expected = metrics.last_boxed(str(reference)) or metrics.extract_answer(str(reference), "gsm8k") or str(reference)
    return 1.0 if metrics.answers_equal(predicted, expected) else 0.0


def math(completions: list[str], answer: list[str], **_) -> list[float]:
    return [math_score(c, a) for c, a in zip(completions, answer)]


def format_score(completion: str) -> float:
    return 1.0 if _FORMAT.match(completion) else 0.0


def format(completions: list[str], **_) -> list[float]:  # noqa: A001  (the reward's config name)
    return [format_score(c) for c in completions]


REWARDS = {"countdown": countdown, "math": math, "format": format}
# the dataset columns each reward reads (beyond the completion); `math` reads the task's response_field as `answer`
COLUMNS = {"countdown": ["nums", "target"], "math": ["answer"], "format": []}


def columns(names: list[str]) -> list[str]:
    """The dataset columns the named rewards read, each once."""
    return list(dict.fromkeys(c for name in names for c in COLUMNS[name]))
