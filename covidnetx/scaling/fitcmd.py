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
from pathlib import Path
from typing import Optional

from covidnetx.scaling import cells as T
from covidnetx.scaling import fit as F
from covidnetx.scaling.groups import backtest_text, describe, fit_table, group_label, parse_x, plot_fits, write_fits
from covidnetx.scaling.stats import ALPHA
from covidnetx.utils import UserError

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
        parse_x(text, "joint" if "," in args.x else args.law)
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
        print(f"{group_label(f, by)}: {describe(f)}")
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
