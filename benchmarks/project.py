"""Project weak-scaling efficiency of data-parallel training to 4 ... 1,024 GPUs on JUWELS Booster.

  python benchmarks/project.py [--img-per-s 2470] [--batch 256] [--overlap 0,1] [--grad-bytes 4]

Model (covidnetx/perfmodel.py): step = compute + exposed hierarchical allreduce of the fp32 gradients.
Compute per step: batch / (one A100's ResNet-50 throughput) scaled to each model by its forward FLOPs at
224 px; the default 2,470 img/s is NVIDIA's published ResNet-50 AMP figure for one A100 (override with a
measured one). Efficiencies are given with no overlap (upper bound on cost) and with the allreduce fully
overlapped with the backward pass (lower bound). Every assumption is printed with the table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_csv  # noqa: E402

COUNTS = [4, 8, 16, 32, 64, 128, 256, 512, 1024]
MODELS = ["resnet50", "resnet101", "resnet152", "bit_r50x1", "bit_r101x1", "bit_r50x3", "bit_r101x3", "bit_r152x2",
          "bit_r152x4"]


def main(argv=None) -> int:
    from covidnetx.models import count_params, create_model, flops_per_sample
    from covidnetx.perfmodel import Machine, project
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--img-per-s", type=float, default=2470.0, help="ResNet-50 img/s on one GPU (reference point)")
    ap.add_argument("--batch", type=int, default=256, help="batch per GPU")
    ap.add_argument("--grad-bytes", type=int, default=4, help="bytes per gradient element (4 fp32, 2 fp16 compression)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args(argv)
    m = Machine()
    ref = create_model("resnet50", 3)
    ref_flops = flops_per_sample(ref, 224)
    t_ref = args.batch / args.img_per_s
    rows, md = [], []
    header = "| model | params | step compute (s) | " + " | ".join(f"{n}" for n in COUNTS) + " |"
    md += [f"Projected weak-scaling efficiency on {m.name} (no overlap / full overlap), batch {args.batch} per GPU, "
           f"{'fp32' if args.grad_bytes == 4 else 'fp16'} gradients:", "", header, "|" + "---|" * (3 + len(COUNTS))]
    for name in args.models.split(","):
        model = create_model(name, 1000)
        params = count_params(model)
        t_c = t_ref * flops_per_sample(model, 224) / ref_flops
        no = project(params, t_c, COUNTS, m, grad_bytes_per_param=args.grad_bytes, overlap=0.0)
        full = project(params, t_c, COUNTS, m, grad_bytes_per_param=args.grad_bytes, overlap=1.0)
        md.append(f"| {name} | {params / 1e6:.1f}M | {t_c:.3f} | " +
                  " | ".join(f"{100 * a[3]:.0f}/{100 * b[3]:.0f}%" for a, b in zip(no, full)) + " |")
        for a, b in zip(no, full):
            rows.append({"model": name, "params": params, "gpus": a[0], "allreduce_s": round(a[1], 6),
                         "step_compute_s": round(t_c, 5), "eff_no_overlap": round(a[3], 4),
                         "eff_full_overlap": round(b[3], 4)})
        del model
    md += ["", "Assumptions:", f"- compute: ResNet-50 at {args.img_per_s:g} img/s per GPU (default: NVIDIA's published "
           "A100 AMP figure), other models scaled by forward FLOPs at 224 px (same utilisation assumed)"]
    md += [f"- {k}: {v}" for k, v in m.sources.items()]
    md += ["- hierarchical allreduce (NCCL ring inside a node, ring across nodes per GPU shard); backward = 2/3 "
           "of compute; no data-loading stalls; no stragglers"]
    print("\n".join(md))
    out = Path(args.out)
    write_csv(out / f"projection-juwels-booster-b{args.batch}.csv", rows)
    (out / f"projection-juwels-booster-b{args.batch}.md").write_text("\n".join(md) + "\n")
    print(f"\nwrote {out}/projection-juwels-booster-b{args.batch}.csv and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
