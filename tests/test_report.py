"""The report, section by section, on result rows made for each rule: paired differences over checkpoints
(few-shot draws averaged first), the exclusion rule fixed before the outcome and applied to both arms, the
sign-change flag, the power statement, Kendall's tau over distinct values with exact p, the exponent table
with its backtest count, cells that count units; then the whole report from a results table."""
import math

import numpy as np
import pytest

from covidnetx.results import append_row
from covidnetx.scaling import report as R
from covidnetx.scaling.stats import t_interval
from tests.train_helpers import make_row

_n = [0]


def row(**kw):
    _n[0] += 1
    return make_row(f"r{_n[0]}", **kw)


def pretrain(source, seed, ba, model="resnet_w8", size=800):
    return row(task="pretrain", regime="pretrain", source=source, model=model, seed=seed, pretrain_seed=None,
               train_size=size, domain_pair=None, accuracy=ba, balanced_accuracy=ba, balanced_accuracy_ci_lo=ba - 0.04,
               balanced_accuracy_ci_hi=ba + 0.04, n_classes=3)


def fewshot(source, ck, draw, acc, model="resnet_w8", size=800, k=5):
    return row(source=source, domain_pair="intra" if source == "xray" else "inter", model=model, regime="fewshot",
               shots=k, seed=draw, pretrain_seed=ck, pretrain_train_size=size, accuracy=acc, balanced_accuracy=acc,
               balanced_accuracy_ci_lo=acc - 0.05, balanced_accuracy_ci_hi=acc + 0.05, n_classes=3)


def study(ck_effects, gain=0.05, chance=()):
    """3 checkpoints per source, 5 few-shot draws on each. Checkpoint effects are large, draw noise is
    small: the draws on one checkpoint agree, the checkpoints do not. ``chance``: (source, seed) of
    pre-training runs at chance."""
    rng = np.random.default_rng(0)
    rows = []
    for source, g in (("natural", 0.0), ("xray", gain)):
        for ck, eff in enumerate(ck_effects[source]):
            rows.append(pretrain(source, ck, 0.34 if (source, ck) in chance else 0.8))
            rows += [fewshot(source, ck, d, 0.6 + g + eff + rng.normal(0, 0.002)) for d in range(5)]
    return rows


def test_paired_differences_count_checkpoints_not_draws():
    rows = study({"natural": [0.0, 0.1, -0.1], "xray": [0.08, -0.05, 0.02]})
    [d] = R.paired_domain_differences(rows, "balanced_accuracy")
    per = {}
    for r in rows:
        if r.regime == "fewshot":
            per.setdefault((r.source, r.pretrain_seed), []).append(r.balanced_accuracy)
    diffs = [np.mean(per[("xray", s)]) - np.mean(per[("natural", s)]) for s in range(3)]
    want = t_interval(diffs)
    assert d["regime"] == "fewshot k=5" and d["all"]["n"] == 3 and d["left_out"] == 0
    assert (d["all"]["mean"], d["all"]["lo"], d["all"]["hi"]) == pytest.approx((want["mean"], want["lo"], want["hi"]))
    # 15 draw-level pairs would have claimed a CI several times narrower
    draws = [a - b for a, b in zip([r.balanced_accuracy for r in rows if r.source == "xray" and r.regime == "fewshot"],
                                   [r.balanced_accuracy for r in rows if r.source == "natural" and r.regime == "fewshot"])]
    assert (d["all"]["hi"] - d["all"]["lo"]) > 2.5 * (t_interval(draws)["hi"] - t_interval(draws)["lo"])
    assert d["mde"] > 0 and math.isfinite(d["mde"])


def test_the_exclusion_rule_is_fixed_symmetric_and_shown_beside_all_pairs():
    """Pre-training at chance on either arm drops the pair in the rule-based analysis only; the all-pairs
    analysis stays; a sign change between them is flagged."""
    effects = {"natural": [0.0, 0.0, -0.3], "xray": [0.0, 0.0, 0.0]}
    rows = study(effects, gain=-0.02, chance={("natural", 2)})
    [d] = R.paired_domain_differences(rows, "balanced_accuracy")
    assert d["all"]["n"] == 3 and d["rule"]["n"] == 2 and d["left_out"] == 1
    assert d["all"]["mean"] > 0 > d["rule"]["mean"] and d["sign_change"]
    md, paths = R.section_domains(rows, "balanced_accuracy", _tmp())
    text = "\n".join(md)
    assert "⚠ sign differs" in text and "2 (1 left out)" in text and paths
    rows2 = study(effects, gain=-0.02, chance={("xray", 2)})          # the same rule on the other arm
    [d2] = R.paired_domain_differences(rows2, "balanced_accuracy")
    assert d2["rule"]["n"] == 2 and d2["left_out"] == 1
    # a transfer result at chance is not a reason to leave a pair out
    rows3 = study({"natural": [0.0, 0.0, -0.26], "xray": [0.0, 0.0, 0.0]}, gain=0.0)
    [d3] = R.paired_domain_differences(rows3, "balanced_accuracy")
    assert d3["rule"]["n"] == 3 and d3["left_out"] == 0


