"""Source-target alignment: the Frechet distance between Gaussian fits of the features that one network
(the pre-trained model being transferred) gives to source and to target images. Small = well aligned.
Computed once per transfer command on rank 0 and recorded in every result row."""
from __future__ import annotations

import numpy as np
import torch

from covidnetx.data.compose import Mixture
from covidnetx.data.hdf5 import PackedDataset
from covidnetx.data.loader import Preprocess, normalize, transform_torch


def features(model, view, pp: Preprocess, n: int, device, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(view))[:n])
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(idx), 64):
            x = torch.stack([transform_torch(view.read_image(int(i)), pp, None) for i in idx[s:s + 64]])
            out.append(model.features(normalize(x, pp, device)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg
    mu1, mu2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(c1 @ c2)
    covmean = (covmean[0] if isinstance(covmean, tuple) else covmean).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean))


def source_target_alignment(model, init_meta: dict, target_view, pp: Preprocess, n: int, device) -> float | None:
    dirs = init_meta.get("source_dirs") or []
    if not dirs or n <= 0:
        return None
    split = init_meta.get("source_split") or "train"
    try:
        src = Mixture([PackedDataset(d, split) for d in dirs], init_meta.get("label_space", "union"),
                      rename=init_meta.get("rename") or None)
    except Exception:  # noqa: BLE001 - the source may not be reachable from this job: no measure then
        return None
    fa = features(model, src, pp, n, device)
    fb = features(model, target_view, pp, n, device)
    return frechet(fa, fb)
