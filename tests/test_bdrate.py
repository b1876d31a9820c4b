"""BD-rate (PCHIP over the overlapping quality range) against published and hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from splitfc.common.bench.bdrate import BDRateWarning, bd_rate, monotone_frontier

# The worked example of the `bjontegaard` package (FAU-LMS, example_usage.py / README):
# libx265 at different presets. Its PCHIP BD-rate (bjontegaard 1.3.0, method="pchip",
# which matches the JCT-VC CTC Excel sheet to 10 decimals) is -4.417485350589045 %.
X265_ANCHOR = ([9487.76, 4593.60, 2486.44, 1358.24], [40.037, 38.615, 36.845, 34.851])
X265_TEST = ([9787.80, 4469.00, 2451.52, 1356.24], [40.121, 38.651, 36.970, 34.987])
# Its "test case 2 (high bitrates)": -4.47218200276197 % with PCHIP.
HIGH_ANCHOR = ([82472.76, 26875.24, 9487.76, 4593.6], [43.825, 41.404, 40.037, 38.615])
HIGH_TEST = ([99896.96, 33952.04, 9787.8, 4469.0], [44.731, 41.875, 40.121, 38.651])


def test_published_example_x265() -> None:
    res = bd_rate(*X265_ANCHOR, *X265_TEST)
    assert res.bd_rate == pytest.approx(-4.417485350589045, abs=1e-9)
    assert res.overlap == pytest.approx((34.987, 40.037))


def test_published_example_high_rates() -> None:
    assert bd_rate(*HIGH_ANCHOR, *HIGH_TEST).bd_rate == pytest.approx(-4.47218200276197, abs=1e-9)


def test_identical_curves_give_zero() -> None:
    res = bd_rate(*X265_ANCHOR, *X265_ANCHOR)
    assert res.bd_rate == pytest.approx(0.0, abs=1e-12)
    assert res.notes == []


def test_half_the_rate_everywhere_is_minus_50_percent() -> None:
    # log10(rate) linear in quality; PCHIP reproduces lines exactly.
    q = [10.0, 20.0, 30.0, 40.0]
    rates = [1.0, 2.0, 4.0, 8.0]
    assert bd_rate(rates, q, [r / 2 for r in rates], q).bd_rate == pytest.approx(-50.0, abs=1e-9)
    assert bd_rate([r / 2 for r in rates], q, rates, q).bd_rate == pytest.approx(100.0, abs=1e-9)


def test_only_the_overlap_is_integrated() -> None:
    # anchor: log10 r = q/10 on q in [0, 40]; test: log10 r = q/20 + 0.5 on q in [10, 30].
    # Over the overlap [10, 30] the mean log difference is mean(0.5 - q/20) = -0.5,
    # so BD-rate = 10**-0.5 - 1 = -68.3772...%; integrating the anchor over [0, 40] would differ.
    qa = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    qb = np.array([10.0, 20.0, 30.0])
    res = bd_rate(10 ** (qa / 10), qa, 10 ** (qb / 20 + 0.5), qb)
    assert res.bd_rate == pytest.approx((10 ** -0.5 - 1) * 100, abs=1e-9)
    assert res.overlap == (10.0, 30.0)
    assert any("overlap" in n for n in res.notes)


def test_point_order_does_not_matter() -> None:
    ra, qa = X265_ANCHOR
    rb, qb = X265_TEST
    shuffled = bd_rate(ra[::-1], qa[::-1], [rb[2], rb[0], rb[3], rb[1]], [qb[2], qb[0], qb[3], qb[1]])
    assert shuffled.bd_rate == pytest.approx(-4.417485350589045, abs=1e-9)


def test_disjoint_curves_warn_and_give_none() -> None:
    with pytest.warns(BDRateWarning, match="do not overlap"):
        res = bd_rate([1, 2, 4], [10, 20, 30], [1, 2, 4], [40, 50, 60])
    assert res.bd_rate is None and res.overlap is None


def test_too_few_points_warn_and_give_none() -> None:
    with pytest.warns(BDRateWarning, match="fewer than 2"):
        res = bd_rate([1, 2, 4], [100, 100, 100], [1, 2, 4], [10, 50, 90])
    assert res.bd_rate is None


def test_saturated_accuracy_keeps_the_cheapest_point() -> None:
    r, q, dropped = monotone_frontier([8, 4, 2, 1, 0.5], [100, 100, 100, 60, 60])
    assert r.tolist() == [0.5, 2.0]
    assert q.tolist() == [60.0, 100.0]
    assert dropped == 3
    with pytest.warns(BDRateWarning, match="dropped 3"):
        res = bd_rate([8, 4, 2, 1, 0.5], [100, 100, 100, 60, 60], [4, 1], [100, 60])
    # after dropping: anchor (0.5, 60)-(2, 100), test (1, 60)-(4, 100): test needs twice the rate.
    assert res.bd_rate == pytest.approx(100.0, abs=1e-9)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        bd_rate([0, 1], [1, 2], [1, 2], [1, 2])
    with pytest.raises(ValueError, match="same length"):
        bd_rate([1, 2, 3], [1, 2], [1, 2], [1, 2])


def test_matches_the_bjontegaard_package_on_random_curves() -> None:
    bd = pytest.importorskip("bjontegaard")
    rng = np.random.default_rng(7)
    for _ in range(20):
        ra = np.sort(rng.uniform(0.01, 4.0, 5))
        qa = np.sort(rng.uniform(20, 100, 5))
        rb = np.sort(rng.uniform(0.01, 4.0, 5))
        qb = np.sort(rng.uniform(20, 100, 5))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = bd_rate(ra, qa, rb, qb).bd_rate
        if ours is None:
            continue
        theirs = bd.bd_rate(ra, qa, rb, qb, method="pchip", require_matching_points=False, min_overlap=0)
        assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-9)


def test_swapping_anchor_and_test_inverts_the_rate_ratio() -> None:
    # Same overlap both ways, so the mean log-rate difference changes sign:
    # (1 + bd(a, b)) * (1 + bd(b, a)) == 1.
    ab = bd_rate(*X265_ANCHOR, *X265_TEST).bd_rate
    ba = bd_rate(*X265_TEST, *X265_ANCHOR).bd_rate
    assert ab is not None and ba is not None
    assert (1 + ab / 100) * (1 + ba / 100) == pytest.approx(1.0, abs=1e-12)