def _tmp():
    import tempfile
    from pathlib import Path
    return Path(tempfile.mkdtemp())


def test_cells_count_units_and_runs():
    rows = study({"natural": [0.0, 0.1, -0.1], "xray": [0.08, -0.05, 0.02]})
    md = "\n".join(R.section_cells(rows, "balanced_accuracy"))
    assert "(n=3; 15 runs)" in md and "(n=15)" not in md
    pre = "\n".join(R.section_pretraining(study({"natural": [0, 0, 0], "xray": [0, 0, 0]}, chance={("xray", 0),
                                                                                                   ("xray", 1)}),
                                          "balanced_accuracy"))
    assert "## Pre-training" in pre and "⚠ chance" in pre and "(n=3)" in pre


def _ck_rows(measure, values, accs, regime="linear"):
    rows = []
    for i, (v, a) in enumerate(zip(values, accs)):
        rows.append(row(source=f"s{i % 2}", model="resnet_w8", regime=regime, seed=i, pretrain_seed=i, domain_pair=None,
                        pretrain_train_size=800, accuracy=a, balanced_accuracy=a, **{measure: v}))
    return rows


@pytest.mark.parametrize("values, accs, verdict", [
    ([1, 2, 3, 4], [0.5, 0.6, 0.7, 0.8], "cannot show (n = 4: smallest possible p = 0.083)"),
    ([1, 2, 3, 4, 5, 6], [0.5, 0.6, 0.7, 0.8, 0.85, 0.9], "yes"),
    ([1, 2, 3, 4, 5, 6], [0.9, 0.85, 0.8, 0.7, 0.6, 0.5], "opposite"),
    ([1, 2, 3, 4, 5, 6], [0.5, 0.9, 0.6, 0.85, 0.7, 0.8], "not shown"),
])
def test_kendall_verdicts_follow_exact_p_and_what_n_allows(values, accs, verdict):
    [c] = [c for c in R.measure_correlations(_ck_rows("logme", values, accs), "accuracy") if c["measure"] == "logme"]
    assert c["n"] == len(values) and R.tau_verdict(c) == verdict


def test_a_measure_with_two_values_counts_two():
    """align_ref is one value per source: 6 checkpoints of 2 sources are n = 2 distinct values."""
    rows = _ck_rows("align_ref", [1.0, 2.0] * 3, [0.6, 0.7, 0.61, 0.72, 0.62, 0.71])
    [c] = [c for c in R.measure_correlations(rows, "accuracy") if c["measure"] == "align_ref"]
    assert c["n"] == 2 and c["n_checkpoints"] == 6 and R.tau_verdict(c).startswith("cannot show (n = 2")
    md = "\n".join(R.section_measures(rows, "accuracy"))
    assert "| 2 (6) |" in md and "yes" not in md.split("as expected?")[1]


def test_exponent_section_counts_backtests():
    ok = {"law": "saturating", "status": "ok", "b": 0.3, "b_ci_lo": 0.2, "b_ci_hi": 0.4, "b_bound": "", "reason": "",
          "n_points": 15, "n_x": 5, "task": "transfer", "source": "xray", "regime": "linear", "floor": "free",
          "backtest": {"status": "passed", "k": 1, "cells": []}}
    failed = dict(ok, source="natural", backtest={"status": "failed", "k": 1, "cells": []})
    zero = dict(ok, regime="full", floor="zero", conditional="c = 0", floor_upper=0.05, p_floor=1.0,
                free_range={"b": [0.2, 0.6]})
    nid = dict(ok, status="not-identified", b=4.0, b_ci_lo=0.8, b_ci_hi=float("nan"), b_bound="lower",
               reason="trend (p = 0.010) but the exponent is not identified")
    md = "\n".join(R.section_exponents({"params": [ok, failed, zero, nid]}))
    assert "**2 of 3 laws passed their backtest.**" in md
    assert "b = 0.3 [0.2, 0.4] — conditional on c = 0 (c <= 0.05, test of c > 0 p = 1; over the floors allowed: b 0.2–0.6)" in md
    assert "b = 4 (>= 0.8, one-sided 95%)" in md and "| not-identified |" in md
    assert "No law has status ok." in "\n".join(R.section_exponents({"params": [nid]}))


