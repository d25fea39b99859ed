"""Small statistics shared by the tables, the fitter and the report: t quantiles, the t-interval of a
mean over independent units, and Kendall's tau with an exact permutation p-value."""
from __future__ import annotations

import itertools
import math

import numpy as np

ALPHA = 0.05              # the level of every test the report prints a verdict for
EXACT_MAX_N = 8           # Kendall's tau: all n! permutations up to this n, Monte Carlo above it
MC_PERMUTATIONS = 19999


def t975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom (two-sided 95% intervals)."""
    from scipy.stats import t  # lazy: heavy, scipy (0.5 s to import)
    return float(t.ppf(0.975, max(int(dof), 1)))


def t_interval(values) -> dict:
    """Mean of independent units with its t-based 95% interval: {'n', 'mean', 'std', 'lo', 'hi'}
    (no interval for n < 2)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    out = {"n": int(len(v)), "mean": float(v.mean()) if len(v) else float("nan"),
           "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"), "lo": float("nan"), "hi": float("nan")}
    if len(v) > 1:
        h = t975(len(v) - 1) * out["std"] / math.sqrt(len(v))
        out["lo"], out["hi"] = out["mean"] - h, out["mean"] + h
    return out


def _tau_b(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of x with each row of Y (ties handled as in tau-b)."""
    i, j = np.triu_indices(len(x), 1)
    sx = np.sign(x[j] - x[i])
    sy = np.sign(Y[:, j] - Y[:, i])
    num = (sx[None, :] * sy).sum(1)
    den = np.sqrt(float(np.count_nonzero(sx)) * np.count_nonzero(sy, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def kendall_exact(x, y, seed: int = 0) -> dict:
    """Kendall's tau-b of (x, y) with a two-sided permutation p-value: exact (all n! orderings of y) for
    n <= EXACT_MAX_N, else from MC_PERMUTATIONS random ones. Also ``p_min``, the smallest p-value this n
    (and these ties) can give: where p_min >= ALPHA no ordering could show an association.
    Returns {'n', 'tau', 'p', 'p_min', 'exact'}."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    out = {"n": int(n), "tau": float("nan"), "p": float("nan"), "p_min": 1.0, "exact": n <= EXACT_MAX_N}
    if n < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    tau = float(_tau_b(x, y[None, :])[0])
    if n <= EXACT_MAX_N:
        perms = np.array(list(itertools.permutations(range(n))))
        null = _tau_b(x, y[perms])
    else:
        rng = np.random.default_rng(seed)
        null = np.concatenate([[tau], _tau_b(x, np.stack([rng.permutation(y) for _ in range(MC_PERMUTATIONS)]))])
    eps = 1e-12
    out["tau"] = tau
    out["p"] = float(np.mean(np.abs(null) >= abs(tau) - eps))
    out["p_min"] = float(np.mean(np.abs(null) >= np.abs(null).max() - eps))
    return out


def paired_t_power(delta: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided one-sample t test at level ``alpha`` over ``n`` units when the true mean is
    ``delta`` and the units' sd is ``sd``: P(|Z + d| > c sqrt(V / dof)), d = delta sqrt(n) / sd, V ~ chi2(dof),
    integrated over V (stable where the noncentral t's own routines are not, e.g. dof = 1)."""
    from scipy.integrate import quad  # lazy: heavy, scipy (0.5 s to import)
    from scipy.stats import chi2, norm, t  # lazy: heavy, scipy (0.5 s to import)
    dof = n - 1
    c = t.ppf(1 - alpha / 2, dof)
    d = delta * math.sqrt(n) / sd

    def integrand(v):
        s = c * math.sqrt(v / dof)
        return (norm.sf(s - d) + norm.cdf(-s - d)) * chi2.pdf(v, dof)
    return float(quad(integrand, 0, np.inf, limit=200)[0])


def detectable_difference(sd: float, n: int, power: float = 0.8, alpha: float = ALPHA) -> float:
    """The smallest true mean difference a two-sided one-sample (paired) t test at level ``alpha`` over
    ``n`` independent units with standard deviation ``sd`` detects with probability ``power``; nan for
    n < 2 or no sd."""
    from scipy.optimize import brentq  # lazy: heavy, scipy (0.5 s to import)
    if n < 2 or not (sd > 0) or not math.isfinite(sd):
        return float("nan")
    hi = sd
    while paired_t_power(hi, sd, n, alpha) < power:
        hi *= 2
    return float(brentq(lambda dd: paired_t_power(dd, sd, n, alpha) - power, 0.0, hi, xtol=1e-8 * sd))
