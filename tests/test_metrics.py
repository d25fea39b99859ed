import multiprocessing as mp

import numpy as np
import pytest

from covidnetx.eval.metrics import (all_metrics, average_precision, bootstrap_ci, confusion, from_confusion,
                                    roc_auc)
from covidnetx.results import append_row, load_results
from tests.train_helpers import make_row


def test_confusion_metrics_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    p = np.array([0, 0, 1, 1, 2, 2, 2, 2, 0, 2])
    cm = confusion(y, p, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 4]]
    m = from_confusion(cm, ["normal", "pneumonia", "COVID-19"])
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity/normal"] == pytest.approx(2 / 3)      # diagonal / row sum
    assert m["ppv/normal"] == pytest.approx(2 / 3)              # diagonal / column sum
    assert m["sensitivity/COVID-19"] == pytest.approx(4 / 5) and m["ppv/COVID-19"] == pytest.approx(4 / 5)
    assert m["ppv/pneumonia"] == pytest.approx(1 / 2)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)


def test_auc_ap_match_sklearn_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score
    rng = np.random.default_rng(0)
    for _ in range(30):
        y = rng.integers(0, 2, 40)
        s = np.round(rng.random(40), 1)
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert np.isnan(roc_auc(np.ones(5), np.arange(5)))


def test_multilabel_masks_unknown_and_bootstrap_brackets():
    labels = np.array([[1, np.nan], [0, 1], [1, 0], [0, np.nan], [1, 1], [0, 0]], np.float32)
    scores = np.array([[.9, .9], [.2, .8], [.7, .1], [.3, .0], [.8, .6], [.1, .4]], np.float32)
    m = all_metrics(labels, scores, ["a", "b"], multilabel=True)
    assert m["auc"] == pytest.approx(1.0) and m["n"] == 6
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    s = rng.dirichlet([1, 1, 1], 200)
    s[np.arange(200), y] += 0.5
    full = all_metrics(y, s, ["a", "b", "c"], multilabel=False)
    ci = bootstrap_ci(y, s, ["a", "b", "c"], False, n_boot=100, seed=0)
    for k in ("accuracy", "auc", "ap", "balanced_accuracy"):
        assert ci[f"{k}_ci_lo"] <= full[k] <= ci[f"{k}_ci_hi"]
        assert ci[f"{k}_ci_hi"] - ci[f"{k}_ci_lo"] < 0.3


def _writer(path, tag, n):
    for i in range(n):
        append_row(path, make_row(f"{tag}-{i}", pad="x" * 3000))     # long rows: a torn write would show


def test_concurrent_appends_never_tear_or_lose_rows(tmp_path):
    path = tmp_path / "results.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, t, 150)) for t in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = load_results(path)
    assert len(rows) == 450
    assert sorted(r["run_id"] for r in rows) == sorted(f"{t}-{i}" for t in "abc" for i in range(150))
    with pytest.raises(TypeError, match="takes a ResultRow"):
        append_row(path, {"run_id": "x"})


def test_frechet_distance_exact_in_sample_space():
    """Alignment metric: agrees with the d x d sqrtm formula where that is well posed (more samples than
    dimensions), and stays exact, without warnings, where the covariances are singular (fewer samples than
    dimensions): shifted copies differ by |shift|^2, scaled copies by their closed form."""
    import warnings
    from scipy import linalg
    from covidnetx.scaling.alignment import frechet
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(1.0, 2.0, size=(200, 8)) @ rng.normal(size=(8, 8))
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(linalg.sqrtm(c1 @ c2).real)
    assert frechet(a, b) == pytest.approx(ref, rel=1e-9)
    assert frechet(a, b) == pytest.approx(frechet(b, a), rel=1e-12)
    x = rng.normal(size=(64, 512))                  # n < d, as in a transfer's alignment (features of 64 images)
    shift = rng.normal(size=512)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert frechet(x, x + shift) == pytest.approx((shift ** 2).sum(), rel=1e-9)
        trace = np.trace(np.cov(x, rowvar=False))
        assert frechet(x, 2 * x) == pytest.approx(trace + (x.mean(0) ** 2).sum(), rel=1e-9)
        assert frechet(x, x) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="equal width"):
        frechet(x, a)


def test_result_rows_are_typed_versioned_and_checked_on_read(tmp_path):
    import json
    from covidnetx.record import RunDir
    from covidnetx.results import SCHEMA_VERSION, ResultRow
    from covidnetx.scaling.table import load_table
    from covidnetx.utils import UserError
    path = tmp_path / "results.jsonl"
    row = make_row("a", accuracy=float("nan"), auc_ci_lo=0.4, **{"sensitivity/covid": 0.7})
    append_row(path, row)
    [back] = load_results(path)
    assert isinstance(back, ResultRow) and back.run_id == "a" and back.accuracy is None      # NaN is null on disk
    assert back["auc_ci_lo"] == 0.4 and back.extra["sensitivity/covid"] == 0.7 and back["schema"] == SCHEMA_VERSION
    assert back.params == 1000 and back.get("absent") is None
    RunDir(tmp_path / "run").path.mkdir()
    RunDir(tmp_path / "run").finish(row)
    assert RunDir(tmp_path / "run").result() == back
    d = json.loads(path.read_text())
    cases = [(dict(d, params="many"), "key 'params' is 'many', expected int"),
             (dict(d, shots=2.5), "key 'shots' is 2.5, expected int or null"),
             (dict(d, final=1), "key 'final' is 1, expected bool"),
             ({k: v for k, v in d.items() if k != "seed"}, "lacks seed"),
             (dict(d, schema=SCHEMA_VERSION + 1), f"schema {SCHEMA_VERSION + 1}; this covidnetx reads schema"),
             ([1, 2], "a JSON object")]
    for bad, msg in cases:
        path.write_text(json.dumps(d) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(UserError) as e:
            load_results(path)
        assert f"{path}:2: " in str(e.value) and msg in str(e.value), str(e.value)
    # the analysis reads covidnetx rows checked and other JSONL rows as plain columns
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(d) + "\n" + json.dumps({"width": 8, "acc": 0.5}) + "\n")
    a, b = load_table(other)
    assert isinstance(a, ResultRow) and b == {"width": 8, "acc": 0.5}
    other.write_text(json.dumps(dict(d, steps=None)) + "\n")
    with pytest.raises(UserError, match=r"other.jsonl:1: result row key 'steps' is None, expected int"):
        load_table(other)
    with pytest.raises(ValueError, match="extra metrics reuse field names"):
        ResultRow(**{k: d[k] for k in d if k in ResultRow.__dataclass_fields__}, extra={"steps": 1})
