"""`covidnetx demo`: the main job on the built-in default data (or on given raw folders).

At this stage of the toolkit: generate the synthetic multi-domain raw data (natural-like source,
X-ray-like source, X-ray-like target), pack all three with ``mpirun -np N``, verify each, and print a
summary with the merged label space of the two sources and a few-shot selection of the target.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from covidnetx.launch import mpirun_cmd
from covidnetx.utils import UserError


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="demo_out", help="working folder (raw data, packed data, reports)")
    p.add_argument("--np", dest="nprocs", type=int, default=2, help="MPI ranks for packing (1 = no mpirun)")
    p.add_argument("--source", action="append", default=None,
                   help="raw source folder (csv layout with labels.csv, or imagefolder); repeatable")
    p.add_argument("--target", default=None, help="raw target folder (csv layout with labels.csv)")
    p.add_argument("--size", type=int, default=None, help="pack size (default: keep the images' size)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _kind(raw: Path) -> str:
    return "csv" if (raw / "labels.csv").is_file() else "imagefolder"


def _run(cmd: list) -> None:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    r = subprocess.run([str(c) for c in cmd])
    if r.returncode != 0:
        raise UserError(f"step failed with exit code {r.returncode}: {' '.join(str(c) for c in cmd)}")


def run(args) -> int:
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.source or args.target:
        if not (args.source and args.target):
            raise UserError("--source and --target go together")
        raws = {f"source{i}-{Path(s).name}": Path(s) for i, s in enumerate(args.source)}
        raws[f"target-{Path(args.target).name}"] = Path(args.target)
    else:
        from data_tools.synth import generate
        paths = generate(out / "raw", seed=args.seed)
        raws = {"natural": Path(paths["natural"]), "xray-source": Path(paths["xray-source"]),
                "xray-target": Path(paths["xray-target"])}
        print(f"generated raw data under {out / 'raw'}")
    prefix = mpirun_cmd(args.nprocs) if args.nprocs > 1 else []
    packed = {}
    for name, raw in raws.items():
        dst = out / "packed" / name
        cmd = prefix + [sys.executable, "-m", "covidnetx.cli", "pack", _kind(raw), raw, dst,
                        "--seed", args.seed, "--no-progress"]
        if args.size:
            cmd += ["--size", args.size]
        _run(cmd)
        _run([sys.executable, "-m", "covidnetx.cli", "verify", dst])
        packed[name] = dst
    names = list(packed)
    sources, target = names[:-1], names[-1]
    _run([sys.executable, "-m", "covidnetx.cli", "inspect", *[packed[s] for s in sources], "--rows", "0",
          "--label-space", "union", "--fraction", "0.25", "--seed", args.seed])
    _run([sys.executable, "-m", "covidnetx.cli", "inspect", packed[target], "--rows", "2", "--shots", "5",
          "--seed", args.seed])
    print(f"demo finished in {time.time() - t0:.0f} s; packed datasets under {out / 'packed'}")
    return 0


def main(argv=None) -> int:
    try:
        return run(build_parser().parse_args(argv))
    except UserError as e:
        print(f"covidnetx demo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
