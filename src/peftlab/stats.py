"""Statistics for comparing runs: intervals over seeds, paired tests, and the multiple-comparison correction.

- `summary`: n, mean, std and a 95% Student-t interval over seeds. One seed gives n = 1
  and no std or interval (never ± 0): one run says nothing about the spread.
- `seed_test`: a paired t-test between two methods over the seeds both ran (the
  same seed gives both the same data order and initial noise, so the pairs share their luck).
- `mcnemar`: two methods' per-example correctness on the same examples (accuracy,
  exact match); the exact binomial test below 25 discordant pairs, the
  continuity-corrected chi-square above (statsmodels).
- `paired_bootstrap`: a continuous metric on the same examples (ROUGE, a
  correlation, a loss): resample the examples, recompute both methods' metric on each
  resample, and take the two-sided p-value of the difference.
- `holm`: Holm's step-down correction of a family of p-values (statsmodels).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
EXACT_BELOW = 25  # McNemar: the exact binomial test when fewer pairs disagree (the chi-square is poor there)
CORRECTION = "holm"
# the metrics whose values have a known range: intervals are clipped to it
SHARES = ("accuracy", "macro_f1", "f1", "precision", "recall", "exact_match", "rouge1", "rouge2", "rougeL", "format", "token_accuracy")
CORRELATIONS = ("mcc", "pearson", "spearman")


def bounds(metric: str) -> tuple[float, float] | None:
    if metric in SHARES:
        return (0.0, 1.0)
    if metric in CORRELATIONS:
        return (-1.0, 1.0)
    return (0.0, float("inf")) if metric in ("eval_loss", "perplexity", "mse") else None


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
    """Paired t-test of two methods' scores by seed ({seed: score}); None with fewer than two shared seeds."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    x, y = np.array([a[s] for s in seeds], dtype=float), np.array([b[s] for s in seeds], dtype=float)
    diff = x - y
    if np.allclose(diff, diff[0]):  # no spread in the differences: t is undefined
        return {"test": "paired t (seeds)", "n": len(seeds), "diff": float(diff.mean()), "p": 1.0 if diff[0] == 0 else 0.0}
    return {"test": "paired t (seeds)", "n": len(seeds), "diff": float(diff.mean()), "p": float(stats.ttest_rel(x, y).pvalue)}


def mcnemar(a_correct, b_correct) -> dict:
    """McNemar's test on paired per-example correctness: {test, n, a_only, b_only, statistic, p, diff}.

    a_only counts the examples a got right and b wrong. The exact test's statistic is
    min(a_only, b_only); the chi-square's is (|a_only - b_only| - 1)² / (a_only + b_only).
    """
    from statsmodels.stats.contingency_tables import mcnemar as _mcnemar

    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs the same examples: {a.shape} vs {b.shape}")
    table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
    discordant = table[0][1] + table[1][0]
    exact = discordant < EXACT_BELOW
    if discordant == 0:
        result = {"statistic": 0.0, "p": 1.0}
    else:
        r = _mcnemar(table, exact=exact, correction=True)
        result = {"statistic": float(r.statistic), "p": float(r.pvalue)}
    return {
        "test": "McNemar exact" if exact else "McNemar chi2 (cc)",
        "n": len(a),
        "a_only": table[0][1],
        "b_only": table[1][0],
        "diff": float(a.mean() - b.mean()),
        **result,
    }


def paired_bootstrap(a, b, statistic: Callable = np.mean, resamples: int = 10_000, seed: int = 0) -> dict:
    """Two-sided paired bootstrap of statistic(a) - statistic(b) over the same examples (rows of a and b).

    p is twice the smaller share of resampled differences on either side of zero (at least 1/resamples).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"a paired bootstrap needs the same examples: {len(a)} vs {len(b)}")
    rng = np.random.default_rng(seed)
    observed = float(statistic(a) - statistic(b))
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    diffs = np.array([statistic(a[i]) - statistic(b[i]) for i in idx])
    diffs = diffs[np.isfinite(diffs)]
    p = min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean())) if len(diffs) else 1.0
    return {"test": "paired bootstrap", "n": len(a), "diff": observed, "p": max(float(p), 1 / resamples)}


def holm(pvalues) -> list[float]:
    """Holm-adjusted p-values, in the given order."""
    from statsmodels.stats.multitest import multipletests

    p = [x for x in pvalues]
    if not p:
        return []
    return [float(x) for x in multipletests(p, method="holm")[1]]


def pearson(pairs: np.ndarray) -> float:
    """Pearson's r of rows (prediction, reference); the statistic a regression task is bootstrapped on."""
    if np.ptp(pairs[:, 0]) == 0 or np.ptp(pairs[:, 1]) == 0:
        return 0.0
    return float(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1])


def spearman(pairs: np.ndarray) -> float:
    if np.ptp(pairs[:, 0]) == 0 or np.ptp(pairs[:, 1]) == 0:
        return 0.0
    return float(stats.spearmanr(pairs[:, 0], pairs[:, 1])[0])
