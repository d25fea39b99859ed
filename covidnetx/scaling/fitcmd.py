"""`covidnetx fit TABLE --x COL --metric COL [--by COLS]`: scaling laws, claimed only where the data
support their trend, their shape and their exponents, and backtested.

TABLE is a covidnetx results JSONL or any CSV with a header; rows need only the columns named. The
error is 1 - METRIC (accuracy-like metrics), or METRIC itself with --error. --x names a column; for
covidnetx result rows it may also be a derived axis: params, data (pre-training set size), compute
(pre-training FLOPs) or epochs. Two columns (--x params,data) fit the joint law
err = E + A*N^(-alpha) + B*D^(-beta); one column fits err = a*x^(-b) + c.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from covidnetx.scaling import fit as F
from covidnetx.scaling import table as T
from covidnetx.scaling.fit import PARAMS, backtest, fit_law, pareto_frontier
from covidnetx.scaling.laws import EXPONENTS
from covidnetx.scaling.stats import ALPHA
from covidnetx.utils import UserError, atomic_write_bytes, atomic_write_json

AUTO_BY = ("task", "source", "regime", "shots")

RULES = f"""\
Units. Every point is one independent unit: runs that start from the same pre-trained checkpoint
  (few-shot draws on it) are averaged first (--unit auto; --unit COL names another unit column, e.g.
  a seed; rows of other tables are each a unit). n counts units, never runs.
Statuses per group (the first that applies), in the fits table, the plot and the JSON:
  refused         fewer than {F.MIN_X} distinct x values or x spanning under {F.MIN_DECADES:g} decade (per axis for
                  the joint law), or too few units left after cells at chance were set aside
  lack-of-fit     the law's shape is rejected: where x values have replicate units, the least-squares
                  residual sum of squares (log errors) is split into pure error (between units at the
                  same x) and lack of fit; F = (SS_lof/(m-k)) / (SS_pe/(n-m)), m cells, k the
                  parameters the fit uses (an exponent at 0 makes the law a constant), n units;
                  p < {F.LOF_ALPHA:g}. Identical units at each x: any misfit is lack of fit
  no-trend        the law fits no better than a constant: permutation p-value of the drop in Huber loss
                  (errors permuted across x, --permutations) >= --alpha ({ALPHA:g})
  not-identified  a trend, but an exponent is not identified: {100 * F.BOUND_SHARE:g}% or more of its bootstrap
                  draws sit at a bound (0 or 5), or its 95% interval reaches one; a one-sided 95% bound is
                  given instead (b >= lo where the draws pile at 5, b <= hi where they pile at 0)
  shape-untested  a trend and an identified exponent, but no x value has two or more units, so the
                  lack-of-fit test cannot run: the shape is not known to fit (run seeds)
  ok              none of the above
The floor. Where the fitted floor c (E) is 0, the law is reported as a pure power law (c = 0) and its
  exponents are conditional on c = 0. The test of c > 0 is the least-squares F test of the free floor
  against c = 0 with the boundary-aware p-value (half the F(1, n-k) tail); the largest floor the data
  allow is a one-sided 95% profile bound, and the exponents' range over those floors is given too.
Intervals. 95% intervals come from a bootstrap that resamples units within each x (a cell of one
  unit draws from its stored test-set interval); percentile half-widths are widened by t(dof)/z,
  since the unit variance is estimated from few units. Coverage is tested on planted laws.
Backtest (--holdout-largest K). The law is fitted again without the K largest x values (the joint
  law: the K largest N), needing one more distinct x than it has parameters over half a decade,
  and predicts the mean error of the held-out units at each held-out x with a 95% prediction
  interval for the mean of that many units (curve interval and unit scatter, which may grow with x).
  passed: every held-out mean inside its interval; failed otherwise; not run where the smaller fit is
  refused.
