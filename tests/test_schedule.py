"""covidnetx.train.schedule: BiT-HyperRule, the learning-rate curve and a run's resolved schedule."""
import math

import pytest

from covidnetx import config as C
from covidnetx.train.schedule import bit_hyperrule, lr_at, resolve_run, resolve_schedule


def test_bit_hyperrule_by_training_set_size():
    assert bit_hyperrule(19_999) == {"steps": 500, "warmup": 100, "decay_at": [200, 300, 400], "mixup": 0.0}
    assert bit_hyperrule(20_000)["steps"] == 10_000 and bit_hyperrule(20_000)["mixup"] == 0.1
    assert bit_hyperrule(500_000)["steps"] == 20_000


def test_learning_rate_warmup_then_step_cosine_or_constant():
    kw = dict(base=1.0, steps=100, warmup=10, decay_at=(40, 60))
    assert [lr_at(s, schedule="step", **kw) for s in (0, 9)] == [pytest.approx(0.1), pytest.approx(1.0)]
    assert lr_at(39, schedule="step", **kw) == 1.0 and lr_at(40, schedule="step", **kw) == pytest.approx(0.1)
    assert lr_at(60, schedule="step", **kw) == pytest.approx(0.01)
    assert lr_at(10, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(55, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_at(100, schedule="cosine", **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(99, schedule="constant", **kw) == 1.0


def test_epochs_give_steps_with_a_floor_and_the_lr_scales_with_the_global_batch():
    cfg = C.load_config(None, ["task=pretrain", "optim.epochs=2", "optim.min_steps=400", "optim.batch_size=32",
                               "optim.base_batch=64", "optim.lr=0.1"])
    small = resolve_schedule(cfg.optim, 170, 2, False)
    assert small.steps == 400 and small.global_batch == 64 and small.base_lr == pytest.approx(0.1)
    big = resolve_schedule(cfg.optim, 40_000, 2, False)
    assert big.steps == math.ceil(2 * 40_000 / 64)
    four = resolve_schedule(cfg.optim, 40_000, 4, False)        # Horovod's rule: lr x global batch / base batch
    assert four.global_batch == 128 and four.base_lr == pytest.approx(0.2)
    assert small.decay_at == tuple(int(f * 400) for f in (0.4, 0.6, 0.8)) and small.warmup == 20


def test_transfer_takes_the_hyperrule_where_the_config_leaves_values_unset():
    cfg = C.load_config(None, ["task=transfer"])
    resolved, s = resolve_run(cfg, 5_000, 1)
    assert (s.steps, s.warmup, s.decay_at, s.mixup) == (500, 100, (200, 300, 400), 0.0)
    assert resolved.optim.steps == 500 and resolved.optim.warmup_steps == 100        # written back into the config
    assert resolved.optim.decay_at == pytest.approx([0.4, 0.6, 0.8])
    off = C.load_config(None, ["task=transfer", "hyperrule=false"])
    assert resolve_run(off, 5_000, 1)[1].steps == 1000
    given = C.load_config(None, ["task=transfer", "optim.steps=30", "optim.mixup=0.2"])
    _, g = resolve_run(given, 50_000, 1)
    assert g.steps == 30 and g.mixup == 0.2 and g.decay_at == (12, 18, 24)
