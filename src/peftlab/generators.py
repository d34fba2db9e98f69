"""Deterministic dataset generators for the offline default: (n, rng) -> list of records.

Pure Python, so validating a config (which checks generator names) stays fast.
"""

from __future__ import annotations

import random

_SUBJECTS = (
    "the movie|this film|the food|the service|my new phone|the hotel room|the book|the concert|"
    "this laptop|the game|the show|the restaurant|the trip|the app|the coffee|the staff|this album|"
    "the seats|the ending|the plot"
).split("|")
_POSITIVE = (
    "wonderful excellent delightful fantastic great superb enjoyable charming brilliant lovely amazing pleasant "
    "impressive perfect fun"
).split(" ")
_NEGATIVE = (
    "terrible awful boring disappointing horrible dreadful mediocre annoying poor bland painful frustrating "
    "dull broken useless"
).split(" ")
_TEMPLATES = (
    "{s} was {a}.|i thought {s} was really {a}.|honestly, {s} is {a}!|{s} felt {a} to me.|"
    "overall {s} was {a}, {tail}.|we found {s} quite {a}.|{s}? {a}.|my friends said {s} was {a}.|"
    "after a week, {s} still seems {a}.|{s} is {adv} {a}."
).split("|")
_TAILS = "as expected|to be honest|in my opinion|all things considered|no doubt".split("|")
_ADVERBS = "very truly really rather extremely".split(" ")


def sentiment(n: int, rng: random.Random) -> list[dict]:
    """Two-class sentiment sentences; one in eight is negated ("was not great"), flipping the label."""
    rows = []
    for _ in range(n):
        label = rng.randrange(2)
        negate = rng.random() < 0.125
        adjective = rng.choice(_POSITIVE if label != negate else _NEGATIVE)
        text = rng.choice(_TEMPLATES).format(
            s=rng.choice(_SUBJECTS),
            a=("not " if negate else "") + adjective,
            tail=rng.choice(_TAILS),
            adv=rng.choice(_ADVERBS),
        )
        rows.append({"text": text[0].upper() + text[1:], "label": label})
    return rows


_NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Maya", "Ben", "Ivy", "Raj", "Zoe"]
_THINGS = ["apples", "books", "coins", "pens", "cards", "eggs", "shells", "stamps"]


def gsm8k_arith(n: int, rng: random.Random) -> list[dict]:
    """GSM8K-format word problems with one-digit operands; the answer ends in '#### <n>'."""
    rows = []
    for _ in range(n):
        name, other = rng.sample(_NAMES, 2)
        thing = rng.choice(_THINGS)
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        if rng.random() < 0.5:
            q = f"{name} has {a} {thing}. {other} gives {name} {b} more. How many {thing} does {name} have now?"
            work, result = f"{a} + {b} = {a + b}", a + b
        else:
            a, b = max(a, b), min(a, b)
            q = f"{name} has {a} {thing} and gives {b} to {other}. How many {thing} does {name} have left?"
            work, result = f"{a} - {b} = {a - b}", a - b
        rows.append({"question": q, "answer": f"{name} has {work} {thing}.\n#### {result}"})
    return rows


GENERATORS = {"sentiment": sentiment, "gsm8k_arith": gsm8k_arith}
