"""`covidnetx launch-check`: what every rank of a launch sees, and one checked allreduce.

Run it the way a sweep stage runs (``srun ... python -m covidnetx.cli launch-check`` inside the job
script, or under mpirun) before spending a large allocation: rank 0 prints one line per rank (node,
local rank, CUDA_VISIBLE_DEVICES, the device the engine pins) and a ``LAUNCH {json}`` line, and the
command fails (exit 2) when the allreduce of the ranks' numbers does not sum to n(n+1)/2, when two ranks
share a (node, local rank), or when two ranks of a node were given the same GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Optional

import numpy as np



def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx launch-check", description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="horovod", choices=("horovod", "torch", "none"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return p


def problems(ranks: list, total: float) -> list:
    """What is wrong with a launch, from every rank's view (empty: nothing)."""
    n = len(ranks)
    out = []
    if total != n * (n + 1) / 2:
        out.append(f"allreduce of 1..{n} gave {total:g}, not {n * (n + 1) // 2}")
    slots = {}
    for r in ranks:
        slots.setdefault((r["node"], r["local_rank"]), []).append(r["rank"])
    out += [f"ranks {v} share node {k[0]!r} local rank {k[1]}" for k, v in slots.items() if len(v) > 1]
    gpus = {}
    for r in ranks:
        for g in r["gpu_ids"]:
            gpus.setdefault((r["node"], g), []).append(r["rank"])
    out += [f"ranks {v} of node {k[0]!r} were given the same GPU {k[1]}" for k, v in gpus.items() if len(v) > 1]
    return out


def run(args) -> int:
    from covidnetx import dist as D  # lazy: heavy, torch, only when the check runs (not for --help)
    dist = D.init(args.backend, args.device)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    # a GPU's identity on its node: the device Slurm bound (CUDA_VISIBLE_DEVICES) or the one pinned
    ids = [v for v in (visible or "").split(",") if v]
    if dist.device.type == "cuda":
        ids = [ids[dist.device.index] if dist.device.index < len(ids) else str(dist.device.index)]
    me = {"rank": dist.rank, "size": dist.size, "local_rank": dist.local_rank,
          "node": os.environ.get("SLURM_NODEID") or socket.gethostname(), "host": socket.gethostname(),
          "slurm_nodename": os.environ.get("SLURMD_NODENAME"), "cuda_visible_devices": visible,
          "device": str(dist.device), "gpu_ids": ids if len(ids) == 1 else []}
    total = float(dist.allreduce_sum(np.array([dist.rank + 1.0]))[0])
    ranks = sorted(dist.allgather_object(me), key=lambda r: r["rank"])
    bad = problems(ranks, total)
    if dist.is_primary:
        for r in ranks:
            print(f"rank {r['rank']}/{r['size']}: node {r['node']} ({r['slurm_nodename'] or r['host']}), local rank "
                  f"{r['local_rank']}, CUDA_VISIBLE_DEVICES={r['cuda_visible_devices']}, device {r['device']}", flush=True)
        print("LAUNCH " + json.dumps({"backend": dist.backend, "size": dist.size, "allreduce_sum": total,
                                      "ranks": ranks, "problems": bad}), flush=True)
        if bad:
            print(f"covidnetx launch-check: error: {'; '.join(bad)}", file=sys.stderr, flush=True)
    dist.shutdown()
    return 2 if bad else 0
