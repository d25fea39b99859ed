"""Allreduce latency and bandwidth vs message size, plus the fused gradient sizes of the registered
models, through Horovod (default) or torch.distributed (NCCL on GPUs, gloo on CPUs). Run under a launcher:

  mpirun -np 2 python benchmarks/allreduce.py        (or: srun -n N ..., horovodrun -np N ...)
  python benchmarks/allreduce.py --backend torch     (one process: the single-GPU floor of NCCL)

Prints per size: mean time ± 1.96σ, algorithm bandwidth (bytes / time) and bus bandwidth
(2 (N-1)/N x bytes / time, comparable across N). Rank 0 writes bench_out/bench-allreduce-<hw>-np<N>.csv.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import hardware_tag, mean_ci, write_csv  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-bytes", type=int, default=64 << 20)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--models", default="resnet_w8,resnet_w32,resnet18,resnet50")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--backend", choices=("horovod", "torch"), default="horovod")
    args = ap.parse_args(argv)
    import torch
    from covidnetx import dist as cdist
    from covidnetx.models import count_params, create_model
    d = cdist.init(args.backend, "auto")
    n, rank, dev = d.size, d.rank, d.device
    if args.backend == "horovod":
        import horovod.torch as hvd

        def allreduce(t, nbytes):
            # in place, as DistributedOptimizer reduces gradients: an out-of-place allreduce also times
            # the page faults of a fresh output buffer (on this 2-core machine 20-30 ms for 45 MB)
            hvd.allreduce_(t, op=hvd.Sum, name=f"bench.{nbytes}")
    else:
        import torch.distributed as td

        def allreduce(t, nbytes):
            td.all_reduce(t)
    sizes = []
    b = 4
    while b <= args.max_bytes:
        sizes.append(("", b))
        b *= 4
    for name in args.models.split(","):
        sizes.append((name, 4 * count_params(create_model(name, 3))))
    rows = []
    if rank == 0:
        print(f"# {args.backend} allreduce (sum, fp32), np={n}, {dev.type}; {args.reps} timed reps after 3 warm-up")
    for label, nbytes in sizes:
        t = torch.ones(nbytes // 4, device=dev)
        times = []
        for i in range(args.reps + 3):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            allreduce(t, nbytes)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
        m, c = mean_ci(times)
        if rank == 0:
            algbw = nbytes / m
            busbw = 2 * (n - 1) / n * algbw if n > 1 else algbw
            print(f"{label or '':>10} {nbytes:>12,d} B: {1e6 * m:10.1f} ± {1e6 * c:8.1f} us   "
                  f"alg {algbw / 1e9:7.3f} GB/s   bus {busbw / 1e9:7.3f} GB/s")
            rows.append({"backend": args.backend, "model": label, "bytes": nbytes, "np": n, "mean_s": m, "ci95_s": c, "algbw_GBps": algbw / 1e9,
                         "busbw_GBps": busbw / 1e9})
    # the training engine's per-step stop-flag agreement. A step here = ~20 ms of compute + a small
    # blocking allreduce standing for the gradient one (which keeps the ranks in step, as in training).
    # Variant "blocking": the flag summed before each step (as it was); "overlapped": its sum started with
    # the step and read at the next one (as it is). Blocks of the two alternate, so drift hits both alike.
    a = torch.randn(256, 256)
    grad = np.zeros(1024)

    def step():
        for _ in range(40):
            a @ a
        d.allreduce_sum(grad)
    steps = {"blocking": [], "overlapped": []}
    for _ in range(max(2, args.reps // 5)):
        for kind in steps:
            pending = None
            for _ in range(6):
                t0 = time.perf_counter()
                if kind == "blocking":
                    d.allreduce_sum(np.array([0.0]))
                else:
                    if pending is not None:
                        pending()
                    pending = d.allreduce_sum_async(np.array([0.0]))
                step()
                steps[kind].append(time.perf_counter() - t0)
            if pending is not None:
                pending()
    if rank == 0:
        mb, mo = (float(np.median(steps[k])) for k in ("blocking", "overlapped"))
        print(f"stop-flag agreement: step time (median of {len(steps['blocking'])}) with the flag summed before "
              f"the step {1e3 * mb:.2f} ms, overlapped with it {1e3 * mo:.2f} ms: {1e3 * (mb - mo):+.2f} ms per step")
        rows += [{"backend": args.backend, "model": f"step-with-stop-flag-{kind}", "bytes": 8, "np": n, "mean_s": v,
                  "ci95_s": None, "algbw_GBps": None, "busbw_GBps": None}
                 for kind, v in (("blocking", mb), ("overlapped", mo))]
    if rank == 0:
        tag = "" if args.backend == "horovod" else f"-{args.backend}"
        path = write_csv(Path(args.out) / f"bench-allreduce{tag}-{hardware_tag()}-np{n}.csv", rows)
        print(f"wrote {path}")
    d.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
