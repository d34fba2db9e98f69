"""Statistics for comparing runs: intervals over seeds, paired tests, and the multiple-comparison correction.

- `summary`: n, mean, std and a 95% Student-t interval over seeds. One seed gives n = 1
  and no std or interval (never ± 0): one run says nothing about the spread.
- `seed_test`: a paired t-test between two methods over the seeds both ran (the
  same seed gives both the same data order and initial noise, so the pairs share their luck).
  No p-value from fewer than MIN_SEEDS pairs or from differences that do not vary: the
  result then says why instead (`note`).
- `example_test`: two methods on the same test examples, over the seeds both ran, with the
  **example** as the unit (each counts once, however many seeds saw it): a metric with a
  per-example outcome (correctness, ROUGE) is averaged over the seeds per example, then a
  paired permutation test flips the sign of each example's difference (scipy); a metric of
  the whole set (a correlation, MCC, macro-F1, a token-weighted loss) gets a paired
  bootstrap that resamples examples, the same ones for every seed and both methods, and
  averages the metric over the seeds.
  With one seed and correctness, the permutation test is McNemar's exact test (only the
  examples the two methods disagree on move under a sign flip).
- `holm`: Holm's step-down correction of a family of p-values (statsmodels).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
MIN_SEEDS = 3  # a t-test over fewer pairs of seeds has one degree of freedom or none: no evidence
RESAMPLES = 9999  # example_test's random sign flips: exact when 2^(examples that differ) is no more


def summary(values, confidence: float = CONFIDENCE, bounds: tuple[float, float] | None = None) -> dict:
    """{n, mean, std, ci_low, ci_high, ci}: `ci` names the interval ("t95": Student's t over n-1 degrees
    of freedom); with one value, std and the interval are None. `bounds`: the metric's possible range
    (a share lies in [0, 1]); the interval is clipped to it (a t interval of two seeds can reach past it)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    out = {"n": n, "mean": float(x.mean()) if n else None, "std": None, "ci_low": None, "ci_high": None, "ci": None}
    if n >= 2:
        std = float(x.std(ddof=1))
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / np.sqrt(n)
        low, high = out["mean"] - half, out["mean"] + half
        if bounds is not None:
            low, high = max(low, bounds[0]), min(high, bounds[1])
        out.update(std=std, ci_low=low, ci_high=high, ci=f"t{int(confidence * 100)}")
    return out


def seed_test(a: dict, b: dict) -> dict | None:
    """Paired t-test of two methods' scores by seed ({seed: score}): {test, n, diff, p, note}; None with no shared seed.

    p is None, and `note` says why, with fewer than MIN_SEEDS shared seeds or differences
    that do not vary (their spread below 1e-9 of their size: t is undefined, not infinite).
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    x, y = np.array([a[s] for s in seeds], dtype=float), np.array([b[s] for s in seeds], dtype=float)
    diff = x - y
    out = {"test": "paired t (seeds)", "n": len(seeds), "diff": float(diff.mean()), "p": None, "note": None}
    if len(seeds) < MIN_SEEDS:
        return {**out, "note": f"{len(seeds)} shared seed(s): a test needs at least {MIN_SEEDS}"}
    if not np.all(np.isfinite(diff)):
        return {**out, "note": "a score is not finite"}
    if diff.std(ddof=1) <= 1e-9 * max(1.0, float(np.abs(diff).max())):
        return {**out, "note": "the seeds' differences do not vary: no t-test"}
    return {**out, "p": float(stats.ttest_rel(x, y).pvalue)}


def example_test(a, b, statistic: Callable | None = None, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Two methods on the same examples over the same seeds, the example as the unit: {test, n, seeds, diff, p}.

    `a` and `b` hold one entry per seed (the same seeds, in the same order), each a row per
    example, the same examples in the same order. Without `statistic`, each row is the
    example's outcome (1/0 correct, a ROUGE score): outcomes are averaged over the seeds per
    example and a paired permutation test (sign flips of the per-example differences, exact
    when they are few) tests their mean. With `statistic` (a function of one seed's rows, such
    as Pearson's r of (prediction, reference) pairs), a paired bootstrap resamples the
    examples, the same ones for every seed and both methods, and compares the metric averaged
    over the seeds. Either way a copy of the seeds adds no example, and swapping a and b
    gives the same p.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim < 2 or a.shape[1] == 0:
        raise ValueError(f"an example test needs the same seeds and examples for both methods: {a.shape} vs {b.shape}")
    seeds, n = a.shape[0], a.shape[1]
    if statistic is None:
        d = a.mean(axis=0) - b.mean(axis=0)
        out = {"test": "paired permutation (examples, seeds averaged)", "n": n, "seeds": seeds, "diff": float(d.mean())}
        moved = d[d != 0]  # an example both score alike adds the same 0 to every flip: leaving it out keeps p
        if len(moved) < 2:  # none, or one whose two signs are equally likely: p = 1
            return {**out, "p": 1.0}
        r = stats.permutation_test(
            (moved,), np.sum, permutation_type="samples", n_resamples=resamples, random_state=seed
        )
        return {**out, "p": float(r.pvalue)}

    def averaged(x, idx):
        return float(np.mean([statistic(x[s][idx]) for s in range(seeds)]))

    every = np.arange(n)  # resampled below: the same examples for every seed and both methods
    observed = averaged(a, every) - averaged(b, every)
    rng = np.random.default_rng(seed)
    diffs = np.array([averaged(a, i) - averaged(b, i) for i in rng.integers(0, n, size=(resamples, n))])
    diffs = diffs[np.isfinite(diffs)]
    below, above = ((diffs <= 0).sum() + 1) / (len(diffs) + 1), ((diffs >= 0).sum() + 1) / (len(diffs) + 1)
    p = 1.0 if observed == 0 or not len(diffs) else min(1.0, 2 * min(below, above))
    return {
        "test": "paired bootstrap (examples, seeds averaged)",
        "n": n,
        "seeds": seeds,
        "diff": observed,
        "p": float(p),
    }


def holm(pvalues) -> list[float]:
    """Holm-adjusted p-values, in the given order."""
    from statsmodels.stats.multitest import multipletests

    p = [x for x in pvalues]
    if not p:
        return []
    return [float(x) for x in multipletests(p, method="holm")[1]]
