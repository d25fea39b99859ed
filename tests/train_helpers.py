from pathlib import Path

import numpy as np

COMMON = ["bootstrap=20", "log_every=1", "data.image_size=32", "optim.batch_size=16", "threads=1"]


def pretrain_args(nat: Path, out: Path, steps: int = 30, name: str = "pre", extra=()) -> list:
    return ["pretrain", f"data.sources=[{nat}]", f"out_dir={out}", f"run_name={name}", "model.name=resnet_w4",
            f"optim.steps={steps}", "optim.lr=0.2", "optim.base_batch=16", "optim.warmup_steps=2",
            "optim.schedule=cosine", *COMMON, *extra]


def transfer_args(cxr: Path, out: Path, init: Path, regime: str, steps: int = 12, extra=()) -> list:
    return ["transfer", f"data.sources=[{cxr}]", f"out_dir={out}", "model.name=resnet_w4", f"regime={regime}",
            f"model.init_from={init}", f"optim.steps={steps}", "optim.lr=0.01", "optim.base_batch=16",
            "data.eval_split=test", *COMMON, *extra]


def scalars(run_dir: Path, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def loss_falls(run_dir: Path, k: int = 5) -> tuple:
    v = [x for _, x in scalars(run_dir, "train/loss")]
    return float(np.mean(v[:k])), float(np.mean(v[-k:]))


def make_row(run_id: str, **kw):
    """A complete ResultRow with plausible values; ``kw`` sets fields and extra metrics."""
    from covidnetx.results import ResultRow
    base = dict(run_id=run_id, task="transfer", model="resnet_w4", params=1000, trainable_params=1000,
                source="nat", source_fraction=1.0, target="cxr", regime="full", shots=None, seed=0,
                pretrain_seed=0, world_size=1, global_batch=16, steps=10, total_steps=10, samples_seen=160,
                train_size=100, epochs=1.6, flops=1e9, flops_per_sample_fwd=1000, pretrain_flops=1e10,
                pretrain_steps=100, pretrain_train_size=1000, pretrain_epochs=1.0, source_domain="natural",
                target_domain="xray", domain_pair="inter", img_per_s=100.0, precision="fp32", mixup=0.0,
                loader="torch", backend="none", eval_split="test", git_sha=None, config_hash="0" * 12,
                final=True, time=0.0, align_ref=None, align_norm=None, logme=None, accuracy=0.5,
                balanced_accuracy=0.5, auc=0.5, ap=0.5, n=100, n_classes=3)
    base.update(kw)
    return ResultRow.build(**base)
