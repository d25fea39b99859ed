"""Packing and reading throughput, measured side by side in one run.

  python benchmarks/pack.py [--images 2000] [--src-size 256] [--size 224] [--repeats 3]

1. Packs the same generated raw set (gray PNGs of --src-size, resized to --size) with np=1 and np=2
   (mpirun), --repeats times each, and prints images/s and the np=2 / np=1 speed-up (target >= 1.8x).
   Each figure is the packer's own timing (plan + shards + index) and the wall time of the whole command.
2. Reads the packed set back with both encodings (png bytes vs raw uint8), per sample and per batch of 32
   (one HDF5 slice per contiguous run), and prints decoded images/s and bytes on disk.
Writes bench_out/bench-pack-<hardware>.csv.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import hardware_tag, machine_line, mean_ci, write_csv  # noqa: E402
from covidnetx.launch import mpirun_cmd  # noqa: E402


def make_raw(root: Path, n: int, size: int) -> Path:
    from PIL import Image
    from data_tools.synth import _patient, chest_image
    if (root / "labels.csv").is_file() and len((root / "labels.csv").read_text().splitlines()) == n + 1:
        return root
    rng = np.random.default_rng(0)
    rows = ["path,label,patient_id"]
    classes = ["normal", "pneumonia", "COVID-19"]
    for i in range(n):
        cls = classes[i % 3]
        arr = chest_image(_patient(rng), cls, rng, size)
        rel = f"img/{i:05d}.png"
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / rel)
        rows.append(f"{rel},{cls},p{i // 3}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def pack_once(raw: Path, out: Path, np_: int, size: int, encoding: str, shard: int) -> tuple:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "covidnetx.cli", "pack", "csv", str(raw), str(out), "--size", str(size),
           "--encoding", encoding, "--shard-size", str(shard), "--no-progress", "--splits", "0.8,0.1,0.1"]
    if np_ > 1:
        cmd = mpirun_cmd(np_) + cmd
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(r.stderr)
    inner = float(re.search(r"in ([0-9.]+) s", r.stdout).group(1))
    return inner, wall


def read_rate(out: Path, batch: int, limit: int) -> float:
    from covidnetx.data.hdf5 import PackedDataset
    ds = PackedDataset(out, "train")
    n = min(limit, len(ds))
    t = time.perf_counter()
    if batch == 1:
        for i in range(n):
            ds.read_image(i)
    else:
        for s in range(0, n, batch):
            ds.read_images(range(s, min(n, s + batch)))
    dt = time.perf_counter() - t
    ds.close()
    return n / dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--src-size", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default="bench_out/pack")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args(argv)
    work = Path(args.work)
    raw = make_raw(work / "raw", args.images, args.src_size)
    print(f"# pack benchmark: {args.images} gray {args.src_size}px PNG -> {args.size}px, shards of "
          f"{args.shard_size}; {machine_line()}")
    rows = []
    res = {}
    for np_ in (1, 2):
        inner, wall = zip(*[pack_once(raw, work / f"png-np{np_}", np_, args.size, "png", args.shard_size)
                            for _ in range(args.repeats)])
        res[np_] = ([args.images / x for x in inner], [args.images / x for x in wall])
    for np_ in (1, 2):
        (mi, ci), (mw, cw) = mean_ci(res[np_][0]), mean_ci(res[np_][1])
        print(f"pack np={np_}: {mi:7.0f} ± {ci:4.0f} img/s (packer's own timing)   {mw:7.0f} ± {cw:4.0f} img/s "
              f"(whole command incl. launcher/start-up)")
        rows.append({"what": "pack", "encoding": "png", "np": np_, "batch": "", "img_per_s": round(mi, 1),
                     "ci95": round(ci, 1), "wall_img_per_s": round(mw, 1), "bytes_on_disk": ""})
    sp_in = mean_ci(res[2][0])[0] / mean_ci(res[1][0])[0]
    sp_wall = mean_ci(res[2][1])[0] / mean_ci(res[1][1])[0]
    print(f"speed-up np=2 / np=1: {sp_in:.2f}x (packer), {sp_wall:.2f}x (whole command); target >= 1.80x")
    pack_once(raw, work / "raw-np1", 1, args.size, "raw", args.shard_size)
    for enc in ("png", "raw"):
        out = work / f"{enc}-np1"
        if enc == "png":
            pack_once(raw, out, 1, args.size, "png", args.shard_size)
        nbytes = sum(p.stat().st_size for p in (out / "shards").glob("*.h5"))
        for batch in (1, 32):
            rates = [read_rate(out, batch, args.images) for _ in range(args.repeats)]
            m, c = mean_ci(rates)
            print(f"read {enc:>3} batch={batch:<3}: {m:7.0f} ± {c:5.0f} img/s decoded   ({nbytes / 2**20:6.1f} MiB on disk)")
            rows.append({"what": "read", "encoding": enc, "np": 1, "batch": batch, "img_per_s": round(m, 1),
                         "ci95": round(c, 1), "wall_img_per_s": "", "bytes_on_disk": nbytes})
    path = write_csv(Path(args.out) / f"bench-pack-{hardware_tag()}.csv", rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
