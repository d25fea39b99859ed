"""Learning-rate schedules and BiT-HyperRule defaults (Kolesnikov et al., Big Transfer)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from covidnetx import config as C


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


@dataclass(frozen=True)
class Schedule:
    """A run's resolved optimisation schedule (no "unset" values left)."""
    steps: int
    warmup: int
    decay_at: tuple               # steps at which the learning rate drops (schedule "step")
    decay_fractions: tuple        # the same as fractions of steps (what the config saves)
    mixup: float
    global_batch: int
    base_lr: float

    def lr(self, step: int, schedule: str) -> float:
        return lr_at(step, base=self.base_lr, steps=self.steps, warmup=self.warmup, schedule=schedule,
                     decay_at=self.decay_at)


def resolve_run(cfg, n_train: int, world_size: int) -> tuple:
    """(``cfg`` with its schedule written in, the Schedule) for a run on ``n_train`` samples and
    ``world_size`` ranks; BiT-HyperRule fills unset values of transfer runs with ``hyperrule`` on. What the
    run saves in config.yaml and its checkpoints."""
    sched = resolve_schedule(cfg.optim, n_train, world_size, cfg.task == "transfer" and cfg.hyperrule)
    return C.with_schedule(cfg, sched), sched


def resolve_schedule(optim, n_train: int, world_size: int, use_hyperrule: bool) -> Schedule:
    """Steps, warmup, LR decay points and MixUp for a run on ``n_train`` samples and ``world_size`` ranks:
    the config's values where set, BiT-HyperRule's for transfer (``use_hyperrule``) where left at their
    "unset" defaults (steps 0, warmup -1, mixup -1, decay_at []), else 1000 steps, 5% warmup, decay at
    40/60/80% and no MixUp (``config.with_schedule`` writes the result back into the config). The learning
    rate is scaled by the global batch (Horovod's rule: base_lr x global batch / base batch)."""
    rule = bit_hyperrule(n_train)
    global_batch = optim.batch_size * world_size * optim.accum_steps
    if optim.epochs > 0:
        steps = max(1, optim.min_steps, math.ceil(optim.epochs * n_train / global_batch))
    else:
        steps = optim.steps or (rule["steps"] if use_hyperrule else 1000)
    warmup = optim.warmup_steps if optim.warmup_steps >= 0 else (
        min(rule["warmup"], steps // 5) if use_hyperrule else max(1, steps // 20))
    if optim.decay_at:
        fractions = tuple(optim.decay_at)
    elif use_hyperrule and not optim.steps and not optim.epochs:
        fractions = tuple(d / steps for d in rule["decay_at"] if d < steps)
    else:
        fractions = (0.4, 0.6, 0.8)
    decay_at = tuple(int(f * steps + 1e-9) for f in fractions)    # the small term undoes float rounding
    mixup = optim.mixup if optim.mixup >= 0 else (rule["mixup"] if use_hyperrule else 0.0)
    return Schedule(steps, warmup, decay_at, fractions, float(mixup), global_batch,
                    optim.lr * global_batch / optim.base_batch)
