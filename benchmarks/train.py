"""Training-step throughput through the engine's own step (``Dist.step``), CPU here, a GPU node alike.

  python benchmarks/train.py [--model resnet18] [--size 64] [--batch 16] [--blocks 8]

Measures the rows of docs/performance.md that cite it, each from phases that alternate inside one job
(launches of the same loop differ by 10-30% on a shared machine; alternation cancels the drift):
  1. Horovod np=1 against a plain loop, both models in one process, blocks alternating (overhead);
  2. weak-scaling efficiency np=2 / np=1 inside one ``mpirun -np 2`` job, at --size and --big-size: a solo
     phase (rank 0 alone, Horovod over the process set {0}), a pair phase (both ranks, the global set) and a
     shared phase (both ranks, each over its own set: contention without communication); then the gradient
     allreduce alone, and the performance model's prediction from those (benchmarks/perfmodel.py);
  3. Horovod np=1 fed from packed HDF5 (raw and png) by the torch loader and by DALI (CPU): the share of
     the step spent waiting for the next batch.
Every timed step is the engine's: forward under its autocast, backward, ``Dist.step`` (Horovod's wait and
step where Horovod runs); with data, batches come through the engine's ``DeviceBatches``, the next one
fetched while the backward pass runs. Prints its table and writes
bench_out/bench-train-<precision>-<hardware>-<model>.csv.

``--worker plain|hvd`` is one launch's timed loop (benchmarks/scaling.py, benchmarks/gpu_check.py and
jobscripts/scaling.sbatch run it); it prints one ``RESULT {json}`` line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import hardware_tag, machine_line, mean_ci, mean_interval, pooled_cv, write_csv  # noqa: E402
from covidnetx.data.hdf5 import is_packed  # noqa: E402


# ------------------------------------------------------------------------------------------------ workers
def _engine(args):
    """torch with the benchmark's threads, and the engine's pieces."""
    import torch
    torch.set_num_threads(args.threads)
    from covidnetx.dist import Dist, HorovodDist, _pick_device
    from covidnetx.launch import World
    return torch, Dist, HorovodDist, World, _pick_device


class Arm:
    """One model and its optimizer stepped the engine's way through ``dist`` (wrapped by the backend)."""

    def __init__(self, args, dist, device, **wrap):
        import torch
        from covidnetx.models import create_model
        from covidnetx.dist import autocast
        self.dist, self.device, self.precision = dist, device, args.precision
        self.autocast, self.loss = autocast, torch.nn.functional.cross_entropy
        self.model = create_model(args.model, 3).to(device).train()
        opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        dist.broadcast_state(self.model, None)
        self.opt = dist.wrap_optimizer(opt, self.model, 1, args.fp16_allreduce, **wrap)

    def step(self, x, y, between=None) -> None:
        with self.autocast(self.precision, self.device):
            out = self.model(x)
        self.loss(out.float(), y).backward()
        if between is not None:
            between()                 # the engine fetches the next batch here, while backward runs
        self.dist.step(self.model, self.opt)

    def timed(self, x, y, n) -> list:
        t = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.step(x, y)
            _sync(self.device)
            t.append(time.perf_counter() - t0)
        return t


def _sync(device) -> None:
    if device.type == "cuda":
        import torch
        torch.cuda.synchronize()


def _synthetic(args, device, size=None):
    import torch
    size = size or args.size
    x = torch.randn(args.batch, args.channels, size, size, device=device)
    # channels-last input on a GPU (as loader.normalize hands it; parameters stay contiguous, which Horovod needs)
    if args.channels_last == "on" or (args.channels_last == "auto" and device.type == "cuda"):
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 3, (args.batch,), device=device)


def _allreduce_alone(hvd, model, device, reps=10) -> list:
    """The gradient allreduce alone (one fused fp32 buffer of all parameters, in place and averaged, as
    DistributedOptimizer reduces them), for the performance model."""
    import torch
    flat = torch.zeros(sum(p.numel() for p in model.parameters()), device=device)
    out = []
    for i in range(reps + 3):
        t0 = time.perf_counter()
        hvd.allreduce_(flat, name="bench.gradients", op=hvd.Average)
        _sync(device)
        if i >= 3:
            out.append(time.perf_counter() - t0)
    return out


