"""Project weak-scaling efficiency of data-parallel training to 4 ... 1,024 GPUs on JUWELS Booster.

  python benchmarks/project.py [--img-per-s 2470] [--batch 256] [--grad-bytes 4] [--step-cv 0.031]

Model (benchmarks/perfmodel.py): step = compute + exposed hierarchical allreduce of the fp32 gradients,
and in a second table + the wait for the slowest of N ranks (stragglers) from the step-time variation of
one GPU (default: measured on one H100 by benchmarks/gpu_check.py, kept in benchmarks/results/).
Compute per step: batch / (one A100's ResNet-50 throughput) scaled to each model by its forward FLOPs at
224 px; the default 2,470 img/s is NVIDIA's published ResNet-50 AMP figure for one A100 (override with a
measured one). Efficiencies are given with no overlap (upper bound on cost) and with the allreduce fully
overlapped with the backward pass (lower bound). Every assumption is printed with the table.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_csv  # noqa: E402

COUNTS = [4, 8, 16, 32, 64, 128, 256, 512, 1024]
MODELS = ["resnet50", "resnet101", "resnet152", "bit_r50x1", "bit_r101x1", "bit_r50x3", "bit_r101x3", "bit_r152x2",
          "bit_r152x4"]

GPU_RUN = Path(__file__).resolve().parent / "results" / "gpu-h100" / "run2-bench-gpu-check.csv"


def measured_step_cv(path: Path = GPU_RUN, what: str = "resnet50-bf16-synthetic") -> float:
    """Coefficient of variation of one GPU's step time (from the rate's 1.96-sigma spread over timed steps)."""
    for row in csv.DictReader(path.open()):
        if row["what"] == what:
            return float(row["ci95"]) / 1.96 / float(row["img_per_s"])
    raise SystemExit(f"{path}: no row {what!r}")


def main(argv=None) -> int:
    from covidnetx.models import count_params, create_model, flops_per_sample
    from benchmarks.perfmodel import Machine, project
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--img-per-s", type=float, default=2470.0, help="ResNet-50 img/s on one GPU (reference point)")
    ap.add_argument("--batch", type=int, default=256, help="batch per GPU")
    ap.add_argument("--grad-bytes", type=int, default=4, help="bytes per gradient element (4 fp32, 2 fp16 compression)")
    ap.add_argument("--step-cv", type=float, default=None,
                    help="per-step compute time variation of one GPU (std/mean) for the straggler wait; default: "
                         "ResNet-50 bf16 synthetic steps measured on one H100 (benchmarks/results/gpu-h100/)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args(argv)
    m = Machine()
    if args.step_cv is None:
        cv, cv_source = measured_step_cv(), f"measured: ResNet-50 bf16 synthetic steps on one H100 ({GPU_RUN.name})"
    else:
        cv, cv_source = args.step_cv, "given (--step-cv)"
    if cv < 0:
        raise SystemExit(f"--step-cv {cv}: must be >= 0")
    ref = create_model("resnet50", 3)
    ref_flops = flops_per_sample(ref, 224)
    t_ref = args.batch / args.img_per_s
    rows = []
    header = "| model | params | step compute (s) | " + " | ".join(f"{n}" for n in COUNTS) + " |"
    grads = "fp32" if args.grad_bytes == 4 else "fp16"
    md = [f"Projected weak-scaling efficiency on {m.name} (no overlap / full overlap), batch {args.batch} per GPU, "
          f"{grads} gradients; communication only:", "", header, "|" + "---|" * (3 + len(COUNTS))]
    md_s = [f"The same with the wait for the slowest rank (step-time variation {100 * cv:.1f}% per GPU, ranks "
            f"independent):", "", header, "|" + "---|" * (3 + len(COUNTS))]
    for name in args.models.split(","):
        model = create_model(name, 1000)
        params = count_params(model)
        t_c = t_ref * flops_per_sample(model, 224) / ref_flops
        runs = {(ov, c): project(params, t_c, COUNTS, m, grad_bytes_per_param=args.grad_bytes, overlap=ov, step_cv=c)
                for ov in (0.0, 1.0) for c in (0.0, cv)}
        for table, c in ((md, 0.0), (md_s, cv)):
            table.append(f"| {name} | {params / 1e6:.1f}M | {t_c:.3f} | " + " | ".join(
                f"{100 * a[3]:.0f}/{100 * b[3]:.0f}%" for a, b in zip(runs[0.0, c], runs[1.0, c])) + " |")
        for i, n in enumerate(COUNTS):
            rows.append({"model": name, "params": params, "gpus": n, "allreduce_s": round(runs[0.0, 0.0][i][1], 6),
                         "step_compute_s": round(t_c, 5), "eff_no_overlap": round(runs[0.0, 0.0][i][3], 4),
                         "eff_full_overlap": round(runs[1.0, 0.0][i][3], 4), "step_cv": round(cv, 4),
                         "eff_no_overlap_stragglers": round(runs[0.0, cv][i][3], 4),
                         "eff_full_overlap_stragglers": round(runs[1.0, cv][i][3], 4)})
        del model
    md += [""] + md_s
    md += ["", "Assumptions:", f"- compute: ResNet-50 at {args.img_per_s:g} img/s per GPU (default: NVIDIA's published "
           "A100 AMP figure), other models scaled by forward FLOPs at 224 px (same utilisation assumed)"]
    md += [f"- {k}: {v}" for k, v in m.sources.items()]
    md += ["- hierarchical allreduce (NCCL ring inside a node, ring across nodes per GPU shard); backward = 2/3 "
           "of compute; no data-loading stalls",
           f"- stragglers (second table): each rank's compute per step varies by {100 * cv:.1f}% (std/mean; {cv_source}), "
           "independently across ranks; a step waits for the slowest: + cv x compute x E[max of N standard normals]"]
    print("\n".join(md))
    out = Path(args.out)
    write_csv(out / f"projection-juwels-booster-b{args.batch}.csv", rows)
    (out / f"projection-juwels-booster-b{args.batch}.md").write_text("\n".join(md) + "\n")
    print(f"\nwrote {out}/projection-juwels-booster-b{args.batch}.csv and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
