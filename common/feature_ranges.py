"""Measured feature ranges of a split and truncation ranges chosen from them by one stated rule (issue 14).

Paper Table 4 gives, per split point (per layer for Dpt), the original range of the features of the
paper's models and the truncation ranges of the VTM and Hyperprior baselines, but no rule behind them.
The rule here (`choose_range`), applied to features of training samples:

* ``a`` = the ``q``-th percentile of ``|x|`` over all feature points of the group, rounded *up* to the
  1-2-5 series (..., 0.5, 1, 2, 5, 10, 20, 50, ...); ``q`` = 99.9 for the VTM column and 99 for the
  Hyperprior column (the paper's Hyperprior ranges are never wider than its VTM ones);
* the range is ``[-a, a]``, symmetric and round like every truncated row of Table 4, cut to the
  measured ``[min, max]`` (rounded outward to 2 decimals) on a side where that lies inside: no
  quantizer levels for values that do not occur. Where ``[-a, a]`` holds the whole measured range
  (nothing to truncate) the range is the measured range itself, as the TTI row of Table 4.

`splitfc feature-ranges` prints the measurement and the chosen ranges; docs/models.md shows them beside
Table 4 and common/splits/*.py holds the ``small`` preset's ranges.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from splitfc.common.specs import Range, SplitSpec

VTM_PERCENTILE = 99.9
"""Percentile of |x| behind the VTM column's range."""
HYPERPRIOR_PERCENTILE = 99.0
"""Percentile of |x| behind the Hyperprior column's range."""


def nice_ceiling(x: float) -> float:
    """Smallest value of the 1-2-5 series (``m * 10**e``, m in 1, 2, 5) that is >= ``x`` (``x`` > 0)."""
    if not (x > 0 and math.isfinite(x)):
        raise ValueError(f"nice_ceiling needs a finite x > 0, got {x}")
    exponent = math.floor(math.log10(x))
    for e in (exponent - 1, exponent, exponent + 1):
        for m in (1, 2, 5):
            value = float(m * 10.0**e)
            if value >= x * (1 - 1e-12):
                return float(f"{value:.12g}")
    raise AssertionError("unreachable: 10**(exponent+1) > x")


def choose_range(abs_percentile: float, low: float, high: float) -> Range:
    """The truncation range of a group by the module's rule, from a percentile of ``|x|`` and ``[low, high]``."""
    if not high >= low:
        raise ValueError(f"measured range [{low}, {high}] is empty")
    a = nice_ceiling(max(abs_percentile, 1e-6))
    lo, hi = max(-a, math.floor(low * 100) / 100), min(a, math.ceil(high * 100) / 100)
    return (lo, hi) if hi > lo else (lo, lo + 0.01)


@dataclass(frozen=True)
class GroupRanges:
    """One group's measurement (a whole split, or one Dpt layer) and the ranges the rule chooses."""

    low: float
    high: float
    abs_p99: float
    abs_p999: float
    vtm: Range
    hyperprior: Range
    points: int
    """Feature points measured."""

    def as_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _groups(features: np.ndarray, spec: SplitSpec) -> list[np.ndarray]:
    spec.check_shape(features.shape)
    x = np.asarray(features, dtype=np.float32)
    if spec.group_axis is None:
        return [x.reshape(-1)]
    return [np.take(x, g, axis=spec.group_axis).reshape(-1) for g in range(x.shape[spec.group_axis])]


def measure_ranges(features: Iterable[np.ndarray], spec: SplitSpec) -> list[GroupRanges]:
    """Per group of ``spec`` (Dpt: per layer), the range of ``features`` and the rule's truncation ranges.

    ``features``: tensors in the split's layout (float). Raises `ShapeError` for a tensor that does not fit,
    ``ValueError`` when there are none or they hold NaN/inf.
    """
    parts: list[list[np.ndarray]] = []
    for x in features:
        groups = _groups(x, spec)
        if not parts:
            parts = [[] for _ in groups]
        if len(groups) != len(parts):
            raise ValueError(f"split {spec.id}: feature tensors with {len(groups)} and {len(parts)} groups")
        for acc, g in zip(parts, groups, strict=True):
            if not np.all(np.isfinite(g)):
                raise ValueError(f"split {spec.id}: features contain NaN or infinite values")
            acc.append(g)
    if not parts:
        raise ValueError(f"split {spec.id}: no features to measure")
    out = []
    for acc in parts:
        values = np.concatenate(acc)
        magnitude = np.abs(values.astype(np.float64))
        p99, p999 = (float(v) for v in np.percentile(magnitude, [HYPERPRIOR_PERCENTILE, VTM_PERCENTILE]))
        low, high = float(values.min()), float(values.max())
        out.append(GroupRanges(
            low=low, high=high, abs_p99=p99, abs_p999=p999,
            vtm=choose_range(p999, low, high), hyperprior=choose_range(p99, low, high), points=int(values.size),
        ))
    return out


__all__ = ["HYPERPRIOR_PERCENTILE", "VTM_PERCENTILE", "GroupRanges", "choose_range", "measure_ranges", "nice_ceiling"]
