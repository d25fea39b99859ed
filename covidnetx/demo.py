"""`covidnetx demo`: the main job, a miniature transfer-scaling study with a known answer.

It is `covidnetx study --preset demo --out demo_out` (covidnetx.study): generate a natural-like source,
an X-ray-like source whose classes are built from the primitives that separate the target's classes (a
planted answer: it must transfer better, and more of it better), and an X-ray-like target; pack and
verify them under ``mpirun -np N``; pre-train one width at 5 source sizes (12 ... 800 images) on each
source with 3 seeds; linear probes from every checkpoint, few-shot probes from the largest, a
from-scratch baseline; fit and report. The report should show the planted ordering (intra - inter > 0
with a CI over checkpoints) and a data law for the X-ray source that passes its backtest.
"""
from __future__ import annotations

import argparse
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
