"""Loaders over packed data: one preprocessing definition, two implementations (torch and DALI), and
one sharding scheme (by global rank, equal per-rank counts).

Sharding
  * training is a stream of steps: every epoch is a permutation seeded by (seed, epoch), identical on
    all ranks; its first ``n - n % size`` entries are dealt round-robin (rank r takes entries r, r+size,
    ...), so each rank gets the same count and no sample appears twice in an epoch (the ``n % size``
    left over go to no rank that epoch; they differ from epoch to epoch). Position p of the stream is a
    pure function of (seed, rank, size, p): resuming at step s restarts at p = s * batch exactly.
  * evaluation gives rank r the contiguous block r of ``ceil(n / size)`` samples, padded at the end
    to whole batches with masked entries (valid = 0), so every sample is evaluated exactly once.

Augmentation parameters (random-resized-crop box, flip, small rotation) are drawn from a generator
seeded by (seed, stream position), in Python, and applied by either loader: both paths augment alike
and a resumed run sees the same augmentations as an uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from covidnetx.utils import UserError


@dataclass(frozen=True)
class Preprocess:
    image_size: int = 32
    resize_size: int = 0            # eval: shorter side to this, then centre crop (0 = image_size)
    augment: bool = True
    crop_scale: float = 0.5
    rotate_deg: float = 5.0
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.25, 0.25, 0.25)
    channels: int = 3               # model input channels (gray images are repeated)

    @property
    def eval_resize(self) -> int:
        return self.resize_size or self.image_size


def augment_params(seed: int, position: int, h: int, w: int, pp: Preprocess) -> np.ndarray:
    """[y0, x0, ch, cw, flip, angle] for stream position ``position`` (random-resized-crop style)."""
    rng = np.random.default_rng([seed, position, 7])
    for _ in range(10):
        area = h * w * rng.uniform(pp.crop_scale, 1.0)
        ar = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        ch, cw = h, w
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    flip = float(rng.random() < 0.5)
    angle = float(rng.uniform(-pp.rotate_deg, pp.rotate_deg)) if pp.rotate_deg > 0 else 0.0
    return np.array([y0, x0, ch, cw, flip, angle], np.float32)


def center_crop_box(h: int, w: int, size: int) -> tuple:
    return (h - size) // 2, (w - size) // 2


def resized_shape(h: int, w: int, shorter: int) -> tuple:
    if min(h, w) == shorter:
        return h, w
    s = shorter / min(h, w)
    return max(shorter, int(round(h * s))), max(shorter, int(round(w * s)))


# ---------------------------------------------------------------------------------------------------
# sharding
# ---------------------------------------------------------------------------------------------------
class TrainStream:
    """Stream of sample indices for one rank (see module docstring)."""

    def __init__(self, n: int, rank: int, size: int, seed: int):
        if n < size:
            raise UserError(f"training set has {n} samples, fewer than the {size} ranks")
        self.n, self.rank, self.size, self.seed = n, rank, size, seed
        self.per_rank = n // size
        self._cache: dict = {}

    def epoch_indices(self, epoch: int) -> np.ndarray:
        got = self._cache.get(epoch)
        if got is None:
            perm = np.random.default_rng([self.seed, epoch, 11]).permutation(self.n)
            got = perm[: self.per_rank * self.size][self.rank::self.size]
            self._cache = {epoch: got}
        return got

    def __getitem__(self, position: int) -> int:
        e, j = divmod(position, self.per_rank)
        return int(self.epoch_indices(e)[j])


def eval_block(n: int, rank: int, size: int, batch: int) -> tuple:
    """(indices, valid) for rank's contiguous block, padded to whole batches."""
    per = -(-n // size)
    start, stop = min(n, rank * per), min(n, (rank + 1) * per)
    real = np.arange(start, stop)
    padded = max(batch, -(-per // batch) * batch)
    idx = np.zeros(padded, np.int64)
    valid = np.zeros(padded, np.int32)
    idx[: len(real)] = real
    valid[: len(real)] = 1
    return idx, valid


# ---------------------------------------------------------------------------------------------------
# torch preprocessing (the reference implementation)
# ---------------------------------------------------------------------------------------------------
def _resize(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False,
                                           antialias=True)[0]


_BASE_GRID: dict = {}


def _rotate(t: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate counter-clockwise about the centre, bilinear, zeros outside."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    h, w = t.shape[1:]
    base = _BASE_GRID.get((h, w))
    if base is None:   # pixel-centre coordinates in [-1, 1] (align_corners=False)
        ys = (2 * torch.arange(h, dtype=torch.float32) + 1) / h - 1
        xs = (2 * torch.arange(w, dtype=torch.float32) + 1) / w - 1
        base = _BASE_GRID[(h, w)] = (xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w))
    x, y = base
    # output pixel (x, y) samples the input at R(-a)(x, y), in pixel units rescaled to [-1, 1]
    gx = c * x - s * y * h / w
    gy = s * x * w / h + c * y
    grid = torch.stack([gx, gy], -1)[None]
    return torch.nn.functional.grid_sample(t[None], grid, mode="bilinear", padding_mode="zeros",
                                           align_corners=False)[0]


def preprocess_torch(img: np.ndarray, pp: Preprocess, params: Optional[np.ndarray]) -> torch.Tensor:
    """HWC uint8 -> CHW float normalised, with ``params`` = augment_params(...) or None (evaluation)."""
    t = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).float()
    h, w = t.shape[1:]
    s = pp.image_size
    if params is not None:
        y0, x0, ch, cw, flip, angle = params.tolist()
        t = t[:, int(y0):int(y0 + ch), int(x0):int(x0 + cw)]
        if (int(ch), int(cw)) != (s, s):
            t = _resize(t, s, s)
        if flip:
            t = t.flip(-1)
        if angle:
            t = _rotate(t, angle)
    else:
        rh, rw = resized_shape(h, w, pp.eval_resize)
        if (rh, rw) != (h, w):
            t = _resize(t, rh, rw)
        y0, x0 = center_crop_box(rh, rw, s)
        t = t[:, y0:y0 + s, x0:x0 + s]
    if t.shape[0] == 1 and pp.channels == 3:
        t = t.expand(3, -1, -1)
    mean = torch.tensor(pp.mean[: t.shape[0]]).view(-1, 1, 1) * 255.0
    std = torch.tensor(pp.std[: t.shape[0]]).view(-1, 1, 1) * 255.0
    return ((t - mean) / std).contiguous()


class _TorchSamples(torch.utils.data.Dataset):
    """Map-style dataset over stream positions (train) or block slots (eval)."""

    def __init__(self, view, pp: Preprocess, seed: int, stream: Optional[TrainStream] = None,
                 block: Optional[tuple] = None):
        self.view, self.pp, self.seed, self.stream, self.block = view, pp, seed, stream, block

    def __len__(self):
        return len(self.block[0]) if self.block is not None else 2 ** 62

    def __getitem__(self, pos: int):
        if self.stream is not None:
            i, valid = self.stream[pos], 1
        else:
            i, valid = int(self.block[0][pos]), int(self.block[1][pos])
        img = self.view.read_image(i)
        params = augment_params(self.seed, pos, img.shape[0], img.shape[1], self.pp) \
            if (self.stream is not None and self.pp.augment) else None
        return preprocess_torch(img, self.pp, params), torch.as_tensor(self.view.labels[i]), valid, i


class _RangeSampler(torch.utils.data.Sampler):
    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self):
        return self.stop - self.start


def _collate(batch):
    xs, ys, valid, idx = zip(*batch)
    return {"image": torch.stack(xs), "label": torch.stack(ys), "valid": torch.tensor(valid, dtype=torch.int32),
            "index": torch.tensor(idx, dtype=torch.int64)}


def torch_loader(view, pp: Preprocess, batch: int, seed: int, rank: int, size: int, workers: int = 0,
                 train: bool = True, start_step: int = 0, steps: Optional[int] = None) -> Iterator[dict]:
    if train:
        ds = _TorchSamples(view, pp, seed, stream=TrainStream(len(view), rank, size, seed))
        stop = (start_step + steps) * batch
        sampler = _RangeSampler(start_step * batch, stop)
    else:
        block = eval_block(len(view), rank, size, batch)
        ds = _TorchSamples(view, pp, seed, block=block)
        sampler = _RangeSampler(0, len(block[0]))
    return iter(torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                            collate_fn=_collate, persistent_workers=False,
                                            pin_memory=torch.cuda.is_available(),
                                            prefetch_factor=4 if workers else None,
                                            multiprocessing_context="fork" if workers else None))


