"""One preprocessing definition and its reference implementation in torch (with OpenCV where it is
faster and agrees to a level): the random-resized crop, flip and rotation a sample's augmentation
parameters ask for, the evaluation resize and centre crop, and ``normalize`` on the consumer's device.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from covidnetx.dist import to_device


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
                   mean=tuple(data.mean) * (3 if len(data.mean) == 1 else 1),
                   std=tuple(data.std) * (3 if len(data.std) == 1 else 1))


def center_crop_box(h: int, w: int, size: int) -> tuple:
    return (h - size) // 2, (w - size) // 2


def resized_shape(h: int, w: int, shorter: int) -> tuple:
    if min(h, w) == shorter:
        return h, w
    s = shorter / min(h, w)
    return max(shorter, int(round(h * s))), max(shorter, int(round(w * s)))


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
                import cv2 as mod  # lazy: optional, OpenCV
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
