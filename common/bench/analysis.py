"""The paper's analyses on aggregated points.

* Accuracy drop (AD, Section 6.2, Fig. 5): the percentage decrease of accuracy
  from the Original point; for lower-is-better metrics (Dpt's RMSE) the
  reciprocal is used, as in the paper.
* Distortion-accuracy R² (Table 5): the coefficient of determination of a linear
  fit of the task metric on feature MSE over a codec's rate points.
* BD-rate quality: the higher-is-better form of a metric (reciprocal otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def as_quality(value: float, higher_is_better: bool) -> float:
    """The metric as a higher-is-better quality: itself, or its reciprocal (RMSE, FID)."""
    if higher_is_better:
        return float(value)
    return math.inf if value == 0 else 1.0 / float(value)


def accuracy_drop(value: float, original: float, higher_is_better: bool) -> float | None:
    """AD in percent: 100 * (A_orig - A) / A_orig on the quality form; None when undefined."""
    a0 = as_quality(original, higher_is_better)
    a = as_quality(value, higher_is_better)
    if not math.isfinite(a0) or a0 == 0 or not math.isfinite(a):
        return None
    return 100.0 * (a0 - a) / a0


def r_squared(x: Sequence[float], y: Sequence[float]) -> float | None:
    """R² of the least-squares line y ~ x (= squared Pearson r); None with < 3 points or no variance."""
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    if xa.shape != ya.shape:
        raise ValueError("x and y must have the same length")
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    if len(xa) < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return None
    r = np.corrcoef(xa, ya)[0, 1]
    return float(r * r)
