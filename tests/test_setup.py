"""The set-up (.ci/setup_env.sh) where the users are: a login without root and without Debian's tools (a
RHEL-family cluster), with MPI from a site module on PATH. It completes with what the environment provides,
or stops with one message naming what is missing and how to get it. (The Debian path with root is what
`make test` and CI run every time.) Runs the real script with a PATH that lacks dpkg, apt and sudo, and
whose `id` says uid 1000 (the script asks `id -u` whether it may install; it has no other use for root);
the venv is this checkout's, already set up, so no package is installed."""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

USER = 1000
DEBIAN = ("dpkg", "dpkg-query", "apt", "apt-get", "sudo")
MPI = ("mpicc", "mpicxx", "mpirun", "mpiexec", "orterun", "ompi_info")
SLURM = ("slurmctld", "slurmd", "sbatch", "srun", "munged")


def _path_without(names, uid: int | None = USER) -> str:
    """A folder of links to every command on this machine's standard PATH except ``names``; with ``uid``,
    an ``id`` that reports that user."""
    d = Path(tempfile.mkdtemp(prefix="covidnetx-path-"))
    if uid is not None:
        (d / "id").write_text(f'#!/bin/sh\nif [ "$1" = -u ]; then echo {uid}; else exec {shutil.which("id")} "$@"; fi\n')
        (d / "id").chmod(0o755)
    for src in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if not os.path.isdir(src):
            continue
        for e in os.scandir(src):
            if e.name not in names and not (d / e.name).exists() and os.access(e.path, os.X_OK):
                (d / e.name).symlink_to(e.path)
    return str(d)


def _setup(path: str, **env) -> subprocess.CompletedProcess:
    home = Path(tempfile.mkdtemp(prefix="covidnetx-home-"))
    base = {"PATH": path, "HOME": str(home), "VENV": str(REPO / ".venv"), "LANG": "C.UTF-8",
            "COVIDNETX_WHEELHOUSE": str(home / "wheels")}
    try:
        return subprocess.run(["bash", str(REPO / ".ci" / "setup_env.sh")], capture_output=True, text=True,
                              timeout=300, cwd="/", env={**base, **env})
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def set_up_venv():
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("needs the checkout's .venv (make setup)")


def test_without_root_or_debian_tools_the_site_mpi_is_used():
    if shutil.which("mpicc") is None:
        pytest.skip("no MPI on this machine's PATH to stand for a site module")
    r = _setup(_path_without(DEBIAN), COVIDNETX_GPU="0", COVIDNETX_TEST_CLUSTER="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "/mpirun (mpirun (Open MPI)" in r.stdout.split("[setup] MPI: ")[1].splitlines()[0], r.stdout
    assert "the local Slurm test cluster runs its daemons as root: its tests will skip" in r.stdout
    assert "[setup] horovod present" in r.stdout and f"[setup] ready: {REPO / '.venv'}" in r.stdout
    assert "apt-get" not in r.stdout + r.stderr


def test_without_an_mpi_the_one_message_says_how_to_get_one():
    r = _setup(_path_without(DEBIAN + MPI), COVIDNETX_GPU="0")
    assert r.returncode == 1
    assert r.stderr.count("[setup] error:") == 1, r.stderr
    assert "MPI: mpicc and mpirun are not on PATH" in r.stderr and "module load" in r.stderr
    assert "dnf install openmpi openmpi-devel" in r.stderr
    assert "ready" not in r.stdout and "pip install" not in r.stdout       # stopped before anything else


def test_the_test_cluster_without_slurm_and_without_apt_names_both_ways_on():
    r = _setup(_path_without(DEBIAN + SLURM, uid=None), COVIDNETX_GPU="0", COVIDNETX_TEST_CLUSTER="1")
    assert r.returncode == 1 and r.stderr.count("[setup] error:") == 1, r.stdout + r.stderr
    assert "the local test cluster of make test: slurmctld slurmd sbatch srun munged not found" in r.stderr
    assert "make test COVIDNETX_TEST_CLUSTER=0" in r.stderr
    # ... and without the test cluster the same machine sets up
    r = _setup(_path_without(DEBIAN + SLURM, uid=None), COVIDNETX_GPU="0", COVIDNETX_TEST_CLUSTER="0")
    assert r.returncode == 0 and "[setup] ready:" in r.stdout, r.stdout + r.stderr


def test_a_gpu_build_asked_for_without_a_cuda_toolkit_is_one_error():
    r = _setup(_path_without(DEBIAN + ("nvcc",)), COVIDNETX_GPU="1")
    assert r.returncode == 1 and r.stderr.count("[setup] error:") == 1
    assert "COVIDNETX_GPU=1 needs a CUDA toolkit: nvcc is not on PATH (on a cluster: module load CUDA)" in r.stderr
    r = _setup(_path_without(DEBIAN), COVIDNETX_GPU="yes")
    assert r.returncode == 1 and "COVIDNETX_GPU=yes: use auto, 0 or 1" in r.stderr