# ---------------------------------------------------------------------------------------------------
# DALI
# ---------------------------------------------------------------------------------------------------
class DaliSampleSource:
    """Stateless per-sample callable for ``fn.external_source(batch=False, parallel=True)``: picklable,
    opens HDF5 lazily in each worker, returns the stored bytes/array plus label, mask, index and the
    augmentation parameters of its stream position."""

    def __init__(self, view, pp: Preprocess, seed: int, stream: Optional[TrainStream] = None,
                 block: Optional[tuple] = None, start: int = 0, multilabel: bool = False):
        self.view, self.pp, self.seed, self.stream, self.block = view, pp, seed, stream, block
        self.start, self.multilabel = start, multilabel

    def __call__(self, info):
        pos = self.start + info.idx_in_epoch
        if self.stream is not None:
            i, valid = self.stream[pos], 1
        else:
            if info.idx_in_epoch >= len(self.block[0]):
                raise StopIteration
            i, valid = int(self.block[0][pos]), int(self.block[1][pos])
        stored = np.asarray(self.view.read_stored(i))
        shape = self.view.stored_shape(i)
        if self.stream is not None and self.pp.augment:
            params = augment_params(self.seed, pos, int(shape[0]), int(shape[1]), self.pp)
        else:
            params = np.zeros(6, np.float32)
        label = np.asarray(self.view.labels[i], dtype=np.float32 if self.multilabel else np.int64)
        out = (stored, label, np.array(valid, np.int32), np.array(i, np.int64))
        if self.stream is None or not self.pp.augment:
            return out
        return out + (params[0:2].copy(), params[2:4].copy(), params[4:5].astype(bool), params[5:6].copy())


