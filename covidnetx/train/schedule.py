"""Learning-rate schedules and BiT-HyperRule defaults (Kolesnikov et al., Big Transfer)."""
from __future__ import annotations

import math


def bit_hyperrule(n_train: int) -> dict:
    """Schedule by training-set size: <20k -> 500 steps (warmup 100, /10 at 200/300/400);
    <500k -> 10k steps (warmup 500, /10 at 3k/6k/9k); else 20k (warmup 500, /10 at 6k/12k/18k).
    MixUp alpha 0.1 only from 20k examples on."""
    if n_train < 20_000:
        return {"steps": 500, "warmup": 100, "decay_at": [200, 300, 400], "mixup": 0.0}
    if n_train < 500_000:
        return {"steps": 10_000, "warmup": 500, "decay_at": [3000, 6000, 9000], "mixup": 0.1}
    return {"steps": 20_000, "warmup": 500, "decay_at": [6000, 12000, 18000], "mixup": 0.1}


def lr_at(step: int, *, base: float, steps: int, warmup: int, schedule: str, decay_at) -> float:
    """Linear warmup to ``base`` over ``warmup`` steps, then step (/10 at each of ``decay_at``),
    cosine (to 0 at ``steps``) or constant."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "step":
        return base * 0.1 ** sum(step >= d for d in decay_at)
    if schedule == "cosine":
        t = (step - warmup) / max(1, steps - warmup)
        return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return base
