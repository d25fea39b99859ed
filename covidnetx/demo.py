"""`covidnetx demo`: the main job, a complete miniature transfer-scaling study.

On the built-in default: generate a natural-like source, an X-ray-like source (classes unlike the
target's) and an X-ray-like target; pack all three with ``mpirun -np N`` and verify them; pre-train 3
model sizes on 3 source fractions of each source (np=N); transfer every pre-trained model to the target
(full fine-tuning and linear probe) and the largest one per source few-shot (k x seeds); fit scaling
laws; write the report and plots. ``--source DIR --target DIR`` runs the same study on given raw
folders (csv layout with labels.csv, or imagefolder), e.g. ../shared/data's natural-small and cxr-small.
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
    p.add_argument("--models", default="resnet_w4,resnet_w8,resnet_w16")
    p.add_argument("--fractions", default="0.25,0.5,1.0")
    p.add_argument("--pretrain-steps", type=int, default=60)
    p.add_argument("--transfer-steps", type=int, default=30)
    p.add_argument("--shots", default="1,5")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--pack-only", action="store_true", help="stop after packing and verifying")
    return p


def _kind(raw: Path) -> str:
    return "csv" if (raw / "labels.csv").is_file() else "imagefolder"


def _has_split_column(raw: Path) -> bool:
    f = raw / "labels.csv"
    return f.is_file() and "split" in f.read_text().splitlines()[0].split(",")


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
                        "--seed", args.seed, "--no-progress", "--size", args.size or args.image_size]
        if _has_split_column(raw):          # official train/test: carve a patient-grouped val from train
            cmd += ["--val-fraction", "0.1"]
        _run(cmd)
        _run([sys.executable, "-m", "covidnetx.cli", "verify", dst])
        packed[name] = dst
    names = list(packed)
    sources, target = names[:-1], names[-1]
    _run([sys.executable, "-m", "covidnetx.cli", "inspect", *[packed[s] for s in sources], "--rows", "0",
          "--label-space", "union", "--fraction", "0.25", "--seed", args.seed])
    if args.pack_only:
        print(f"demo (pack only) finished in {time.time() - t0:.0f} s; packed datasets under {out / 'packed'}")
        return 0
    sweep = write_sweep(out, packed, sources, target, args)
    from covidnetx.sweep import main as sweep_main
    code = sweep_main([str(sweep), "--np", str(args.nprocs)])
    if code:
        raise UserError(f"the study failed (exit {code}); rerun to resume")
    print(f"demo finished in {time.time() - t0:.0f} s; report: {out / 'study' / 'report' / 'report.md'}")
    return 0


def _domain(name: str) -> str:
    return "natural" if ("natural" in name or "cifar" in name) else "xray"


def write_sweep(out: Path, packed: dict, sources: list, target: str, args) -> Path:
    import yaml
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    sw = {
        "name": "demo", "out_dir": str(out / "study"), "np": args.nprocs,
        "base": {"threads": 1, "bootstrap": 100, "log_every": 5, "seed": args.seed, "alignment_samples": 128,
                 "data": {"image_size": args.image_size, "workers": 0},
                 "optim": {"batch_size": 32, "base_batch": 64}},
        "sources": {s: {"data": [str(packed[s])], "domain": _domain(s)} for s in sources},
        "target": {"data": [str(packed[target])], "domain": "xray", "name": target},
        "models": args.models.split(","), "fractions": [float(x) for x in args.fractions.split(",")],
        "pretrain": {"steps": [args.pretrain_steps],
                     "config": {"data": {"eval_split": "val"},
                                "optim": {"lr": 0.2, "schedule": "cosine", "warmup_steps": 3, "weight_decay": 1e-4}}},
        "transfer": {"regimes": ["full", "linear", "fewshot"], "shots": ints(args.shots), "seeds": ints(args.seeds),
                     "fewshot_from": "largest",
                     "config": {"data": {"eval_split": "test"},
                                "optim": {"steps": args.transfer_steps, "lr": 0.05, "warmup_steps": 3}}},
        "fit": {"metric": "accuracy"},
    }
    path = out / "sweep.yaml"
    path.write_text(yaml.safe_dump(sw, sort_keys=False))
    return path


def main(argv=None) -> int:
    from covidnetx.utils import run_main
    return run_main("covidnetx demo", build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
