"""Scaling-law fits that refuse what the data cannot support.

Laws, for an error ``err > 0`` (1 - accuracy, or a loss) as a function of ``x > 0``:

    saturating  err = a * x^(-b) + c                    the default; c is the irreducible error
    power       err = a * x^(-b)                        only when asked for
    joint       err = E + A * N^(-alpha) + B * D^(-beta)  model size N and data size D both varying

**Points.** Every run is a point (all seeds), never a cell mean. The loss is the Huber loss of the
log-space residuals log(pred) - log(err), minimised by bounded least squares from a grid of starts
(Hoffmann et al. 2022, approach 3; Besiroglu et al. 2024). Bounds: b, alpha, beta in [0, 5]; c, E in
[0, largest error]. A parameter that ends at a bound is flagged (``at_bound``): the data do not identify it.

**Refusal.** A law is fitted only where it is identified: at least ``MIN_X`` = 5 distinct x values
spanning at least one decade (per axis for the joint law). Otherwise the status is ``refused`` with the
reason; a law is never silently swapped for another.

**Trend test.** A slope is claimed only against "no trend": the statistic is the drop in loss from the
constant model err = k to the law, and its null distribution comes from permutations of the errors
across the x values (exact under "err does not depend on x", whatever the law's own quirks, such as b
being unidentified when a = 0). With permutation p >= alpha (0.05) the status is ``no-trend``.

**Uncertainty.** A bootstrap that resamples runs within each x (each cell keeps its number of runs; the
resampled deviations from the cell mean are scaled by sqrt(n/(n-1)), which removes the within-cell
bootstrap's known shrinkage of the variance). A cell with one run draws its deviation from that run's
stored test-set interval where there is one, else from the fit's residuals. Percentile 95% intervals;
their coverage is tested on planted laws (tests/test_fit.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from covidnetx.utils import UserError

MIN_X = 5                 # distinct x values (per axis) a law needs
MIN_DECADES = 1.0         # span of x (per axis) a law needs
EXP_MAX = 5.0             # upper bound of the exponents
LAWS = ("saturating", "power", "joint")
PARAMS = {"saturating": ("a", "b", "c"), "power": ("a", "b"), "joint": ("E", "A", "alpha", "B", "beta")}
FORMULA = {"saturating": "a*x^(-b) + c", "power": "a*x^(-b)", "joint": "E + A*N^(-alpha) + B*D^(-beta)"}
HUBER_K = 1.345           # Huber threshold in units of the residual scale (95% efficiency if normal)


# --------------------------------------------------------------------------------------------------
# the laws in log space: internal parameters theta, residuals, Jacobian
class _Law:
    """One law on fixed inputs. Internal parameters: log-amplitudes (scaled by a reference x so that
    they are well conditioned), exponents, and the floor in natural units."""

    def __init__(self, kind: str, X: np.ndarray, ymax: float):
        self.kind = kind
        self.X = np.atleast_2d(np.asarray(X, np.float64).T).T if kind == "joint" else np.asarray(X, np.float64)
        if kind == "joint":
            self.x0 = np.exp(np.log(self.X).mean(0))
            self.lx = np.log(self.X / self.x0)            # (n, 2)
        else:
            self.x0 = float(np.exp(np.log(self.X).mean()))
            self.lx = np.log(self.X / self.x0)            # (n,)
        self.ymax = float(ymax)
        big = 60.0
        if kind == "saturating":
            self.lo, self.hi = np.array([-big, 0.0, 0.0]), np.array([big, EXP_MAX, self.ymax])
        elif kind == "power":
            self.lo, self.hi = np.array([-big, 0.0]), np.array([big, EXP_MAX])
        else:
            self.lo = np.array([0.0, -big, 0.0, -big, 0.0])
            self.hi = np.array([self.ymax, big, EXP_MAX, big, EXP_MAX])

    def pred_jac(self, th):
        """Predictions (B, n) and the Jacobian of log(pred), (B, n, k), for parameter rows th (B, k)."""
        th = np.atleast_2d(th)
        k = self.kind
        if k in ("saturating", "power"):
            t = np.exp(th[:, :1] - th[:, 1:2] * self.lx[None, :])
            pred = t + (th[:, 2:3] if k == "saturating" else 0.0)
            cols = [t, -t * self.lx[None, :]] + ([np.ones_like(t)] if k == "saturating" else [])
        else:
            t1 = np.exp(th[:, 1:2] - th[:, 2:3] * self.lx[None, :, 0])
            t2 = np.exp(th[:, 3:4] - th[:, 4:5] * self.lx[None, :, 1])
            pred = th[:, :1] + t1 + t2
            cols = [np.ones_like(t1), t1, -t1 * self.lx[None, :, 0], t2, -t2 * self.lx[None, :, 1]]
        pred = np.maximum(pred, 1e-300)
        return pred, np.stack(cols, 2) / pred[:, :, None]

    def natural(self, th) -> dict:
        """Internal parameters -> the law's own (a, b, c) / (E, A, alpha, B, beta) at x, not x / x0."""
        k = self.kind
        if k in ("saturating", "power"):
            out = {"a": float(np.exp(th[0]) * self.x0 ** th[1]), "b": float(th[1])}
            if k == "saturating":
                out["c"] = float(th[2])
            return out
        return {"E": float(th[0]), "A": float(np.exp(th[1]) * self.x0[0] ** th[2]), "alpha": float(th[2]),
                "B": float(np.exp(th[3]) * self.x0[1] ** th[4]), "beta": float(th[4])}

    def starts(self, ly: np.ndarray, full: bool = True) -> list:
        ymin = float(np.exp(ly.min()))
        ym = float(np.exp(ly.mean()))
        exps = (0.1, 0.3, 0.7, 1.5) if full else (0.3, 1.0)
        floors = (0.0, 0.5, 0.9) if full else (0.0, 0.7)
        out = []
        for f in floors:
            c0 = f * ymin
            amp = np.log(max(ym - c0, 1e-6 * ym))
            for e in exps:
                if self.kind == "saturating":
                    out.append([amp, e, c0])
                elif self.kind == "power":
                    if f == 0.0:
                        out.append([amp, e])
                else:
                    half = np.log(max(ym - c0, 1e-6 * ym) / 2)
                    for e2 in (exps if full else (e,)):
                        out.append([c0, half, e, half, e2])
        return [np.clip(np.array(s, np.float64), self.lo + 1e-9, self.hi - 1e-9) for s in out]


