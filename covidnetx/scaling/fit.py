"""Scaling-law fits that claim a law only where the data support its shape, its trend and its exponent.

The laws and their robust fitting live in covidnetx.scaling.laws; this module holds the rules. Every
point is one independent unit (a run, or the mean of the runs that share one pre-trained checkpoint:
covidnetx.scaling.groups averages those first). One fit goes through these steps, each a function here:

1. **Identification** (``identified``): at least ``MIN_X`` = 5 distinct x values spanning at least
   ``MIN_DECADES`` = 1 decade (per axis for the joint law); otherwise ``refused``, never a swap of law.
2. **Point fit** (``point_fit``): Huber loss on log residuals, threshold ``HUBER_K`` x their robust scale.
3. **The floor** (``floor_test``): where the fitted floor c (E) sits at its bound 0, the law reported is
   the pure power law (c = 0) and its exponents are *conditional on c = 0*. The test of c > 0 is the
   least-squares F test of the free floor against c = 0 with the boundary-aware p-value (half the F(1, dof)
   tail: a 50:50 mixture of 0 and F, as for a variance component on its bound); the largest floor the data
   allow (``floor_upper``) and the exponents without the condition (``free_range``) come from the free
   law's profile-likelihood intervals (``profile_interval``).
4. **Lack of fit** (``lack_of_fit``): where x values have replicate units, the least-squares residual sum
   of squares splits into pure error (between units at the same x) and lack of fit; F = (SS_lof / (m - k))
   / (SS_pe / (n - m)) with m cells, k the parameters the fit uses (``Law.effective_params``: an exponent at
   0 makes the law a constant), n units. p < ``LOF_ALPHA`` = 0.05: ``lack-of-fit``.
5. **Trend** (``trend_pvalue``): the drop in loss from the constant model to the law against its permutation
   distribution (errors permuted across x; exact under no dependence on x). p >= ``ALPHA`` = 0.05: ``no-trend``.
6. **Bootstrap** (``bootstrap``): units resampled within each x (deviations scaled by sqrt(n/(n-1))); a cell
   of one unit draws from its test-set interval, else from the residuals.
7. **Intervals** (``intervals``): percentile 95% intervals widened by t(dof)/z, joined for the exponents
   with their profile-likelihood intervals (``profile_interval``). An exponent is *identified*
   only where fewer than ``BOUND_SHARE`` = 2.5% of its draws sit at a bound (0 or EXP_MAX = 5) and its
   interval ends inside the bounds; otherwise the status is ``not-identified`` and a one-sided 95% bound
   is given instead (b >= lo where draws pile at the upper bound, b <= hi where they pile at 0).

Status, the first that applies: refused, lack-of-fit, no-trend, not-identified, shape-untested (no x value
has two units, so step 4 cannot run: the law's shape is not known to fit), ok.

**Backtest** (``backtest``): fit without the K largest x values (for the joint law: the K largest N),
predict the mean error of the held-out units at each held-out x with a 95% prediction interval for the
mean of that many new units, and check that it covers what was measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from covidnetx.scaling.laws import (AMPLITUDES, EXP_MAX, EXPONENTS, FORMULA, LAWS, PARAMS, Law, constant_rows,
                                    lm_batch, solve)
from covidnetx.scaling.stats import ALPHA, t975
from covidnetx.utils import UserError

MIN_X = 5                 # distinct x values (per axis) a law needs
MIN_DECADES = 1.0         # span of x (per axis) a law needs
LOF_ALPHA = 0.05          # lack-of-fit F test level
FLOOR_ALPHA = 0.05        # level of the test of c > 0
BOUND_SHARE = 0.025       # share of bootstrap draws at a bound that leaves an exponent unidentified
HUBER_K = 1.345           # Huber threshold in units of the residual scale (95% efficiency if normal)
STATUSES = ("ok", "lack-of-fit", "no-trend", "not-identified", "shape-untested", "refused")
_LS = 1e6                 # a Huber threshold no residual reaches: least squares


@dataclass
class Fit:
    """The outcome of one fit. ``status``: one of STATUSES; ``reason`` says why when not ok."""
    law: str
    status: str
    reason: str = ""
    n_points: int = 0                      # independent units used
    n_x: int = 0                           # distinct x values (cells)
    params: dict = field(default_factory=dict)
    ci: dict = field(default_factory=dict)           # two-sided 95% intervals (identified parameters)
    onesided: dict = field(default_factory=dict)     # name -> (">=" | "<=", bound): one-sided 95% bounds
    bound_share: dict = field(default_factory=dict)  # name -> share of bootstrap draws at a bound
    identified: bool = True                # every exponent identified
    at_bound: list = field(default_factory=list)
    floor: str = ""                        # "free" | "zero" (pure power law, exponents conditional) | "" (none)
    p_floor: float = float("nan")          # boundary-aware test of c > 0 (E > 0)
    floor_upper: float = float("nan")      # where the floor is 0: upper end of its 95% profile interval
    free_range: dict = field(default_factory=dict)   # floor at 0: exponent -> (lo, hi) over the floors allowed
    lof: dict = field(default_factory=dict)          # F, df1, df2, p (or 'untested': why)
    p_trend: float = float("nan")          # permutation p-value against the constant model
    rmse_log: float = float("nan")
    n_boot: int = 0
    widen: float = 1.0                     # factor applied to the bootstrap percentile half-widths
    delta: float = float("nan")            # the Huber threshold used (log units)
    x_range: tuple = ()
    boot: np.ndarray | None = None         # bootstrap draws of the natural parameters (rows)
    resid_log: np.ndarray | None = None
    n_free: int = 0                        # free parameters of the law reported
    noise_trend: tuple = ()                # (intercept, slope) of log(unit sd) on log x, largest cell sd

    @property
    def shape(self) -> str:
        """The law as reported: 'pure power law (c = 0)' where the floor sat at 0."""
        if self.floor == "zero":
            return "pure power law (c = 0)" if self.law == "saturating" else "joint law without floor (E = 0)"
        return self.law

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

    def prediction(self, x, m: int = 1) -> dict:
        """The law at ``x`` (an extrapolation where x lies outside the fitted range): the fitted error,
        the curve's 95% interval, and a 95% prediction interval for the mean of ``m`` new units there (the
        curve's interval and the unit-to-unit scatter of the residuals over sqrt(m), t-scaled, added in
        log space)."""
        pt = float(np.atleast_1d(self.predict(x))[0])
        out = {"x": x, "m": int(m), "err": pt, "ci_lo": float("nan"), "ci_hi": float("nan"),
               "pi_lo": float("nan"), "pi_hi": float("nan")}
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
        dof = max(1, len(self.resid_log) - self.n_free)
        noise = t975(dof) * self.unit_sd(x) / np.sqrt(max(m, 1))
        lp = np.log(max(pt, 1e-300))
        out["pi_lo"] = float(np.exp(lp - np.hypot(lp - np.log(max(lo[0], 1e-300)), noise)))
        out["pi_hi"] = float(np.exp(min(lp + np.hypot(np.log(max(hi[0], 1e-300)) - lp, noise), 700.0)))
        out["pi_lo"], out["pi_hi"] = min(out["pi_lo"], pt), max(out["pi_hi"], pt)
        return out

    def unit_sd(self, x) -> float:
        """The scatter of one unit about the law at ``x`` (log units): the residuals' pooled scale, or,
        where it is larger, the trend of the replicate cells' scatter over x extrapolated to ``x`` (noise
        that grows with x is not averaged away), at most twice the largest scatter of any cell."""
        dof = max(1, len(self.resid_log) - self.n_free)
        pooled = float(np.sqrt(np.sum(self.resid_log ** 2) / dof))
        if self.noise_trend and self.law != "joint":
            intercept, slope, top = self.noise_trend
            return max(pooled, min(float(np.exp(intercept + slope * np.log(float(x)))), 2.0 * top))
        return pooled

    def interval_text(self, p: str, digits: int = 4) -> str:
        """'[lo, hi]', or a one-sided bound such as '>= 0.8 (one-sided)', or '' without an interval."""
        if p in self.onesided:
            side, v = self.onesided[p]
            return f"{side} {v:.{digits}g} (one-sided 95%)"
        if p in self.ci:
            lo, hi = self.ci[p]
            return f"[{lo:.{digits}g}, {hi:.{digits}g}]"
        return ""

    def record(self) -> dict:
        """Flat fields for the fits table: law, shape, status, reason, counts, the tests, each parameter
        with its interval (a one-sided bound leaves the other end empty and says so in ``P_bound``)."""
        out = {"law": self.law, "shape": self.shape, "status": self.status, "reason": self.reason,
               "n_points": self.n_points, "n_x": self.n_x, "p_trend": self.p_trend, "p_lof": self.lof.get("p", float("nan")),
               "lof_F": self.lof.get("F", float("nan")), "lof_df": (f"{self.lof['df1']},{self.lof['df2']}"
                                                                     if "df1" in self.lof else ""),
               "floor": self.floor, "p_floor": self.p_floor, "floor_upper": self.floor_upper,
               "conditional": "c = 0" if self.floor == "zero" and self.law == "saturating" else
               "E = 0" if self.floor == "zero" else "", "identified": self.identified,
               "rmse_log": self.rmse_log, "at_bound": ",".join(self.at_bound), "n_boot": self.n_boot,
               "huber_delta": self.delta}
        for p in PARAMS[self.law]:
            out[p] = self.params.get(p, float("nan"))
            lo, hi = self.ci.get(p, (float("nan"), float("nan")))
            bound = ""
            if p in self.onesided:
                side, v = self.onesided[p]
                lo, hi, bound = (v, float("nan"), "lower") if side == ">=" else (float("nan"), v, "upper")
            out[f"{p}_ci_lo"], out[f"{p}_ci_hi"] = lo, hi
            if p not in AMPLITUDES:
                out[f"{p}_bound"] = bound
                out[f"{p}_at_bound_share"] = self.bound_share.get(p, float("nan"))
        return out


# ---------------------------------------------------------------------------------------------- steps
def prepare(x, err, law: str, sd_log=None) -> tuple:
    """Checked arrays (X, y, sd) of the rows with a positive, finite error and x."""
    if law not in LAWS:
        raise UserError(f"unknown law {law!r} ({' | '.join(LAWS)})")
    X = np.asarray(x, np.float64)
    if law == "joint" and (X.ndim != 2 or X.shape[1] != 2):
        raise UserError("the joint law needs two x columns (model size N, data size D)")
    if law != "joint" and X.ndim != 1:
        raise UserError(f"law {law!r} takes one x column")
    y = np.asarray(err, np.float64)
    sd = np.full(len(y), np.nan) if sd_log is None else np.asarray(sd_log, np.float64)
    okx = np.all(np.isfinite(X) & (X > 0), axis=1) if X.ndim == 2 else np.isfinite(X) & (X > 0)
    ok = np.isfinite(y) & (y > 0) & okx
    return X[ok], y[ok], sd[ok]


def _axes(X, law):
    return [X[:, 0], X[:, 1]] if law == "joint" else [X]


def identified(X, law: str, min_x: int = MIN_X, min_decades: float = MIN_DECADES) -> str:
    """'' when the x values can identify the law, else the reason for refusing."""
    names = ("N", "D") if law == "joint" else ("x",)
    for name, col in zip(names, _axes(X, law)):
        distinct = np.unique(col)
        if len(distinct) < min_x:
            return (f"{len(distinct)} distinct {name} value(s); err = {FORMULA[law]} needs at least {min_x}"
                    + (" per axis" if law == "joint" else ""))
        span = np.log10(distinct.max() / distinct.min())
        if span < min_decades:
            return f"{name} spans {span:.2f} decades; a law needs at least {min_decades:g}"
    return ""


def cells_of(X, law):
    """Cell index of each point (points with equal x, or equal (N, D), form a cell) and the cell count."""
    keys = [tuple(r) for r in X] if law == "joint" else list(X)
    uniq = {}
    return np.array([uniq.setdefault(k, len(uniq)) for k in keys]), len(uniq)


def least_squares(L: Law, ly: np.ndarray, starts=None, full: bool = True) -> tuple:
    """The least-squares fit in log space: (theta, residual sum of squares)."""
    th, loss = solve(L, ly, _LS, (starts or []) + L.starts(ly, full=full))
    return th, 2.0 * loss


def robust_delta(L: Law, ly: np.ndarray) -> tuple:
    """The Huber threshold for these points: HUBER_K x the residuals' robust scale (1.4826 x their
    median absolute deviation) after a least-squares fit; (delta, least-squares theta)."""
    th, _ = least_squares(L, ly)
    r = ly - np.log(L.pred_jac(th)[0][0])
    scale = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    return max(HUBER_K * scale, 1e-4), th


def point_fit(L: Law, ly: np.ndarray, delta=None) -> tuple:
    """The robust fit: (theta, Huber loss, delta)."""
    if delta is None:
        delta, th_ls = robust_delta(L, ly)
        th, loss = solve(L, ly, delta, [th_ls] + L.starts(ly))
    else:
        th, loss = solve(L, ly, delta, L.starts(ly))
    return th, loss, float(delta)


def floor_test(ssr_free: float, ssr_zero: float, n: int, k_free: int) -> float:
    """p-value of c > 0 against c = 0 (on the bound): F = (SSR_0 - SSR) / (SSR / (n - k)), and since the
    null value is on the boundary the statistic's null law is the 50:50 mixture of 0 and F(1, n - k):
    p = F(1, n - k).sf(F) / 2 for F > 0, else 1."""
    from scipy.stats import f as fdist  # lazy: heavy, scipy (0.5 s to import)
    dof = n - k_free
    if dof < 1 or not np.isfinite(ssr_free) or ssr_free <= 0:
        return float("nan")
    F = (ssr_zero - ssr_free) / (ssr_free / dof)
    return 1.0 if F <= 1e-12 else float(0.5 * fdist.sf(F, 1, dof))


def profile_interval(L: Law, ly: np.ndarray, th, ssr: float, index: int, dof: int) -> tuple:
    """The 95% profile-likelihood interval of parameter ``index`` of the least-squares fit ``th``: the values
    at which the fit with that parameter held (the others refitted) is not rejected against the free fit,
    SSR <= SSR_min (1 + F(1, dof; 0.95) / dof). It needs no symmetry, re-optimises the floor at every
    exponent (so the floor's uncertainty is inside it) and stops at the parameter's bounds. Returns
    (lo, hi, reaches the lower bound, reaches the upper bound)."""
    from scipy.stats import f as fdist  # lazy: heavy, scipy (0.5 s to import)
    if dof < 1 or not ssr > 0:
        return float(L.lo[index]), float(L.hi[index]), True, True
    crit = ssr * (1 + fdist.ppf(0.95, 1, dof) / dof)
    est = float(th[index])

    def accept(v, start):
        Lv = L.held(index, v)
        t, s = least_squares(Lv, ly, [np.where(np.arange(len(th)) == index, v, start)], full=False)
        return s <= crit * (1 + 1e-9), t
    ends = []
    for bound in (float(L.lo[index]), float(L.hi[index])):
        inside, start, step, outside = est, th, max(0.05 * abs(est), 0.01), None
        while outside is None and inside != bound:
            v = est + step if bound > est else est - step
            v = min(v, bound) if bound > est else max(v, bound)
            ok, t = accept(v, start)
            if ok:
                inside, start, step = v, t, 2 * step
            else:
                outside = v
        if outside is not None:
            for _ in range(8):
                mid = 0.5 * (inside + outside)
                ok, t = accept(mid, start)
                inside, start, outside = (mid, t, outside) if ok else (inside, start, mid)
        ends.append((inside, outside is None))
    return ends[0][0], ends[1][0], ends[0][1], ends[1][1]


def lack_of_fit(ly: np.ndarray, cell: np.ndarray, n_cells: int, ssr: float, k_free: int) -> dict:
    """The lack-of-fit F test of the law's least-squares residual sum of squares against the pure error
    between units at the same x: {'F', 'df1', 'df2', 'p'}, or {'untested': why}."""
    from scipy.stats import f as fdist  # lazy: heavy, scipy (0.5 s to import)
    n = len(ly)
    df1, df2 = n_cells - k_free, n - n_cells
    if df2 < 1:
        return {"untested": "no x value has two or more units (no pure error)"}
    if df1 < 1:
        return {"untested": f"{n_cells} x values leave no degrees of freedom for lack of fit"}
    means = np.bincount(cell, weights=ly, minlength=n_cells) / np.bincount(cell, minlength=n_cells)
    ss_pe = float(np.sum((ly - means[cell]) ** 2))
    tiny = 1e-12 * max(float(np.sum((ly - ly.mean()) ** 2)), 1e-300)
    if ss_pe <= tiny:       # identical units at each x: any lack of fit is certain, an exact fit is none
        F, p = (0.0, 1.0) if ssr <= 1e2 * tiny else (float("inf"), 0.0)
        return {"F": F, "df1": int(df1), "df2": int(df2), "p": p}
    F = max(ssr - ss_pe, 0.0) / df1 / (ss_pe / df2)
    return {"F": float(F), "df1": int(df1), "df2": int(df2), "p": float(fdist.sf(F, df1, df2))}


def noise_trend(X, ly: np.ndarray, cell: np.ndarray, n_cells: int) -> tuple:
    """(intercept, slope) of log(sd of the units in a cell) on log x over the cells with replicates,
    weighted by their degrees of freedom, and the largest such sd; () with fewer than 3 such cells (or for
    the joint law)."""
    if X.ndim != 1:
        return ()
    lx, lsd, w = [], [], []
    for c in range(n_cells):
        m = np.flatnonzero(cell == c)
        if len(m) > 1 and np.std(ly[m]) > 0:
            lx.append(np.log(X[m[0]]))
            lsd.append(np.log(np.std(ly[m], ddof=1)))
            w.append(len(m) - 1)
    if len(lx) < 3:
        return ()
    slope, intercept = np.polyfit(lx, lsd, 1, w=np.sqrt(w))
    return float(intercept), float(slope), float(np.exp(max(lsd)))


def trend_pvalue(L: Law, ly: np.ndarray, th, loss: float, delta: float, n_perm: int, rng) -> float:
    """Permutation p-value of the drop in loss from the constant model to the law."""
    stat = constant_rows(ly[None, :], delta)[0] - loss
    LP = np.stack([rng.permutation(ly) for _ in range(n_perm)])
    starts = [th] + L.starts(ly, full=False)[:1]
    TH0 = np.concatenate([np.repeat(np.asarray(st)[None, :], n_perm, 0) for st in starts])
    _, lp_loss = lm_batch(L, np.concatenate([LP] * len(starts)), TH0, delta)
    lp_loss = np.nanmin(np.where(np.isfinite(lp_loss), lp_loss, np.nan).reshape(len(starts), n_perm), axis=0)
    stat_p = constant_rows(LP, delta) - lp_loss
    ok = np.isfinite(stat_p)
    exceed = int(np.sum(stat_p[ok] >= stat - 1e-9 * max(abs(stat), 1e-12)))
    return (exceed + 1) / (int(ok.sum()) + 1)


def bootstrap(L: Law, ly, cell, n_cells, sd, th, res, delta, n_boot: int, rng) -> np.ndarray:
    """Bootstrap draws (rows) of the natural parameters: units resampled within each cell."""
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
    TB, lb_loss = lm_batch(L, LB, np.repeat(th[None, :], n_boot, 0), delta)
    names = PARAMS[L.kind]
    return np.array([[L.natural(tb)[p] for p in names] for tb, lv in zip(TB, lb_loss) if np.isfinite(lv)])


def intervals(fit: Fit, L: Law, draws: np.ndarray, dof: int, profile: dict | None = None) -> None:
    """Fill ``fit.ci`` / ``fit.onesided`` / ``fit.bound_share`` / ``fit.identified`` from the draws:
    percentile 95% intervals widened about the estimate by t(dof) / z (the unit variance is estimated
    from few units), joined with the exponents' profile-likelihood intervals (``profile``: name -> (lo,
    hi, at lower bound, at upper bound)); an exponent whose draws pile at a bound, or whose interval
    reaches one, gets a one-sided bound and leaves the law unidentified."""
    names = PARAMS[L.kind]
    profile = profile or {}
    fit.widen = float(t975(dof) / 1.959964)
    est = np.array([fit.params[p] for p in names])
    q = np.quantile(draws, [0.025, 0.05, 0.95, 0.975], axis=0)
    for i, p in enumerate(names):
        lo = est[i] - fit.widen * max(est[i] - q[0, i], 0.0)
        hi = est[i] + fit.widen * max(q[3, i] - est[i], 0.0)
        if p in AMPLITUDES:
            fit.ci[p] = (float(lo), float(hi))
            continue
        if L.pinned and i == L.floor:
            continue                                           # held at 0 by the floor rule
        b_lo, b_hi = float(L.lo[i]), float(L.hi[i])
        at_lo = float(np.mean(L.at_bound(draws[:, i], i, -1)))
        at_hi = float(np.mean(L.at_bound(draws[:, i], i, +1))) if p in EXPONENTS[L.kind] else 0.0
        fit.bound_share[p] = at_lo + at_hi
        p_lo, p_hi, p_at_lo, p_at_hi = profile.get(p, (lo, hi, False, False))
        lo, hi = min(lo, p_lo), max(hi, p_hi)
        low_side = at_lo >= BOUND_SHARE or L.at_bound(lo, i, -1) or p_at_lo
        high_side = at_hi >= BOUND_SHARE or (p in EXPONENTS[L.kind] and (L.at_bound(hi, i, +1) or p_at_hi))
        if not (low_side or high_side):
            fit.ci[p] = (float(lo), float(hi))
            continue
        if p in EXPONENTS[L.kind]:
            fit.identified = False
        if low_side and not high_side:          # piles at 0: only an upper bound
            fit.onesided[p] = ("<=", float(min(max(est[i] + fit.widen * max(q[2, i] - est[i], 0.0), p_hi), b_hi)))
        elif high_side and not low_side:        # piles at the box edge: only a lower bound
            fit.onesided[p] = (">=", float(max(min(est[i] - fit.widen * max(est[i] - q[1, i], 0.0), p_lo), b_lo)))


def _floor_at_zero(L: Law, th) -> bool:
    return L.floor is not None and bool(L.at_bound(th[L.floor], L.floor, -1))


def _status(fit: Fit, alpha: float, trend_tested: bool) -> tuple:
    law = fit.shape if fit.floor == "zero" else f"err = {FORMULA[fit.law]}"
    if fit.lof.get("p", 1.0) < LOF_ALPHA:
        return "lack-of-fit", (f"{law} does not fit the shape: its residuals exceed the scatter between units "
                               f"at the same x (lack-of-fit F({fit.lof['df1']}, {fit.lof['df2']}) = "
                               f"{fit.lof['F']:.2f}, p = {fit.lof['p']:.3f} < {LOF_ALPHA:g})")
    if trend_tested and not fit.p_trend < alpha:
        return "no-trend", f"{law} fits no better than a constant (permutation p = {fit.p_trend:.3f} >= {alpha:g})"
    if not fit.identified:
        missing = [p for p in EXPONENTS[fit.law] if p not in fit.ci]
        bad = [f"{p} {fit.interval_text(p)}" if p in fit.onesided else f"{p} bounded by neither 0 nor {EXP_MAX:g}"
               for p in missing]
        share = ", ".join(f"{100 * fit.bound_share[p]:.0f}% of {p}'s draws at a bound" for p in missing
                          if p in fit.bound_share)
        trend = f"trend (p = {fit.p_trend:.3f}) but " if trend_tested else ""
        return "not-identified", (f"{trend}the exponent is not identified: {'; '.join(bad)}"
                                  + (f" ({share})" if share else ""))
    if "untested" in fit.lof:
        return "shape-untested", (f"a trend and an identified exponent, but the shape cannot be tested: "
                                  f"{fit.lof['untested']} (two or more units, e.g. seeds, per x test it)")
    return "ok", ""


def floor_step(fit: Fit, L: Law, ly, th, loss, th_ls, ssr) -> tuple:
    """The floor rule: test c > 0 (boundary-aware); where the fitted floor is 0, switch to the law with the
    floor held at 0 (exponents conditional on it) after taking the free law's profile intervals of the
    floor (its largest allowed value) and of the exponents (their range without the condition, kept in
    ``fit.free_range``, joined with the conditional interval later). Returns the law, fit and least-squares fit to go on with."""
    if L.floor is None:
        return L, th, loss, th_ls, ssr
    fit.floor = "free"
    Lz = Law(L.kind, L.X, L.ymax, pin_floor=True)
    thz, ssr_z = least_squares(Lz, ly, [np.where(np.arange(len(th)) == L.floor, 0.0, th)])
    fit.p_floor = floor_test(ssr, ssr_z, len(ly), L.n_free)
    if not _floor_at_zero(L, th):
        return L, th, loss, th_ls, ssr
    dof = len(ly) - L.effective_params(th_ls)
    fit.floor_upper = profile_interval(L, ly, th_ls, ssr, L.floor, dof)[1]
    fit.free_range = {p: profile_interval(L, ly, th_ls, ssr, PARAMS[L.kind].index(p), dof)[:2]
                      for p in EXPONENTS[L.kind]}
    fit.floor = "zero"
    thp, lossp, _ = point_fit(Lz, ly, fit.delta)
    return Lz, thp, lossp, thz, ssr_z


def _flag_bounds(fit: Fit, L: Law, th) -> None:
    """Parameters of the point fit at a bound (``at_bound``); an exponent there is not identified."""
    for i, nm in enumerate(PARAMS[L.kind]):
        if nm in AMPLITUDES or (L.pinned and i == L.floor):
            continue
        if L.at_bound(th[i], i, -1):
            fit.at_bound.append(f"{nm}={L.lo[i]:g} (lower bound)")
        elif L.at_bound(th[i], i, +1):
            fit.at_bound.append(f"{nm}={L.hi[i]:.4g} (upper bound)")
    fit.identified = not any(a.split("=")[0] in EXPONENTS[L.kind] for a in fit.at_bound)


def _free_range(fit: Fit) -> None:
    """Where the floor is 0: each exponent's range without that condition, the free law's profile interval
    joined with the conditional interval (or one-sided bound)."""
    for p, (lo, hi) in list(fit.free_range.items()):
        side = fit.onesided.get(p, ("", 0.0))
        ci = fit.ci.get(p) or ((side[1], EXP_MAX) if side[0] == ">=" else (0.0, side[1]) if side[0] else
                               (fit.params[p],) * 2)
        fit.free_range[p] = (float(min(lo, ci[0])), float(max(hi, ci[1])))


def fit_law(x, err, law: str = "saturating", n_boot: int = 200, seed: int = 0, delta: float | None = None,
            sd_log=None, n_perm: int = 199, alpha: float = ALPHA, trend_test: bool = True,
            min_x: int = MIN_X, min_decades: float = MIN_DECADES, checks: bool = True) -> Fit:
    """Fit ``law`` to every (x, err) unit. ``x`` is a vector, or an (n, 2) array of (N, D) for the joint
    law; ``sd_log`` optionally gives each unit's test-set standard error in log space (used for cells of
    one unit). ``checks=False`` skips the lack-of-fit and trend tests (a backtest's fit), ``trend_test=False``
    the trend test alone. Returns a Fit with a status; raises UserError only for unusable input."""
    if checks and trend_test and n_perm < round(1 / alpha):
        raise UserError(f"{n_perm} permutations cannot give p < {alpha:g} (the smallest p is 1/(permutations + 1)): "
                        f"use at least {round(1 / alpha)}")
    X, y, sd = prepare(x, err, law, sd_log)
    fit = Fit(law=law, status="refused", n_points=int(len(y)))
    cell, n_cells = cells_of(X, law)
    fit.n_x = n_cells
    if len(y) == 0:
        fit.reason = "no rows with a positive error and a positive x"
        return fit
    fit.x_range = (tuple((float(c.min()), float(c.max())) for c in _axes(X, law)) if law == "joint"
                   else (float(X.min()), float(X.max())))
    fit.reason = identified(X, law, min_x, min_decades)
    if fit.reason:
        return fit
    ly, rng = np.log(y), np.random.default_rng(seed)
    L = Law(law, X, float(y.max()))
    th, loss, fit.delta = point_fit(L, ly, delta)
    th_ls, ssr = least_squares(L, ly, [th])
    L, th, loss, th_ls, ssr = floor_step(fit, L, ly, th, loss, th_ls, ssr)
    fit.n_free = L.n_free
    fit.params = L.natural(th)
    fit.resid_log = ly - np.log(L.pred_jac(th)[0][0])
    fit.rmse_log = float(np.sqrt(np.mean(fit.resid_log ** 2)))
    _flag_bounds(fit, L, th)
    fit.noise_trend = noise_trend(X, ly, cell, n_cells)
    if checks:
        fit.lof = lack_of_fit(ly, cell, n_cells, ssr, L.effective_params(th_ls))
    tested = checks and trend_test
    if tested:
        fit.p_trend = trend_pvalue(L, ly, th, loss, fit.delta, n_perm, rng)
    if n_boot > 0:
        draws = bootstrap(L, ly, cell, n_cells, sd, th, fit.resid_log, fit.delta, n_boot, rng)
        if len(draws):
            fit.boot, fit.n_boot = draws, len(draws)
            dof = len(ly) - n_cells if len(ly) - n_cells >= 2 else len(ly) - L.n_free
            k = L.effective_params(th_ls)
            prof = {p: profile_interval(L, ly, th_ls, ssr, PARAMS[law].index(p), len(ly) - k) for p in EXPONENTS[law]}
            intervals(fit, L, draws, max(dof, 1), prof)
    _free_range(fit)
    fit.status, fit.reason = _status(fit, alpha, tested)
    return fit


def backtest(x, err, law: str = "saturating", k: int = 1, sd_log=None, n_boot: int = 200, seed: int = 0,
             delta=None) -> dict:
    """Fit without the ``k`` largest x values (joint law: the k largest N), predict each held-out x and
    compare. The held-out fit needs one more distinct x than the law has parameters (3 per axis for the
    joint law) over half a decade; it is not tested for trend or shape (the full fit was). Returns
    {'status': passed | failed | not run, 'reason', 'k', 'cells': [{'x', 'n', 'observed', 'predicted',
    'pi_lo', 'pi_hi', 'covered', 'runs_in_pi', 'rel_error'}], 'shape'}: passed when every held-out x's
    mean error (geometric, as fitted) lies in the 95% prediction interval for the mean of that many units."""
    X, y, sd = prepare(x, err, law, sd_log)
    out = {"status": "not run", "reason": "", "k": int(k), "cells": [], "shape": ""}
    axis = X[:, 0] if law == "joint" else X
    vals = np.unique(axis)
    if k < 1 or len(vals) <= k:
        out["reason"] = f"{len(vals)} distinct x value(s): nothing left to fit after holding out {k}"
        return out
    held = np.isin(axis, vals[-k:])
    need = 3 if law == "joint" else len(PARAMS[law]) + 1
    f = fit_law(X[~held], y[~held], law, n_boot=n_boot, seed=seed, delta=delta, sd_log=sd[~held], min_x=need,
                min_decades=0.5, checks=False)
    out["shape"] = f.shape
    if f.status == "refused" or f.boot is None:
        out["reason"] = f"the fit without the largest x is refused: {f.reason or 'no bootstrap'}"
        return out
    cell, n_cells = cells_of(X[held], law)
    for c in range(n_cells):
        m = np.flatnonzero(cell == c)
        xv = list(X[held][m[0]]) if law == "joint" else float(X[held][m[0]])
        obs = float(np.exp(np.mean(np.log(y[held][m]))))
        pr, one = f.prediction(xv, m=len(m)), f.prediction(xv, m=1)
        out["cells"].append({"x": xv, "n": int(len(m)), "observed": obs, "predicted": pr["err"],
                             "pi_lo": pr["pi_lo"], "pi_hi": pr["pi_hi"], "covered": _inside(obs, pr),
                             "runs_in_pi": int(sum(_inside(v, one) for v in y[held][m])),
                             "rel_error": (pr["err"] - obs) / obs})
    out["status"] = "passed" if all(c["covered"] for c in out["cells"]) else "failed"
    return out


def _inside(v: float, pred: dict) -> bool:
    """v within a prediction interval, up to float rounding (an exact law's interval has zero width)."""
    return bool(pred["pi_lo"] * (1 - 1e-9) <= v <= pred["pi_hi"] * (1 + 1e-9))


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
