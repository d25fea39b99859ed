"""`covidnetx bench NAME [ARGS...]`: run one of the benchmarks in benchmarks/ (pack, loader, train,
allreduce, scaling, project, probe, gpu_check) with this interpreter. `allreduce` needs a launcher:
`mpirun -np 2 covidnetx bench allreduce`."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from covidnetx.utils import UserError

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
NAMES = ("pack", "loader", "train", "allreduce", "scaling", "project", "probe", "gpu_check")


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx bench", description=__doc__.split("\n")[0])
    p.add_argument("name", choices=NAMES)
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark (see its --help)")
    return p


def run(args) -> int:
    script = BENCH_DIR / f"{args.name}.py"
    if not script.is_file():
        raise UserError(f"{script} not found (benchmarks/ ships with the source tree, not the wheel)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH_DIR.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(script), *args.args], env=env).returncode
