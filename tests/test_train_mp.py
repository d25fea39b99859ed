"""Training under real launchers with 2 processes, on the real data in ../shared/data: pre-train on
natural-small, transfer to cxr-small in all three regimes (mpirun + Horovod/MPI), a DALI-fed run under
horovodrun --gloo, and the torch.distributed backend under mpirun."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from covidnetx.launch import mpirun_cmd
from covidnetx.results import load_results
from tests.conftest import REPO, need_mpirun, run_cli
from tests.train_helpers import loss_falls, pretrain_args, scalars, transfer_args

pytest.importorskip("horovod.torch", reason="horovod not installed (make setup builds it)")
HOROVODRUN = str(Path(sys.executable).with_name("horovodrun"))


def _mpirun(args, timeout=600):
    need_mpirun()
    r = subprocess.run(mpirun_cmd(2) + [sys.executable, "-m", "covidnetx.cli", *map(str, args)],
                       capture_output=True, text=True, cwd=REPO, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


KEY_FIELDS = ("run_id", "task", "model", "params", "source", "source_fraction", "target", "regime", "shots", "seed",
              "world_size", "global_batch", "steps", "samples_seen", "flops", "img_per_s", "git_sha", "config_hash",
              "accuracy", "balanced_accuracy", "auc", "ap")


def _check_row(row, world=2):
    probe = "probe_c" in row                   # a linear probe takes no SGD steps: no global batch
    for k in KEY_FIELDS:
        assert k in row, k
        if k not in ("shots", "source_fraction") and not (probe and k == "global_batch"):
            assert row[k] is not None, k
    assert row["world_size"] == world
    if probe:
        assert row["steps"] == 0 and row["global_batch"] is None and row["probe_iterations"] > 0
    else:                                      # trained by the engine
        assert row["ranks_in_sync"] is True and row["global_batch"] == 16 * world
        assert row["steps"] > 0 and row["probe_iterations"] is None


def test_pretrain_and_three_transfer_regimes_under_mpirun(packed, tmp_path):
    out = tmp_path / "runs"
    _mpirun(pretrain_args(packed / "nat", out, steps=30, extra=["backend=horovod"]))
    pre = out / "pre"
    first, last = loss_falls(pre)
    assert last < first - 0.05, (first, last)
    rows = load_results(out / "results.jsonl")
    assert len(rows) == 1
    _check_row(rows[0])
    assert rows[0]["n"] == 400 and rows[0]["backend"] == "horovod"
    init = pre / "last.ckpt"
    # the row's metrics are those of the saved model: one process evaluating the checkpoint agrees (each
    # rank used to evaluate with its own BatchNorm statistics, while the checkpoint holds rank 0's)
    ev = json.loads(run_cli("evaluate", init, "backend=none", "threads=1").stdout.splitlines()[0])
    assert ev["n"] == 400 and ev["split"] == "val"
    for k in ("accuracy", "balanced_accuracy", "sensitivity/cat", "ppv/truck"):
        assert ev[k] == rows[0][k], k
    assert abs(ev["auc"] - rows[0]["auc"]) < 1e-6 and abs(ev["ap"] - rows[0]["ap"]) < 1e-6
    _mpirun(transfer_args(packed / "cxr", out, init, "full", steps=12, extra=["run_name=full"]))
    _mpirun(transfer_args(packed / "cxr", out, init, "linear", steps=12, extra=["run_name=lin"]))
    _mpirun(transfer_args(packed / "cxr", out, init, "fewshot", steps=6,
                          extra=["run_name=fs", "shots=[1,3]", "seeds=[0,1]"]))
    rows = load_results(out / "results.jsonl")
    by = {}
    for r in rows[1:]:
        by.setdefault(r["regime"], []).append(r)
    assert sorted(by) == ["fewshot", "full", "linear"]
    assert len(by["full"]) == 1 and len(by["linear"]) == 1
    assert sorted((r["shots"], r["seed"]) for r in by["fewshot"]) == [(1, 0), (1, 1), (3, 0), (3, 1)]
    for r in rows[1:]:
        _check_row(r)
        assert r["source"] == "nat" and r["target"] == "cxr" and r["n"] == 40 and r["pretrain_steps"] == 30
        assert r["pretrain_seed"] == 0 and r["n_classes"] == 3 and isinstance(r["collapsed"], bool)
    assert {r["train_size"] for r in by["fewshot"] if r["shots"] == 3} == {9}
    assert by["linear"][0]["trainable_params"] < by["full"][0]["trainable_params"]
    assert [s for s, _ in scalars(out / "full", "train/loss")][-1] == 12
    # the transfer measures: computed once for the checkpoint, the same in every row that starts from it
    m = {(r["align_ref"], r["align_norm"], r["logme"]) for r in rows[1:]}
    assert len(m) == 1 and all(isinstance(v, float) for v in m.pop())
    # linear and few-shot are probes on cached features: the probe rows name their L2 strength, and the
    # few-shot grid extracted no features of its own (its img/s is that of a feature pass: none)
    lin = by["linear"][0]
    assert lin["probe_c"] in (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0) and lin["img_per_s"] > 0
    assert all(r["img_per_s"] == 0 and "probe_c" in r for r in by["fewshot"])
    for name in ("lin", "fs-k1-s0", "fs-k3-s1"):
        assert (out / name / "head.npz").is_file() and (out / name / "probe.json").is_file()
    with np.load(out / "fs-k1-s0" / "head.npz", allow_pickle=False) as z:
        assert z["weight"].shape == (3, 32) and list(z["classes"]) == ["COVID-19", "normal", "pneumonia"]
    # the linear probe's checkpoint holds the folded head: evaluating it gives the row's numbers
    ev = json.loads(run_cli("evaluate", out / "lin" / "last.ckpt", "backend=none", "threads=1").stdout.splitlines()[0])
    assert ev["n"] == 40 and ev["split"] == "test"
    for k in ("accuracy", "balanced_accuracy"):
        assert ev[k] == lin[k], k
    assert abs(ev["auc"] - lin["auc"]) < 1e-5
    # only rank 0 wrote: one tb directory per run, one row per evaluation
    assert len(list((out / "full" / "tb").glob("events*"))) == 1


def test_dali_loader_under_horovodrun_gloo(packed, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_COMM", "PMIX_", "HOROVOD_"))}
    args = pretrain_args(packed / "cxr", tmp_path, steps=10,
                         extra=["backend=horovod", "data.loader=dali", "data.workers=1", "data.eval_split=val"])
    r = subprocess.run([HOROVODRUN, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "-m", "covidnetx.cli",
                        *args], capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    row = load_results(tmp_path / "results.jsonl")[0]
    _check_row(row)
    assert row["loader"] == "dali" and row["n"] == 40


def test_torch_distributed_backend_under_mpirun(packed, tmp_path):
    _mpirun(pretrain_args(packed / "cxr", tmp_path, steps=10, extra=["backend=torch", "data.eval_split=val"]))
    row = load_results(tmp_path / "results.jsonl")[0]
    _check_row(row)
    assert row["backend"] == "torch"


@pytest.mark.parametrize("var", ["HOROVOD_CPU_OPERATIONS", "HOROVOD_CONTROLLER"])
def test_gloo_asked_for_under_mpirun_is_one_clear_error(packed, tmp_path, var):
    """Without horovodrun's rendezvous, Horovod segfaults (Gloo operations) or hangs (Gloo controller);
    the toolkit refuses before initialising it: exit 2 on every rank, the variable named, no run written."""
    need_mpirun()
    out = tmp_path / "runs"
    env = {**os.environ, var: "gloo"}
    env.pop("HOROVOD_GLOO_RENDEZVOUS_ADDR", None)
    r = subprocess.run(mpirun_cmd(2) + [sys.executable, "-m", "covidnetx.cli",
                                        *map(str, pretrain_args(packed / "nat", out, steps=2, extra=["backend=horovod"]))],
                       capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr.count(f"{var}=gloo but no Gloo rendezvous") == 2
    assert "Segmentation fault" not in r.stderr
    assert not (out / "pre").exists()


SIGNAL_RANK_1_AT_STEP_40 = """
import os, signal, sys
from covidnetx.train import engine
step = engine.Trainer._step
def signalling_step(self, s, *a, **k):
    if s == 40 and os.environ.get("OMPI_COMM_WORLD_RANK") == "1":
        os.kill(os.getpid(), signal.SIGUSR1)
    return step(self, s, *a, **k)
