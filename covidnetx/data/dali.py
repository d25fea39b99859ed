"""The DALI loader: the same samples, augmentation parameters and preprocessing as the torch loader,
decoded and transformed by a DALI pipeline (CPU, or GPU with ``data.device=gpu``), fed whole batches by
an external source.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional

import numpy as np
import torch

from covidnetx.data.sampling import TrainStream, augment_params, eval_block
from covidnetx.data.torch_loader import children_ignore_sigusr1, worker_signals
from covidnetx.data.transforms import Preprocess
from covidnetx.utils import UserError


class DaliBatchSource:
    """Stateless whole-batch callable for ``fn.external_source(batch=True)``, in-process or in parallel
    workers: picklable, opens HDF5 lazily in each process, and for iteration ``it`` returns the stored
    bytes/arrays of that batch plus labels, masks, indices and the augmentation parameters of their stream
    positions, each output as one array or list per batch. One Python call per batch rather than per sample
    keeps the per-image cost on the host to a memory copy (raw) and a few microseconds."""

    def __init__(self, view, pp: Preprocess, seed: int, batch: int, stream: Optional[TrainStream] = None,
                 block: Optional[tuple] = None, start: int = 0, multilabel: bool = False):
        self.view, self.pp, self.seed, self.batch, self.stream, self.block = view, pp, seed, batch, stream, block
        self.start, self.multilabel = start, multilabel
        self._owner, self._signals_in = os.getpid(), None    # the process that built the pipeline

    @property
    def augment(self) -> bool:
        return self.stream is not None and self.pp.augment

    @property
    def num_outputs(self) -> int:
        return (8 if self.pp.rotate_deg > 0 else 7) if self.augment else 4

    def __call__(self, iteration: int):
        pid = os.getpid()
        if pid != self._owner and pid != self._signals_in:      # first call in a worker process
            worker_signals()
            self._signals_in = pid
        first = int(iteration) * self.batch
        if self.stream is not None:
            positions = range(self.start + first, self.start + first + self.batch)
            idx = np.fromiter((self.stream[p] for p in positions), np.int64, self.batch)
            valid = np.ones(self.batch, np.int32)
        else:
            if first >= len(self.block[0]):
                raise StopIteration
            idx = self.block[0][first:first + self.batch].astype(np.int64)
            valid = self.block[1][first:first + self.batch].astype(np.int32)
        images = [np.asarray(self.view.read_stored(int(i))) for i in idx]
        labels = np.asarray(self.view.labels[idx], dtype=np.float32 if self.multilabel else np.int64)
        out = (images, labels, valid, idx)
        if not self.augment:
            return out
        params = np.stack([augment_params(self.seed, self.stream.slot(p),
                                          *(int(v) for v in self.view.stored_shape(int(i))[:2]), self.pp)
                           for p, i in zip(positions, idx)])
        out = out + (params[:, 0:2].copy(), params[:, 2:4].copy(), params[:, 4:5].astype(bool))
        return out + (params[:, 5:6].copy(),) if self.pp.rotate_deg > 0 else out


def dali_start_method() -> str:
    """How DALI starts its Python workers: fork is quickest, but DALI refuses to fork once the CUDA driver
    is initialised in the process (by torch moving the model, or by an earlier GPU pipeline), so spawn then."""
    from nvidia.dali import backend  # lazy: optional, DALI
    return "spawn" if backend.IsDriverInitialized() else "fork"


def _dali_pipeline(source: DaliBatchSource, *, encoded: bool, channels_stored: int, pp: Preprocess,
                   batch: int, workers: int, device: str, device_id, seed: int, threads: int,
                   start_method: str = "fork"):
    from nvidia.dali import fn, pipeline_def, types  # lazy: optional, DALI

    gpu = device == "gpu"

    @pipeline_def(batch_size=batch, num_threads=max(1, threads), device_id=device_id if gpu else None,
                  seed=seed, py_num_workers=max(1, workers), py_start_method=start_method, prefetch_queue_depth=2,
                  exec_dynamic=True)
    def pipe():
        augment = source.augment
        n_out = source.num_outputs
        outs = fn.external_source(source=source, num_outputs=n_out, batch=True, parallel=workers > 0,
                                  layout=["HWC" if not encoded else ""] + [""] * (n_out - 1))
        img, label, valid, index = outs[:4]
        if encoded:
            img = fn.decoders.image(img, device="mixed" if gpu else "cpu",
                                    output_type=types.GRAY if channels_stored == 1 else types.RGB)
        elif gpu:
            img = img.gpu()
        s = pp.image_size
        if augment:
            anchor, shape, flip = outs[4:7]
            img = fn.slice(img, anchor, shape, axis_names="HW", normalized_anchor=False, normalized_shape=False)
            img = fn.resize(img, size=[s, s], antialias=True)
            img = fn.flip(img, horizontal=fn.cast(flip, dtype=types.INT32))
            if pp.rotate_deg > 0:
                img = fn.rotate(img, angle=outs[7], keep_size=True, fill_value=0)
        else:
            img = fn.resize(img, resize_shorter=pp.eval_resize, antialias=True)
            img = fn.crop(img, crop=(s, s), crop_pos_x=0.5, crop_pos_y=0.5)
        img = fn.transpose(img, perm=[2, 0, 1], output_layout="CHW")
        return img, label, valid, index

    return pipe()


def _to_torch(tl, device: torch.device) -> torch.Tensor:
    from nvidia.dali.tensors import TensorListGPU  # lazy: optional, DALI
    if isinstance(tl, TensorListGPU):
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type  # lazy: optional, DALI
        t = tl.as_tensor()
        out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=device)
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(tl.as_tensor()))


def dali_loader(view, pp: Preprocess, batch: int, seed: int, rank: int, size: int, workers: int = 0,
                train: bool = True, start_step: int = 0, steps: Optional[int] = None, device: str = "cpu",
                torch_device: Optional[torch.device] = None, start_method: Optional[str] = None) -> Iterator[dict]:
    try:
        import nvidia.dali  # lazy: optional, DALI
    except ImportError as e:
        raise UserError(f"data.loader=dali needs nvidia-dali ({e}); use data.loader=torch") from None
    parts = view.parts if hasattr(view, "parts") else [view]
    encoded = parts[0].encoding != "raw"
    if len({p.encoding != "raw" for p in parts}) > 1 or len({p.channels for p in parts}) > 1:
        raise UserError("DALI loader: the datasets of a mixture must share encoding kind and channels")
    multilabel = getattr(view, "label_kind", "multiclass") == "multilabel"
    if train:
        src = DaliBatchSource(view, pp, seed, batch, stream=TrainStream(len(view), rank, size, seed),
                              start=start_step * batch, multilabel=multilabel)
        n_batches = steps
    else:
        block = eval_block(len(view), rank, size, batch)
        src = DaliBatchSource(view, pp, seed, batch, block=block, multilabel=multilabel)
        n_batches = len(block[0]) // batch
    dev_id = torch_device.index if (torch_device is not None and torch_device.type == "cuda") else 0
    method = start_method or dali_start_method()
    pipe = _dali_pipeline(src, encoded=encoded, channels_stored=parts[0].channels, pp=pp,
                          batch=batch, workers=workers, device=device, device_id=dev_id, seed=seed + rank,
                          threads=torch.get_num_threads(), start_method=method)
    with children_ignore_sigusr1():
        if workers and method != "fork":
            from multiprocessing import resource_tracker  # lazy: only when DALI starts its workers
            resource_tracker.ensure_running()      # started here, it inherits the mask (else DALI starts it)
        pipe.build()
    tdev = torch_device or torch.device("cpu")

    def gen():
        for it in range(n_batches):
            try:
                img, label, valid, index = pipe.run()
            except Exception as e:  # noqa: BLE001 - DALI raises RuntimeError/its own kinds; name the sample
                raise dali_failure(view, src, it, e) from None
            yield {"image": _to_torch(img, tdev), "label": _to_torch(label, torch.device("cpu")),
                   "valid": _to_torch(valid, torch.device("cpu")), "index": _to_torch(index, torch.device("cpu"))}
    return gen()


def dali_failure(view, source: DaliBatchSource, iteration: int, error: Exception) -> UserError:
    """DALI's error on batch ``iteration`` as one UserError naming the sample: the batch's samples are
    read and decoded again on the host, and the first that fails is named by shard and index (DALI's own
    message names neither); otherwise DALI's first line, with the batch's index range."""
    idx: list = []
    try:
        idx = [int(i) for i in source(iteration)[3]]
        for i in idx:
            view.read_image(i)
    except UserError as e:
        return e
    except Exception:  # noqa: BLE001 - the re-check is best effort; DALI's message follows
        pass
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    where = f" (samples {min(idx)}..{max(idx)})" if idx else ""
    return UserError(f"the DALI loader failed on batch {iteration}{where}: {first}")
