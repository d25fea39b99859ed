"""The fitter's rules over many replicates of planted tables (covidnetx.scaling.planted): how often each
status comes out, how often the reported exponent interval covers the truth, and how often the backtest
(largest x held out) passes. tests/test_fit.py asserts bounds on smaller samples; this prints the rates
for docs/internals.md.

    python benchmarks/fit_validation.py [--reps 100]     (~4 minutes on 2 cores at 100)
"""
import argparse
import collections
import time

from covidnetx.scaling.fit import STATUSES, backtest, fit_law
from covidnetx.scaling.planted import CORRECT, UNREPLICATED, WRONG, covers, draw


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=100)
    args = p.parse_args(argv)
    print(f"| planted table | {' | '.join(STATUSES)} | exponent covered | backtest passed |")
    print("|---|" + "---|" * (len(STATUSES) + 2))
    t0 = time.time()
    for name, spec in {**CORRECT, **WRONG, **UNREPLICATED}.items():
        f, kw = spec[0], spec[1]
        truth = spec[2] if len(spec) > 2 else None
        st, cov, bt = collections.Counter(), 0, 0
        for r in range(args.reps):
            X, y = draw(f, 10_000 + r, **kw)
            fit = fit_law(X, y, n_boot=200, seed=r, n_perm=99)
            st[fit.status] += 1
            cov += truth is not None and covers(fit, "b", truth)
            bt += backtest(X, y, k=1, n_boot=100, seed=r)["status"] == "passed"
        n = args.reps
        print(f"| {name} | " + " | ".join(str(st[s]) for s in STATUSES)
              + f" | {f'{cov}/{n}' if truth is not None else '—'} | {bt}/{n} |", flush=True)
    print(f"({args.reps} replicates each, 6 x values over 2 decades and 3 runs per x unless named; "
          f"{time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