def _dali_pipeline(source: DaliSampleSource, *, encoded: bool, channels_stored: int, pp: Preprocess, train: bool,
                   batch: int, workers: int, device: str, device_id, seed: int, threads: int):
    from nvidia.dali import fn, pipeline_def, types

    gpu = device == "gpu"

    @pipeline_def(batch_size=batch, num_threads=max(1, threads), device_id=device_id if gpu else None,
                  seed=seed, py_num_workers=max(1, workers), py_start_method="fork", prefetch_queue_depth=2,
                  exec_dynamic=True)
    def pipe():
        augment = train and pp.augment
        outs = fn.external_source(source=source, num_outputs=8 if augment else 4, batch=False,
                                  parallel=workers > 0, layout=["HWC" if not encoded else ""] + [""] * (7 if augment else 3))
        img, label, valid, index = outs[:4]
        if encoded:
            img = fn.decoders.image(img, device="mixed" if gpu else "cpu",
                                    output_type=types.GRAY if channels_stored == 1 else types.RGB)
        elif gpu:
            img = img.gpu()
        s = pp.image_size
        if augment:
            anchor, shape, flip, angle = outs[4:]
            img = fn.slice(img, anchor, shape, axis_names="HW", normalized_anchor=False, normalized_shape=False)
            img = fn.resize(img, size=[s, s], dtype=types.FLOAT, antialias=True)
            img = fn.flip(img, horizontal=fn.cast(flip, dtype=types.INT32))
            if pp.rotate_deg > 0:
                img = fn.rotate(img, angle=angle, keep_size=True, fill_value=0.0)
        else:
            img = fn.resize(img, resize_shorter=pp.eval_resize, dtype=types.FLOAT, antialias=True)
            img = fn.crop(img, crop=(s, s), crop_pos_x=0.5, crop_pos_y=0.5)
        m = [v * 255.0 for v in pp.mean[:channels_stored]]
        sd = [v * 255.0 for v in pp.std[:channels_stored]]
        img = fn.crop_mirror_normalize(img, mean=m, std=sd, output_layout="CHW", dtype=types.FLOAT)
        if channels_stored == 1 and pp.channels == 3:
            img = fn.cat(img, img, img, axis=0)
        return img, label, valid, index

    return pipe()


def _to_torch(tl, device: torch.device) -> torch.Tensor:
    from nvidia.dali.tensors import TensorListGPU
    if isinstance(tl, TensorListGPU):
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
        t = tl.as_tensor()
        out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=device)
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(tl.as_tensor()))


def dali_loader(view, pp: Preprocess, batch: int, seed: int, rank: int, size: int, workers: int = 0,
                train: bool = True, start_step: int = 0, steps: Optional[int] = None, device: str = "cpu",
                torch_device: Optional[torch.device] = None) -> Iterator[dict]:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        raise UserError(f"data.loader=dali needs nvidia-dali ({e}); use data.loader=torch") from None
    parts = view.parts if hasattr(view, "parts") else [view]
    encoded = parts[0].encoding != "raw"
    if len({p.encoding != "raw" for p in parts}) > 1 or len({p.channels for p in parts}) > 1:
        raise UserError("DALI loader: the datasets of a mixture must share encoding kind and channels")
    multilabel = getattr(view, "label_kind", "multiclass") == "multilabel"
    if train:
        src = DaliSampleSource(view, pp, seed, stream=TrainStream(len(view), rank, size, seed),
                               start=start_step * batch, multilabel=multilabel)
        n_batches = steps
    else:
        block = eval_block(len(view), rank, size, batch)
        src = DaliSampleSource(view, pp, seed, block=block, multilabel=multilabel)
        n_batches = len(block[0]) // batch
    dev_id = torch_device.index if (torch_device is not None and torch_device.type == "cuda") else 0
    pipe = _dali_pipeline(src, encoded=encoded, channels_stored=parts[0].channels, pp=pp, train=train,
                          batch=batch, workers=workers, device=device, device_id=dev_id, seed=seed + rank,
                          threads=torch.get_num_threads())
    pipe.build()
    tdev = torch_device or torch.device("cpu")

    def gen():
        for _ in range(n_batches):
            img, label, valid, index = pipe.run()
            yield {"image": _to_torch(img, tdev), "label": _to_torch(label, torch.device("cpu")),
                   "valid": _to_torch(valid, torch.device("cpu")), "index": _to_torch(index, torch.device("cpu"))}
    return gen()


def make_loader(kind: str, *args, **kw) -> Iterator[dict]:
    if kind == "dali":
        return dali_loader(*args, **kw)
    kw.pop("device", None)
    kw.pop("torch_device", None)
    return torch_loader(*args, **kw)
