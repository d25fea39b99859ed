"""How close a source is to the target, and how well a pre-trained model's features suit it.

Three measures per (source checkpoint, target), each on fixed sample sets (a seeded sample of the
source's images and the whole target train split, never a few-shot subset):

* ``align_ref``: the Frechet distance between Gaussian fits of source and target features in ONE
  reference feature space shared by every source of a study (``alignment_reference``: a fixed
  random-init network, or a given checkpoint). Distances from different pre-trained networks are not
  comparable (they grow with feature width); these are. One value per (source data, target).
* ``align_norm``: the Frechet distance under the source checkpoint itself, divided by the total
  variance of the two feature clouds (tr C_s + tr C_t): scale-free, so widths compare.
* ``logme``: LogME (You et al. 2021): the log marginal evidence per sample of a Bayesian linear model
  from the target features to one-hot labels, averaged over classes; higher = features suit the target.

The report gives each measure's Kendall rank correlation with measured transfer accuracy over the
measure's distinct values, with an exact permutation p-value (covidnetx.scaling.stats.kendall_exact), so a
reader sees whether it predicts anything.
"""
from __future__ import annotations

import numpy as np


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance of Gaussian fits to the rows of ``a`` and ``b``:
    |mu_a - mu_b|^2 + tr C_a + tr C_b - 2 tr sqrt(C_a C_b).

    Computed in sample space, exactly: with centred data X_a, X_b and k = (n_a - 1)(n_b - 1), the non-zero
    eigenvalues of C_a C_b are the squared singular values of X_a X_b^T over k, so tr sqrt(C_a C_b) is the
    nuclear norm of X_a X_b^T over sqrt(k). With fewer samples than feature dimensions the covariances are
    singular, where a d x d matrix square root (scipy's sqrtm) is slow and inexact; this is exact."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet needs two 2-d arrays of >= 2 rows and equal width, got {a.shape} and {b.shape}")
    mu1, mu2 = a.mean(0), b.mean(0)
    xa, xb = a - mu1, b - mu2
    k = (len(a) - 1) * (len(b) - 1)
    cross = np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / np.sqrt(k)
    d = ((mu1 - mu2) ** 2).sum() + (xa * xa).sum() / (len(a) - 1) + (xb * xb).sum() / (len(b) - 1) - 2 * cross
    return float(max(d, 0.0))


def frechet_normalised(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance over the total variance tr C_a + tr C_b: 0 for identical Gaussians, at most 1 +
    |mu_a - mu_b|^2 / (tr C_a + tr C_b); unchanged when both feature clouds are scaled alike."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    tv = a.var(0, ddof=1).sum() + b.var(0, ddof=1).sum()
    return float(frechet(a, b) / tv) if tv > 0 else 0.0


def logme(features: np.ndarray, labels: np.ndarray, n_classes: int, max_iter: int = 100) -> float:
    """LogME (You et al. 2021) of features for multi-class labels, per sample and averaged over classes.

    For each class c: y = [label == c], the model y = F w + noise with prior w ~ N(0, 1/alpha) and noise
    precision beta. alpha and beta maximise the evidence by the fixed-point updates gamma = sum_i
    beta s_i / (alpha + beta s_i), alpha = gamma / |m|^2, beta = (n - gamma) / |y - F m|^2 (s_i: squared
    singular values of F, m: the posterior mean); the log evidence is then n/2 log beta + d/2 log alpha -
    n/2 log 2pi - beta/2 |y - F m|^2 - alpha/2 |m|^2 - 1/2 log det(alpha I + beta F^T F)."""
    F = np.asarray(features, np.float64)
    y_all = np.asarray(labels)
    n, d = F.shape
    u, sv, _ = np.linalg.svd(F, full_matrices=False)
    s = sv ** 2
    out = []
    for c in range(n_classes):
        y = (y_all == c).astype(np.float64)
        z = u.T @ y                              # y's coordinates in the column space of F
        rest = float(y @ y - z @ z)              # the part of y outside it
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            t = beta * s / (alpha + beta * s)
            gamma = float(t.sum())
            m2 = float(np.sum((beta * sv * z / (alpha + beta * s)) ** 2))
            res2 = float(np.sum((z * alpha / (alpha + beta * s)) ** 2)) + rest
            # floored: features that are all zero (a dead extractor) give gamma = 0, and the evidence of
            # such features is then very low instead of a division by zero
            a_new = max(gamma / max(m2, 1e-300), 1e-300)
            b_new = max((n - gamma) / max(res2, 1e-300), 1e-300)
            done = abs(a_new - alpha) / alpha < 1e-6 and abs(b_new - beta) / beta < 1e-6
            alpha, beta = a_new, b_new
            if done:
                break
        m2 = float(np.sum((beta * sv * z / (alpha + beta * s)) ** 2))
        res2 = float(np.sum((z * alpha / (alpha + beta * s)) ** 2)) + rest
        logdet = float(np.sum(np.log(alpha + beta * s)) + (d - len(s)) * np.log(alpha))
        ev = (n * np.log(beta) + d * np.log(alpha) - n * np.log(2 * np.pi) - beta * res2 - alpha * m2 - logdet) / 2
        out.append(ev / n)
    return float(np.mean(out))
