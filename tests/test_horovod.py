"""Horovod is really built (PyTorch, MPI, Gloo) and its collectives give the right values under real
launchers: mpirun -np 2 (MPI controller) and horovodrun -np 2 --gloo."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from covidnetx.launch import mpirun_cmd
from tests.conftest import REPO, need_mpirun

hvd = pytest.importorskip("horovod.torch", reason="horovod not installed (make setup builds it)")
HOROVODRUN = str(Path(sys.executable).with_name("horovodrun"))
SCRIPT = str(REPO / "tests" / "mp" / "hvd_collectives.py")


def test_check_build_reports_pytorch_mpi_gloo():
    out = subprocess.run([HOROVODRUN, "--check-build"], capture_output=True, text=True, timeout=120).stdout
    frameworks = out.split("Available Frameworks:")[1].split("Available Controllers:")[0]
    controllers = out.split("Available Controllers:")[1].split("Available Tensor Operations:")[0]
    ops = out.split("Available Tensor Operations:")[1]
    assert "[X] PyTorch" in frameworks
    assert "[X] MPI" in controllers and "[X] Gloo" in controllers
    assert "[X] MPI" in ops and "[X] Gloo" in ops


def _check(out_dir: Path, controller: str):
    res = sorted((json.loads(p.read_text()) for p in out_dir.glob("rank*.json")), key=lambda d: d["rank"])
    assert [d["rank"] for d in res] == [0, 1]
    for d in res:
        assert d["size"] == 2
        assert d["sum"] == [3.0, 30.0]
        assert d["avg"] == [1.5, 15.0]
        assert d["bcast"] == [100.0, 100.0, 100.0]
        assert d["gather"] == [0.0, 1.0]
        assert d["controller"] == controller
        assert d["gloo_built"] and d["mpi_built"]


def test_collectives_under_mpirun(tmp_path):
    need_mpirun()
    r = subprocess.run(mpirun_cmd(2) + [sys.executable, SCRIPT, str(tmp_path)], capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    _check(tmp_path, "mpi")


def test_collectives_under_horovodrun_gloo(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_COMM", "PMIX_", "HOROVOD_"))}
    r = subprocess.run([HOROVODRUN, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, SCRIPT,
                        str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    _check(tmp_path, "gloo")


def test_gloo_check_accepts_horovodrun_and_refuses_gloo_without_rendezvous():
    from covidnetx.dist import _check_gloo_env
    from covidnetx.utils import UserError
    _check_gloo_env({})                                                                     # mpirun / srun
    _check_gloo_env({"HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo",
                     "HOROVOD_GLOO_RENDEZVOUS_ADDR": "10.0.0.1"})                           # horovodrun --gloo
    _check_gloo_env({"HOROVOD_CPU_OPERATIONS": "mpi"})
    with pytest.raises(UserError, match="^HOROVOD_CPU_OPERATIONS=gloo but no Gloo rendezvous"):
        _check_gloo_env({"HOROVOD_CPU_OPERATIONS": "GLOO"})
    with pytest.raises(UserError, match="^HOROVOD_CONTROLLER=gloo and HOROVOD_CPU_OPERATIONS=gloo but"):
        _check_gloo_env({"HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo"})


def test_launch_check_under_mpirun_and_what_it_refuses():
    """`covidnetx launch-check` under mpirun -np 2: both ranks, local ranks 0 and 1 on one node, the
    allreduce checked; and its verdicts on planted bad launches."""
    need_mpirun()
    r = subprocess.run(mpirun_cmd(2) + [sys.executable, "-m", "covidnetx.cli", "launch-check"], capture_output=True,
                       text=True, cwd=REPO, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    [line] = [l for l in r.stdout.splitlines() if l.startswith("LAUNCH ")]
    d = json.loads(line[7:])
    assert d["size"] == 2 and d["allreduce_sum"] == 3 and d["problems"] == []
    assert [(x["rank"], x["local_rank"]) for x in d["ranks"]] == [(0, 0), (1, 1)]
    assert "rank 1/2: node" in r.stdout
    from covidnetx.launch_check import problems

    def rank(i, node, local, gpu=None):
        return {"rank": i, "node": node, "local_rank": local, "gpu_ids": [gpu] if gpu else []}
    good = [rank(0, "0", 0, "0"), rank(1, "0", 1, "1"), rank(2, "1", 0, "0"), rank(3, "1", 1, "1")]
    assert problems(good, 10.0) == []
    assert problems(good, 9.0) == ["allreduce of 1..4 gave 9, not 10"]
    assert problems([rank(0, "0", 0), rank(1, "0", 0)], 3.0) == ["ranks [0, 1] share node '0' local rank 0"]
    assert problems([rank(0, "0", 0, "0"), rank(1, "0", 1, "0")], 3.0) == [
        "ranks [0, 1] of node '0' were given the same GPU 0"]
