"""Scaling analysis of sweep timings: log-log slopes and crossover lengths.

Pure functions on ``(length, seconds)`` points, so that they can be tested on synthetic
timings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

Point = tuple[int, float]


@dataclass(frozen=True)
class SlopeFit:
    """t ~ exp(intercept) * L^slope fitted over the lengths ``fitted``."""

    slope: float
    intercept: float
    fitted: tuple[int, ...]

    def predict(self, length: float) -> float:
        """The fitted time at ``length``."""
        return math.exp(self.intercept) * length**self.slope


def longer_half(points: Sequence[Point]) -> list[Point]:
    """The points at the longer half of the lengths (the upper half, with the median
    length when the count is odd), and at least the two longest when there are two."""
    ordered = sorted(points)
    half = ordered[len(ordered) // 2 :]
    return half if len(half) >= 2 else ordered[-2:]


def fit_slope(points: Sequence[Point], longer_half_only: bool = True) -> Optional[SlopeFit]:
    """Least-squares fit of log t = intercept + slope log L over the longer half of
    ``points`` (or all of them); None with fewer than two distinct lengths."""
    chosen = longer_half(points) if longer_half_only else sorted(points)
    used = [(n, t) for n, t in chosen if n > 0 and t > 0]
    if len({n for n, _ in used}) < 2:
        return None
    xs = [math.log(n) for n, _ in used]
    ys = [math.log(t) for _, t in used]
    x_mean = sum(xs) / len(xs)
    y_mean = sum(ys) / len(ys)
    sxx = sum((x - x_mean) ** 2 for x in xs)
    sxy = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys))
    slope = sxy / sxx
    return SlopeFit(slope, y_mean - slope * x_mean, tuple(n for n, _ in used))


def bootstrap_slope(
    samples: Mapping[int, Sequence[float]],
    statistic: Callable[[Sequence[float]], float],
    rounds: int = 200,
    seed: int = 0,
    longer_half_only: bool = False,
) -> tuple[Optional[float], Optional[float]]:
    """The 5th and 95th percentiles of the slope fitted to ``statistic`` of each length's
    samples, the samples of every length resampled with replacement ``rounds`` times."""
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(rounds):
        points = [(n, statistic(rng.choice(s, len(s)))) for n, s in samples.items() if len(s)]
        fit = fit_slope(points, longer_half_only)
        if fit is not None:
            slopes.append(fit.slope)
    if not slopes:
        return None, None
    low, high = np.percentile(slopes, [5, 95])
    return float(low), float(high)


@dataclass(frozen=True)
class Crossover:
    """Where a recurrence becomes cheaper than attention for good.

    ``kind`` is one of:

    - ``"measured"``: between two measured lengths, ``length`` interpolated log-log;
    - ``"below"``: cheaper at every measured length, so at or below ``length`` (the first);
    - ``"extrapolated"``: not within the measured lengths; ``length`` is where the two
      fitted power laws meet;
    - ``"none"``: not within the measured lengths, and the fits never meet above them
      (``length`` is None);
    - ``"no data"``: fewer than one common length (``length`` is None).
    """

    kind: str
    length: Optional[float]

    def describe(self) -> str:
        """A short phrase for the report."""
        if self.kind == "measured":
            return f"L ≈ {self.length:,.0f}"
        if self.kind == "below":
            return f"L ≤ {self.length:,.0f} (cheaper at every measured length)"
        if self.kind == "extrapolated":
            return f"L ≈ {self.length:,.0f} (extrapolated from the fitted slopes)"
        if self.kind == "none":
            return "not reached (the fitted slopes do not cross above the measured lengths)"
        return "no common lengths measured"


def crossover(recurrence: Sequence[Point], attention: Sequence[Point]) -> Crossover:
    """The length above which ``recurrence`` stays cheaper than ``attention``.

    On the lengths both were measured at: after the last length where the recurrence is
    not cheaper, interpolating log(t_rec / t_att) linearly in log L to its zero. When the
    recurrence is still not cheaper at the longest common length, the two slope fits are
    extrapolated instead.
    """
    rec, att = dict(recurrence), dict(attention)
    common = sorted(set(rec) & set(att))
    if not common:
        return Crossover("no data", None)
    gaps = [math.log(rec[n] / att[n]) for n in common]
    not_cheaper = [i for i, g in enumerate(gaps) if g >= 0]
    if not not_cheaper:
        return Crossover("below", float(common[0]))
    last = not_cheaper[-1]
    if last + 1 < len(common):
        x0, x1 = math.log(common[last]), math.log(common[last + 1])
        g0, g1 = gaps[last], gaps[last + 1]
        return Crossover("measured", math.exp(x0 + (x1 - x0) * g0 / (g0 - g1)))
    return _extrapolated(recurrence, attention, common[-1])


def _extrapolated(
    recurrence: Sequence[Point], attention: Sequence[Point], longest: int
) -> Crossover:
    """Where the fitted power laws meet, if that is beyond ``longest``."""
    fit_rec, fit_att = fit_slope(recurrence), fit_slope(attention)
    if fit_rec is None or fit_att is None or fit_att.slope <= fit_rec.slope:
        return Crossover("none", None)
    # a_r L^s_r = a_a L^s_a  <=>  log L = (log a_r - log a_a) / (s_a - s_r)
    log_length = (fit_rec.intercept - fit_att.intercept) / (fit_att.slope - fit_rec.slope)
    if log_length <= math.log(longest):
        return Crossover("none", None)
    return Crossover("extrapolated", math.exp(log_length))


def predict_next(points: Sequence[Point], length: int, expected_slope: float) -> Optional[float]:
    """A guess of the time at ``length`` from the points so far: the last point scaled by
    the local log-log slope of the last two, clamped to [1, expected_slope + 0.5] so that
    one noisy point does not stop a series, or by ``expected_slope`` with a single point.
    None without points."""
    ordered = sorted(points)
    if not ordered:
        return None
    n1, t1 = ordered[-1]
    slope = expected_slope
    if len(ordered) >= 2:
        n0, t0 = ordered[-2]
        if n1 > n0 and t0 > 0 and t1 > 0:
            local = math.log(t1 / t0) / math.log(n1 / n0)
            slope = min(expected_slope + 0.5, max(1.0, local))
    return t1 * (length / n1) ** slope
