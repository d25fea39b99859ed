"""Training under real launchers with 2 processes, on the real data in ../shared/data: pre-train on
natural-small, transfer to cxr-small in all three regimes (mpirun + Horovod/MPI), a DALI-fed run under
horovodrun --gloo, and the torch.distributed backend under mpirun."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from covidnetx.launch import mpirun_cmd
from covidnetx.results import REQUIRED_FIELDS, load_results
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


def _check_row(row, world=2):
    for k in REQUIRED_FIELDS:
        assert k in row, k
        if k not in ("shots", "source_fraction"):
            assert row[k] is not None, k
    assert row["world_size"] == world and row["ranks_in_sync"] is True
    assert row["global_batch"] == 16 * world


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
    assert {r["train_size"] for r in by["fewshot"] if r["shots"] == 3} == {9}
    assert by["linear"][0]["trainable_params"] < by["full"][0]["trainable_params"]
    for name in ("full", "lin", "fs-k1-s0"):
        assert [s for s, _ in scalars(out / name, "train/loss")][-1] in (6, 12)
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
