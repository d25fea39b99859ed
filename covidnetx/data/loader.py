"""Loaders over packed data: one preprocessing definition, two implementations (torch and DALI), and
one sharding scheme (by global rank, equal per-rank counts).

Sharding
  * training is a stream of steps: every epoch is a permutation seeded by (seed, epoch), identical on
    all ranks; its first ``n - n % size`` entries are dealt round-robin (rank r takes entries r, r+size,
    ...), so each rank gets the same count and no sample appears twice in an epoch (the ``n % size``
    left over go to no rank that epoch; they differ from epoch to epoch). Position p of the stream is a
    pure function of (seed, rank, size, p): resuming at step s restarts at p = s * batch exactly. A
    training set smaller than the number of ranks (few-shot k=1 with 3 classes on a 4-GPU node) makes
    each epoch ``ceil(size / n)`` permutations back to back, so every rank still gets samples.
  * evaluation gives rank r the contiguous block r of ``ceil(n / size)`` samples, padded at the end
    to whole batches with masked entries (valid = 0), so every sample is evaluated exactly once.

Augmentation parameters (random-resized-crop box, flip, small rotation) are drawn from a generator
seeded by (seed, global slot), in Python, and applied by either loader: both paths augment alike and a
resumed run sees the same augmentations as an uninterrupted one. The global slot of rank r's position p
is ``p * size + r`` (= p on one rank), so no two ranks draw the same augmentations: a global batch of
B per rank on N ranks holds N x B different crops, flips and angles, not B patterns repeated N times.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from covidnetx.dist import to_device
from covidnetx.utils import UserError


@dataclass(frozen=True)
class Preprocess:
    image_size: int = 32
    resize_size: int = 0            # eval: shorter side to this, then centre crop (0 = image_size)
    augment: bool = True
    crop_scale: float = 0.8
    rotate_deg: float = 0.0
    hflip: bool = False
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.25, 0.25, 0.25)
    channels: int = 3               # model input channels (gray images are repeated)

    @property
    def eval_resize(self) -> int:
        return self.resize_size or self.image_size

    @classmethod
    def from_config(cls, data, augment: bool = True) -> "Preprocess":
        """The preprocessing a config's ``data`` section asks for (``augment=False``: evaluation only)."""
        return cls(image_size=data.image_size, resize_size=data.resize_size, augment=data.augment and augment,
                   crop_scale=data.crop_scale, rotate_deg=data.rotate_deg, hflip=data.hflip,
                   mean=tuple(data.mean), std=tuple(data.std))


_MASK64 = (1 << 64) - 1


def _splitmix64(state: int) -> tuple:
    """One step of SplitMix64: (next state, 64-bit output)."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


class _Counter:
    """Counter-based uniform draws keyed by (seed, position): a few microseconds to set up, where a seeded
    numpy Generator costs ~50 us, which showed per sample in the loaders."""

    def __init__(self, seed: int, position: int):
        _, k = _splitmix64(seed & _MASK64)
        self.state = (k ^ (position * 0xD1B54A32D192ED03)) & _MASK64

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        self.state, z = _splitmix64(self.state)
        return lo + (hi - lo) * ((z >> 11) * (1.0 / 9007199254740992.0))

    def integer(self, n: int) -> int:
        """uniform in [0, n)."""
        return min(n - 1, int(self.uniform() * n))


def augment_params(seed: int, position: int, h: int, w: int, pp: Preprocess) -> np.ndarray:
    """[y0, x0, ch, cw, flip, angle] for stream position ``position`` (random-resized-crop style)."""
    rng = _Counter(seed, position)
    for _ in range(10):
        area = h * w * rng.uniform(pp.crop_scale, 1.0)
        ar = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        ch, cw = h, w
    y0 = rng.integer(h - ch + 1)
    x0 = rng.integer(w - cw + 1)
    flip = float(rng.uniform() < 0.5 and pp.hflip)         # drawn either way: the stream stays aligned
    angle = rng.uniform(-pp.rotate_deg, pp.rotate_deg) if pp.rotate_deg > 0 else 0.0
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
        if n < 1:
            raise UserError("the training set is empty")
        self.n, self.rank, self.size, self.seed = n, rank, size, seed
        self.repeats = -(-size // n)             # permutations per epoch: 1 unless n < size
        self.per_rank = n * self.repeats // size
        self._cache: dict = {}

    def epoch_indices(self, epoch: int) -> np.ndarray:
        got = self._cache.get(epoch)
        if got is None:
            if self.repeats == 1:              # the usual case, seeded as it always was
                perm = np.random.default_rng([self.seed, epoch, 11]).permutation(self.n)
            else:
                perm = np.concatenate([np.random.default_rng([self.seed, epoch, 11, j]).permutation(self.n)
                                       for j in range(self.repeats)])
            got = perm[: self.per_rank * self.size][self.rank::self.size]
            self._cache = {epoch: got}
        return got

    def __getitem__(self, position: int) -> int:
        e, j = divmod(position, self.per_rank)
        return int(self.epoch_indices(e)[j])

    def slot(self, position: int) -> int:
        """Global slot of this rank's stream position: unique across ranks (keys the augmentation)."""
        return position * self.size + self.rank


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
# Loaders hand out uint8 CHW images in the stored channel count: 4x fewer bytes than float, 3x fewer
# again for gray, through worker queues, pinned memory and the host-to-device copy. ``normalize``
# (float conversion, mean/std, gray -> 3 channels) runs on the consumer's device, once per batch.
def _resize_u8(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False,
                                           antialias=True)[0]


