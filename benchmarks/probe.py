"""A few-shot grid two ways, side by side: probes on cached features vs one training run per cell.

  python benchmarks/probe.py [--model resnet_w8] [--shots 1,5,10] [--seeds 0,1,2,3,4] [--steps 100]

Generates and packs a small X-ray-like target and source, pre-trains one checkpoint, then runs the same
k x seeds few-shot grid (a) as logistic-regression probes on frozen features, which are extracted once
and cached (``fewshot_mode=linear``, the default), and (b) as one fine-tuning run per cell with --steps
steps (``fewshot_mode=full``, how every few-shot cell was run before probes). Both in one process,
one after the other; prints the wall time of each grid, the ratio, and the mean test accuracy of each.
Writes bench_out/bench-probe-<hardware>.csv.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import hardware_tag, machine_line, write_csv  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet_w8")
    p.add_argument("--shots", default="1,5,10")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps per cell in grid (b)")
    p.add_argument("--per-class", type=int, default=60, help="generated images per class")
    p.add_argument("--out", default="bench_out")
    args = p.parse_args(argv)
    from covidnetx.cli import main as cli
    from covidnetx.results import load_results
    from data_tools.synth import generate
    work = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    raw = generate(work / "raw", per_class=args.per_class, target_per_class=args.per_class, seed=0)
    for name in ("xray-source", "xray-target"):
        assert cli(["pack", "csv", raw[name], str(work / name), "--size", "32", "--no-progress"]) == 0
    common = ["backend=none", "threads=1", "bootstrap=50", "log_every=50", f"model.name={args.model}"]
    assert cli(["pretrain", f"data.sources=[{work / 'xray-source'}]", f"out_dir={work / 'runs'}", "run_name=pre",
                "optim.steps=100", "optim.lr=0.1", "optim.base_batch=32", *common]) == 0
    ck = work / "runs" / "pre" / "last.ckpt"
    grid = [f"shots=[{args.shots}]", f"seeds=[{args.seeds}]", "regime=fewshot", "hyperrule=false"]
    times, acc = {}, {}
    for mode, extra in (("probe", ["fewshot_mode=linear"]),
                        ("train", ["fewshot_mode=full", f"optim.steps={args.steps}", "optim.lr=0.05",
                                   "optim.base_batch=32", "optim.warmup_steps=5", "optim.schedule=cosine"])):
        out = work / mode
        t0 = time.perf_counter()
        assert cli(["transfer", f"data.sources=[{work / 'xray-target'}]", f"out_dir={out}", f"model.init_from={ck}",
                    "run_name=fs", "data.eval_split=test", *grid, *common, *extra]) == 0
        times[mode] = time.perf_counter() - t0
        rows = load_results(out / "results.jsonl")
        acc[mode] = statistics.fmean(r["accuracy"] for r in rows)
        n = len(rows)
    ratio = times["train"] / times["probe"]
    print(f"\n{machine_line()}; {args.model}, few-shot grid k in {{{args.shots}}} x seeds {{{args.seeds}}} "
          f"({n} cells)")
    print(f"  probes on cached features (one feature pass): {times['probe']:.1f} s, mean accuracy "
          f"{100 * acc['probe']:.1f}%")
    print(f"  one fine-tuning run per cell ({args.steps} steps): {times['train']:.1f} s, mean accuracy "
          f"{100 * acc['train']:.1f}%")
    print(f"  probes are {ratio:.1f}x faster for the whole grid")
    write_csv(Path(args.out) / f"bench-probe-{hardware_tag()}.csv",
              [{"mode": m, "cells": n, "seconds": round(times[m], 2), "mean_accuracy": round(acc[m], 4),
                "model": args.model, "steps": args.steps if m == "train" else 0} for m in times])
    return 0


if __name__ == "__main__":
    sys.exit(main())