def _solve(law: _Law, ly: np.ndarray, delta: float, starts: list):
    """Best of the robust fits of one data vector from ``starts``: (theta, loss)."""
    TH, LOSS = _lm_batch(law, np.repeat(ly[None, :], len(starts), 0), np.array(starts, np.float64), delta)
    i = int(np.nanargmin(np.where(np.isfinite(LOSS), LOSS, np.nan))) if np.isfinite(LOSS).any() else -1
    if i < 0:
        raise FloatingPointError("no start converged")
    return TH[i], float(LOSS[i])


def _huber_rows(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.sum(np.where(a <= delta, 0.5 * a * a, delta * a - 0.5 * delta * delta), axis=-1)


def _lm_batch(law: _Law, LY: np.ndarray, TH0: np.ndarray, delta: float, max_iter: int = 400):
    """Robust fits of many data vectors at once (rows of LY, (B, n)), each from its own start (TH0,
    (B, k)): a projected Levenberg-Marquardt on the Huber loss by iteratively reweighted least squares
    (weights 1 inside delta, delta/|r| outside). A parameter at a bound that the gradient pushes outward
    stays there (active set); steps are clipped to the bounds. Every row keeps its own damping and stops
    on its own; all rows advance together, so the bootstrap's and the permutation test's thousands of
    refits cost a few vectorised passes. Returns (theta (B, k), loss (B,))."""
    B, k = TH0.shape
    lo, hi = law.lo[None, :], law.hi[None, :]
    th = np.clip(TH0, lo, hi)
    eye = np.eye(k)[None]
    with np.errstate(all="ignore"):
        pred, J = law.pred_jac(th)
        r = np.log(pred) - LY
        loss = _huber_rows(r, delta)
        lam = np.full(B, 1e-3)
        active = np.isfinite(loss)
        for _ in range(max_iter):
            idx = np.flatnonzero(active)
            if not len(idx):
                break
            ra, Ja, ta = r[idx], J[idx], th[idx]
            a = np.abs(ra)
            w = np.where(a <= delta, 1.0, delta / np.maximum(a, 1e-300))
            Jw = Ja * w[:, :, None]
            H = np.einsum("bnk,bnl->bkl", Jw, Ja)
            g = np.einsum("bnk,bn->bk", Jw, ra)
            free = ~(((ta <= lo) & (g > 0)) | ((ta >= hi) & (g < 0)))
            ff = free[:, :, None] & free[:, None, :]
            Hf = np.where(ff, H, 0.0) + eye * (~free)[:, :, None]
            gf = np.where(free, g, 0.0)
            dg = np.einsum("bkk->bk", Hf) + 1e-12
            A = Hf + lam[idx, None, None] * eye * dg[:, :, None]
            try:
                step = np.linalg.solve(A, -gf[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                step = np.stack([np.linalg.lstsq(A[i], -gf[i], rcond=None)[0] for i in range(len(idx))])
            tn = np.clip(ta + step, lo, hi)
            moved = np.max(np.abs(tn - ta), axis=1) >= 1e-12
            pn, Jn = law.pred_jac(tn)
            rn = np.log(pn) - LY[idx]
            ln = _huber_rows(rn, delta)
            acc = moved & np.isfinite(ln) & (ln < loss[idx])
            gain = np.where(acc, loss[idx] - ln, 0.0)
            ai = idx[acc]
            th[ai], r[ai], J[ai], loss[ai] = tn[acc], rn[acc], Jn[acc], ln[acc]
            lam[ai] = np.maximum(lam[ai] / 10, 1e-9)
            rej = idx[~acc]
            lam[rej] *= 10
            done = np.zeros(len(idx), bool)
            done[acc] = gain[acc] <= 1e-10 * loss[ai]
            done[~acc] = (lam[rej] >= 1e8) | ~moved[~acc]
            active[idx[done]] = False
    return th, loss


def _t975(dof: int) -> float:
    from scipy.stats import t
    return float(t.ppf(0.975, dof))


def _constant_rows(LY: np.ndarray, delta: float) -> np.ndarray:
    """Loss of the robust constant fit in log space for each row of LY: the Huber M-estimate of
    location by iteratively reweighted means (the loss is convex in the level, so this converges)."""
    m = np.median(LY, axis=1, keepdims=True)
    for _ in range(200):
        a = np.abs(LY - m)
        w = np.where(a <= delta, 1.0, delta / np.maximum(a, 1e-300))
        m_new = np.sum(w * LY, axis=1, keepdims=True) / np.sum(w, axis=1, keepdims=True)
        if np.all(np.abs(m_new - m) <= 1e-13 * np.maximum(1.0, np.abs(m))):
            m = m_new
            break
        m = m_new
    return _huber_rows(LY - m, delta)


# --------------------------------------------------------------------------------------------------
@dataclass
class Fit:
    """The outcome of one fit. ``status``: ok | no-trend | refused; ``reason`` says why when not ok."""
    law: str
    status: str
    reason: str = ""
    n_points: int = 0                      # runs used
    n_x: int = 0                           # distinct x values (cells)
    params: dict = field(default_factory=dict)
    ci: dict = field(default_factory=dict)
    at_bound: list = field(default_factory=list)
    p_trend: float = float("nan")          # permutation p-value against the constant model
    rmse_log: float = float("nan")
    n_boot: int = 0
    widen: float = 1.0                     # factor applied to the bootstrap percentile half-widths
    delta: float = float("nan")          # the Huber threshold used (log units)
    x_range: tuple = ()
    boot: np.ndarray | None = None         # bootstrap draws of the natural parameters (rows)
    resid_log: np.ndarray | None = None

    def predict(self, x, params: dict | None = None):
        p = self.params if params is None else params
        if self.law == "joint":
            X = np.atleast_2d(np.asarray(x, np.float64))
            return p["E"] + p["A"] * X[:, 0] ** (-p["alpha"]) + p["B"] * X[:, 1] ** (-p["beta"])
        x = np.asarray(x, np.float64)
        return p["a"] * x ** (-p["b"]) + (p["c"] if self.law == "saturating" else 0.0)

    def band(self, x) -> tuple:
        """Pointwise 95% interval of the fitted curve at ``x`` (bootstrap percentiles, widened about the
        fit like the parameters' intervals; never below 0): (lo, hi)."""
        est = np.atleast_1d(self.predict(x)).astype(np.float64)
        if self.boot is None or not len(self.boot):
            return np.full_like(est, np.nan), np.full_like(est, np.nan)
        names = PARAMS[self.law]
        curves = np.array([np.atleast_1d(self.predict(x, dict(zip(names, row)))) for row in self.boot])
        lo_q, hi_q = np.quantile(curves, 0.025, axis=0), np.quantile(curves, 0.975, axis=0)
        return (np.maximum(est - self.widen * np.maximum(est - lo_q, 0.0), 0.0),
                est + self.widen * np.maximum(hi_q - est, 0.0))

    def prediction(self, x) -> dict:
        """The law at ``x`` (an extrapolation where x lies outside the fitted range): the fitted error,
        the curve's 95% interval, and a 95% prediction interval for one new run there (the curve's
        interval and the run-to-run scatter of the residuals, t-scaled, added in log space)."""
        pt = float(np.atleast_1d(self.predict(x))[0])
        out = {"x": x, "err": pt, "ci_lo": float("nan"), "ci_hi": float("nan"), "pi_lo": float("nan"),
               "pi_hi": float("nan")}
        if self.law == "joint":
            xs = np.atleast_1d(x)
            out["extrapolation"] = bool(any(xs[i] < self.x_range[i][0] or xs[i] > self.x_range[i][1]
                                            for i in range(2)))
        else:
            out["extrapolation"] = bool(x < self.x_range[0] or x > self.x_range[1])
        lo, hi = self.band(np.atleast_2d(x) if self.law == "joint" else np.atleast_1d(x))
        if not np.isfinite(lo[0]) or self.resid_log is None:
            return out
        out["ci_lo"], out["ci_hi"] = float(lo[0]), float(hi[0])
        dof = max(1, len(self.resid_log) - len(PARAMS[self.law]))
        noise = _t975(dof) * float(np.sqrt(np.sum(self.resid_log ** 2) / dof))
        lp = np.log(max(pt, 1e-300))
        out["pi_lo"] = float(np.exp(lp - np.hypot(lp - np.log(max(lo[0], 1e-300)), noise)))
        out["pi_hi"] = float(np.exp(lp + np.hypot(np.log(max(hi[0], 1e-300)) - lp, noise)))
        return out

    def record(self) -> dict:
        """Flat fields for the fits table: law, status, reason, counts, each parameter with its interval."""
        out = {"law": self.law, "status": self.status, "reason": self.reason, "n_points": self.n_points,
               "n_x": self.n_x, "p_trend": self.p_trend, "rmse_log": self.rmse_log,
               "at_bound": ",".join(self.at_bound), "n_boot": self.n_boot, "huber_delta": self.delta}
        for p in PARAMS[self.law]:
            out[p] = self.params.get(p, float("nan"))
            lo, hi = self.ci.get(p, (float("nan"), float("nan")))
            out[f"{p}_ci_lo"], out[f"{p}_ci_hi"] = lo, hi
        return out


def _axes(X, law):
    return [X[:, 0], X[:, 1]] if law == "joint" else [X]


def identified(X, law: str) -> str:
    """'' when the x values can identify the law, else the reason for refusing."""
    names = ("N", "D") if law == "joint" else ("x",)
    for name, col in zip(names, _axes(X, law)):
        distinct = np.unique(col)
        if len(distinct) < MIN_X:
            return (f"{len(distinct)} distinct {name} value(s); err = {FORMULA[law]} needs at least {MIN_X}"
                    + (" per axis" if law == "joint" else ""))
        span = np.log10(distinct.max() / distinct.min())
        if span < MIN_DECADES:
            return f"{name} spans {span:.2f} decades; a law needs at least {MIN_DECADES:g}"
    return ""


def _cells(X, law):
    """Cell index of each row (rows with equal x, or equal (N, D), form a cell)."""
    keys = [tuple(r) for r in X] if law == "joint" else list(X)
    uniq = {}
    return np.array([uniq.setdefault(k, len(uniq)) for k in keys]), len(uniq)


def robust_delta(law: "_Law", ly: np.ndarray) -> tuple:
    """The Huber threshold for these points: HUBER_K x the residuals' robust scale (1.4826 x their
    median absolute deviation) after a least-squares fit; (delta, least-squares theta)."""
    th, _ = _solve(law, ly, 1e6, law.starts(ly))
    r = ly - np.log(law.pred_jac(th)[0][0])
    scale = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    return max(HUBER_K * scale, 1e-4), th


def fit_law(x, err, law: str = "saturating", n_boot: int = 200, seed: int = 0, delta: float | None = None,
            sd_log=None, n_perm: int = 199, alpha: float = 0.05, trend_test: bool = True) -> Fit:
    """Fit ``law`` to every (x, err) point. ``x`` is a vector, or an (n, 2) array of (N, D) for the joint
    law; ``sd_log`` optionally gives each run's test-set standard error in log space (used for cells of
    one run). Returns a Fit with a status; raises UserError only for unusable input."""
    if law not in LAWS:
        raise UserError(f"unknown law {law!r} ({' | '.join(LAWS)})")
    X = np.asarray(x, np.float64)
    if law == "joint" and (X.ndim != 2 or X.shape[1] != 2):
        raise UserError("the joint law needs two x columns (model size N, data size D)")
    if law != "joint" and X.ndim != 1:
        raise UserError(f"law {law!r} takes one x column")
    y = np.asarray(err, np.float64)
    sd = np.full(len(y), np.nan) if sd_log is None else np.asarray(sd_log, np.float64)
    ok = np.isfinite(y) & (y > 0) & (np.all(np.isfinite(X) & (X > 0), axis=1) if X.ndim == 2
                                     else np.isfinite(X) & (X > 0))
    X, y, sd = X[ok], y[ok], sd[ok]
    fit = Fit(law=law, status="refused", n_points=int(len(y)))
    cell, n_cells = _cells(X, law)
    fit.n_x = n_cells
    if len(y) == 0:
        fit.reason = "no rows with a positive error and a positive x"
        return fit
    fit.x_range = (tuple((float(c.min()), float(c.max())) for c in _axes(X, law)) if law == "joint"
                   else (float(X.min()), float(X.max())))
    why = identified(X, law)
    if why:
        fit.reason = why
        return fit
    ly = np.log(y)
    L = _Law(law, X, float(y.max()))
    if delta is None:
        delta, th_ls = robust_delta(L, ly)
        th, loss = _solve(L, ly, delta, [th_ls] + L.starts(ly))
    else:
        th, loss = _solve(L, ly, delta, L.starts(ly))
    fit.delta = float(delta)
    fit.params = L.natural(th)
    pred = L.pred_jac(th)[0][0]
    res = ly - np.log(pred)
    fit.resid_log = res
    fit.rmse_log = float(np.sqrt(np.mean(res ** 2)))
    names = PARAMS[law]
    tol = 1e-6
    for i, nm in enumerate(names):
        if nm.startswith(("a", "A", "B")) and nm not in ("alpha",):
            continue                      # amplitudes: their bounds are far away in log space
        span = L.hi[i] - L.lo[i]
        if th[i] <= L.lo[i] + tol * max(1.0, span):
            fit.at_bound.append(f"{nm}={L.lo[i]:g} (lower bound)")
        elif th[i] >= L.hi[i] - tol * max(1.0, span):
            fit.at_bound.append(f"{nm}={L.hi[i]:.4g} (upper bound)")
    rng = np.random.default_rng(seed)
    # ---- trend: the law against the constant, by permutation of the errors across x
    if trend_test and n_perm > 0:
        stat = _constant_rows(ly[None, :], delta)[0] - loss
        LP = np.stack([rng.permutation(ly) for _ in range(n_perm)])
        starts = [th] + L.starts(ly, full=False)[:1]
        TH0 = np.concatenate([np.repeat(np.asarray(st)[None, :], n_perm, 0) for st in starts])
        _, lp_loss = _lm_batch(L, np.concatenate([LP] * len(starts)), TH0, delta)
        lp_loss = np.nanmin(np.where(np.isfinite(lp_loss), lp_loss, np.nan).reshape(len(starts), n_perm), axis=0)
        stat_p = _constant_rows(LP, delta) - lp_loss
        ok_p = np.isfinite(stat_p)
        exceed = int(np.sum(stat_p[ok_p] >= stat - 1e-9 * max(abs(stat), 1e-12)))
        fit.p_trend = (exceed + 1) / (int(ok_p.sum()) + 1)
    # ---- bootstrap: runs resampled within cells
    if n_boot > 0:
        LB = np.repeat(ly[None, :], n_boot, 0)
        pooled = res - res.mean()
        for c in range(n_cells):
            m = np.flatnonzero(cell == c)
            v = ly[m]
            if len(m) > 1:
                mu = v.mean()
                LB[:, m] = mu + np.sqrt(len(m) / (len(m) - 1)) * (v[rng.integers(0, len(m), (n_boot, len(m)))] - mu)
            elif np.isfinite(sd[m[0]]) and sd[m[0]] > 0:
                LB[:, m[0]] = v[0] + rng.normal(0.0, sd[m[0]], n_boot)
            else:
                LB[:, m[0]] = v[0] + rng.choice(pooled, n_boot)
        TB, lb_loss = _lm_batch(L, LB, np.repeat(th[None, :], n_boot, 0), delta)
        draws = []
        for tb, lv in zip(TB, lb_loss):
            if np.isfinite(lv):
                nat = L.natural(tb)
                draws.append([nat[p] for p in names])
        if draws:
            fit.boot = np.array(draws)
            fit.n_boot = len(draws)
            # the bootstrap treats the seed variance as known; it is estimated from few runs, so the
            # percentile interval is widened about the estimate by t(dof) / z (dof: runs - cells where the
            # cells have replicates, else runs - parameters)
            dof = len(ly) - n_cells if len(ly) - n_cells >= 2 else len(ly) - len(names)
            fit.widen = float(_t975(max(dof, 1)) / 1.959964)
            est = np.array([fit.params[p] for p in names])
            lo_q, hi_q = np.quantile(fit.boot, 0.025, axis=0), np.quantile(fit.boot, 0.975, axis=0)
            for i, p in enumerate(names):
                lo = est[i] - fit.widen * max(est[i] - lo_q[i], 0.0)
                hi = est[i] + fit.widen * max(hi_q[i] - est[i], 0.0)
                if p not in ("a", "A", "B"):          # bounded parameters: the interval stays inside the bounds
                    lo, hi = max(lo, float(L.lo[i])), min(hi, float(L.hi[i]))
                fit.ci[p] = (float(lo), float(hi))
    if trend_test and not fit.p_trend < alpha:
        fit.status = "no-trend"
        fit.reason = (f"err = {FORMULA[law]} fits no better than a constant (permutation p = {fit.p_trend:.3f} "
                      f">= {alpha:g})")
    else:
        fit.status = "ok"
    return fit


def pareto_frontier(compute, err) -> np.ndarray:
    """Indices of the measured points on the lower envelope: no other point has both less (or equal)
    compute and a lower error. Points are kept as measured (nothing is forced monotone)."""
    c, e = np.asarray(compute, np.float64), np.asarray(err, np.float64)
    order = np.lexsort((e, c))
    keep, best = [], np.inf
    for i in order:
        if e[i] < best:
            keep.append(i)
            best = e[i]
    return np.array(sorted(keep, key=lambda i: c[i]), dtype=int)