_CV2: list = []


def _cv2():
    """OpenCV when installed and not switched off (COVIDNETX_NO_CV2=1), single-threaded (the loader
    parallelises over samples); else None, and torch's kernels do all the work."""
    if not _CV2:
        mod = None
        if os.environ.get("COVIDNETX_NO_CV2", "") in ("", "0"):
            try:
                import cv2 as mod
                mod.setNumThreads(1)
            except ImportError:
                mod = None
        _CV2.append(mod)
    return _CV2[0]


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


def _chw(a: np.ndarray) -> torch.Tensor:
    """HWC array -> CHW tensor that owns writable memory (never a view of a read-only memory map)."""
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy()).permute(2, 0, 1)


def _crop_resize(img: np.ndarray, y0: int, x0: int, ch: int, cw: int, h: int, w: int) -> np.ndarray:
    """HWC uint8 region [y0:y0+ch, x0:x0+cw] bilinearly resized to (h, w), antialiased where it shrinks
    -> HWC uint8.

    Where neither axis shrinks, antialiasing is a no-op and the result is plain bilinear interpolation;
    OpenCV's fixed-point kernel computes it faster than torch's uint8 path (at most 1 level apart:
    rounding). Any shrinking axis takes torch's antialiased kernel, the reference."""
    region = img[y0:y0 + ch, x0:x0 + cw]
    if (ch, cw) == (h, w):
        return region
    cv2 = _cv2() if (ch <= h and cw <= w and img.shape[2] in (1, 3)) else None
    if cv2 is not None:
        return cv2.resize(region, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, img.shape[2])
    return _hwc(_resize_u8(_chw(region), h, w))


_BASE_GRID: dict = {}