def worker(args) -> None:
    """One launch: ``plain`` (no communication; under mpirun, independent loops started together) or
    ``hvd`` (Horovod over every rank), on synthetic data or a packed dataset."""
    torch, Dist, HorovodDist, World, pick = _engine(args)
    if args.worker == "plain":
        dist = Dist(World(0, 1, 0), pick(0, "auto"))
    else:
        dist = HorovodDist("auto")
    dev = dist.device
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    arm = Arm(args, dist, dev)
    n = args.warmup + args.iters
    times, dtimes = [], []
    if args.data == "synthetic":
        x, y = _synthetic(args, dev)
        for it in range(n):
            t0 = time.perf_counter()
            arm.step(x, y)
            _sync(dev)
            if it >= args.warmup:
                times.append(time.perf_counter() - t0)
                dtimes.append(0.0)
    else:
        from covidnetx.data.compose import Mixture
        from covidnetx.data.hdf5 import PackedDataset
        from covidnetx.data.loader import Preprocess, make_loader
        from covidnetx.train.engine import DeviceBatches
        view = Mixture([PackedDataset(args.data, "train")])
        pp = Preprocess(image_size=args.size, crop_scale=0.5, hflip=True, rotate_deg=5.0)
        loader = make_loader(args.loader, view, pp, args.batch, 0, dist.rank, dist.size, workers=args.workers,
                             train=True, steps=n, device="gpu" if dev.type == "cuda" else "cpu", torch_device=dev)
        batches = DeviceBatches(loader, n, pp, dev)
        batches.advance()
        try:
            for it in range(n):
                t0, d0 = time.perf_counter(), batches.data_time
                arm.step(*batches.current, between=batches.advance)
                _sync(dev)
                if it >= args.warmup:
                    times.append(time.perf_counter() - t0)
                    dtimes.append(batches.data_time - d0)
        finally:
            batches.close()
    ar = _allreduce_alone(dist.hvd, arm.model, dev) if args.worker == "hvd" and dist.size > 1 else []
    if dist.rank == 0:
        print("RESULT " + json.dumps({"times": times, "data_times": dtimes, "size": dist.size, "batch": args.batch,
                                      "allreduce_times": ar, "model": args.model, "image_size": args.size,
                                      "precision": args.precision, "device": hardware_tag()}), flush=True)


