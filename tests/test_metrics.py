import numpy as np
import pytest

from covidnetx.eval.metrics import (all_metrics, average_precision, bootstrap_ci, confusion, from_confusion,
                                    roc_auc)


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


