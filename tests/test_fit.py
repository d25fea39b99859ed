"""The fitter on planted data: recovery and interval coverage over replicates, flat data, refusals,
bounds, the joint law, the compute frontier, predictions, and `covidnetx fit` on CSV and JSONL tables."""
import csv
import json

import numpy as np
import pytest

from covidnetx.scaling.fit import fit_law, pareto_frontier

SIZES = np.logspace(4, 6, 6)          # 6 sizes over 2 decades


def planted(a, b, c, seed, seeds=3, noise=0.03, x=SIZES):
    rng = np.random.default_rng(seed)
    X = np.repeat(x, seeds)
    return X, (a * X ** -b + c) * np.exp(rng.normal(0, noise, len(X)))


@pytest.mark.parametrize("a, b, c", [(20.0, 0.3, 0.05), (5.0, 0.5, 0.1)])
def test_planted_saturating_law_recovery_and_ci_coverage(a, b, c):
    """30 replicates of 6 sizes x 3 seeds at 3% noise: median b within 10% of the truth, and the 95% CI
    covers the truth in at least 24 of 30."""
    bs, covered_b, covered_c, ok = [], 0, 0, 0
    for r in range(30):
        X, y = planted(a, b, c, seed=1000 + r)
        f = fit_law(X, y, "saturating", n_boot=200, seed=r, n_perm=99)
        ok += f.status == "ok"
        bs.append(f.params["b"])
        covered_b += f.ci["b"][0] <= b <= f.ci["b"][1]
        covered_c += f.ci["c"][0] <= c <= f.ci["c"][1]
        assert f.n_points == 18 and f.n_x == 6 and f.n_boot > 190
    assert abs(np.median(bs) - b) / b < 0.10, np.median(bs)
    assert covered_b >= 24, covered_b
    assert covered_c >= 24, covered_c
    assert ok == 30                          # a real trend is found every time


def test_planted_power_law_coverage():
    covered = 0
    for r in range(30):
        X, y = planted(20.0, 0.3, 0.0, seed=2000 + r)
        f = fit_law(X, y, "power", n_boot=200, seed=r, trend_test=False)
        covered += f.ci["b"][0] <= 0.3 <= f.ci["b"][1]
    assert covered >= 24, covered


def test_flat_tables_are_no_trend():
    """Error 0.3 at six sizes over two decades, 3 seeds, 3% noise: no trend in at least 8 of 10."""
    statuses = []
    for r in range(10):
        X, y = planted(0.3, 0.0, 0.0, seed=300 + r)
        f = fit_law(X, y, "saturating", n_boot=50, seed=r)
        statuses.append(f.status)
        if f.status == "no-trend":
            assert "no better than a constant" in f.reason and f.p_trend >= 0.05
    assert statuses.count("no-trend") >= 8, statuses


def test_rising_error_is_not_a_trend_of_the_law():
    X, y = planted(0.01, -0.3, 0.0, seed=5)          # error grows with x
    f = fit_law(X, y, "saturating", n_boot=20, seed=0)
    assert f.status == "no-trend"


@pytest.mark.parametrize("x, why", [
    (np.logspace(4, 6, 3), "3 distinct x value(s); err = a*x^(-b) + c needs at least 5"),
    (np.linspace(1e4, 5e4, 6), "x spans 0.70 decades; a law needs at least 1"),
])
def test_refused_without_enough_x(x, why):
    X, y = planted(20.0, 0.3, 0.05, seed=1, x=x)
    for law in ("saturating", "power"):
        f = fit_law(X, y, law)
        assert f.status == "refused" and why.replace("a*x^(-b) + c", {"saturating": "a*x^(-b) + c",
                                                                     "power": "a*x^(-b)"}[law]) in f.reason
        assert f.params == {} and f.ci == {}


def test_three_sizes_with_a_floor_refuse_instead_of_a_power_law():
    """The old fitter answered b = 0.10 with a degenerate CI here (truth 0.3): now it refuses."""
    X, y = planted(20.0, 0.3, 0.05, seed=2, x=np.logspace(4, 6, 3))
    f = fit_law(X, y)
    assert f.status == "refused" and f.law == "saturating"


