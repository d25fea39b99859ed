import numpy as np
import pytest

from covidnetx.scaling.fit import compute_frontier, fit_law
from covidnetx.utils import UserError


@pytest.mark.parametrize("a, b, c", [(20.0, 0.5, 0.05), (30.0, 0.3, 0.1), (0.8, 0.8, 0.0)])
def test_recovers_planted_saturating_exponent(a, b, c):
    rng = np.random.default_rng(0)
    x = np.logspace(3, 8, 14)
    y = (a * x ** (-b) + c) * np.exp(rng.normal(0, 0.02, len(x)))
    f = fit_law(x, y, "saturating", n_boot=100)
    assert abs(f.params["b"] - b) / b < 0.05
    assert abs(f.params["c"] - c) < 0.01
    lo, hi = f.ci["b"]
    assert lo <= f.params["b"] <= hi and hi - lo < 0.5 * b


def test_recovers_plain_power_law():
    rng = np.random.default_rng(1)
    x = np.logspace(2, 6, 8)
    y = 5 * x ** -0.35 * np.exp(rng.normal(0, 0.02, 8))
    f = fit_law(x, y, "power", n_boot=50)
    assert abs(f.params["b"] - 0.35) / 0.35 < 0.05 and f.ci["b"][0] < 0.35 < f.ci["b"][1]


def test_refuses_too_few_points():
    with pytest.raises(UserError, match="need at least 4 distinct x values"):
        fit_law([1e3, 1e4, 1e5, 1e5], [0.5, 0.4, 0.3, 0.31], "saturating")
    with pytest.raises(UserError, match="need at least 3 distinct x values"):
        fit_law([1, 2], [0.5, 0.4], "power")


def test_compute_frontier_takes_best_per_bin_and_is_monotone():
    c = [1e3, 1.2e3, 1e4, 1.1e4, 1e5, 3e5]
    e = [0.9, 0.7, 0.8, 0.5, 0.6, 0.4]
    fx, fy = compute_frontier(c, e)
    assert list(fx) == [1.2e3, 1.1e4, 3e5] and list(fy) == [0.7, 0.5, 0.4]   # 1e5 and 3e5 share a bin
    assert all(np.diff(fy) <= 0)
