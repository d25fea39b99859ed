"""Scaling-law fits per group of result rows, and their words: one independent unit per point, a law
per group (``fit_group`` / ``fit_table``), the fits' CSV/JSON files and figures, and the sentences the
``fit`` command and the report print for them. The rules are ``covidnetx fit --help``'s."""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from covidnetx.scaling import cells as T
from covidnetx.scaling.fit import PARAMS, backtest, fit_law, pareto_frontier
from covidnetx.scaling.laws import EXPONENTS
from covidnetx.scaling.plots import plt, save
from covidnetx.scaling.stats import ALPHA
from covidnetx.utils import UserError, atomic_write_bytes, atomic_write_json


def group_label(rec: dict, by: list) -> str:
    return ", ".join(f"{k}={rec.get(k)}" for k in by) or "all rows"


def _points(rows: list, axes: list, metric: str, is_error: bool, notes: list) -> list:
    """(x tuple, error, its log-space sd, row) for every row with an x and the metric."""
    out, floored, unusable = [], 0, 0
    for r in rows:
        xv = [T.x_value(r, a) for a in axes]
        err, sd = T.error_of(r, metric, is_error)
        if err is None or any(v is None or not math.isfinite(v) for v in xv):
            unusable += r.get(metric) is not None or any(r.get(a) is not None for a in axes)
            continue
        if err <= 0 and not is_error and isinstance(r.get("n"), int) and r["n"] > 0:
            err, floored = 0.5 / r["n"], floored + 1      # no error on n images: half an image's worth
        out.append((tuple(xv), err, sd, r))
    if floored:
        notes.append(f"{floored} run(s) with no error counted as 0.5/n (log scale)")
    if unusable:
        notes.append(f"{unusable} row(s) without a number for x or the metric left out")
    return out


def _units(points: list, unit: Optional[str]) -> list:
    """Points averaged within their independent unit: (x tuple, mean error, mean sd, rows)."""
    groups = defaultdict(list)
    for p in points:
        groups[(p[0], T.unit_key(p[3], unit))].append(p)
    out = []
    for ps in groups.values():
        sds = [p[2] for p in ps if math.isfinite(p[2])]
        out.append((ps[0][0], float(np.mean([p[1] for p in ps])), float(np.mean(sds)) if sds else float("nan"),
                    [p[3] for p in ps]))
    return out


def _xy(items: list, law: str) -> tuple:
    X = np.array([it[0] if law == "joint" else it[0][0] for it in items], np.float64)
    return X, np.array([it[1] for it in items], np.float64), np.array([it[2] for it in items], np.float64)


def _pts(items: list, law: str) -> list:
    return [[list(it[0]) if law == "joint" else it[0][0], it[1]] for it in items]


def fit_group(rs: list, axes: list, metric: str, law: str, *, is_error: bool = False, n_boot: int = 200,
              n_perm: int = 199, alpha: float = ALPHA, delta=None, seed: int = 0, predict=(),
              unit: Optional[str] = None, holdout: int = 0) -> dict:
    """One group's record: status, reason, parameters with intervals, tests, the points (unit means),
    chance points, predictions, the backtest, and the Fit under '_fit' for plotting."""
    notes = []
    units = _units(_points(rs, axes, metric, is_error, notes), unit)
    cells = defaultdict(list)
    for u in units:
        cells[u[0]].append(u)
    chance = [ck for ck, us in cells.items() if T.cell_flags([r for u in us for r in u[3]])["chance"]]
    if chance:
        notes.append(f"{len(chance)} cell(s) at chance left out")
    kept = [u for ck, us in cells.items() if ck not in chance for u in us]
    rec = {"law": law, "n_points": 0, "n_x": 0, "n_rows": sum(len(u[3]) for u in kept),
           "chance_points": _pts([u for ck in chance for u in cells[ck]], law)}
    if axes == ["compute"] and kept:
        kept, why = _frontier(kept, notes)
        if why:
            rec.update(status="refused", reason=why, points=_pts(units, law))
            return rec
    if not kept:
        rec.update(status="refused", points=[], reason=(f"all {len(chance)} cell(s) at chance" if chance
                                                         else "no usable rows"))
        return rec
    X, y, sd = _xy(kept, law)
    bad = int(np.sum((y <= 0) | (np.any(X <= 0, axis=1) if X.ndim == 2 else X <= 0)))
    if bad:
        notes.append(f"{bad} unit(s) with an error or x of 0 or below left out (log scale)")
    f = fit_law(X, y, law, n_boot=n_boot, seed=seed, delta=delta, sd_log=sd, n_perm=n_perm, alpha=alpha)
    rec.update(f.record())
    rec["reason"] = "; ".join(([f.reason] if f.reason else []) + notes)
    if "untested" in f.lof:
        rec["lof_untested"] = f.lof["untested"]
    if f.free_range:
        rec["free_range"] = {p: list(v) for p, v in f.free_range.items()}
    rec["points"] = _pts(kept, law)
    if predict and f.status == "ok":
        rec["predictions"] = [f.prediction(parse_x(p, law)) for p in predict]
    if holdout:
        rec["backtest"] = (backtest(X, y, law, holdout, sd_log=sd, n_boot=n_boot, seed=seed, delta=delta)
                           if f.status != "refused" else {"status": "not run", "reason": "the fit is refused",
                                                          "k": holdout, "cells": []})
    rec["_fit"] = f
    return rec


