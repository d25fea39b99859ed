"""Evaluation of a network on a packed split, exact under any launcher and rank count, and the check
that every rank holds the same weights. The trainer, the ``evaluate`` command and the probe's
checkpoint all score through ``evaluate_model``."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from covidnetx import config as C
from covidnetx.data.loader import make_loader
from covidnetx.data.transforms import Preprocess, normalize
from covidnetx.dist import autocast
from covidnetx.eval.metrics import all_metrics, bootstrap_ci, confusion, from_confusion
from covidnetx.utils import Progress


def evaluate_model(model: nn.Module, view, cfg: C.Config, dist, pp: Preprocess) -> dict:
    """Exact evaluation of ``model`` on ``view`` under any number of ranks: rank 0's buffers everywhere
    (BatchNorm statistics), each rank a padded block, confusion counts over un-padded samples summed over
    ranks, scores gathered for AUC/AP and bootstrap CIs on rank 0; the metrics dict on every rank."""
    device = dist.device
    multilabel = view.label_kind == "multilabel"
    class_names = list(view.class_names)
    k = len(class_names)
    dist.broadcast_buffers(model)
    model.eval()
    loader = make_loader(cfg.data.loader, view, pp, cfg.optim.batch_size, cfg.seed, dist.rank, dist.size,
                         workers=cfg.data.workers, train=False, device=cfg.data.device, torch_device=device)
    scores, labels, keeps = [], [], []
    per_rank = -(-len(view) // dist.size)
    n_batches = -(-per_rank // cfg.optim.batch_size)
    progress = Progress(f"evaluate {cfg.data.eval_split or 'split'}", n_batches, cfg.optim.batch_size * dist.size,
                        cfg.progress_s, unit="batch") if dist.is_primary else None
    with torch.no_grad():
        for i, b in enumerate(loader, 1):
            if progress is not None:
                progress.step(i)
            with autocast(cfg.precision, device):
                logits = model(normalize(b["image"], pp, device))
            p = torch.sigmoid(logits.float()) if multilabel else torch.softmax(logits.float(), 1)
            # scores stay on the device until the loop ends: one copy back instead of a host-device
            # synchronisation per batch; the padding is dropped on the host afterwards
            scores.append(p)
            keeps.append(b["valid"].bool().numpy())
            labels.append(b["label"].numpy()[keeps[-1]])
    if scores:
        scores = torch.cat(scores).cpu().numpy()[np.concatenate(keeps)]
    else:
        scores = np.zeros((0, k), np.float32)
    labels = np.concatenate(labels) if labels else np.zeros((0,) if not multilabel else (0, k))
    out = {}
    if not multilabel:
        # exact: confusion counts over un-padded samples, summed over ranks
        cm = dist.allreduce_sum(confusion(labels, scores.argmax(1) if len(scores) else np.zeros(0), k))
        out.update(from_confusion(cm.astype(np.int64), class_names))
    all_scores = dist.allgather(scores.astype(np.float32))
    all_labels = dist.allgather(labels.astype(np.float32 if multilabel else np.int64))
    if dist.is_primary:
        m = all_metrics(all_labels, all_scores, class_names, multilabel)
        m.update(out)          # the exact, all-reduced counts win (they must agree)
        m.update(bootstrap_ci(all_labels, all_scores, class_names, multilabel, cfg.bootstrap, cfg.seed))
        out = m
    out = dist.broadcast_object(out)
    if out.get("n") != len(view):
        raise RuntimeError(f"evaluation counted {out.get('n')} samples, the split has {len(view)}")
    return out


def ranks_in_sync(model: nn.Module, dist) -> bool:
    """True when every rank holds bit-identical parameters and buffers (compares per-rank checksums)."""
    with torch.no_grad():
        flat = torch.cat([p.detach().double().reshape(-1).cpu() for p in [*model.parameters(), *model.buffers()]])
        w = torch.arange(1, flat.numel() + 1, dtype=torch.float64).remainder_(97).add_(1)
        sums = np.array([[flat.sum().item(), (flat * flat).sum().item(), (flat * w).sum().item()]])
    allv = dist.allgather(sums)
    return bool(np.all(allv == allv[0]))
