"""covidnetx.train.probe: the linear probe's steps on planted features (no network, no ranks)."""
import numpy as np
import pytest

from covidnetx import config as C
from covidnetx.train.probe import _fit_logreg, fit_probe, fold_head, select_c, standardiser

NAMES = ["a", "b", "c"]


def _planted(n_per: int, d: int = 6, sep: float = 3.0, seed: int = 0, shift: float = 5.0, scale: float = 4.0):
    """Three Gaussian classes, class c's mean at sep along axis c; features shifted and scaled so that
    standardisation matters; one constant feature."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per)
    f = rng.normal(size=(len(y), d))
    f[np.arange(len(y)), y] += sep
    f = f * scale + shift
    f[:, -1] = 7.0
    return f.astype(np.float32), y


def _sets(seed=0, n=(60, 40, 50)):
    return {name: _planted(k, seed=seed + i) for i, (name, k) in enumerate(zip(("train", "val", "test"), n))}


def test_standardiser_gives_unit_scale_and_keeps_a_constant_feature():
    f, _ = _planted(50)
    mu, sd = standardiser(f)
    z = (f - mu) / sd
    assert np.allclose(z.mean(0), 0, atol=1e-5)
    assert np.allclose(z[:, :-1].std(0), 1, atol=1e-5)
    assert sd[-1] == 1.0 and np.all(z[:, -1] == 0)           # the constant feature: no division by 0


def test_folded_head_on_raw_features_equals_the_head_on_standardised_ones():
    f, _ = _planted(20)
    mu, sd = standardiser(f)
    rng = np.random.default_rng(1)
    W, b = rng.normal(size=(3, f.shape[1])), rng.normal(size=3)
    Wf, bf = fold_head(W, b, mu, sd)
    assert np.allclose(f @ Wf.T + bf, ((f - mu) / sd) @ W.T + b, atol=1e-8)


def test_select_c_keeps_the_best_val_balanced_accuracy_then_the_lower_log_loss():
    sets = _sets()
    mu, sd = standardiser(sets["train"][0])
    (xt, yt), (xv, yv) = [((sets[k][0] - mu) / sd, sets[k][1]) for k in ("train", "val")]
    cs = [1e-4, 1e-2, 1.0, 100.0]
    best, trials = select_c(xt, yt, xv, yv, cs, NAMES)
    assert [t["C"] for t in trials] == cs
    top = max(t["val_balanced_accuracy"] for t in trials)
    tied = [t for t in trials if t["val_balanced_accuracy"] == top]
    assert best["val_balanced_accuracy"] == top
    assert best["val_log_loss"] == min(t["val_log_loss"] for t in tied)
    assert best["W"].shape == (3, xt.shape[1]) and best["iterations"] > 0 and best["converged"]


def test_a_class_absent_from_the_probe_training_set_is_never_predicted():
    f, y = _planted(30)
    keep = y != 1
    W, b, _, _ = _fit_logreg(f[keep], y[keep], 1.0, 3)
    assert b[1] == -1e9 and not np.any(W[1])
    assert 1 not in set((f @ W.T + b).argmax(1))


def test_fit_probe_recovers_planted_classes_and_scores_the_test_split_once():
    cfg = C.load_config(None, ["task=transfer", "regime=linear", "bootstrap=50"])
    sets = _sets()
    out = fit_probe(sets, None, cfg, NAMES)
    m = out["metrics"]
    assert m["n"] == len(sets["test"][1]) and m["balanced_accuracy"] > 0.9
    assert m["balanced_accuracy_ci_lo"] <= m["balanced_accuracy"] <= m["balanced_accuracy_ci_hi"]
    assert m["probe_c"] in cfg.probe_c and isinstance(m["probe_iterations"], int) and m["probe_iterations"] > 0
    assert len(out["trials"]) == len(cfg.probe_c) and all("W" not in t for t in out["trials"])
    # the returned head works on raw features: it reproduces the reported test accuracy
    f, y = sets["test"]
    acc = float(np.mean((f @ out["W"].T + out["b"]).argmax(1) == y))
    assert acc == pytest.approx(m["accuracy"], abs=1e-9)


def test_fit_probe_on_a_few_shot_subset_uses_only_those_examples():
    cfg = C.load_config(None, ["task=transfer", "regime=fewshot", "bootstrap=20"])
    sets = _sets()
    y = sets["train"][1]
    one_each = [int(np.flatnonzero(y == c)[0]) for c in range(3)]
    few = fit_probe(sets, one_each, cfg, NAMES)
    full = fit_probe(sets, None, cfg, NAMES)
    assert few["metrics"]["n"] == full["metrics"]["n"]
    assert not np.allclose(few["W"], full["W"])                 # fitted on 3 examples, not on 180
    # the same subset gives the same head (the probe is deterministic)
    again = fit_probe(sets, one_each, cfg, NAMES)
    assert np.array_equal(again["W"], few["W"]) and again["metrics"]["probe_c"] == few["metrics"]["probe_c"]


def test_balanced_class_weights_raise_the_minority_class_recall_of_the_probe():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(300, int), np.ones(15, int)]             # 20:1, overlapping classes
    f = rng.normal(size=(len(y), 4)) + 1.2 * y[:, None]
    W0, b0, _, _ = _fit_logreg(f, y, 1.0, 2)
    Wb, bb, _, _ = _fit_logreg(f, y, 1.0, 2, "balanced")
    recall = [float(np.mean((f[y == 1] @ W.T + b).argmax(1) == 1)) for W, b in ((W0, b0), (Wb, bb))]
    assert recall[1] > recall[0] + 0.3, recall