def _rotate_u8(a: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate HWC uint8 counter-clockwise about the centre, bilinear, zeros outside, rounded to uint8.

    Output pixel (x, y), as an offset from the centre ((w-1)/2, (h-1)/2) in pixels, samples the input at
    R(-angle)(x, y). OpenCV's warpAffine does it in fixed point (faster than torch's grid_sample on floats,
    which is the fallback); the two agree to a level."""
    h, w = a.shape[:2]
    r = math.radians(degrees)
    c, s = math.cos(r), math.sin(r)
    cv2 = _cv2() if a.shape[2] in (1, 3) else None
    if cv2 is not None:
        cx, cy = (w - 1) / 2, (h - 1) / 2
        m = np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy]])
        return cv2.warpAffine(np.ascontiguousarray(a), m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0).reshape(h, w, a.shape[2])
    base = _BASE_GRID.get((h, w))
    if base is None:   # pixel-centre coordinates in [-1, 1] (align_corners=False)
        ys = (2 * torch.arange(h, dtype=torch.float32) + 1) / h - 1
        xs = (2 * torch.arange(w, dtype=torch.float32) + 1) / w - 1
        base = _BASE_GRID[(h, w)] = (xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w))
    x, y = base
    # the same map in grid_sample's [-1, 1] coordinates (pixel units rescaled per axis)
    gx = c * x - s * y * h / w
    gy = s * x * w / h + c * y
    grid = torch.stack([gx, gy], -1)[None]
    out = torch.nn.functional.grid_sample(_chw(a)[None].float(), grid, mode="bilinear", padding_mode="zeros",
                                          align_corners=False)[0]
    return _hwc(out.round_().clamp_(0, 255).to(torch.uint8))


def transform_torch(img: np.ndarray, pp: Preprocess, params: Optional[np.ndarray]) -> torch.Tensor:
    """HWC uint8 -> CHW uint8 of pp.image_size, with ``params`` = augment_params(...) or None (evaluation:
    shorter side to pp.eval_resize, centre crop). Works on HWC arrays until the end."""
    s = pp.image_size
    if params is not None:
        y0, x0, ch, cw, flip, angle = params.tolist()
        a = _crop_resize(img, int(y0), int(x0), int(ch), int(cw), s, s)
        if flip:
            a = a[:, ::-1]
        if angle:
            a = _rotate_u8(a, angle)
    else:
        h, w = img.shape[:2]
        rh, rw = resized_shape(h, w, pp.eval_resize)
        y0, x0 = center_crop_box(rh, rw, s)
        a = _crop_resize(img, 0, 0, h, w, rh, rw)[y0:y0 + s, x0:x0 + s]
    return _chw(a).contiguous()


_NORM: dict = {}


def normalize(x: torch.Tensor, pp: Preprocess, device: Optional[torch.device] = None,
              expand: Optional[bool] = None) -> torch.Tensor:
    """uint8 (N, C, H, W) batch from a loader -> float32 normalised on ``device``.

    Gray input is repeated to 3 channels (when the model wants RGB, pp.channels == 3) if ``expand``; by
    default only on GPUs, where the copy is free and cuDNN's 3-channel stem kernels beat the 1-channel
    ones (docs/performance.md). On CPUs gray stays 1 channel and the stem sums
    its weights instead (models.layers.GrayConv2d): a third of the stem's work and no 3x copy. On a GPU
    the batch comes out channels-last (NHWC)."""
    if device is not None:
        x = to_device(x, device)           # to a GPU through pinned memory: the host does not stall
    c = x.shape[1]
    key = (str(x.device), c, pp.mean, pp.std)
    ms = _NORM.get(key)
    if ms is None:
        inv = [1.0 / (v * 255.0) for v in pp.std[:c]]
        shift = [-m / s for m, s in zip(pp.mean[:c], pp.std[:c])]
        if len(set(inv)) == 1 and len(set(shift)) == 1:      # one scale and shift for all channels: scalars
            ms = (shift[0], inv[0])
        else:
            ms = (torch.tensor(shift, device=x.device).view(1, c, 1, 1),
                  torch.tensor(inv, device=x.device).view(1, c, 1, 1))
        _NORM[key] = ms
    # (x - mean) / std as x * (1/std) + (-mean/std), in place on the float copy: on a CPU faster than one
    # broadcasting addcmul from uint8
    x = x.to(torch.float32).mul_(ms[1]).add_(ms[0])
    if expand is None:
        expand = x.device.type == "cuda"
    if expand and c == 1 and pp.channels == 3:
        x = x.expand(-1, 3, -1, -1)
    if x.device.type == "cuda":
        # NHWC: cuDNN picks its tensor-core kernels from the input's layout alone, and the layout carries
        # through the network; the parameters stay contiguous (Horovod refuses channels-last tensors)
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


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


# ---------------------------------------------------------------------------------------------------
# DALI
# ---------------------------------------------------------------------------------------------------
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
    from nvidia.dali import backend
    return "spawn" if backend.IsDriverInitialized() else "fork"


def _dali_pipeline(source: DaliBatchSource, *, encoded: bool, channels_stored: int, pp: Preprocess,
                   batch: int, workers: int, device: str, device_id, seed: int, threads: int,
                   start_method: str = "fork"):
    from nvidia.dali import fn, pipeline_def, types

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
                torch_device: Optional[torch.device] = None, start_method: Optional[str] = None) -> Iterator[dict]:
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
            from multiprocessing import resource_tracker
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


def make_loader(kind: str, *args, **kw) -> Iterator[dict]:
    if kind == "dali":
        return dali_loader(*args, **kw)
    kw.pop("device", None)
    kw.pop("torch_device", None)
    return torch_loader(*args, **kw)