def fit_table(rows: list, x: str, metric: str, by: list, *, law: str = "saturating", unit: str = "auto",
              **kw) -> list:
    """Fit every group of ``rows`` (``fit_group`` per group); returns one record per group."""
    axes = [a.strip() for a in x.split(",") if a.strip()]
    if not 1 <= len(axes) <= 2:
        raise UserError(f"--x {x!r}: give one column, or two (N,D) for the joint law")
    law = "joint" if len(axes) == 2 else law
    for k in by + ([unit] if unit not in ("auto", "") else []):
        missing = [i for i, r in enumerate(rows) if k not in r]
        if missing:
            raise UserError(f"{'grouping' if k in by else 'unit'} column {k!r} is missing from row {missing[0] + 1}")
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in by)].append(r)
    out = []
    for key, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        rec = {**dict(zip(by, key)), "x": x, "metric": metric}
        rec.update(fit_group(rs, axes, metric, law, unit=None if unit in ("auto", "") else unit, **kw))
        out.append(rec)
    return out


def _frontier(items: list, notes: list) -> tuple:
    """Compute axis: refuse where compute is a relabelled params axis; else keep the units of the cells
    on the measured lower envelope."""
    by_params = defaultdict(set)
    for it in items:
        by_params[it[3][0].get("params")].add(it[0][0])
    if all(len(v) == 1 for v in by_params.values()):
        return [], ("compute does not vary apart from params here (one compute value per model size: "
                    "pre-training steps and data fixed); fit --x params instead")
    cells = defaultdict(list)
    for it in items:
        cells[(it[0][0], it[3][0].get("params"))].append(it)
    keys = list(cells)
    comp = [k[0] for k in keys]
    mean_err = [float(np.mean([it[1] for it in cells[k]])) for k in keys]
    front = pareto_frontier(comp, mean_err)
    notes.append(f"compute frontier: {len(front)} of {len(keys)} cells")
    return [it for i in front for it in cells[keys[i]]], ""


def write_fits(fits: list, out: Path, stem: str) -> None:
    """OUT/STEM.json (a list, one object per group) and OUT/STEM.csv (one row per group, no points; the
    backtest as its status and largest relative error)."""
    clean = [{k: v for k, v in f.items() if not k.startswith("_")} for f in fits]
    atomic_write_json(out / f"{stem}.json", _finite(clean))
    flat = []
    for f in clean:
        row = {k: v for k, v in f.items() if k not in ("points", "chance_points", "predictions", "backtest",
                                                         "free_range")}
        for p, (lo, hi) in (f.get("free_range") or {}).items():
            row[f"{p}_free_lo"], row[f"{p}_free_hi"] = lo, hi
        if f.get("backtest"):
            bt = f["backtest"]
            row["backtest"] = bt["status"]
            row["backtest_max_rel_error"] = max((abs(c["rel_error"]) for c in bt["cells"]), default=float("nan"))
        flat.append(row)
    cols = []
    for f in flat:
        cols += [k for k in f if k not in cols]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for f in flat:
        w.writerow(["" if f.get(c) is None or (isinstance(f.get(c), float) and not math.isfinite(f[c])) else f[c]
                    for c in cols])
    atomic_write_bytes(out / f"{stem}.csv", buf.getvalue().encode())


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, np.generic):
        return _finite(v.item())
    return v


