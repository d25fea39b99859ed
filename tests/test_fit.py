import numpy as np
import pytest

from covidnetx.scaling.fit import compute_frontier, fit_law
from covidnetx.utils import UserError


@pytest.mark.parametrize("a, b, c", [(20.0, 0.5, 0.05), (30.0, 0.3, 0.1), (0.8, 0.8, 0.0)])
def test_recovers_planted_saturating_exponent(a, b, c):
    rng = np.random.default_rng(0)
    x = np.logspace(3, 8, 14)
    y = (a * x ** (-b) + c) * np.exp(rng.normal(0, 0.02, len(x)))
    f = fit_law(x, y, "saturating", n_boot=100)
    assert abs(f.params["b"] - b) / b < 0.05
    assert abs(f.params["c"] - c) < 0.01
    lo, hi = f.ci["b"]
    assert lo <= f.params["b"] <= hi and hi - lo < 0.5 * b


def test_recovers_plain_power_law():
    rng = np.random.default_rng(1)
    x = np.logspace(2, 6, 8)
    y = 5 * x ** -0.35 * np.exp(rng.normal(0, 0.02, 8))
    f = fit_law(x, y, "power", n_boot=50)
    assert abs(f.params["b"] - 0.35) / 0.35 < 0.05 and f.ci["b"][0] < 0.35 < f.ci["b"][1]


def test_refuses_too_few_points():
    with pytest.raises(UserError, match="need at least 4 distinct x values"):
        fit_law([1e3, 1e4, 1e5, 1e5], [0.5, 0.4, 0.3, 0.31], "saturating")
    with pytest.raises(UserError, match="need at least 3 distinct x values"):
        fit_law([1, 2], [0.5, 0.4], "power")


def test_compute_frontier_takes_best_per_bin_and_is_monotone():
    c = [1e3, 1.2e3, 1e4, 1.1e4, 1e5, 3e5]
    e = [0.9, 0.7, 0.8, 0.5, 0.6, 0.4]
    fx, fy = compute_frontier(c, e)
    assert list(fx) == [1.2e3, 1.1e4, 3e5] and list(fy) == [0.7, 0.5, 0.4]   # 1e5 and 3e5 share a bin
    assert all(np.diff(fy) <= 0)


def test_fit_cli_on_a_results_table(tmp_path, capsys):
    from covidnetx.cli import main
    from covidnetx.results import REQUIRED_FIELDS, append_row
    rng = np.random.default_rng(3)
    res = tmp_path / "results.jsonl"
    for src, b in (("nat", 0.3), ("cxr", 0.6)):
        for p in np.logspace(4, 8, 9):
            for seed in range(2):
                row = {k: None for k in REQUIRED_FIELDS}
                err = (40 * p ** -b + 0.05) * np.exp(rng.normal(0, 0.01))
                row.update(run_id=f"{src}-{p:.0f}-{seed}", task="transfer", source=src, regime="full", shots=None,
                           params=int(p), accuracy=1 - err, final=True, time=0)
                append_row(res, row)
    assert main(["fit", str(res), "--x", "params", "--by", "source,regime", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    for src, b in (("nat", 0.3), ("cxr", 0.6)):
        line = [l for l in out.splitlines() if l.startswith(f"source={src}")][0]
        got = float(line.split(" b=")[1].split()[0])
        assert abs(got - b) / b < 0.05, line
    for f in ("fits-params.csv", "fits-params.json", "error-vs-params.png", "error-vs-params.pdf"):
        assert (tmp_path / "fits" / f).is_file()
    assert main(["fit", str(res), "--x", "params", "--by", "source,run_id", "--strict", "--bootstrap", "5"]) == 2
    err = capsys.readouterr().err
    assert "not fitted: too few points to fit" in err and "got 1" in err
