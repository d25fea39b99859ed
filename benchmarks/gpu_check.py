"""All GPU checks in one command (<= 8 minutes on one GPU); figures printed and written under $OUT.

  python benchmarks/gpu_check.py [--out $OUT] [--images 3000] [--batch 256]

1. environment: GPU, torch, whether nvidia-dali and horovod are importable;
2. DALI GPU pipeline vs the torch reference on the same samples (evaluation and augmented training
   batches; uint8 levels), when DALI is installed;
3. bf16 ResNet-50 training steps (224 px, channels_last) on synthetic data vs fed from packed HDF5
   (gray, repeated to 3 channels on the GPU) by the torch loader (CPU workers) and by the DALI GPU
   pipeline (in-process source and worker processes); target: HDF5 >= 95% of synthetic;
4. the engine end to end on the GPU: `covidnetx pretrain` (backend none, bf16) with the torch loader
   and with the DALI GPU loader, and a short run under torch's sync debug mode that lists every
   host-device synchronisation inside the training loop (the step is meant to have none);
5. allreduce on the GPU (torch.distributed/NCCL, one process: the single-GPU floor; Horovod too when
   it is installed with GPU support);
6. the loader benchmark (CPU loaders at this node's core count; DALI GPU when present).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import mean_ci, write_csv  # noqa: E402


def sh(cmd, log, timeout=300, env=None):
    t = time.time()
    try:
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    except subprocess.TimeoutExpired as e:
        r = subprocess.CompletedProcess(e.cmd, 124, e.stdout or "", f"timed out after {timeout} s")
    log.write(f"$ {' '.join(map(str, cmd))}  [{time.time() - t:.1f} s, exit {r.returncode}]\n{r.stdout}\n{r.stderr[-4000:]}\n")
    log.flush()
    return r


def equality(packed: Path) -> int:
    """DALI GPU vs torch (reference) on the same samples: evaluation and augmented training batches."""
    import torch
    from covidnetx.data.compose import Mixture
    from covidnetx.data.hdf5 import PackedDataset
    from covidnetx.data.loader import Preprocess, make_loader
    dev = torch.device("cuda", 0)
    out = []
    for split, train, pp in (("val", False, Preprocess(image_size=224, resize_size=240)),
                             ("train", True, Preprocess(image_size=224, rotate_deg=5.0, crop_scale=0.5, hflip=True))):
        view = Mixture([PackedDataset(packed, split)])
        kw = dict(train=train, steps=2 if train else None)
        a = list(make_loader("torch", view, pp, 32, 0, 0, 1, workers=0, **kw))
        b = list(make_loader("dali", view, pp, 32, 0, 0, 1, workers=2, device="gpu", torch_device=dev, **kw))
        ia, ib = torch.cat([x["index"] for x in a]), torch.cat([x["index"] for x in b])
        xa = torch.cat([x["image"] for x in a]).int()
        xb = torch.cat([x["image"].cpu() for x in b]).int()
        same = bool(torch.equal(ia, ib)) and xa.shape == xb.shape
        d = (xa - xb).abs().float() if same else torch.full((1,), float("nan"))
        out.append(f"{split}: {len(ia)} samples, same indices {same}, |diff| mean {d.mean().item():.3f} max "
                   f"{d.max().item():.0f} levels, >2 levels {100 * (d > 2).float().mean().item():.2f}%")
    print("; ".join(out))
    return 0


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
    ap.add_argument("--dali-workers", type=int, default=min(8, (os.cpu_count() or 2) - 2))
    ap.add_argument("--loader-images", type=int, default=1000, help="images of the loader benchmark (step 6)")
    ap.add_argument("--loader-batches", type=int, default=48)
    ap.add_argument("--layout-models", default=None,
                    help="models whose synthetic step is timed with channels-last and NCHW input (comma list; "
                         "default: --model and bit_r50x1; empty: skip)")
    ap.add_argument("--equality", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.equality:
        return equality(Path(args.equality))
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

    if env["nvidia.dali"] == "yes":
        r = sh([py, __file__, "--equality", str(packed)], log, timeout=180)
        print("DALI GPU vs torch reference:", (r.stdout.strip().splitlines() or ["failed (see gpu_check.log)"])[-1],
              flush=True)

    def train(data, loader, workers, channels=1, model=None, channels_last="auto"):
        cmd = [py, "benchmarks/train.py", "--worker", "plain", "--model", model or args.model, "--size", str(args.size),
               "--batch", str(args.batch), "--iters", str(args.iters), "--warmup", "8", "--threads", "4", "--data", data,
               "--loader", loader, "--precision", "bf16", "--workers", str(workers), "--channels", str(channels),
               "--channels-last", channels_last]
        r = sh(cmd, log, timeout=240)
        line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
        if not line:
            return None
        d = json.loads(line[0][7:])
        rates = [d["batch"] / t for t in d["times"]]
        dfrac = sum(d["data_times"]) / sum(d["times"])
        return mean_ci(rates) + (dfrac,)

    # on a GPU the gray images are repeated to 3 channels after the copy (loader.normalize), so the
    # model sees what the synthetic RGB batch gives it
    syn = train("synthetic", "torch", 0, channels=3)
    if syn is None:
        print("synthetic training failed (see gpu_check.log)", flush=True)
        return 1
    print(f"bf16 {args.model} synthetic:            {syn[0]:8.0f} ± {syn[1]:5.0f} img/s", flush=True)
    rows.append({"what": f"{args.model}-bf16-synthetic", "img_per_s": round(syn[0], 1), "ci95": round(syn[1], 1),
                 "data_frac": 0})
    # the input layout: channels-last (what loader.normalize hands a GPU model) against NCHW, for the
    # BatchNorm ResNet and for BiT's GroupNorm ResNetV2 (torch's CUDA GroupNorm may return NCHW whatever
    # its input, which would leave only the stem in channels-last)
    layout = f"{args.model},bit_r50x1" if args.layout_models is None else args.layout_models
    for name in [m for m in layout.split(",") if m]:
        got = {cl: train("synthetic", "torch", 0, channels=3, model=name, channels_last=cl) for cl in ("on", "off")}
        if None in got.values():
            print(f"bf16 {name} synthetic, input layout: failed (see gpu_check.log)", flush=True)
            continue
        print(f"bf16 {name} synthetic, channels-last input {got['on'][0]:8.0f} ± {got['on'][1]:5.0f} img/s vs NCHW "
              f"{got['off'][0]:8.0f} ± {got['off'][1]:5.0f}: {100 * got['on'][0] / got['off'][0]:.0f}%", flush=True)
        for cl, res in got.items():
            rows.append({"what": f"{name}-bf16-synthetic-cl-{cl}", "img_per_s": round(res[0], 1),
                         "ci95": round(res[1], 1), "data_frac": 0})
    # DALI: the Python source only copies stored bytes out of the memory-mapped shards and draws the
    # augmentation parameters, so in-process (0 workers) can beat worker processes; both are measured
    for loader, workers in (("torch", args.workers), ("dali", 0), ("dali", args.dali_workers)):
        if loader == "dali" and not env["nvidia.dali"] == "yes":
            print("bf16 ResNet-50 HDF5 + DALI GPU:      skipped (nvidia-dali not installed on this node)", flush=True)
            continue
        res = train(str(packed), loader, workers)
        if res is None:
            print(f"bf16 ResNet-50 HDF5 + {loader}: failed (see gpu_check.log)", flush=True)
            continue
        print(f"bf16 {args.model} HDF5 + {loader:<5} ({workers} workers): {res[0]:8.0f} ± {res[1]:5.0f} img/s = "
              f"{100 * res[0] / syn[0]:.0f}% of synthetic (target >= 95%); host fetching the next batch {100 * res[2]:.0f}% of step (runs while the GPU does the backward pass)",
              flush=True)
        rows.append({"what": f"{args.model}-bf16-hdf5-{loader}-w{workers}", "img_per_s": round(res[0], 1), "ci95": round(res[1], 1),
                     "data_frac": round(res[2], 4)})
    # a rerun on a warm node measures again (finished runs would otherwise be skipped)
    shutil.rmtree(work / "runs", ignore_errors=True)
    r = sh([py, "-m", "covidnetx.cli", "pretrain", f"data.sources=[{packed}]", f"out_dir={work / 'runs'}",
            "run_name=gpu", "backend=none", "precision=bf16", f"model.name={args.model}", f"data.image_size={args.size}",
            f"data.workers={args.workers}", "optim.batch_size=128", "optim.steps=40", "optim.lr=0.1",
            "optim.base_batch=256", "log_every=10", "bootstrap=50", "data.eval_split=val"], log, timeout=300)
    print("engine on GPU (covidnetx pretrain, bf16, 40 steps, torch loader):",
          (r.stdout.strip().splitlines() or ["failed"])[-1], flush=True)
    # the same run again with torch flagging each host-device synchronisation inside the training loop
    # (one warning per place in the code; the step is meant to have none)
    r = sh([py, "-m", "covidnetx.cli", "pretrain", f"data.sources=[{packed}]", f"out_dir={work / 'runs'}",
            "run_name=gpu-sync", "backend=none", "precision=bf16", f"model.name={args.model}", f"data.image_size={args.size}",
            f"data.workers={args.workers}", "optim.batch_size=128", "optim.steps=10", "optim.lr=0.1",
            "optim.base_batch=256", "log_every=5", "bootstrap=50", "data.eval_split=val", "optim.mixup=0.1"], log,
           timeout=300, env={"COVIDNETX_CUDA_SYNC_DEBUG": "warn", "PYTHONWARNINGS": "default"})
    flagged = [l.strip() for l in r.stderr.splitlines() if "synchronizing CUDA operation" in l]
    print(f"host-device synchronisations flagged in the training loop (10 steps, MixUp on): {len(flagged)} place(s)"
          + (f" (exit {r.returncode})" if r.returncode else "") + "".join(f"\n  {l}" for l in flagged[:5]), flush=True)
    if env["nvidia.dali"] == "yes":
        r = sh([py, "-m", "covidnetx.cli", "pretrain", f"data.sources=[{packed}]", f"out_dir={work / 'runs'}",
                "run_name=gpu-dali", "backend=none", "precision=bf16", f"model.name={args.model}",
                f"data.image_size={args.size}", "data.loader=dali", "data.device=gpu",
                "data.workers=0", "optim.batch_size=128", "optim.steps=40", "optim.lr=0.1",
                "optim.base_batch=256", "log_every=10", "bootstrap=50", "data.eval_split=val"], log, timeout=300)
        print("engine on GPU (covidnetx pretrain, bf16, 40 steps, DALI GPU loader):",
              (r.stdout.strip().splitlines() or ["failed"])[-1], flush=True)
    r = sh([py, "benchmarks/allreduce.py", "--backend", "torch", "--out", out, "--reps", "20"], log, timeout=120)
    print("\n".join(l for l in r.stdout.splitlines() if not l.startswith("wrote")) or "allreduce failed", flush=True)
    r = sh([py, "benchmarks/loader.py", "--images", args.loader_images, "--batches", args.loader_batches, "--rounds", "2", "--workers", f"0,{args.workers}",
            "--work", work / "loader", "--out", out], log, timeout=200)
    print("\n".join(l for l in r.stdout.splitlines() if not l.startswith("wrote")), flush=True)
    write_csv(out / "bench-gpu-check.csv", rows)
    print(f"total {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