def _num(v, digits=4) -> str:
    return f"{v:.{digits}g}" if isinstance(v, (int, float)) and math.isfinite(v) else "—"


def param_text(f: dict, p: str, digits: int = 4) -> str:
    """A parameter with its interval from a fit record: 'b=0.3 [0.25, 0.36]', 'b=4.2 (>= 0.8, one-sided
    95%)', or 'b=0.3' where there is none."""
    lo, hi, side = f.get(f"{p}_ci_lo"), f.get(f"{p}_ci_hi"), f.get(f"{p}_bound", "")
    txt = f"{p}={_num(f.get(p), digits)}"
    if side == "lower":
        return txt + f" (>= {_num(lo, digits)}, one-sided 95%)"
    if side == "upper":
        return txt + f" (<= {_num(hi, digits)}, one-sided 95%)"
    if isinstance(lo, (int, float)) and math.isfinite(lo) and isinstance(hi, (int, float)) and math.isfinite(hi):
        return txt + f" [{_num(lo, digits)}, {_num(hi, digits)}]"
    if p in EXPONENTS.get(f.get("law"), ()) and f.get("n_boot"):
        return txt + " (not bounded away from 0 or 5)"
    return txt


def exponent_text(f: dict, digits: int = 3) -> str:
    """The exponents of an ok or not-identified record with their intervals and the c = 0 label."""
    parts = [param_text(f, p, digits).replace("=", " = ", 1) for p in EXPONENTS[f["law"]]]
    txt = ", ".join(parts)
    if f.get("floor") == "zero":
        free = "; ".join(f"{p} {_num(lo, digits)}–{_num(hi, digits)}" for p, (lo, hi) in (f.get("free_range") or {}).items())
        txt += (f" — conditional on {f['conditional']} ({'c' if f['law'] != 'joint' else 'E'} <= "
                f"{_num(f.get('floor_upper'), 3)}, test of {'c' if f['law'] != 'joint' else 'E'} > 0 p = "
                f"{_num(f.get('p_floor'), 2)}" + (f"; over the floors allowed: {free}" if free else "") + ")")
    return txt


def backtest_text(bt: dict) -> str:
    """One line for a backtest record."""
    if not bt:
        return ""
    if bt["status"] == "not run":
        return f"backtest not run: {bt['reason']}"
    cells = "; ".join(f"x={_num(c['x'] if not isinstance(c['x'], list) else c['x'][0], 3)}: predicted "
                      f"{_num(c['predicted'], 3)} [{_num(c['pi_lo'], 3)}, {_num(c['pi_hi'], 3)}], measured "
                      f"{_num(c['observed'], 3)} (n={c['n']}, {c['runs_in_pi']}/{c['n']} in the one-unit interval)"
                      for c in bt["cells"])
    return f"backtest {bt['status']} (largest {bt['k']} x held out): {cells}"


def describe(f: dict) -> str:
    """One line for a fit record: the status, the law with its parameters and tests, or why not."""
    n = f"{f.get('n_points', 0)} units at {f.get('n_x', 0)} x values"
    if f.get("n_rows", 0) > f.get("n_points", 0):
        n += f", {f['n_rows']} runs"
    if f["status"] in ("refused",):
        return f"refused: {f['reason']} ({n})"
    tests = [f"trend p={_num(f.get('p_trend'), 3)}"]
    tests.append(f"lack-of-fit p={_num(f.get('p_lof'), 3)}" if f.get("lof_df") else
                 f"lack-of-fit untested: {f.get('lof_untested', '')}")
    if f["status"] != "ok":
        return f"{f['status']}: {f['reason']} ({n}; {'; '.join(tests)})"
    parts = [param_text(f, p) for p in PARAMS[f["law"]] if not (f.get("floor") == "zero" and p in ("c", "E"))]
    shape = f.get("shape", f["law"])
    extra = f"; at bound: {f['at_bound']}" if f.get("at_bound") else ""
    note = f"; {f['reason']}" if f.get("reason") else ""
    cond = ""
    if f.get("floor") == "zero":
        cond = (f"; exponents conditional on {f['conditional']} ({'c' if f['law'] != 'joint' else 'E'} <= "
                f"{_num(f.get('floor_upper'), 3)} one-sided 95%, test of > 0: p={_num(f.get('p_floor'), 2)})")
    return f"ok: {shape} " + " ".join(parts) + f" ({n}; {'; '.join(tests)}{cond}{extra}{note})"