def test_parameter_at_a_bound_is_flagged():
    x = np.repeat(SIZES, 2)
    y = 3.0 * x ** -0.4 * np.exp(np.tile([0.01, -0.01], 6))       # no floor at all
    f = fit_law(x, y, "saturating", n_boot=20)
    assert "c=0 (lower bound)" in f.at_bound
    assert f.record()["at_bound"] == "c=0 (lower bound)"


def test_joint_law_recovers_both_exponents_with_ci():
    E, A, al, B, be = 0.05, 30.0, 0.35, 8.0, 0.3
    N, D = np.logspace(4, 6, 5), np.logspace(2.5, 4.5, 5)
    cells = [(n, D[-1]) for n in N] + [(N[2], d) for d in D[:-1]]        # the study's L-shaped design
    al_hat, be_hat, cov = [], [], 0
    for r in range(10):
        rng = np.random.default_rng(50 + r)
        X = np.array([c for c in cells for _ in range(3)])
        y = (E + A * X[:, 0] ** -al + B * X[:, 1] ** -be) * np.exp(rng.normal(0, 0.03, len(X)))
        f = fit_law(X, y, "joint", n_boot=100, seed=r, n_perm=49)
        assert f.status == "ok"
        al_hat.append(f.params["alpha"])
        be_hat.append(f.params["beta"])
        cov += (f.ci["alpha"][0] <= al <= f.ci["alpha"][1]) + (f.ci["beta"][0] <= be <= f.ci["beta"][1])
    assert abs(np.median(al_hat) - al) / al < 0.1 and abs(np.median(be_hat) - be) / be < 0.1
    assert cov >= 16, cov
    bad = fit_law(np.array([[n, 1e3] for n in N for _ in range(2)]), np.full(10, 0.2), "joint")
    assert bad.status == "refused" and "1 distinct D value(s)" in bad.reason


def test_prediction_interval_and_extrapolation_flag():
    hits = 0
    for r in range(10):
        X, y = planted(20.0, 0.3, 0.05, seed=400 + r)
        f = fit_law(X, y, n_boot=200, seed=r, trend_test=False)
        p = f.prediction(1e7)
        assert p["extrapolation"] and p["pi_lo"] <= p["ci_lo"] <= p["err"] <= p["ci_hi"] <= p["pi_hi"]
        hits += p["ci_lo"] <= 20.0 * 1e7 ** -0.3 + 0.05 <= p["ci_hi"]
        assert not f.prediction(1e5)["extrapolation"]
    assert hits >= 8, hits


def test_pareto_frontier_keeps_measured_points_only():
    c = [1e3, 1.2e3, 1e4, 1.1e4, 1e5, 3e5, 4e5]
    e = [0.9, 0.7, 0.8, 0.5, 0.6, 0.45, 0.47]
    idx = pareto_frontier(c, e)
    assert [c[i] for i in idx] == [1e3, 1.2e3, 1.1e4, 3e5]
    assert [e[i] for i in idx] == [0.9, 0.7, 0.5, 0.45]      # measured values, nothing overwritten


