"""`covidnetx generate OUT_DIR`: the built-in synthetic raw datasets (see data_tools.synth)."""
from __future__ import annotations

import argparse
from typing import Optional

from data_tools.synth import generate


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx generate", description=__doc__)
    p.add_argument("out_dir")
    p.add_argument("--per-class", type=int, default=160, help="images per class in the two sources")
    p.add_argument("--xray-per-class", type=int, default=None, help="images per class in the X-ray source (default --per-class)")
    p.add_argument("--target-per-class", type=int, default=100, help="images per class in the target")
    p.add_argument("--size", type=int, default=64, help="X-ray image size")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args) -> int:
    paths = generate(args.out_dir, args.per_class, args.target_per_class, args.seed, args.size, args.xray_per_class)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
