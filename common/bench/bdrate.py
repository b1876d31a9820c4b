"""Bjøntegaard delta rate (BD-rate) on task accuracy.

VCEG-M33's BD-rate with the piecewise cubic Hermite interpolation (PCHIP) of
the JCT-VC common test conditions: log10(rate) is interpolated as a function of
quality for both curves, integrated over the *overlapping* quality range only,
and the mean log-rate difference is turned into a percentage. Negative means
the test codec needs fewer bits than the anchor for the same quality.

Quality is any higher-is-better score: task accuracy, mIoU, PSNR, or 1/RMSE.
Accuracy curves often saturate (several rate points at 100 %) or wiggle; PCHIP
needs strictly increasing samples, so each curve is first reduced to its
monotone upper frontier (`monotone_frontier`), with a warning naming the
points dropped.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import PchipInterpolator


class BDRateWarning(UserWarning):
    """BD-rate could not use all points, or the curves do not overlap."""


@dataclass(frozen=True)
class BDRateResult:
    """A BD-rate with the quality interval it was integrated over."""

    bd_rate: float | None
    """Percent rate change of the test curve vs the anchor; None when undefined."""
    overlap: tuple[float, float] | None
    """Quality interval both curves cover (None when they do not overlap)."""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"bd_rate": self.bd_rate, "overlap": list(self.overlap) if self.overlap else None,
                "notes": list(self.notes)}


def monotone_frontier(rates: Sequence[float], quality: Sequence[float]) -> tuple[np.ndarray, np.ndarray, int]:
    """Points (rate ascending) where quality strictly increases with rate.

    A point is kept when its quality is higher than that of every point of lower
    rate; of equal-quality points the cheapest is kept. Returns the kept rates,
    qualities, and how many points were dropped.
    """
    r = np.asarray(rates, dtype=float)
    q = np.asarray(quality, dtype=float)
    if r.shape != q.shape or r.ndim != 1:
        raise ValueError("rates and quality must be 1-d sequences of the same length")
    if np.any(~np.isfinite(r)) or np.any(~np.isfinite(q)):
        raise ValueError("rates and quality must be finite")
    if np.any(r <= 0):
        raise ValueError("BD-rate needs positive rates (it works on log rate)")
    order = np.lexsort((-q, r))  # by rate, best quality first among equal rates
    keep_r: list[float] = []
    keep_q: list[float] = []
    for i in order:
        if not keep_q or q[i] > keep_q[-1]:
            keep_r.append(float(r[i]))
            keep_q.append(float(q[i]))
    return np.array(keep_r), np.array(keep_q), len(r) - len(keep_r)


def bd_rate(
    anchor_rates: Sequence[float], anchor_quality: Sequence[float],
    test_rates: Sequence[float], test_quality: Sequence[float],
) -> BDRateResult:
    """BD-rate (%) of ``test`` against ``anchor`` over their overlapping quality range.

    Returns ``bd_rate=None`` (and warns with `BDRateWarning`) when a curve has
    fewer than two usable points or the quality ranges do not overlap.
    """
    notes: list[str] = []
    curves = []
    for label, rates, quality in (("anchor", anchor_rates, anchor_quality), ("test", test_rates, test_quality)):
        r, q, dropped = monotone_frontier(rates, quality)
        if dropped:
            notes.append(f"{label}: dropped {dropped} point(s) where quality does not increase with rate")
        if len(r) < 2:
            notes.append(f"{label}: fewer than 2 points with distinct, increasing quality")
            return _undefined(notes, None)
        curves.append((np.log10(r), q))
    (log_ra, qa), (log_rb, qb) = curves
    lo, hi = max(qa.min(), qb.min()), min(qa.max(), qb.max())
    if not hi > lo:
        notes.append(
            f"quality ranges do not overlap (anchor {qa.min():g}..{qa.max():g}, test {qb.min():g}..{qb.max():g})"
        )
        return _undefined(notes, None)
    for label, q in (("anchor", qa), ("test", qb)):
        if q.min() < lo or q.max() > hi:
            notes.append(f"{label}: integrated over the overlap {lo:g}..{hi:g} only")
    int_a = PchipInterpolator(qa, log_ra).integrate(lo, hi)
    int_b = PchipInterpolator(qb, log_rb).integrate(lo, hi)
    mean_diff = (int_b - int_a) / (hi - lo)
    for n in notes:
        if "dropped" in n:
            warnings.warn(f"BD-rate: {n}", BDRateWarning, stacklevel=2)
    return BDRateResult(float((10.0 ** mean_diff - 1.0) * 100.0), (float(lo), float(hi)), notes)


def _undefined(notes: list[str], overlap: tuple[float, float] | None) -> BDRateResult:
    warnings.warn("BD-rate undefined: " + "; ".join(notes), BDRateWarning, stacklevel=3)
    return BDRateResult(None, overlap, notes)
