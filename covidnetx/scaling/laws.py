"""The laws in log space and their robust fitting (the numerics; covidnetx.scaling.fit holds the rules).

Laws, for an error ``err > 0`` (1 - accuracy, or a loss) as a function of ``x > 0``:

    saturating  err = a * x^(-b) + c                    c is the irreducible error (the floor)
    power       err = a * x^(-b)
    joint       err = E + A * N^(-alpha) + B * D^(-beta)  model size N and data size D both varying

The loss is the Huber loss of the log-space residuals log(pred) - log(err) (Hoffmann et al. 2022,
approach 3), minimised by a projected Levenberg-Marquardt from a grid of starts, many data vectors at
once. Bounds: exponents in [0, EXP_MAX]; floors in [0, largest error] (or held at 0: ``pin_floor``).
"""
from __future__ import annotations

import copy

import numpy as np

EXP_MAX = 5.0             # upper bound of the exponents
LAWS = ("saturating", "power", "joint")
PARAMS = {"saturating": ("a", "b", "c"), "power": ("a", "b"), "joint": ("E", "A", "alpha", "B", "beta")}
FORMULA = {"saturating": "a*x^(-b) + c", "power": "a*x^(-b)", "joint": "E + A*N^(-alpha) + B*D^(-beta)"}
EXPONENTS = {"saturating": ("b",), "power": ("b",), "joint": ("alpha", "beta")}
FLOOR = {"saturating": 2, "joint": 0}                  # index of the floor parameter (c, E)
AMPLITUDES = ("a", "A", "B")                           # log-parametrised: no bound that matters


class Law:
    """One law on fixed inputs. Internal parameters: log-amplitudes (scaled by a reference x so that
    they are well conditioned), exponents, and the floor in natural units."""

    def __init__(self, kind: str, X: np.ndarray, ymax: float, pin_floor: bool = False):
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
        self.floor = FLOOR.get(kind)                       # index of the floor c / E, None for the power law
        self.pinned = bool(pin_floor and self.floor is not None)
        if self.pinned:                                    # the floor held at 0: a pure power law (per axis)
            self.hi = self.hi.copy()
            self.hi[self.floor] = 0.0
        self.n_free = len(self.lo) - int(self.pinned)

    def held(self, index: int, value: float) -> "Law":
        """A copy of this law with parameter ``index`` held at ``value`` (its bounds closed on it)."""
        out = copy.copy(self)
        out.lo, out.hi = self.lo.copy(), self.hi.copy()
        out.lo[index] = out.hi[index] = value
        return out

    def at_bound(self, value: float, i: int, side: int) -> bool:
        """Is ``value`` of parameter ``i`` at its lower (side < 0) or upper bound, within 1e-6 of the
        bounds' span (relative: an error scale of 1e-5 has floors of that size)."""
        tol = 1e-6 * (self.hi[i] - self.lo[i])
        return value <= self.lo[i] + tol if side < 0 else value >= self.hi[i] - tol

    def effective_params(self, th) -> int:
        """The parameters a fit at ``th`` actually uses: an exponent at a bound does not count, an exponent
        at 0 turns its amplitude into a constant, and all constant terms (the floor, amplitudes times x^0)
        count as one. A decreasing law fitted to flat data is a constant: 1 parameter, not 3."""
        def at(i, side):
            return self.at_bound(th[i], i, side)
        pairs = [(0, 1)] if self.kind in ("saturating", "power") else [(1, 2), (3, 4)]
        k, const = 0, False
        for _, e in pairs:
            if at(e, -1):
                const = True
            else:
                k += 1 + (not at(e, +1))
        if self.floor is not None and not self.pinned and not at(self.floor, -1):
            const = True
        return k + int(const)

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
        floors = (0.0,) if self.pinned else (0.0, 0.5, 0.9) if full else (0.0, 0.7)
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
        margin = np.where(self.hi > self.lo, 1e-9, 0.0)          # a pinned floor starts at its value
        return [np.clip(np.array(s, np.float64), self.lo + margin, self.hi - margin) for s in out]


def solve(law: Law, ly: np.ndarray, delta: float, starts: list):
    """Best of the robust fits of one data vector from ``starts``: (theta, loss)."""
    TH, LOSS = lm_batch(law, np.repeat(ly[None, :], len(starts), 0), np.array(starts, np.float64), delta)
    i = int(np.nanargmin(np.where(np.isfinite(LOSS), LOSS, np.nan))) if np.isfinite(LOSS).any() else -1
    if i < 0:
        raise FloatingPointError("no start converged")
    return TH[i], float(LOSS[i])


def _huber_rows(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.sum(np.where(a <= delta, 0.5 * a * a, delta * a - 0.5 * delta * delta), axis=-1)


def lm_batch(law: Law, LY: np.ndarray, TH0: np.ndarray, delta: float, max_iter: int = 400):
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


def constant_rows(LY: np.ndarray, delta: float) -> np.ndarray:
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
