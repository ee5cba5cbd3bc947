"""Statistics for comparing strategies over a few seeds: how sure can we be that one is ahead?

A comparison has few seeds per strategy (3 to 20) and final bests that vary a lot between
seeds, so the tools are the small-sample ones that assume nothing about the distribution:

- `bootstrap_ci`: a percentile bootstrap interval of the mean final best across seeds (with
  very few seeds it is too narrow rather than too wide: read it with the seed count);
- `permutation_test`: the two-sided p-value of the difference of two groups' means, exact
  (every way to split the pooled values into groups of the same sizes) when there are at most
  `resamples` such splits, Monte Carlo otherwise;
- `verdict`: that test stated in words, with the noise it was up against and, when nothing
  is detected, the size of difference the seeds could have shown.

Randomness comes from a fixed seed, so the same searches always give the same numbers.

>>> bootstrap_ci([2.61, 2.58, 2.66])            # doctest: +SKIP
>>> verdict("evolve", [2.51, 2.55, 2.50], "greedy", [2.60, 2.58, 2.66]).sentence   # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass

import numpy as np

from population.lineage import MINIMIZE, better, gain, pooled_sd

ALPHA = 0.05       # the p-value below which a difference is called detected
LEVEL = 0.95       # coverage of the confidence intervals


def bootstrap_ci(values, *, level: float = LEVEL, resamples: int = 10_000, seed: int = 0) -> tuple[float, float] | None:
    """A percentile bootstrap confidence interval of the mean of `values` (None with fewer than two).

    Args:
        values: one number per seed, e.g. final bests.
        level: the interval's nominal coverage.
        resamples: bootstrap resamples.
        seed: the random seed (the same values always give the same interval).
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def permutation_test(a, b, *, resamples: int = 20_000, seed: int = 0) -> float:
    """Two-sided p-value of the difference of means of `a` and `b` under exchangeability.

    The share of ways to relabel the pooled values (keeping the group sizes) whose
    difference of means is at least as large in magnitude as the observed one. Exact when
    the number of relabellings is at most `resamples`; otherwise a Monte Carlo estimate
    that counts the observed labelling too, so it is never 0.

    Args:
        a, b: the two groups' values (at least one each).
        resamples: the most relabellings to enumerate, and the Monte Carlo draws beyond that.
        seed: the random seed of the Monte Carlo draws.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(a) or not len(b):
        raise ValueError("a permutation test needs at least one value in each group")
    pooled, n = np.concatenate([a, b]), len(a)
    observed = abs(a.mean() - b.mean())
    tolerance = 1e-12 * max(1.0, float(np.abs(pooled).max()))
    total = pooled.sum()
    if math.comb(len(pooled), n) <= resamples:
        sums = np.array([pooled[list(idx)].sum() for idx in itertools.combinations(range(len(pooled)), n)])
        diffs = np.abs(sums / n - (total - sums) / len(b))
        return float(np.mean(diffs >= observed - tolerance))
    rng = np.random.default_rng(seed)
    picks = np.argsort(rng.random((resamples, len(pooled))), axis=1)[:, :n]
    sums = pooled[picks].sum(axis=1)
    diffs = np.abs(sums / n - (total - sums) / len(b))
    return float((1 + np.sum(diffs >= observed - tolerance)) / (resamples + 1))


def smallest_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p-value a permutation test of groups this size can give (distinct values)."""
    splits = math.comb(n_a + n_b, n_a)
    return (2 if n_a == n_b else 1) / splits


@dataclass(frozen=True)
class Verdict:
    """One group tested against another on their final bests."""

    label: str
    other: str
    n: int
    n_other: int
    difference: float | None      # how far `label` is ahead of `other` (positive: ahead), mean against mean
    p: float | None               # two-sided permutation p-value (None: too few values to test)
    sigma: float | None           # pooled sd of the final bests within the two groups
    sentence: str

    @property
    def detected(self) -> bool:
        return self.p is not None and self.p < ALPHA


def verdict(label: str, values, other: str, other_values, *, direction: str = MINIMIZE, unit: str = "val_bpb") -> Verdict:
    """Test whether group `label` differs from `other` and say so in one sentence.

    "evolve ahead of greedy by 0.0123 val_bpb, p = 0.008 (two-sided permutation test on final
    bests, 5 vs 5 seeds)", or "no difference detectable between evolve and greedy at this noise
    (σ = 0.0410 across seeds; p = 0.43, 3 vs 3 seeds): differences below ~0.094 would not show".

    Args:
        label, values: the group and its final bests (one per seed).
        other, other_values: the group it is compared with (usually the reference, greedy).
        direction: whether lower (minimize) or higher final bests are better.
        unit: the metric's name, for the sentence.
    """
    a = [v for v in values if v is not None and math.isfinite(v)]
    b = [v for v in other_values if v is not None and math.isfinite(v)]
    seeds = f"{len(a)} vs {len(b)} seed{'s' if len(a) + len(b) != 2 else ''}"
    if not a or not b:
        return Verdict(label, other, len(a), len(b), None, None, None,
                       f"{label} vs {other}: nothing to test ({seeds} with a result)")
    diff = gain(statistics.fmean(b), statistics.fmean(a), direction)
    sigma = pooled_sd([a, b])
    if len(a) + len(b) < 3 or smallest_p(len(a), len(b)) >= ALPHA:
        return Verdict(label, other, len(a), len(b), diff, None, sigma,
                       f"{label} vs {other}: too few seeds to test ({seeds}: no split of so few can reach "
                       f"p < {ALPHA:g}; run more with --seeds)")
    p = permutation_test(a, b)
    if p < ALPHA:
        ahead, behind = (label, other) if better(statistics.fmean(a), statistics.fmean(b), direction) else (other, label)
        text = (f"{ahead} ahead of {behind} by {abs(diff):.4f} {unit}, p = {p:.3g} "
                f"(two-sided permutation test on final bests, {seeds})")
    else:
        noise = f"σ = {sigma:.4f} across seeds; " if sigma is not None else ""
        text = f"no difference detectable between {label} and {other} at this noise ({noise}p = {p:.2f}, {seeds})"
        if sigma:
            text += f": differences below ~{detectable(sigma, len(a), len(b)):.4f} would not show"
    return Verdict(label, other, len(a), len(b), diff, p, sigma, text)


def detectable(sigma: float, n_a: int, n_b: int) -> float:
    """The difference of means a two-sided test at ALPHA finds 80% of the time with these seeds and
    this spread: (z_0.975 + z_0.8) x sigma x sqrt(1/n_a + 1/n_b) = 2.8 sigma sqrt(...)."""
    return 2.8 * sigma * math.sqrt(1 / n_a + 1 / n_b)


def spearman(xs, ys) -> float | None:
    """Spearman's rank correlation of paired values (ties get their mean rank); None with fewer
    than three pairs or when either side does not vary."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    if statistics.pstdev(rx) == 0 or statistics.pstdev(ry) == 0:
        return None
    return statistics.correlation(rx, ry)


def _ranks(values) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks
