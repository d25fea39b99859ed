"""Metrics computed from exact counts: confusion matrix (rows = truth) for accuracy, balanced accuracy,
per-class sensitivity (diagonal / row sum) and PPV (diagonal / column sum), as in COVID-Net's eval.py;
macro one-vs-rest AUC and AP from scores; bootstrap 95% CIs. Multi-label: per-class AUC/AP over the
known (non-NaN) labels, averaged."""
from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y_true.astype(int), y_pred.astype(int)), 1)
    return cm


def from_confusion(cm: np.ndarray, names) -> dict:
    cm = np.asarray(cm, np.float64)
    tot = cm.sum()
    diag = np.diag(cm)
    rows, cols = cm.sum(1), cm.sum(0)
    sens = np.divide(diag, rows, out=np.full_like(diag, np.nan), where=rows > 0)
    ppv = np.divide(diag, cols, out=np.full_like(diag, np.nan), where=cols > 0)
    predicted = int(np.sum(cols > 0))
    out = {"n": int(tot), "accuracy": float(diag.sum() / tot) if tot else float("nan"),
           "balanced_accuracy": float(np.nanmean(sens)) if np.any(rows > 0) else float("nan"),
           "n_classes": int(len(names)), "predicted_classes": predicted,
           # every prediction in one class: an accuracy would only restate that class's share
           "collapsed": bool(tot > 0 and len(names) > 1 and predicted <= 1)}
    for i, c in enumerate(names):
        out[f"sensitivity/{c}"] = float(sens[i])
        out[f"ppv/{c}"] = float(ppv[i])
    return out


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata  # lazy: heavy, scipy (0.5 s to import)
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Sum over distinct thresholds of (recall increment) x precision (the step-wise definition)."""
    y = np.asarray(y).astype(bool)
    if not y.any():
        return float("nan")
    order = np.argsort(-np.asarray(s), kind="mergesort")
    ss, ys = np.asarray(s)[order], y[order]
    thr = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]
    tps = np.cumsum(ys)[thr]
    precision = tps / (thr + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _auc_ap(y: np.ndarray, s: np.ndarray) -> tuple:
    return roc_auc(y, s), average_precision(y, s)


def score_metrics(labels: np.ndarray, scores: np.ndarray, multilabel: bool) -> dict:
    """Macro AUC and AP (one-vs-rest for multi-class; masked per class for multi-label)."""
    k = scores.shape[1]
    aucs, aps = [], []
    for c in range(k):
        if multilabel:
            known = ~np.isnan(labels[:, c])
            y, s = labels[known, c], scores[known, c]
        else:
            y, s = (labels == c).astype(int), scores[:, c]
        a, p = _auc_ap(y, s)
        aucs.append(a)
        aps.append(p)
    with np.errstate(all="ignore"):
        return {"auc": float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan"),
                "ap": float(np.nanmean(aps)) if not np.all(np.isnan(aps)) else float("nan")}


def all_metrics(labels: np.ndarray, scores: np.ndarray, names, multilabel: bool) -> dict:
    if multilabel:
        out = {"n": int(len(labels))}
        known = ~np.isnan(labels)
        pred = scores > 0.5
        out["accuracy"] = float((pred[known] == (labels[known] == 1)).mean()) if known.any() else float("nan")
    else:
        out = from_confusion(confusion(labels, scores.argmax(1), len(names)), names)
    out.update(score_metrics(labels, scores, multilabel))
    return out


def bootstrap_ci(labels: np.ndarray, scores: np.ndarray, names, multilabel: bool, n_boot: int = 200,
                 seed: int = 0, keys=("accuracy", "balanced_accuracy", "auc", "ap")) -> dict:
    """Percentile 95% CIs over ``n_boot`` resamples of the evaluation set."""
    if n_boot <= 0 or len(labels) < 2:
        return {}
    rng = np.random.default_rng(seed)
    vals = {k: [] for k in keys}
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        m = all_metrics(labels[idx], scores[idx], names, multilabel)
        for k in keys:
            if k in m:
                vals[k].append(m[k])
    out = {}
    for k, v in vals.items():
        v = np.asarray([x for x in v if not np.isnan(x)])
        if len(v):
            out[f"{k}_ci_lo"], out[f"{k}_ci_hi"] = float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))
    return out
