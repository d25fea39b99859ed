"""All GPU checks in one command (<= 8 minutes on one GPU); figures printed and written under $OUT.

  python benchmarks/gpu_check.py [--out $OUT] [--images 3000] [--batch 256]

1. environment: GPU, torch, whether nvidia-dali and horovod are importable;
2. bf16 ResNet-50 training steps (224 px, channels_last) on synthetic data vs fed from packed HDF5 by
   the torch loader (CPU workers) and, when DALI is installed, by the DALI GPU pipeline (mixed decode);
   target: HDF5 >= 95% of synthetic;
3. the engine end to end on the GPU: `covidnetx pretrain` (backend none, precision bf16) a few steps;
4. the loader benchmark (CPU loaders at this node's core count; DALI GPU when present).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import mean_ci, write_csv  # noqa: E402


def sh(cmd, log, timeout=300):
    t = time.time()
    try:
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired as e:
        r = subprocess.CompletedProcess(e.cmd, 124, e.stdout or "", f"timed out after {timeout} s")
    log.write(f"$ {' '.join(map(str, cmd))}  [{time.time() - t:.1f} s, exit {r.returncode}]\n{r.stdout}\n{r.stderr[-4000:]}\n")
    log.flush()
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out/gpu"))
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--work", default="/tmp/covidnetx-gpu-work", help="scratch data (kept out of --out)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=min(12, (os.cpu_count() or 2) - 2))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "gpu_check.log", "w")
    import torch
    env = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none", "torch": torch.__version__,
           "cpus": os.cpu_count()}
    for mod in ("nvidia.dali", "horovod.torch", "h5py"):
        try:
            __import__(mod)
            env[mod] = "yes"
        except Exception as e:  # noqa: BLE001
            env[mod] = f"no ({type(e).__name__})"
    print("environment:", json.dumps(env), flush=True)
    py = sys.executable
    work = Path(args.work)
    t0 = time.time()
    from benchmarks.pack import make_raw
    raw = make_raw(work / "raw", args.images, 256)
    packed = work / "packed-raw"
    r = sh([py, "-m", "covidnetx.cli", "pack", "csv", raw, packed, "--encoding", "raw", "--splits", "0.9,0.1,0",
            "--no-progress"], log)
    print(f"generated + packed {args.images} images in {time.time() - t0:.0f} s: {r.stdout.strip()}", flush=True)
    rows = []

    def train(data, loader, workers):
        cmd = [py, "benchmarks/train.py", "--worker", "plain", "--model", args.model, "--size", str(args.size), "--batch",
               str(args.batch), "--iters", str(args.iters), "--warmup", "8", "--threads", "4", "--data", data,
               "--loader", loader, "--precision", "bf16", "--workers", str(workers)]
        r = sh(cmd, log, timeout=240)
        line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
        if not line:
            return None
        d = json.loads(line[0][7:])
        rates = [d["batch"] / t for t in d["times"]]
        dfrac = sum(d["data_times"]) / sum(d["times"])
        return mean_ci(rates) + (dfrac,)

    syn = train("synthetic", "torch", 0)
    if syn is None:
        print("synthetic training failed (see gpu_check.log)", flush=True)
        return 1
    print(f"bf16 {args.model} synthetic:            {syn[0]:8.0f} ± {syn[1]:5.0f} img/s", flush=True)
    rows.append({"what": "resnet50-bf16-synthetic", "img_per_s": round(syn[0], 1), "ci95": round(syn[1], 1), "data_frac": 0})
    for loader, workers in (("torch", args.workers), ("dali", 4)):
        if loader == "dali" and not env["nvidia.dali"] == "yes":
            print("bf16 ResNet-50 HDF5 + DALI GPU:      skipped (nvidia-dali not installed on this node)", flush=True)
            continue
        res = train(str(packed), loader, workers)
        if res is None:
            print(f"bf16 ResNet-50 HDF5 + {loader}: failed (see gpu_check.log)", flush=True)
            continue
        print(f"bf16 {args.model} HDF5 + {loader:<5} ({workers} workers): {res[0]:8.0f} ± {res[1]:5.0f} img/s = "
              f"{100 * res[0] / syn[0]:.0f}% of synthetic (target >= 95%); data wait {100 * res[2]:.0f}% of step",
              flush=True)
        rows.append({"what": f"resnet50-bf16-hdf5-{loader}", "img_per_s": round(res[0], 1), "ci95": round(res[1], 1),
                     "data_frac": round(res[2], 4)})
    r = sh([py, "-m", "covidnetx.cli", "pretrain", f"data.sources=[{packed}]", f"out_dir={work / 'runs'}",
            "run_name=gpu", "backend=none", "precision=bf16", f"model.name={args.model}", f"data.image_size={args.size}",
            f"data.workers={args.workers}", "optim.batch_size=128", "optim.steps=40", "optim.lr=0.1",
            "optim.base_batch=256", "log_every=10", "bootstrap=50", "data.eval_split=val"], log, timeout=300)
    print("engine on GPU (covidnetx pretrain, bf16, 40 steps):", (r.stdout.strip().splitlines() or ["failed"])[-1],
          flush=True)
    r = sh([py, "benchmarks/loader.py", "--images", "1000", "--batches", "12", "--workers", f"0,{args.workers}",
            "--work", work / "loader", "--out", out], log, timeout=300)
    print("\n".join(l for l in r.stdout.splitlines() if not l.startswith("wrote")), flush=True)
    write_csv(out / "bench-gpu-check.csv", rows)
    print(f"total {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
