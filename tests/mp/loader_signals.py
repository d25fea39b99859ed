"""Loader workers under Slurm's warning: start a loader with one worker, take a batch, send SIGUSR1 and
SIGTERM to every child process (as srun does to every process of a step), read the rest. Prints one JSON
line: children signalled, children still alive, whether the batches equal a worker-less reference.

    python tests/mp/loader_signals.py torch|dali fork|spawn PACKED_DIR
"""
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def children() -> set:
    out = set()
    for t in os.listdir("/proc/self/task"):
        try:
            out |= {int(x) for x in open(f"/proc/self/task/{t}/children").read().split()}
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main(kind: str, method: str, packed: str) -> None:
    import torch
    from covidnetx.data.compose import Mixture
    from covidnetx.data.hdf5 import PackedDataset
    from covidnetx.data.loader import Preprocess, make_loader
    view = Mixture([PackedDataset(packed, "train")])
    pp = Preprocess(image_size=24)
    ref = [b["index"].clone() for b in make_loader(kind, view, pp, 8, 0, 0, 1, workers=0, train=True, steps=6)]
    kw = {"start_method": method} if kind == "dali" else {}
    it = make_loader(kind, view, pp, 8, 0, 0, 1, workers=1, train=True, steps=6, **kw)
    got = [next(it)["index"].clone()]
    kids = children()
    for pid in kids:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    time.sleep(0.5)
    living = [p for p in kids if alive(p)]
    got += [b["index"].clone() for b in it]
    same = len(got) == len(ref) and all(torch.equal(a, b) for a, b in zip(got, ref))
    print(json.dumps({"signalled": len(kids), "alive": len(living), "batches_equal": same}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