Cells whose balanced accuracy cannot be told from chance are left out of the fit (counted in reason).
The loss is Huber on log residuals (threshold 1.345 x their robust scale unless --huber-delta); the
tests use least squares on the same log errors.
--x compute is offered only where compute varies independently of params (pre-training steps or epochs
vary); the fit is then on the measured compute frontier: the cells that no cell with less compute beats.
"""


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx fit")
    p.description = __doc__.split("\n\n", 1)[0]
    p.epilog = __doc__.split("\n\n", 1)[1] + "\n" + RULES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("results", help="results table: covidnetx JSONL or a CSV")
    p.add_argument("--x", default="params", help="x column (params | data | compute | epochs | any column); "
                                                 "two columns N,D fit the joint law")
    p.add_argument("--metric", default="accuracy", help="metric column; error = 1 - metric unless --error")
    p.add_argument("--error", action="store_true", help="the metric column already is an error or loss")
    p.add_argument("--by", default="auto", help="comma-separated grouping columns ('' = one group; auto = "
                                                "those of task,source,regime,shots the table has)")
    p.add_argument("--unit", default="auto", help="column naming the independent unit (auto: the pre-trained "
                                                  "checkpoint for covidnetx rows, else each row)")
    p.add_argument("--task", choices=("transfer", "pretrain", "all"), default="all",
                   help="covidnetx results only: which rows")
    p.add_argument("--law", choices=("saturating", "power"), default="saturating",
                   help="one-axis law: saturating a*x^-b + c (default) or power a*x^-b")
    p.add_argument("--predict", action="append", default=[], metavar="X",
                   help="extrapolate to X (N,D for the joint law) with a prediction interval; repeatable")
    p.add_argument("--holdout-largest", type=int, default=0, metavar="K",
                   help="backtest: fit without the K largest x values and predict them (0: no backtest)")
    p.add_argument("--out", default=None, help="output folder (default: beside the table, fits/)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (CIs)")
    p.add_argument("--permutations", type=int, default=199, help="permutations for the trend test")
    p.add_argument("--alpha", type=float, default=ALPHA, help="trend test level")
    p.add_argument("--huber-delta", type=float, default=None,
                   help="Huber threshold on log residuals (default: 1.345 x their robust scale)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="exit 2 unless every group's status is ok")
    p.add_argument("--drop-invalid", action="store_true", help="leave out (and count) rows whose metric is not "
                   "finite or outside its range (accuracy-like [0, 1], --error >= 0); default: an error naming them")
    return p


def _group_label(rec: dict, by: list) -> str:
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
        rec["predictions"] = [f.prediction(_parse_x(p, law)) for p in predict]
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


def _parse_x(text, law):
    try:
        vals = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise UserError(f"--predict {text!r}: not a number") from None
    if len(vals) != (2 if law == "joint" else 1):
        raise UserError(f"--predict {text!r}: give {'N,D' if law == 'joint' else 'one value'}")
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise UserError(f"--predict {text!r}: x must be a positive number")
    return vals if law == "joint" else vals[0]


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
    import csv
    import io
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
    from covidnetx.scaling.plots import plt, save
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
    from matplotlib.ticker import NullFormatter
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


def resolve_by(by: str, rows: list) -> list:
    if by == "auto":
        return [k for k in AUTO_BY if rows and all(k in r for r in rows)]
    return [k.strip() for k in by.split(",") if k.strip()]


def run(args) -> int:
    rows, dropped = T.load_checked(args.results, args.metric, args.error, args.drop_invalid,
                                   x=tuple(c.strip() for c in args.x.split(",")))
    rows = T.final_rows(rows)
    if args.task != "all" and rows and "task" in rows[0]:
        rows = [r for r in rows if r.get("task") == args.task]
    if not rows:
        raise UserError(f"{args.results}: no rows")
    for col in [a.strip() for a in args.x.split(",")]:
        if col not in T.DERIVED and not any(col in r for r in rows):
            raise UserError(f"{args.results}: no column {col!r} (--x)")
    if not any(args.metric in r for r in rows):
        raise UserError(f"{args.results}: no column {args.metric!r} (--metric)")
    if args.holdout_largest < 0:
        raise UserError(f"--holdout-largest {args.holdout_largest}: give K >= 1 (or 0 for no backtest)")
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap {args.bootstrap}: give a count >= 0")
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha {args.alpha}: a test level is in (0, 1)")
    for text in args.predict:            # checked up front, whatever the fits' statuses turn out to be
        _parse_x(text, "joint" if "," in args.x else args.law)
    by = resolve_by(args.by, rows)
    fits = fit_table(rows, args.x, args.metric, by, law=args.law, unit=args.unit, is_error=args.error,
                     n_boot=args.bootstrap, n_perm=args.permutations, alpha=args.alpha, delta=args.huber_delta,
                     seed=args.seed, predict=args.predict, holdout=args.holdout_largest)
    stem = args.x.replace(",", "+")
    out = Path(args.out) if args.out else Path(args.results).parent / "fits"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    write_fits(fits, out, f"fits-{stem}")
    plot_fits(fits, out, f"error-vs-{stem}", f"error vs {stem}", label_keys=by)
    for f in fits:
        print(f"{_group_label(f, by)}: {describe(f)}")
        for p in f.get("predictions", []):
            tag = " (extrapolation)" if p["extrapolation"] else ""
            print(f"    predicted err at {args.x}={p['x']}{tag}: {p['err']:.4g}, curve 95% CI "
                  f"[{p['ci_lo']:.4g}, {p['ci_hi']:.4g}], prediction interval for one unit [{p['pi_lo']:.4g}, "
                  f"{p['pi_hi']:.4g}]")
        if f.get("backtest"):
            print(f"    {backtest_text(f['backtest'])}")
    counts = {s: sum(f["status"] == s for f in fits) for s in F.STATUSES}
    line = f"{len(fits)} group(s): " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    if args.holdout_largest:
        ok = [f["backtest"]["status"] for f in fits if f["status"] == "ok"]
        line += (f"; {ok.count('passed')} of {len(ok)} ok law(s) passed their backtest"
                 + (f" ({ok.count('not run')} not run)" if "not run" in ok else ""))
    if dropped:
        line += f"; {dropped} row(s) with an invalid {args.metric} or {args.x} left out (--drop-invalid)"
    print(line + f"; wrote {out}/fits-{stem}.json, .csv and error-vs-{stem}.png/.pdf")
    return 2 if (args.strict and counts["ok"] < len(fits)) else 0


def main(argv=None) -> int:
    from covidnetx.utils import run_main
    return run_main("covidnetx fit", build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
