"""`covidnetx fit RESULTS [--x params|data|compute] [--metric M] [--by source,regime,shots] [--out DIR]`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from covidnetx.scaling.report import AXES, _write_fits, final_rows, fit_groups, plot_fits
from covidnetx.utils import UserError


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx fit", description=__doc__)
    p.add_argument("results", help="results table (JSONL)")
    p.add_argument("--x", choices=AXES, default="params")
    p.add_argument("--metric", default="accuracy")
    p.add_argument("--by", default="source,regime,shots", help="comma-separated grouping keys")
    p.add_argument("--task", choices=("transfer", "pretrain", "all"), default="transfer")
    p.add_argument("--out", default=None, help="output folder (default: beside the results, fits/)")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--law", choices=("auto", "saturating", "power"), default="auto",
                   help="auto: saturating a*x^-b+c, falling back to a*x^-b where too few points")
    p.add_argument("--strict", action="store_true", help="exit 2 when any group cannot be fitted")
    return p


def run(args) -> int:
    rows = final_rows(args.results)
    if args.task != "all":
        rows = [r for r in rows if r.get("task") == args.task]
    by = [k.strip() for k in args.by.split(",") if k.strip()]
    laws = ("saturating", "power") if args.law == "auto" else (args.law,)
    fits = fit_groups(rows, args.x, args.metric, by, args.bootstrap, laws=laws)
    if not fits:
        raise UserError(f"{args.results}: no rows with {args.metric!r} and an x value for {args.x!r}")
    out = Path(args.out) if args.out else Path(args.results).parent / "fits"
    out.mkdir(parents=True, exist_ok=True)
    _write_fits(fits, out, f"fits-{args.x}")
    plot_fits(fits, out, f"error-vs-{args.x}", f"error vs {args.x}")
    bad = 0
    for f in fits:
        group = ", ".join(f"{k}={f[k]}" for k in by)
        if f["status"] == "ok":
            c = f" c={f['c']:.4f} [{f['c_ci_lo']:.4f}, {f['c_ci_hi']:.4f}]" if f["law"] == "saturating" else ""
            print(f"{group}: {f['law']} a={f['a']:.4g} b={f['b']:.4f} [{f['b_ci_lo']:.4f}, {f['b_ci_hi']:.4f}]{c} "
                  f"({f['n_points']} points)")
        else:
            bad += 1
            print(f"{group}: not fitted: {f['reason']}", file=sys.stderr)
    print(f"wrote {out}/fits-{args.x}.csv, .json and error-vs-{args.x}.png/.pdf")
    return 2 if (bad and args.strict) else 0


def main(argv=None) -> int:
    from covidnetx.utils import run_main
    return run_main("covidnetx fit", build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