STATUS_LABEL = {"ok": "", "no-trend": " (no trend)", "refused": " (refused)", "lack-of-fit": " (lack of fit)",
                "not-identified": " (exponent not identified)", "shape-untested": " (shape untested)"}


def plot_fits(fits: list, out: Path, stem: str, title: str, label_keys=None) -> list:
    """Points of every group (hollow: cells at chance, left out); a curve with its 95% band only for
    groups whose status is ok."""
    joint = bool(fits) and fits[0].get("law") == "joint"
    fig, ax = plt().subplots(figsize=(6.5, 4.2))
    for i, f in enumerate(fits):
        color = f"C{i % 10}"
        label_keys_ = label_keys or [k for k in f if k not in _NOT_LABEL and not k.startswith("_")
                                     and k not in PARAMS.get(f.get("law"), ()) and not k.startswith(tuple(
                                         p + "_" for p in PARAMS.get(f.get("law"), ())))]
        label = " / ".join(str(f.get(k)) for k in label_keys_) or "all"
        label += STATUS_LABEL.get(f.get("status"), "")
        pts = f.get("points") or []
        xs = np.array([p[0][0] if joint else p[0] for p in pts], np.float64)
        ys = np.array([p[1] for p in pts], np.float64)
        if len(xs):
            ax.plot(xs, ys, "o", ms=4, color=color, alpha=0.8, label=label)
        cp = f.get("chance_points") or []
        if cp:
            ax.plot([p[0][0] if joint else p[0] for p in cp], [p[1] for p in cp], "o", ms=5, mfc="none",
                    color=color, alpha=0.8)
        fit = f.get("_fit")
        if f.get("status") == "ok" and fit is not None and len(xs):
            if joint:
                for d in sorted({p[0][1] for p in pts}):
                    xx = np.logspace(np.log10(xs.min()), np.log10(xs.max()), 60)
                    XX = np.stack([xx, np.full_like(xx, d)], 1)
                    ax.plot(xx, fit.predict(XX), "-", color=color, alpha=0.6, lw=1)
            else:
                xx = np.logspace(np.log10(xs.min()), np.log10(xs.max()), 60)
                ax.plot(xx, fit.predict(xx), "-", color=color, lw=1.5)
                lo, hi = fit.band(xx)
                if np.all(np.isfinite(lo)):
                    ax.fill_between(xx, lo, hi, color=color, alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter  # lazy: heavy, matplotlib, only when plotting
    ax.xaxis.set_minor_formatter(NullFormatter())          # decade labels only: minor labels overlap
    xname = fits[0]["x"].split(",")[0] if fits else "x"
    ax.set_xlabel(xname + (" (curves per D)" if joint else ""))
    metric = fits[0]["metric"] if fits else "metric"
    ax.set_ylabel(f"error (1 - {metric}), one point per unit")
    ax.set_title(title + "\nhollow: cells at chance (left out); curves and 95% bands only where status ok",
                 fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="best")
    return save(fig, out, stem)


_NOT_LABEL = {"x", "metric", "n_points", "n_x", "n_rows", "points", "chance_points", "status", "reason", "law",
              "shape", "rmse_log", "p_trend", "p_lof", "lof_F", "lof_df", "lof_untested", "floor", "p_floor",
              "floor_upper", "conditional", "identified", "free_range", "at_bound", "n_boot", "huber_delta",
              "predictions", "backtest"}


def parse_x(text, law):
    try:
        vals = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise UserError(f"--predict {text!r}: not a number") from None
    if len(vals) != (2 if law == "joint" else 1):
        raise UserError(f"--predict {text!r}: give {'N,D' if law == 'joint' else 'one value'}")
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise UserError(f"--predict {text!r}: x must be a positive number")
    return vals if law == "joint" else vals[0]
