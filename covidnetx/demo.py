"""`covidnetx demo`: the main job, a miniature transfer-scaling study on built-in generated data.

It is `covidnetx study --preset demo --out demo_out` (covidnetx.study): generate a natural-like source,
an X-ray-like source and an X-ray-like target; pack and verify them under ``mpirun -np N``; pre-train
3 widths and 3 source sizes on each source with 2 seeds; transfer every checkpoint (full fine-tuning,
linear probe), few-shot probes from the largest, a from-scratch baseline; fit and report. Its fits
honestly come out ``refused`` (3 widths, 3 sizes: a law needs 5); `covidnetx study` is the full design.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from covidnetx import study


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = study.build_parser(parser or argparse.ArgumentParser(prog="covidnetx demo"))
    p.description = __doc__.split("\n\n")[0]
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.set_defaults(preset="demo", out="demo_out")
    return p


def run(args) -> int:
    return study.run(args)


def main(argv=None) -> int:
    from covidnetx.utils import run_main
    return run_main("covidnetx demo", build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
