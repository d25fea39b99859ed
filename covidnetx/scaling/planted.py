"""Planted tables for checking the fitter against known truths: correctly specified laws (with noise that
grows with x, unequal runs per x, three decades with a small exponent and a floor, a pure power law) and
wrong shapes (U-shapes, broken power laws, flat data, an exponent beyond the fitter's box). The tests
(tests/test_fit.py) assert on them; benchmarks/fit_validation.py prints the rates over many replicates."""
from __future__ import annotations

import numpy as np

from covidnetx.scaling.laws import EXP_MAX

SIZES = np.logspace(4, 6, 6)          # 6 sizes over 2 decades


def draw(f, seed: int, x=SIZES, runs=3, noise=0.03) -> tuple:
    """(X, err): runs of the law ``f`` at each x (``runs``: per x, or one count per x), multiplicative noise
    (sd in log units, or a function of x)."""
    rng = np.random.default_rng(seed)
    X = np.repeat(x, runs) if np.isscalar(runs) else np.concatenate([[v] * k for v, k in zip(x, runs)])
    sd = noise(X) if callable(noise) else noise
    return X, f(X) * np.exp(rng.normal(0, 1, len(X)) * sd)


def broken(X, b0: float = 0.5, b1: float = 0.1, xb: float = 3e5, sharp: float = 0.1):
    """A smoothly broken power law (Caballero et al. 2022): slope b0 below xb, b1 above; ``sharp`` is the
    width of the bend in decades of x (small = sharp)."""
    return 30 * X ** -b0 * (1 + (X / xb) ** (1 / sharp)) ** ((b0 - b1) * sharp)


def covers(fit, p: str, truth: float) -> bool:
    """Does the reported interval hold the truth: the two-sided CI, a one-sided bound, or, where the floor
    sat at 0, the exponent's range over the floors the data allow."""
    if fit.floor == "zero" and p in fit.free_range:
        lo, hi = fit.free_range[p]
    elif p in fit.onesided:
        side, v = fit.onesided[p]
        lo, hi = (v, EXP_MAX) if side == ">=" else (0.0, v)
    elif p in fit.ci:
        lo, hi = fit.ci[p]
    else:
        return False
    return lo <= truth <= hi


def _growing(X):
    return 0.01 * (X / 1e4) ** 0.4          # 1% at x = 1e4 to 6% at 1e6


# name -> (law, draw keywords, true exponent b or None for a wrong shape)
CORRECT = {
    "saturating b=0.3 c=0.05": (lambda X: 20 * X ** -0.3 + 0.05, {}, 0.3),
    "saturating b=0.5 c=0.1": (lambda X: 5 * X ** -0.5 + 0.1, {}, 0.5),
    "pure power law b=0.3": (lambda X: 20 * X ** -0.3, {}, 0.3),
    "noise growing with x (1% to 6%)": (lambda X: 5 * X ** -0.5 + 0.1, {"noise": _growing}, 0.5),
    "unequal runs per x": (lambda X: 5 * X ** -0.5 + 0.1, {"runs": [2, 5, 3, 2, 4, 3]}, 0.5),
    "3 decades, b=0.1, floor 0.1": (lambda X: X ** -0.1 + 0.1, {"x": np.logspace(3, 6, 7)}, 0.1),
}
WRONG = {
    "U-shape (7 x)": (lambda X: 0.2 * (1 + 0.5 * (np.log10(X) - 5) ** 2), {"x": np.logspace(4, 6, 7)}),
    "broken 0.5 -> 0.1, sharp bend at 3e5": (broken, {}),
    "broken 0.5 -> 0.1, bend 0.3 decades wide at 1e5": (lambda X: broken(X, xb=1e5, sharp=0.3), {}),
    "broken 0.5 -> 0.1, bend 0.6 decades wide at 1e5": (lambda X: broken(X, xb=1e5, sharp=0.6), {}),
    "flat 0.3": (lambda X: 0.3 + 0 * X, {}),
    "exponent 6 (beyond the box)": (lambda X: 0.2 + 0.3 * (X / 1e4) ** -6.0, {}),
}
# one run per x: no pure error, so no shape can be tested (right law or not)
UNREPLICATED = {
    "saturating b=0.5 c=0.1, one run per x": (lambda X: 5 * X ** -0.5 + 0.1, {"runs": 1}, 0.5),
    "exponential decay 0.1 + 0.4 exp(-x/1e5), one run per x": (lambda X: 0.1 + 0.4 * np.exp(-X / 1e5), {"runs": 1}),
}