def test_whole_report_from_a_results_table(tmp_path):
    res = tmp_path / "results.jsonl"
    for r in study({"natural": [0.0, 0.1, -0.1], "xray": [0.08, -0.05, 0.02]}):
        append_row(res, r)
    path = R.write_report(res, tmp_path / "report", metric="balanced_accuracy", n_boot=20)
    text = path.read_text()
    order = ["## Headline", "### Intra- minus inter-domain transfer (paired over checkpoints)", "### Scaling exponents",
             "## Transfer results", "## Pre-training", "## Scaling-law fits", "## Few-shot"]
    assert [text.index(s) for s in order] == sorted(text.index(s) for s in order)
    assert "| fewshot k=5 | 3 |" in text and "n counts independent units" in text
    for name in ("domains.png", "fewshot.png", "report.md"):
        assert (tmp_path / "report" / name).is_file()


def test_fit_and_few_shot_sections_write_their_files(tmp_path):
    """A planted law over 6 model sizes (3 checkpoints each): the params axis is ok, backtested on its
    largest size, and its section lists it with the backtest and writes the fits table and figure; the
    few-shot section draws its curves."""
    rng = np.random.default_rng(1)
    rows = []
    for p in np.logspace(4, 6, 6):
        for ck in range(3):
            acc = 1 - (5 * p ** -0.4 + 0.1) * np.exp(rng.normal(0, 0.03))
            rows.append(row(source="xray", domain_pair="intra", model=f"resnet_w{int(p)}", params=int(p), seed=ck,
                            pretrain_seed=ck, regime="linear", accuracy=acc, balanced_accuracy=acc))
    fits = R.fit_axis(rows, "params", "accuracy", n_boot=50)
    [f] = fits
    assert f["status"] == "ok" and f["n_points"] == 18 and f["backtest"]["cells"][0]["x"] == 1e6
    md, paths = R.section_fits({"params": fits}, tmp_path)
    text = "\n".join(md)
    assert "### x = params" in text and "**transfer / xray / linear**: ok:" in text
    assert f"  - backtest {f['backtest']['status']} (largest 1 x held out): x=1e+06" in text
    assert (tmp_path / "fits-params.csv").is_file() and (tmp_path / "error-vs-params.png") in paths
    few = study({"natural": [0.0, 0.1, -0.1], "xray": [0.08, -0.05, 0.02]})
    md2, paths2 = R.section_fewshot(few, "balanced_accuracy", tmp_path)
    assert md2[0] == "## Few-shot\n" and (tmp_path / "fewshot.png") in paths2
    assert R.section_fewshot(rows, "accuracy", tmp_path) == ([], [])


def test_each_pair_of_sources_is_its_own_comparison():
    """Two natural sources against one X-ray source: two comparisons, neither arm overwritten."""
    rows = study({"natural": [0.0, 0.0, 0.0], "xray": [0.0, 0.0, 0.0]}, gain=0.1)
    rng = np.random.default_rng(5)
    for ck in range(3):
        rows.append(pretrain("natural2", ck, 0.8))
        rows += [row(source="natural2", domain_pair="inter", model="resnet_w8", regime="fewshot", shots=5, seed=d,
                     pretrain_seed=ck, pretrain_train_size=800, accuracy=a, balanced_accuracy=a)
                 for d, a in enumerate(0.8 + rng.normal(0, 0.002, 4))]
    diffs = R.paired_domain_differences(rows, "balanced_accuracy")
    by = {(d["intra_source"], d["inter_source"]): d for d in diffs}
    assert set(by) == {("xray", "natural"), ("xray", "natural2")}
    assert by["xray", "natural"]["all"]["mean"] == pytest.approx(0.1, abs=0.01)
    assert by["xray", "natural2"]["all"]["mean"] == pytest.approx(-0.1, abs=0.01)
    md = "\n".join(R.section_domains(rows, "balanced_accuracy", _tmp())[0])
    assert "| fewshot k=5 (xray − natural) | 3 |" in md and "| fewshot k=5 (xray − natural2) | 3 |" in md