def overhead_worker(args) -> None:
    """(np=1) Horovod's per-step cost against a plain loop in one process: blocks alternate between a model
    stepped by the plain ``Dist`` and one whose optimizer Horovod wraps (at size 1: the wrapper, the
    background thread, the wait before the step), the order swapping every block."""
    torch, Dist, HorovodDist, World, pick = _engine(args)
    hv = HorovodDist("cpu")
    if hv.size != 1:
        raise SystemExit(f"--worker overhead runs as one process, not {hv.size} rank(s)")
    arms = {"plain": Arm(args, Dist(World(0, 1, 0), hv.device), hv.device), "hvd": Arm(args, hv, hv.device)}
    x, y = _synthetic(args, hv.device)
    for a in arms.values():
        a.timed(x, y, args.warmup)
    k = max(1, args.iters // args.blocks)
    blocks = []
    for b in range(args.blocks):
        order = ("plain", "hvd") if b % 2 == 0 else ("hvd", "plain")
        blocks.append({w: arms[w].timed(x, y, k) for w in order})
    print("RESULT " + json.dumps({"blocks": blocks, "batch": args.batch, "model": args.model,
                                  "image_size": args.size, "device": hardware_tag()}), flush=True)


def interleaved_worker(args) -> None:
    """(mpirun -np 2) solo, pair and shared phases alternating in blocks (order rotating); rank 1 sleeps
    in a polling barrier during the solo phase. Unlike a real np=1 run (no gradient hooks at size 1), the
    solo and shared phases send their gradients through a one-rank allreduce: a local no-op, but queued and
    negotiated like any other."""
    torch, Dist, HorovodDist, World, pick = _engine(args)
    import horovod.torch as hvd
    sets = [hvd.ProcessSet([0]), hvd.ProcessSet([1])]
    dist = HorovodDist("cpu", process_sets=sets)
    if dist.size != 2:
        raise SystemExit(f"--worker interleaved runs under mpirun -np 2, not {dist.size} rank(s)")
    pair = Arm(args, dist, dist.device, prefix="pair.")
    alone = Arm(args, dist, dist.device, process_set=sets[dist.rank], prefix=f"solo{dist.rank}.")
    x, y = _synthetic(args, dist.device)

    def quiet_barrier():
        h = hvd.allreduce_async(torch.zeros(1), name="bench.barrier")
        while not hvd.poll(h):
            time.sleep(0.005)          # the idle rank leaves its core to the other
        hvd.synchronize(h)

    def phase(which, n):
        t = []
        if which == "pair":
            t = pair.timed(x, y, n)
        elif which == "shared" or dist.rank == 0:
            t = alone.timed(x, y, n)
        quiet_barrier()
        return t

    phases = ("solo", "pair", "shared")
    for w in phases:
        phase(w, args.warmup)
    k = max(1, args.iters // args.blocks)
    blocks = [{w: phase(w, k) for w in phases[b % 3:] + phases[:b % 3]} for b in range(args.blocks)]
    ar = _allreduce_alone(hvd, pair.model, dist.device)
    if dist.rank == 0:
        print("RESULT " + json.dumps({"blocks": blocks, "allreduce_times": ar, "batch": args.batch,
                                      "model": args.model, "image_size": args.size, "device": hardware_tag()}),
              flush=True)


# ------------------------------------------------------------------------------------------------ driver
def phase_mean(blocks: list, w: str) -> float:
    """Mean step time of one phase over all the blocks of an alternating run."""
    return statistics.fmean(t for b in blocks for t in b[w])


def block_ratios(blocks: list, num: str, den: str) -> list:
    """Per block of an alternating run, the ratio of the mean step times of two phases, sorted."""
    return sorted(statistics.fmean(b[num]) / statistics.fmean(b[den]) for b in blocks)


def run_worker(mode, np_, data, loader, args, size=None, iters=None, blocks=None) -> dict:
    """Launch one worker (under mpirun for Horovod or np > 1) and return its RESULT."""
    from covidnetx.launch import mpirun_cmd
    cmd = [sys.executable, __file__, "--worker", mode, "--model", args.model, "--size", str(size or args.size),
           "--batch", str(args.batch), "--iters", str(iters or args.iters), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--data", data, "--loader", loader, "--precision", args.precision,
           "--workers", str(args.workers), "--channels", str(args.channels)]
    if mode in ("overhead", "interleaved"):
        cmd += ["--blocks", str(blocks or args.blocks)]
    if mode != "plain" or np_ > 1:
        cmd = mpirun_cmd(np_) + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode or not line:
        raise SystemExit(f"{cmd} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return json.loads(line[0][7:])


def ensure_packed(work: Path, n: int, src: int, encoding: str) -> Path:
    out = work / f"packed-{encoding}"
    if is_packed(out):
        return out
    from benchmarks.pack import make_raw
    raw = make_raw(work / "raw", n, src)
    subprocess.run([sys.executable, "-m", "covidnetx.cli", "pack", "csv", str(raw), str(out), "--encoding", encoding,
                    "--splits", "1,0,0", "--no-progress"], check=True, capture_output=True)
    return out


def _spread(rs: list, unit: str = "blocks") -> str:
    return f"{100 * statistics.median(rs):.1f}% ({unit} {100 * rs[0]:.1f}-{100 * rs[-1]:.1f}%)"


def measure_overhead(args, rows) -> None:
    r = run_worker("overhead", 1, "synthetic", "torch", args, iters=args.overhead_steps, blocks=args.overhead_steps)
    m, c = mean_interval([q - 1 for q in block_ratios(r["blocks"], "hvd", "plain")])
    t = {w: [x for b in r["blocks"] for x in b[w]] for w in ("plain", "hvd")}
    print(f"Horovod np=1 vs plain loop, one process ({len(t['hvd'])} steps of each, alternating): {100 * m:+.1f}% "
          f"(95% interval {100 * (m - c):+.1f} to {100 * (m + c):+.1f}%; mean step {1e3 * statistics.fmean(t['hvd']):.0f} "
          f"vs {1e3 * statistics.fmean(t['plain']):.0f} ms) (target <= 2%)")
    for w in ("plain", "hvd"):
        mr, cr = mean_ci(args.batch / x for x in t[w])
        rows.append({"what": f"{w}-np1-interleaved", "data": "synthetic", "image_size": args.size,
                     "img_per_s_per_proc": round(mr, 2), "ci95": round(cr, 2), "data_frac": 0.0,
                     "ratio": round(1 + m, 4), "ratio_ci95": round(c, 4)})


def measure_scaling(args, rows, size) -> None:
    from benchmarks.perfmodel import shared_efficiency, straggler_time
    k = max(2, args.block_steps * args.size * args.size // (size * size))
    r = run_worker("interleaved", 2, "synthetic", "torch", args, size=size, iters=k * args.blocks)
    blocks = r["blocks"]
    effs, cont = block_ratios(blocks, "solo", "pair"), block_ratios(blocks, "solo", "shared")
    em, ec = mean_interval(effs)
    t1, t_shared, t2 = (phase_mean(blocks, w) for w in ("solo", "shared", "pair"))
    ar = statistics.fmean(r["allreduce_times"])
    cv = pooled_cv([b["solo"] for b in blocks])
    wait = straggler_time(t1, cv, 2)
    model = shared_efficiency(t1, t_shared, ar, t_wait=wait)
    print(f"weak-scaling efficiency np=2 / np=1, {size}px, interleaved ({len(effs)} blocks of {k} steps per phase): "
          f"{_spread(effs)} (target >= 90%; mean {100 * em:.1f}%, 95% interval {100 * (em - ec):.1f}-"
          f"{100 * (em + ec):.1f}%); two np=1 loops at once (contention) {_spread(cont)}")
    print(f"  performance model, {size}px: contention {100 * t1 / t_shared:.1f}%, waiting for the slower rank "
          f"{1e3 * wait:.1f} ms (step-time variation {100 * cv:.1f}%), allreduce alone {1e3 * ar:.1f} ms: "
          f"{100 * model:.1f}% predicted, {100 * t1 / t2:.1f}% measured (ratio of the mean step times)")
    for w in ("solo", "pair", "shared"):
        mr, cr = mean_ci(args.batch / x for b in blocks for x in b[w])
        rows.append({"what": f"{w}-interleaved", "data": "synthetic", "image_size": size,
                     "img_per_s_per_proc": round(mr, 2), "ci95": round(cr, 2), "data_frac": 0.0,
                     "ratio": round(em, 4) if w == "pair" else "", "ratio_ci95": round(ec, 4) if w == "pair" else "",
                     "model_eff": round(model, 4) if w == "pair" else "", "allreduce_s": round(ar, 6)})


def measure_loaders(args, rows) -> None:
    work = Path(args.work)
    for enc, loader in (("raw", "torch"), ("raw", "dali"), ("png", "torch"), ("png", "dali")):
        data = ensure_packed(work, args.images, args.src_size, enc)
        runs = [run_worker("hvd", 1, str(data), loader, args) for _ in range(args.repeats)]
        m, c = mean_ci(run["batch"] / t for run in runs for t in run["times"])
        dfrac = sum(sum(r["data_times"]) for r in runs) / sum(sum(r["times"]) for r in runs)
        print(f"Horovod np=1 from HDF5 ({enc}, {loader:<5}) {m:8.1f} ± {c:5.1f} img/s; waiting for data "
              f"{100 * dfrac:4.1f}% of the step")
        rows.append({"what": f"hvd1-{loader}", "data": enc, "image_size": args.size, "img_per_s_per_proc": round(m, 2),
                     "ci95": round(c, 2), "data_frac": round(dfrac, 4)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", default=None, choices=("plain", "hvd", "overhead", "interleaved"),
                    help="one launch's timed loop (see the module's help)")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=20, help="timed steps of a --worker plain/hvd launch")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="launches per loader measurement")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--channels", type=int, default=1, choices=(1, 3),
                    help="channels of the synthetic batch: 1 like the gray packed images, 3 like RGB ImageNet")
    ap.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                    help="channels-last synthetic input (auto: on a GPU)")
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--loader", default="torch")
    ap.add_argument("--fp16-allreduce", action="store_true")
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--src-size", type=int, default=80)
    ap.add_argument("--work", default="bench_out/train")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--big-size", type=int, default=None,
                    help="image size of a second scaling measurement (default 2 x --size; 0 skips it)")
    ap.add_argument("--blocks", type=int, default=8, help="interleaved np=1/np=2 measurement: number of blocks")
    ap.add_argument("--block-steps", type=int, default=4,
                    help="steps per phase and block at --size (scaled down by the area at --big-size, at least 2)")
    ap.add_argument("--overhead-steps", type=int, default=96,
                    help="Horovod np=1 vs plain loop in one process: timed steps of each, alternating")
    args = ap.parse_args(argv)
    if args.worker:
        {"overhead": overhead_worker, "interleaved": interleaved_worker}.get(args.worker, worker)(args)
        return 0
    print(f"# train benchmark: {args.model} {args.size}px batch {args.batch}/process, {args.threads} thread(s)/process, "
          f"{args.precision}; {machine_line()}")
    rows = []
    measure_overhead(args, rows)
    big = args.size * 2 if args.big_size is None else args.big_size
    for size in [args.size] + ([big] if big and big != args.size else []):
        measure_scaling(args, rows, size)
    measure_loaders(args, rows)
    path = write_csv(Path(args.out) / f"bench-train-{args.precision}-{hardware_tag()}-{args.model}.csv", rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
