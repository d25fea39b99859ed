"""Input-pipeline throughput on the same images, cores and preprocessing, side by side in one run.

  python benchmarks/loader.py [--images 1000] [--src-size 256] [--size 224] [--batch 32] [--batches 20]

Loaders (random-resized-crop + flip, then normalised to float CHW with gray repeated to 3 channels; the
covidnetx loaders hand out uint8 and the normalisation runs on the consuming device, inside the timing):
  * baseline: torchvision ImageFolder over the PNG files + torchvision transforms in a DataLoader;
  * covidnetx torch loader over packed HDF5 (png bytes / raw uint8);
  * covidnetx DALI loader, CPU (and GPU when present), over the same HDF5 files;
each with 0, 1 and 2 worker processes. Prints img/s (mean ± 1.96σ over timed blocks) and the best covidnetx
loader vs the best baseline (target >= 4x), the ratio taken within each round (all loaders once per round). Writes bench_out/bench-loader-<hardware>.csv.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import hardware_tag, machine_line, mean_ci, write_csv  # noqa: E402
from covidnetx.data.hdf5 import is_packed  # noqa: E402


def imagefolder_tree(raw: Path) -> Path:
    tree = raw.parent / "imagefolder"
    if tree.is_dir():
        return tree
    lines = (raw / "labels.csv").read_text().splitlines()[1:]
    for line in lines:
        path, label = line.split(",")[:2]
        dst = tree / label / Path(path).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((raw / path).resolve(), dst)
    return tree


def baseline_batches(tree: Path, size: int, batch: int, workers: int):
    import torch
    import torchvision
    from torchvision import transforms as T
    tf = T.Compose([T.Grayscale(1), T.RandomResizedCrop(size, scale=(0.5, 1.0)), T.RandomHorizontalFlip(),
                    T.ToTensor(), T.Normalize([0.5], [0.25]), T.Lambda(lambda x: x.expand(3, -1, -1))])
    ds = torchvision.datasets.ImageFolder(str(tree), transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                     persistent_workers=False)
    while True:
        for b in dl:
            yield b


def ours_batches(packed: Path, kind: str, size: int, batch: int, workers: int, n: int, device: str):
    from covidnetx.data.compose import Mixture
    from covidnetx.data.hdf5 import PackedDataset
    from covidnetx.data.loader import Preprocess, make_loader, normalize
    import torch
    view = Mixture([PackedDataset(packed, "train")])
    pp = Preprocess(image_size=size, rotate_deg=0.0, crop_scale=0.5, hflip=True)
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    # the consumer's one job here is normalising; with worker processes on every core, intra-op threads in
    # the main process would only contend with them (DALI sizes its thread pool from this too)
    torch.set_num_threads(1 if (kind == "torch" and workers > 0) else (os.cpu_count() or 1))
    for b in make_loader(kind, view, pp, batch, 0, 0, 1, workers=workers, train=True, steps=n, device=device,
                         torch_device=dev):
        # the loaders hand out uint8; the float tensor the model takes (normalised, 3 channels) is made on
        # the consuming device, and timed here like the baseline's ToTensor + Normalize
        yield {"image": normalize(b["image"], pp, dev), "label": b["label"]}


def measure(gen, batch: int, n: int, warmup: int = 3, blocks: int = 4) -> list:
    """img/s of ``blocks`` consecutive blocks of n/blocks batches (a block spans worker prefetching)."""
    for _ in range(warmup):
        next(gen)
    rates = []
    per = max(1, n // blocks)
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(per):
            b = next(gen)
            x = b["image"] if isinstance(b, dict) else b[0]
            if hasattr(x, "is_cuda") and x.is_cuda:
                import torch
                torch.cuda.synchronize()
        rates.append(per * batch / (time.perf_counter() - t))
    return rates


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--src-size", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=24, help="timed batches per loader, over all rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--work", default="bench_out/loader")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args(argv)
    from benchmarks.pack import make_raw
    work = Path(args.work)
    raw = make_raw(work / "raw", args.images, args.src_size)
    tree = imagefolder_tree(raw)
    packed = {}
    for enc in ("png", "raw"):
        packed[enc] = work / f"packed-{enc}"
        if not is_packed(packed[enc]):
            subprocess.run([sys.executable, "-m", "covidnetx.cli", "pack", "csv", str(raw), str(packed[enc]),
                            "--encoding", enc, "--splits", "1,0,0", "--no-progress"], check=True, capture_output=True)
    import torch
    gpu = torch.cuda.is_available()
    try:
        import nvidia.dali  # noqa: F401
        dali = True
    except ImportError:
        dali = False
    print(f"# loader benchmark: {args.images} gray {args.src_size}px images -> random-resized-crop {args.size}, "
          f"batch {args.batch}, {args.batches} timed batches; {machine_line()}")
    workers = [int(w) for w in args.workers.split(",")]
    cases = [("imagefolder-png (torchvision)", "baseline", None, w) for w in workers]
    for enc in ("png", "raw"):
        cases += [(f"covidnetx torch / hdf5-{enc}", "torch", enc, w) for w in workers]
        if dali:
            cases += [(f"covidnetx dali-cpu / hdf5-{enc}", "dali", enc, w) for w in workers]
        if gpu and dali:
            cases += [(f"covidnetx dali-gpu / hdf5-{enc}", "dali-gpu", enc, w) for w in workers]
    # Rounds: every case is measured once per round, in the same order, so that a slow spell of a shared
    # machine hits all loaders alike; the headline ratio is taken within each round, then the median.
    per_round = max(2, args.batches // args.rounds)
    n = per_round + 4 + 4 * max(workers)
    rates: dict = {c: [] for c in cases}
    ratios = []
    for r in range(args.rounds):
        best = {"baseline": 0.0, "covidnetx": 0.0}
        for case in cases:
            name, kind, enc, w = case
            if kind == "baseline":
                gen = baseline_batches(tree, args.size, args.batch, w)
            else:
                gen = ours_batches(packed[enc], "dali" if kind.startswith("dali") else "torch", args.size,
                                   args.batch, w, n, "gpu" if kind == "dali-gpu" else "cpu")
            # drain what the workers prefetched (4 batches each) before timing
            got = measure(gen, args.batch, per_round, warmup=3 + 4 * w, blocks=2)
            del gen
            rates[case] += got
            group = "baseline" if kind == "baseline" else "covidnetx"
            best[group] = max(best[group], sum(got) / len(got))
        ratios.append(best["covidnetx"] / best["baseline"])
    rows = []
    for case in cases:
        name, kind, enc, w = case
        m, c = mean_ci(rates[case])
        print(f"{name:<34} workers={w}: {m:8.0f} ± {c:6.0f} img/s")
        rows.append({"loader": name, "workers": w, "img_per_s": round(m, 1), "ci95": round(c, 1)})
    if not dali:
        print("(nvidia-dali not installed: DALI rows skipped)")
    ratios.sort()
    print(f"best covidnetx loader / best ImageFolder baseline, within each of {args.rounds} rounds: median "
          f"{ratios[len(ratios) // 2]:.2f}x (range {ratios[0]:.2f}-{ratios[-1]:.2f}; target >= 4x)")
    path = write_csv(Path(args.out) / f"bench-loader-{hardware_tag()}.csv", rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
