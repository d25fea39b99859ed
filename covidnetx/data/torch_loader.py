"""The torch loader: a DataLoader over stream positions (training) or padded blocks (evaluation), workers
forked, uint8 batches on the host (``transforms.normalize`` moves and scales them). Also the signal
handling that loader workers of either kind need under Slurm.
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator, Optional

import numpy as np
import torch

from covidnetx.data.sampling import TrainStream, augment_params, eval_block
from covidnetx.data.transforms import Preprocess, transform_torch
from covidnetx.utils import UserError


class _TorchSamples(torch.utils.data.Dataset):
    """Map-style dataset over stream positions (train) or block slots (eval)."""

    def __init__(self, view, pp: Preprocess, seed: int, stream: Optional[TrainStream] = None,
                 block: Optional[tuple] = None, channels: int = 0):
        self.view, self.pp, self.seed, self.stream, self.block = view, pp, seed, stream, block
        self.channels = channels   # 0: as stored; else gray samples are repeated to this (mixed channels)

    def __len__(self):
        return len(self.block[0]) if self.block is not None else 2 ** 62

    def __getitem__(self, pos: int):
        if self.stream is not None:
            i, valid = self.stream[pos], 1
        else:
            i, valid = int(self.block[0][pos]), int(self.block[1][pos])
        img = self.view.read_image(i)
        params = augment_params(self.seed, self.stream.slot(pos), img.shape[0], img.shape[1], self.pp) \
            if (self.stream is not None and self.pp.augment) else None
        x = transform_torch(img, self.pp, params)
        if self.channels and x.shape[0] != self.channels:
            x = x.expand(self.channels, -1, -1).contiguous()
        return x, self.view.labels[i], valid, i


class _RangeSampler(torch.utils.data.Sampler):
    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self):
        return self.stop - self.start


def _collate(batch):
    xs, ys, valid, idx = zip(*batch)
    # default_collate stacks a worker's images straight into shared memory (no copy when it is sent); the
    # small per-sample fields travel as numpy arrays (pickled inline): as tensors each would take a
    # shared-memory segment and a file descriptor of its own, which cost more than the images here
    return {"image": torch.utils.data.default_collate(xs), "label": np.stack(ys),
            "valid": np.asarray(valid, dtype=np.int32), "index": np.asarray(idx, dtype=np.int64)}


def _as_tensors(batches: Iterator[dict]) -> Iterator[dict]:
    """Batches as tensors. However the iteration ends (the last batch, an error in a worker re-raised
    here, close() by the consumer), the worker processes are ended now: left to the interpreter's exit,
    multiprocessing would wait for workers that outlive SIGTERM by design (``worker_signals``)."""
    try:
        for b in batches:
            yield {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in b.items()}
    except UserError as e:
        # a worker's UserError comes back wrapped in its traceback: keep the message the user needs
        last = str(e).rstrip().splitlines()[-1] if str(e).strip() else ""
        if "UserError: " in last:
            raise UserError(last.split("UserError: ", 1)[1]) from None
        raise
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def torch_loader(view, pp: Preprocess, batch: int, seed: int, rank: int, size: int, workers: int = 0,
                 train: bool = True, start_step: int = 0, steps: Optional[int] = None) -> Iterator[dict]:
    parts = view.parts if hasattr(view, "parts") else [view]
    channels = max(p.channels for p in parts) if len({p.channels for p in parts}) > 1 else 0
    if train:
        ds = _TorchSamples(view, pp, seed, stream=TrainStream(len(view), rank, size, seed), channels=channels)
        stop = (start_step + steps) * batch
        sampler = _RangeSampler(start_step * batch, stop)
    else:
        block = eval_block(len(view), rank, size, batch)
        ds = _TorchSamples(view, pp, seed, block=block, channels=channels)
        sampler = _RangeSampler(0, len(block[0]))
    return _as_tensors(iter(torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                                        collate_fn=_collate, persistent_workers=False,
                                                        pin_memory=torch.cuda.is_available(),
                                                        prefetch_factor=4 if workers else None,
                                                        worker_init_fn=worker_signals if workers else None,
                                                        multiprocessing_context="fork" if workers else None)))


def worker_signals(_worker_id=None) -> None:
    """In a loader worker process: outlive Slurm's warning. srun forwards SIGUSR1 (and SIGTERM at
    preemption or the time limit) to every process of the step, loader workers included; a worker started
    by spawn (DALI on a GPU) would die of it, and the training process would then fail at the next batch
    instead of saving its checkpoint. Workers ignore SIGUSR1 and, while their parent lives, SIGTERM: the
    training process decides when to stop, and ends its workers itself."""
    parent = os.getppid()

    def on_term(signum, frame):
        if os.getppid() != parent:         # orphaned: nobody will end this worker; go
            os._exit(0)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)


@contextlib.contextmanager
def children_ignore_sigusr1():
    """Processes started inside (DALI's spawned workers, multiprocessing's resource tracker) begin life
    with SIGUSR1 blocked: a signal mask survives fork and exec, a Python handler does not. This thread
    only: the process itself still receives the signal (another thread takes it; the handler runs later)."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    except (AttributeError, ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
