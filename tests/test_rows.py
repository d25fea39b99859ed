"""covidnetx.eval.rows: the result row builder (the trainer's and the probe's rows) and the commit it
records."""
import subprocess

from covidnetx import config as C
from covidnetx.eval.rows import result_row


class _Dist:
    size, backend = 2, "horovod"


def test_result_row_records_what_ran_and_merges_the_metrics_last():
    cfg = C.load_config(None, ["task=transfer", "regime=full", "run_name=t", "target_domain=xray"])
    meta = {"source": "nih", "source_fraction": 0.5, "target": "kermany", "source_domain": "xray",
            "domain_pair": "intra", "init_meta": {"seed": 2, "flops": 1e12, "steps": 400, "train_size": 800,
                                                  "epochs": 32.0}, "measures": {"logme": 0.3}}
    m = {"n": 624, "n_classes": 3, "accuracy": 0.8, "balanced_accuracy": 0.75, "auc": 0.9, "ap": 0.85,
         "sensitivity/viral": 0.6}
    row = result_row(cfg, _Dist(), meta, m, params=100, trainable_params=100, train_size=200, steps=10,
                     total_steps=10, samples_seen=640, global_batch=64, flops=1e9, flops_fwd=5, img_per_s=50.0,
                     mixup=0.0, final=True)
    assert (row.run_id, row.regime, row.source, row.pretrain_seed, row.pretrain_steps) == ("t", "full", "nih", 2, 400)
    assert row.world_size == 2 and row.backend == "horovod" and row.epochs == 640 / 200
    assert row.domain_pair == "intra" and row.logme == 0.3 and row.extra["sensitivity/viral"] == 0.6
    assert row.config_hash == C.config_hash(cfg) and row.probe_iterations is None
    assert row.extra["class_weights"] == "none"                 # recorded, so tables can tell weighted runs
    probe = result_row(cfg, _Dist(), meta, {**m, "probe_iterations": 17}, params=100, trainable_params=9,
                       train_size=200, steps=0, total_steps=0, samples_seen=200, global_batch=None, flops=0.0,
                       flops_fwd=5, img_per_s=0.0, mixup=0.0, final=True)
    assert probe.probe_iterations == 17 and probe.global_batch is None and "probe_iterations" not in probe.extra
    pre = result_row(C.load_config(None, ["task=pretrain"]), _Dist(), {}, m, params=1, trainable_params=1,
                     train_size=0, steps=1, total_steps=1, samples_seen=0, global_batch=64, flops=0.0,
                     flops_fwd=1, img_per_s=0.0, mixup=0.0, final=False)
    assert pre.regime == "pretrain" and pre.epochs is None and pre.pretrain_seed is None


def test_git_is_asked_for_the_commit_once_per_process(monkeypatch):
    from covidnetx.eval import rows
    rows.git_sha.cache_clear()
    calls = []
    real = subprocess.run
    monkeypatch.setattr(rows.subprocess, "run", lambda *a, **k: calls.append(a) or real(*a, **k))
    shas = {rows.git_sha() for _ in range(5)}
    assert len(shas) == 1 and len(calls) == 1
