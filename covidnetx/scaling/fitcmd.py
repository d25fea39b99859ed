"""`covidnetx fit TABLE --x COL --metric COL [--by COLS]`: scaling laws that refuse what the data
cannot support.

TABLE is a covidnetx results JSONL or any CSV with a header; rows need only the columns named. The
error is 1 - METRIC (accuracy-like metrics), or METRIC itself with --error. --x names a column; for
covidnetx result rows it may also be a derived axis: params, data (pre-training set size), compute
(pre-training FLOPs) or epochs. Two columns (--x params,data) fit the joint law
err = E + A*N^(-alpha) + B*D^(-beta).

Every run is a point (all seeds). Statuses per group, in the fits table and the plot:
  ok        the law fits better than a constant: permutation p-value of the loss drop < --alpha
  no-trend  it does not (the rule: p >= --alpha, 0.05 by default; the p-value comes from refitting both
            models to the errors permuted across x, which is exact when err does not depend on x)
  refused   fewer than 5 distinct x values, or x spanning less than one decade (per axis for the joint
            law), or too few rows left after cells at chance were set aside; never a switch of law
A parameter that ends at one of its bounds is flagged (at_bound). 95% intervals come from a bootstrap
that resamples runs within each x (cells of one run draw from their stored test-set interval); its
percentile half-widths are widened by t(dof)/z, since the seed variance is estimated from few runs.
The loss is Huber on log residuals (threshold 1.345 x their robust scale unless --huber-delta).
Cells whose balanced accuracy cannot be told from chance are left out of the fit (counted in reason).

--x compute is offered only where compute varies independently of params (pre-training steps or epochs
vary); the fit is then on the measured compute frontier: the cells that no cell with less compute beats.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from covidnetx.scaling import table as T
from covidnetx.scaling.fit import PARAMS, fit_law, pareto_frontier
from covidnetx.utils import UserError, atomic_write_bytes, atomic_write_json

AUTO_BY = ("task", "source", "regime", "shots")


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx fit")
    p.description = __doc__.split("\n\n", 1)[0]
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("results", help="results table: covidnetx JSONL or a CSV")
    p.add_argument("--x", default="params", help="x column (params | data | compute | epochs | any column); "
                                                 "two columns N,D fit the joint law")
    p.add_argument("--metric", default="accuracy", help="metric column; error = 1 - metric unless --error")
    p.add_argument("--error", action="store_true", help="the metric column already is an error or loss")
    p.add_argument("--by", default="auto", help="comma-separated grouping columns ('' = one group; auto = "
                                                "those of task,source,regime,shots the table has)")
    p.add_argument("--task", choices=("transfer", "pretrain", "all"), default="all",
                   help="covidnetx results only: which rows")
    p.add_argument("--law", choices=("saturating", "power"), default="saturating",
                   help="one-axis law: saturating a*x^-b + c (default) or power a*x^-b")
    p.add_argument("--predict", action="append", default=[], metavar="X",
                   help="extrapolate to X (N,D for the joint law) with a prediction interval; repeatable")
    p.add_argument("--out", default=None, help="output folder (default: beside the table, fits/)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (CIs)")
    p.add_argument("--permutations", type=int, default=199, help="permutations for the trend test")
    p.add_argument("--alpha", type=float, default=0.05, help="trend test level")
    p.add_argument("--huber-delta", type=float, default=None,
                   help="Huber threshold on log residuals (default: 1.345 x their robust scale)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="exit 2 unless every group's status is ok")
    return p


def _group_label(rec: dict, by: list) -> str:
    return ", ".join(f"{k}={rec.get(k)}" for k in by) or "all rows"


def fit_table(rows: list, x: str, metric: str, by: list, *, law: str = "saturating", is_error: bool = False,
              n_boot: int = 200, n_perm: int = 199, alpha: float = 0.05, delta=None, seed: int = 0,
              predict=(), hold=()) -> list:
    """Fit every group of ``rows``; returns one record per group (status, reason, parameters with CIs,
    the points, chance cells, predictions, and the Fit object under '_fit' for plotting)."""
    axes = [a.strip() for a in x.split(",") if a.strip()]
    if not 1 <= len(axes) <= 2:
        raise UserError(f"--x {x!r}: give one column, or two (N,D) for the joint law")
    law = "joint" if len(axes) == 2 else law
    for k in by:
        missing = [i for i, r in enumerate(rows) if k not in r]
        if missing:
            raise UserError(f"grouping column {k!r} is missing from row {missing[0] + 1}")
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in by)].append(r)
    out = []
    for key, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        rec = {**dict(zip(by, key)), "x": x, "metric": metric}
        usable = []
        floored = 0
        for r in rs:
            xv = [T.x_value(r, a) for a in axes]
            err, sd = T.error_of(r, metric, is_error)
            if err is None or any(v is None for v in xv):
                continue
            if err <= 0 and not is_error and isinstance(r.get("n"), int) and r["n"] > 0:
                err, floored = 0.5 / r["n"], floored + 1      # no error on n images: half an image's worth
            usable.append((tuple(xv), err, sd, r))
        notes = [f"{floored} run(s) with no error counted as 0.5/n (log scale)"] if floored else []
        # cells (equal x, plus any held columns): chance cells leave the fit
        cells = defaultdict(list)
        for item in usable:
            cells[(item[0],) + tuple(item[3].get(h) for h in hold)].append(item)
        chance_cells = []
        for ck, items in cells.items():
            fl = T.cell_flags([it[3] for it in items])
            if fl["chance"]:
                chance_cells.append(ck)
        if chance_cells:
            notes.append(f"{len(chance_cells)} cell(s) at chance left out")
        kept = [it for ck, items in cells.items() if ck not in chance_cells for it in items]
        if axes == ["compute"] and kept:
            kept, why = _frontier(kept, notes)
            if why:
                rec.update(status="refused", reason=why, law=law, n_points=0, n_x=0)
                rec["points"] = [[list(it[0]), it[1]] for it in usable]
                rec["chance_points"] = []
                out.append(rec)
                continue
        if not kept:
            rec.update(status="refused", law=law, n_points=0, n_x=0,
                       reason=(f"all {len(chance_cells)} cell(s) at chance" if chance_cells else "no usable rows"))
            rec["points"], rec["chance_points"] = [], [[list(it[0]) if law == "joint" else it[0][0], it[1]]
                                                       for ck in chance_cells for it in cells[ck]]
            out.append(rec)
            continue
        X = np.array([it[0] if law == "joint" else it[0][0] for it in kept], np.float64)
        y = np.array([it[1] for it in kept], np.float64)
        sd = np.array([it[2] for it in kept], np.float64)
        zero = int(np.sum(y <= 0)) if len(y) else 0
        if zero:
            notes.append(f"{zero} run(s) with error 0 left out (log scale)")
        f = fit_law(X if len(kept) else np.zeros((0, 2) if law == "joint" else 0), y, law, n_boot=n_boot,
                    seed=seed, delta=delta, sd_log=sd, n_perm=n_perm, alpha=alpha)
        reason = "; ".join([f.reason] + notes if f.reason else notes)
        rec.update(f.record())
        rec["reason"] = reason
        rec["points"] = [[list(it[0]) if law == "joint" else it[0][0], it[1]] for it in kept]
        rec["chance_points"] = [[list(it[0]) if law == "joint" else it[0][0], it[1]]
                                for ck in chance_cells for it in cells[ck]]
        if predict and f.status == "ok":
            rec["predictions"] = [f.prediction(_parse_x(p, law)) for p in predict]
        rec["_fit"] = f
        out.append(rec)
    return out


def _frontier(items: list, notes: list) -> tuple:
    """Compute axis: refuse where compute is a relabelled params axis; else keep the runs of the cells on
    the measured lower envelope."""
    by_params = defaultdict(set)
    for it in items:
        by_params[it[3].get("params")].add(it[0][0])
    if all(len(v) == 1 for v in by_params.values()):
        return [], ("compute does not vary apart from params here (one compute value per model size: "
                    "pre-training steps and data fixed); fit --x params instead")
    cells = defaultdict(list)
    for it in items:
        cells[(it[0][0], it[3].get("params"))].append(it)
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
    return vals if law == "joint" else vals[0]


def write_fits(fits: list, out: Path, stem: str) -> None:
    """OUT/STEM.json (a list, one object per group) and OUT/STEM.csv (one row per group, no points)."""
    clean = [{k: v for k, v in f.items() if not k.startswith("_")} for f in fits]
    atomic_write_json(out / f"{stem}.json", _finite(clean))
    cols = []
    for f in clean:
        cols += [k for k in f if k not in cols and k not in ("points", "chance_points", "predictions")]
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for f in clean:
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


def describe(f: dict) -> str:
    """One line for a fit record: parameters with CIs, or the status and its reason."""
    n = f"{f.get('n_points', 0)} runs at {f.get('n_x', 0)} x values"
    if f["status"] != "ok":
        return f"{f['status']}: {f['reason']} ({n})"
    parts = []
    for p in PARAMS[f["law"]]:
        if p in ("a", "A", "B"):
            parts.append(f"{p}={f[p]:.4g}")
        else:
            parts.append(f"{p}={f[p]:.4g} [{f[p + '_ci_lo']:.4g}, {f[p + '_ci_hi']:.4g}]")
    extra = f"; at bound: {f['at_bound']}" if f.get("at_bound") else ""
    note = f"; {f['reason']}" if f.get("reason") else ""
    return f"ok: {f['law']} " + " ".join(parts) + f" ({n}; trend p={f['p_trend']:.3f}{extra}{note})"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_fits(fits: list, out: Path, stem: str, title: str, label_keys=None) -> list:
    """Points of every group (hollow: cells at chance, left out); a curve with its 95% band only for
    groups whose status is ok."""
    plt = _plt()
    joint = bool(fits) and fits[0].get("law") == "joint"
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, f in enumerate(fits):
        color = f"C{i % 10}"
        label_keys_ = label_keys or [k for k in f if k not in _NOT_LABEL and not k.startswith("_")
                                     and k not in PARAMS.get(f.get("law"), ()) and not k.endswith(("_ci_lo", "_ci_hi"))]
        label = " / ".join(str(f.get(k)) for k in label_keys_) or "all"
        label += {"ok": "", "no-trend": " (no trend)", "refused": " (refused)"}.get(f.get("status"), "")
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
    ax.set_ylabel(f"error (1 - {metric})")
    ax.set_title(title + "\nhollow: cells at chance (left out); curves and 95% bands only where status ok",
                 fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="best")
    paths = []
    for ext in ("png", "pdf"):
        pth = out / f"{stem}.{ext}"
        fig.savefig(pth, dpi=120, bbox_inches="tight")
        paths.append(pth)
    plt.close(fig)
    return paths


_NOT_LABEL = {"x", "metric", "n_points", "n_x", "points", "chance_points", "status", "reason", "law",
              "rmse_log", "p_trend", "at_bound", "n_boot", "huber_delta", "predictions"}


def resolve_by(by: str, rows: list) -> list:
    if by == "auto":
        return [k for k in AUTO_BY if rows and all(k in r for r in rows)]
    return [k.strip() for k in by.split(",") if k.strip()]


def run(args) -> int:
    rows = T.final_rows(T.load_table(args.results))
    if args.task != "all" and rows and "task" in rows[0]:
        rows = [r for r in rows if r.get("task") == args.task]
    if not rows:
        raise UserError(f"{args.results}: no rows")
    for col in [a.strip() for a in args.x.split(",")]:
        if col not in T.DERIVED and not any(col in r for r in rows):
            raise UserError(f"{args.results}: no column {col!r} (--x)")
    if not any(args.metric in r for r in rows):
        raise UserError(f"{args.results}: no column {args.metric!r} (--metric)")
    by = resolve_by(args.by, rows)
    fits = fit_table(rows, args.x, args.metric, by, law=args.law, is_error=args.error, n_boot=args.bootstrap,
                     n_perm=args.permutations, alpha=args.alpha, delta=args.huber_delta, seed=args.seed,
                     predict=args.predict)
    stem = args.x.replace(",", "+")
    out = Path(args.out) if args.out else Path(args.results).parent / "fits"
    out.mkdir(parents=True, exist_ok=True)
    write_fits(fits, out, f"fits-{stem}")
    plot_fits(fits, out, f"error-vs-{stem}", f"error vs {stem}", label_keys=by)
    for f in fits:
        print(f"{_group_label(f, by)}: {describe(f)}")
        for p in f.get("predictions", []):
            tag = " (extrapolation)" if p["extrapolation"] else ""
            print(f"    predicted err at {args.x}={p['x']}{tag}: {p['err']:.4g}, curve 95% CI "
                  f"[{p['ci_lo']:.4g}, {p['ci_hi']:.4g}], prediction interval for one run [{p['pi_lo']:.4g}, "
                  f"{p['pi_hi']:.4g}]")
    counts = {s: sum(f["status"] == s for f in fits) for s in ("ok", "no-trend", "refused")}
    print(f"{len(fits)} group(s): " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
          + f"; wrote {out}/fits-{stem}.json, .csv and error-vs-{stem}.png/.pdf")
    return 2 if (args.strict and counts["ok"] < len(fits)) else 0


def main(argv=None) -> int:
    from covidnetx.utils import run_main
    return run_main("covidnetx fit", build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
