"""The shared statistics: t-intervals, Kendall's tau with exact permutation p-values and the smallest p
an n allows, and the difference a paired t test detects with 80% power (checked by simulation)."""
import math

import numpy as np
import pytest
from scipy.stats import kendalltau, t

from covidnetx.scaling.stats import detectable_difference, kendall_exact, t_interval, t975


def test_t_interval_over_units():
    v = [0.1, 0.3, 0.2, 0.6]
    s = t_interval(v)
    h = t.ppf(0.975, 3) * np.std(v, ddof=1) / 2
    assert s["n"] == 4 and s["mean"] == pytest.approx(0.3) and (s["lo"], s["hi"]) == pytest.approx((0.3 - h, 0.3 + h))
    one = t_interval([0.4])
    assert one["n"] == 1 and math.isnan(one["lo"]) and math.isnan(one["std"])
    assert t975(10) == pytest.approx(t.ppf(0.975, 10))


def test_kendall_exact_matches_the_exact_null_without_ties():
    rng = np.random.default_rng(1)
    for n in (5, 6, 7):
        x, y = rng.normal(size=n), rng.normal(size=n)
        got = kendall_exact(x, y)
        ref = kendalltau(x, y, method="exact")
        assert got["exact"] and got["tau"] == pytest.approx(ref.statistic)
        assert got["p"] == pytest.approx(ref.pvalue, abs=1e-9)
        assert got["p_min"] == pytest.approx(2 / math.factorial(n))


def test_four_points_can_never_reach_p_below_005():
    """n = 4 in perfect order: tau = 1, and p = 2/24 = 0.083 is the smallest p there is."""
    got = kendall_exact([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4])
    assert got["tau"] == pytest.approx(1.0) and got["p"] == pytest.approx(2 / 24) and got["p_min"] == pytest.approx(2 / 24)
    six = kendall_exact(range(6), np.arange(6) ** 2)
    assert six["p"] == pytest.approx(2 / 720) and six["p"] < 0.05


def test_kendall_with_ties_and_many_points():
    tied = kendall_exact([1, 1, 2, 2, 3], [1, 2, 3, 4, 5])
    assert tied["p_min"] > 2 / 120 and tied["p"] >= tied["p_min"]          # ties make extreme orderings likelier
    rng = np.random.default_rng(2)
    x = rng.normal(size=30)
    y = x + rng.normal(0, 1.0, 30)
    got = kendall_exact(x, y)
    ref = kendalltau(x, y)
    assert not got["exact"] and got["tau"] == pytest.approx(ref.statistic)
    assert abs(got["p"] - ref.pvalue) < 0.01 + 0.2 * ref.pvalue
    flat = kendall_exact(x, np.ones(30))
    assert math.isnan(flat["tau"]) and flat["n"] == 30


@pytest.mark.parametrize("n", [2, 3, 6, 15])
def test_detectable_difference_has_the_stated_power(n):
    """4,000 simulated paired t tests at the returned difference reject in 80% ± 2.5% of them."""
    d = detectable_difference(1.0, n)
    rng = np.random.default_rng(n)
    x = rng.normal(d, 1.0, (4000, n))
    tstat = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
    power = np.mean(np.abs(tstat) > t.ppf(0.975, n - 1))
    assert abs(power - 0.8) < 0.025, (d, power)
    assert math.isnan(detectable_difference(1.0, 1)) and math.isnan(detectable_difference(0.0, 5))
