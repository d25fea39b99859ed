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
