"""The result row builder: what ran, on what, at what cost, and how it scored, as one ``ResultRow``
(the trainer's and the linear probe's rows alike)."""
from __future__ import annotations

import functools
import subprocess
import time
from pathlib import Path

from covidnetx import config as C
from covidnetx.results import ResultRow


@functools.lru_cache(maxsize=None)
def git_sha() -> str:
    """The checkout's commit, asked of git once per process (every result row carries it)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def result_row(cfg: C.Config, dist, meta: dict, metrics: dict, *, params: int, trainable_params: int,
               train_size: int, steps: int, total_steps: int, samples_seen: int, global_batch: int, flops: float,
               flops_fwd: int, img_per_s: float, mixup: float, final: bool) -> ResultRow:
    """One row of the results table (the engine's and the linear probe's): what ran, on what, and how it
    scored; the metrics dict is merged in last."""
    im = meta.get("init_meta") or {}
    measures = meta.get("measures") or {}
    fields = dict(
        run_id=cfg.run_name, task=cfg.task, model=cfg.model.name, params=params,
        trainable_params=trainable_params, source=meta.get("source"),
        source_fraction=meta.get("source_fraction"), target=meta.get("target"),
        regime=cfg.regime if cfg.task == "transfer" else "pretrain", shots=meta.get("shots"),
        seed=cfg.seed, pretrain_seed=im.get("seed"), world_size=dist.size, global_batch=global_batch,
        steps=steps, total_steps=total_steps, samples_seen=samples_seen, train_size=train_size,
        epochs=samples_seen / train_size if train_size else None,
        flops=float(flops), flops_per_sample_fwd=flops_fwd,
        pretrain_flops=im.get("flops"), pretrain_steps=im.get("steps"),
        pretrain_train_size=im.get("train_size"), pretrain_epochs=im.get("epochs"),
        source_domain=meta.get("source_domain"), target_domain=cfg.target_domain or None,
        domain_pair=meta.get("domain_pair"), img_per_s=float(img_per_s), precision=cfg.precision,
        mixup=float(mixup), loader=cfg.data.loader, backend=dist.backend, eval_split=cfg.data.eval_split,
        git_sha=git_sha(), config_hash=C.config_hash(cfg), final=final, time=time.time(),
        align_ref=measures.get("align_ref"), align_norm=measures.get("align_norm"), logme=measures.get("logme"),
        class_weights=cfg.class_weights)
    for k in ("n", "n_classes", "accuracy", "balanced_accuracy", "auc", "ap"):
        fields[k] = metrics.get(k)
    fields.update({k: v for k, v in metrics.items() if k not in fields and k != "schema"})
    return ResultRow.build(**fields)