# ---------------------------------------------------------------------------------------- the command
def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_fit_command_on_a_csv(tmp_path, capsys):
    from covidnetx.cli import main
    rows = []
    for group, b in (("steep", 0.5), ("flat", 0.0)):
        X, y = planted(5.0 if b else 0.3, b, 0.1 if b else 0.0, seed=7 if b else 8)
        rows += [{"width": int(x), "group": group, "acc": 1 - e} for x, e in zip(X, y)]
    rows += [{"width": int(x), "group": "few", "acc": 0.8} for x in (1e4, 1e5, 1e6)]
    table = tmp_path / "runs.csv"
    _write_csv(table, rows)
    out = tmp_path / "fits"
    assert main(["fit", str(table), "--x", "width", "--metric", "acc", "--by", "group", "--out", str(out),
                 "--bootstrap", "100", "--predict", "1e7"]) == 0
    text = capsys.readouterr().out
    fits = json.loads((out / "fits-width.json").read_text())
    by = {f["group"]: f for f in fits}
    assert set(by) == {"steep", "flat", "few"}
    assert by["steep"]["status"] == "ok" and abs(by["steep"]["b"] - 0.5) < 0.1
    assert by["steep"]["b_ci_lo"] < 0.5 < by["steep"]["b_ci_hi"]
    assert by["flat"]["status"] == "no-trend"
    assert by["few"]["status"] == "refused" and "3 distinct x value(s)" in by["few"]["reason"]
    for f in fits:
        for k in ("status", "reason", "law", "n_points", "a", "b", "c", "b_ci_lo", "b_ci_hi", "c_ci_lo"):
            assert k in f
    assert by["steep"]["predictions"][0]["extrapolation"] is True
    assert "(extrapolation)" in text and "group=few: refused" in text
    header = (out / "fits-width.csv").read_text().splitlines()[0].split(",")
    assert {"group", "status", "reason", "b", "b_ci_lo"} <= set(header)
    assert (out / "error-vs-width.png").stat().st_size > 1000
    assert main(["fit", str(table), "--x", "width", "--metric", "acc", "--by", "group", "--out", str(out),
                 "--bootstrap", "10", "--strict"]) == 2
    assert main(["fit", str(table), "--x", "depth", "--metric", "acc"]) == 2
    assert "no column 'depth'" in capsys.readouterr().err


def test_fit_command_error_column_and_bad_rows(tmp_path, capsys):
    from covidnetx.cli import main
    X, y = planted(5.0, 0.5, 0.1, seed=9)
    table = tmp_path / "loss.csv"
    _write_csv(table, [{"n": int(x), "loss": e} for x, e in zip(X, y)])
    assert main(["fit", str(table), "--x", "n", "--metric", "loss", "--error", "--bootstrap", "50"]) == 0
    fits = json.loads((tmp_path / "fits" / "fits-n.json").read_text())
    assert len(fits) == 1 and fits[0]["status"] == "ok" and abs(fits[0]["b"] - 0.5) < 0.1
    bad = tmp_path / "bad.csv"
    bad.write_text("n,loss\n1,0.5\n2,0.4,9\n")
    assert main(["fit", str(bad), "--x", "n", "--metric", "loss", "--error"]) == 2
    assert "bad.csv:3: 3 fields, the header has 2" in capsys.readouterr().err


def _row(run_id, **kw):
    from tests.train_helpers import make_row
    return make_row(run_id, **kw)


def test_fit_on_results_leaves_chance_cells_out_and_refuses_a_relabelled_compute_axis(tmp_path):
    from covidnetx.results import append_row
    from covidnetx.scaling.fitcmd import fit_table
    from covidnetx.scaling.table import final_rows, load_table
    res = tmp_path / "results.jsonl"
    for i, p in enumerate(np.logspace(4, 6, 7)):
        for s in range(3):
            acc = 1 - (5 * p ** -0.4 + 0.1) * (1 + 0.02 * s)
            ba = 0.34 if i == 0 else acc          # the smallest model sits at chance
            append_row(res, _row(f"r{i}-{s}", source="nat", params=int(p), seed=s, accuracy=acc,
                                 balanced_accuracy=ba, balanced_accuracy_ci_lo=ba - 0.05,
                                 balanced_accuracy_ci_hi=ba + 0.05, pretrain_flops=1e6 * p))
    rows = final_rows(load_table(res))
    fits = fit_table(rows, "params", "accuracy", ["source"], n_boot=50, n_perm=49)
    assert fits[0]["status"] == "ok" and fits[0]["n_x"] == 6 and len(fits[0]["chance_points"]) == 3
    assert "1 cell(s) at chance left out" in fits[0]["reason"]
    comp = fit_table(rows, "compute", "accuracy", ["source"], n_boot=10, n_perm=9)
    assert comp[0]["status"] == "refused" and "compute does not vary apart from params" in comp[0]["reason"]
