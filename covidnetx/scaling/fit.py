"""Scaling-law fits with bootstrap confidence intervals.

Saturating power law  err(x) = a * x^(-b) + c   (c = irreducible error), and the plain power law
err(x) = a * x^(-b). Fits minimise squared *relative* residuals (log-space errors), which weights all
scales alike. Parameter CIs come from a residual bootstrap (resampled relative residuals around the fit).
For compute, fits use the compute-optimal frontier: the lowest error in each log-spaced compute bin.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from covidnetx.utils import UserError

MIN_POINTS = {"saturating": 4, "power": 3}


@dataclass
class Fit:
    kind: str
    params: dict
    ci: dict = field(default_factory=dict)
    n: int = 0
    rmse_log: float = float("nan")

    def predict(self, x):
        x = np.asarray(x, np.float64)
        p = self.params
        return p["a"] * x ** (-p["b"]) + (p.get("c", 0.0) if self.kind == "saturating" else 0.0)


def _check(x, y, kind):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    distinct = len(np.unique(x))
    need = MIN_POINTS[kind]
    if distinct < need:
        form = "a*x^(-b) + c" if kind == "saturating" else "a*x^(-b)"
        raise UserError(f"too few points to fit err = {form}: need at least {need} distinct x values with "
                        f"positive error, got {distinct}")
    return x, y


def _fit_power(x, y) -> dict:
    b, la = np.polyfit(np.log(x), np.log(y), 1)
    return {"a": float(np.exp(la)), "b": float(-b)}


def _fit_saturating(x, y) -> dict:
    from scipy.optimize import least_squares
    lx = np.log(x)
    x0 = np.exp(np.mean(lx))              # reference scale keeps the parameters well conditioned

    def resid(p):
        la, b, c = p
        m = np.exp(la) * (x / x0) ** (-b) + c
        return np.log(np.maximum(m, 1e-300)) - np.log(y)

    best = None
    for cfrac in (0.0, 0.3, 0.6, 0.9):
        c0 = cfrac * y.min()
        yy = np.maximum(y - c0, 1e-12)
        b0, la0 = np.polyfit(lx - np.log(x0), np.log(yy), 1)
        start = np.array([la0, max(1e-3, -b0), c0])
        r = least_squares(resid, start, bounds=([-50, 0.0, 0.0], [50, 10.0, y.min()]), method="trf")
        if best is None or r.cost < best.cost:
            best = r
    la, b, c = best.x
    return {"a": float(np.exp(la) * x0 ** b), "b": float(b), "c": float(c)}


def fit_law(x, y, kind: str = "saturating", n_boot: int = 200, seed: int = 0) -> Fit:
    if kind not in MIN_POINTS:
        raise UserError(f"unknown law {kind!r} (saturating | power)")
    x, y = _check(x, y, kind)
    f = _fit_saturating if kind == "saturating" else _fit_power
    params = f(x, y)
    fit = Fit(kind, params, n=len(x))
    pred = fit.predict(x)
    res = np.log(y) - np.log(pred)
    fit.rmse_log = float(np.sqrt(np.mean(res ** 2)))
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        draws = {k: [] for k in params}
        centred = res - res.mean()
        for _ in range(n_boot):
            yb = pred * np.exp(rng.choice(centred, len(centred), replace=True))
            try:
                pb = f(x, yb)
            except Exception:  # noqa: BLE001 - a failed resample is skipped
                continue
            for k, v in pb.items():
                draws[k].append(v)
        fit.ci = {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for k, v in draws.items() if v}
    return fit


def compute_frontier(compute, err, bins_per_decade: int = 2) -> tuple:
    """Best (lowest) error in each log-spaced compute bin: the compute-optimal frontier."""
    c, e = np.asarray(compute, np.float64), np.asarray(err, np.float64)
    ok = (c > 0) & np.isfinite(e)
    c, e = c[ok], e[ok]
    if len(c) == 0:
        return c, e
    lc = np.log10(c)
    edges = np.arange(np.floor(lc.min() * bins_per_decade), np.ceil(lc.max() * bins_per_decade) + 2) / bins_per_decade
    idx = np.digitize(lc, edges)
    fx, fy = [], []
    for b in np.unique(idx):
        m = idx == b
        j = np.argmin(e[m])
        fx.append(c[m][j])
        fy.append(e[m][j])
    order = np.argsort(fx)
    fx, fy = np.array(fx)[order], np.array(fy)[order]
    # a frontier never gets worse with more compute
    return fx, np.minimum.accumulate(fy)
