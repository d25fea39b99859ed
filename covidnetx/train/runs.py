"""`covidnetx runs CONFIG.yaml [CONFIG.yaml ...]`: run several resolved configs (pretrain or transfer)
one after another inside one launcher invocation, e.g. a sweep stage under one mpirun or one srun.
With --list FILE the configs are read from a file (one path per line); --index I picks line I only
(a Slurm array task)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from covidnetx import config as C
from covidnetx.train.runner import run_configs
from covidnetx.utils import UserError


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx runs", description=__doc__.split("\n")[0])
    p.add_argument("configs", nargs="*", help="resolved config files")
    p.add_argument("--list", default=None, help="file with one config path per line")
    p.add_argument("--index", type=int, default=None, help="run only line INDEX of --list (array task id)")
    return p


def run(args) -> int:
    paths = list(args.configs)
    if args.list:
        lines = [l.strip() for l in Path(args.list).read_text().splitlines() if l.strip()]
        if args.index is not None:
            if not 0 <= args.index < len(lines):
                print(f"covidnetx runs: error: --index {args.index} outside {args.list} ({len(lines)} lines)",
                      file=sys.stderr)
                return 2
            lines = [lines[args.index]]
        paths += lines
    if not paths:
        print("covidnetx runs: error: no config given", file=sys.stderr)
        return 2
    try:
        cfgs = [C.load_config(p) for p in paths]
    except UserError as e:
        print(f"covidnetx runs: error: {e}", file=sys.stderr)
        return 2
    return run_configs(cfgs, "runs")