engine.Trainer._step = signalling_step
from covidnetx.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("backend", ["horovod", "torch"])
def test_signal_to_one_rank_stops_both_at_one_step_and_resume_matches(packed, tmp_path, backend):
    """SIGUSR1 reaches only rank 1: the ranks agree through the stop-flag sum, both stop at the same step,
    exit 75 with one checkpoint, and the resumed run ends with the weights of an uninterrupted one: the
    momentum buffers survive Horovod's optimizer wrapper (which used to drop them)."""
    need_mpirun()
    steps = 150
    args = pretrain_args(packed / "nat", tmp_path, steps=steps,
                         extra=[f"backend={backend}", "data.eval_split=", "optim.weight_decay=0.001"])
    ref = tmp_path / "ref"
    _mpirun([*args, f"out_dir={ref}"])
    # rank 1 signals itself at the start of step 40: a real SIGUSR1 to one rank, at a step that does not
    # depend on how fast this machine is (a signal sent from outside after a sleep can arrive too late)
    code = SIGNAL_RANK_1_AT_STEP_40
    p = subprocess.Popen(mpirun_cmd(2) + [sys.executable, "-c", code, *map(str, args)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "pre"
    out, err = p.communicate(timeout=300)
    assert p.returncode == 75, out[-2000:] + err[-3000:]
    stopped = torch.load(run / "last.ckpt", weights_only=False)["step"]
    assert 0 < stopped < steps, "the run ended before the signal arrived"
    assert err.count(f"interrupted at step {stopped}; checkpoint saved") == 1       # rank 0 reports
    assert not (run / "done.json").exists()
    r = _mpirun(args)
    assert f"resumed from {run / 'last.ckpt'}" in r.stdout
    a = torch.load(run / "last.ckpt", weights_only=False)
    b = torch.load(ref / "pre" / "last.ckpt", weights_only=False)
    assert a["step"] == b["step"] == steps
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_horovod_one_rank_equals_single_process_with_weight_decay(packed, tmp_path):
    """On a fresh optimizer Horovod's broadcast_optimizer_state takes a zero-gradient step, which with
    weight decay moved the initial weights; the toolkit skips it, so Horovod at np=1 trains bit for bit
    like backend none."""
    need_mpirun()
    args = pretrain_args(packed / "nat", tmp_path, steps=5, extra=["data.eval_split=", "optim.weight_decay=0.01"])
    ckpts = []
    for backend in ("none", "horovod"):
        out = tmp_path / backend
        r = subprocess.run(mpirun_cmd(1) + [sys.executable, "-m", "covidnetx.cli", *map(str, args),
                                            f"backend={backend}", f"out_dir={out}"],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        ckpts.append(torch.load(out / "pre" / "last.ckpt", weights_only=False)["model"])
    for k in ckpts[0]:
        assert torch.equal(ckpts[0][k], ckpts[1][k]), k


def test_fewshot_with_fewer_examples_than_ranks(packed, tmp_path):
    """k=1 with 3 classes on 4 ranks (one 4-GPU node): 3 training samples for 4 ranks used to be refused;
    each epoch now deals back-to-back permutations, so every rank trains and the run completes."""
    need_mpirun()
    args = transfer_args(packed / "cxr", tmp_path, "", "fewshot", steps=3,
                         extra=["run_name=fs", "shots=[1]", "seeds=[0]", "backend=horovod", "data.eval_split=val",
                                "fewshot_mode=full"])
    r = subprocess.run(mpirun_cmd(4) + [sys.executable, "-m", "covidnetx.cli", *map(str, args)],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [row] = load_results(tmp_path / "results.jsonl")
    assert row["world_size"] == 4 and row["train_size"] == 3 and row["shots"] == 1 and row["steps"] == 3
    assert row["ranks_in_sync"] is True and row["source"] == "scratch"


def test_gradient_clipping_under_horovod(packed, tmp_path):
    """optim.grad_clip under mpirun -np 2 with Horovod: the step waits for the averaged gradients, clips them
    and steps without a second wait (Dist.step). A clip too large to bind gives exactly the weights of no
    clip (the gradients are averaged once, not twice, on that path); a small one changes them."""
    def weights(clip):
        out = tmp_path / f"clip-{clip}"
        _mpirun(pretrain_args(packed / "nat", out, steps=4, extra=["backend=horovod", "data.eval_split=",
                                                                   f"optim.grad_clip={clip}"]))
        return torch.load(out / "pre" / "last.ckpt", weights_only=True)["model"]
    free, loose, tight = weights(0), weights(1e9), weights(0.05)
    floats = [k for k in free if free[k].is_floating_point()]
    assert all(torch.equal(free[k], loose[k]) for k in floats)
    assert any(not torch.allclose(free[k], tight[k]) for k in floats)
