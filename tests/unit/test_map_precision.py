"""core.io.maps.relative_precision: mantissa rounding of the float32 uncertainty maps, checked by hand."""
import numpy as np
import pytest

from core.io.maps import MAP_MANTISSA_BITS, relative_precision


def test_relative_error_is_half_an_ulp_and_order_is_kept():
    rng = np.random.default_rng(0)
    x = np.concatenate([10.0 ** rng.uniform(-37, 1, 100_000), rng.uniform(0, 1, 100_000)]).astype(np.float32)
    r = relative_precision(x)
    assert r.dtype == np.float32 and r.shape == x.shape
    rel = np.abs(r.astype(np.float64) - x) / x
    assert rel.max() <= 2.0 ** -(MAP_MANTISSA_BITS + 1) * (1 + 1e-9)
    assert rel.max() > 2.0 ** -(MAP_MANTISSA_BITS + 2)  # it does round
    order = np.argsort(x, kind="stable")
    assert (np.diff(r[order]) >= 0).all()  # monotone: never reverses two voxels, only ties close ones


def test_exact_values_ties_to_even_and_specials():
    # 1 + 2^-13 is exactly half way between 1 and 1 + 2^-12 at 12 bits: ties go to the even mantissa (1)
    assert relative_precision(np.float32(1 + 2 ** -13), 12) == np.float32(1.0)
    assert relative_precision(np.float32(1 + 3 * 2 ** -13), 12) == np.float32(1 + 2 * 2 ** -12)  # odd -> even up
    assert relative_precision(np.float32(1 + 2 ** -13 + 2 ** -20), 12) == np.float32(1 + 2 ** -12)  # above half
    x = np.array([0.0, -0.0, 1.0, 0.5, np.nan, np.inf, -np.inf, -0.3], np.float32)
    r = relative_precision(x, 12)
    assert r[0] == 0 and r[2] == 1 and r[3] == 0.5 and np.isnan(r[4]) and r[5] == np.inf and r[6] == -np.inf
    assert r[7] == pytest.approx(-0.3, rel=2 ** -13)
    y = np.float32([0.123456789])
    assert relative_precision(y, 23)[0] == y[0]  # 23 bits: unchanged
