import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("COVIDNETX_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")


def shared(name: str) -> Path:
    p = SHARED_DATA / name
    if not (p / "labels.csv").is_file():
        pytest.skip(f"real data {p} is absent (tests read ../shared/data; set COVIDNETX_SHARED_DATA)")
    return p


@pytest.fixture(scope="session")
def cxr_small() -> Path:
    return shared("cxr-small")


@pytest.fixture(scope="session")
def natural_small() -> Path:
    return shared("natural-small")


def need_mpirun():
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun not installed (make setup installs Open MPI)")


def run_cli(*args, np_: int = 1, check: bool = True, timeout: int = 600, env=None) -> subprocess.CompletedProcess:
    """Run `python -m covidnetx.cli ARGS` in a subprocess, optionally under mpirun -np N."""
    from covidnetx.launch import mpirun_cmd
    cmd = [sys.executable, "-m", "covidnetx.cli", *map(str, args)]
    if np_ > 1:
        need_mpirun()
        cmd = mpirun_cmd(np_) + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                       env={**os.environ, **(env or {})})
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def synth_raw(tmp_path_factory) -> dict:
    from data_tools.synth import generate
    out = tmp_path_factory.mktemp("synth")
    return {k: Path(v) for k, v in generate(out, per_class=40, target_per_class=30, seed=1).items()}


def write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def tree_bytes(root: Path) -> dict:
    """{relative path: bytes} of every file under root (for byte-identity comparisons)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def packed(tmp_path_factory, cxr_small, natural_small) -> Path:
    """natural-small (32 px RGB, val carved from train) and cxr-small (packed at 32 px), once per session."""
    root = tmp_path_factory.mktemp("packed")
    run_cli("pack", "csv", natural_small, root / "nat", "--no-progress", "--val-fraction", "0.1")
    run_cli("pack", "csv", cxr_small, root / "cxr", "--size", "32", "--no-progress")
    return root


# ------------------------------------------------------------------------------------------- markers
# `pytest -m "not mp"` is the fast loop: it leaves out the tests that launch several processes (mpirun,
# horovodrun, the local Slurm cluster) or a whole study. A test is "mp" when its module is one of these
# or its own source launches one of them, so a new test is marked by what it does, not by memory.
MP_MODULES = {"test_train_mp", "test_horovod", "test_slurm", "test_planted"}
MP_WORDS = ("mpirun", "np_=2", "np_=np_", "need_mpirun", "horovodrun", "study.run", '"study"', "slurm_cluster",
            '"demo"', "benchmarks/")


def pytest_configure(config):
    config.addinivalue_line("markers", "mp: launches several processes (mpirun, horovodrun, Slurm) or a whole "
                                       "study; `pytest -m 'not mp'` is the fast loop")


def pytest_collection_modifyitems(config, items):
    import inspect
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        try:
            src = inspect.getsource(item.function)
        except (OSError, TypeError):
            src = ""
        if module in MP_MODULES or any(w in src for w in MP_WORDS):
            item.add_marker(pytest.mark.mp)
