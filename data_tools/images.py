"""Reading one raw image into the packed form: orientation, bit depth, colour, resize."""
from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image, ImageOps

from covidnetx.utils import require_file

RESIZE_MODES = ("shorter-crop", "stretch", "shorter", "none")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def image_channels(path: str) -> int:
    require_file(path, "image")
    with Image.open(path) as img:
        if img.mode == "P":
            return 1 if _palette_is_gray(img) else 3
        return 1 if img.mode in GRAY_MODES else 3


def _palette_is_gray(img) -> bool:
    pal = img.getpalette() or []
    return all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))


def load_image(path: str, channels: int, size: Optional[int], resize: str = "shorter-crop") -> np.ndarray:
    """Decode ``path`` to an HWC uint8 array with ``channels`` channels.

    16-bit and float images (PadChest ships 16-bit PNGs, which DALI cannot decode) are min-max scaled to
    0-255 here, once, in the packer. Transparent images are composited on black. EXIF orientation is
    applied. ``resize``: shorter-crop = shorter side to ``size`` then centre crop size x size;
    stretch = size x size ignoring aspect; shorter = shorter side to ``size``; none = keep.
    An image that already has the target shape is not resampled (so pixels round-trip exactly).
    """

    require_file(path, "image")             # a FIFO or a device would block or never end
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            a = np.asarray(img, dtype=np.float64)
            lo, hi = float(a.min()), float(a.max())
            a = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
            img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            img = Image.alpha_composite(black, rgba)
        img = img.convert("L" if channels == 1 else "RGB")
        if size and resize != "none":
            w, h = img.size
            if resize == "stretch":
                if (w, h) != (size, size):
                    img = img.resize((size, size), Image.BILINEAR)
            else:
                s = size / min(w, h)
                nw, nh = max(size, round(w * s)), max(size, round(h * s))
                if (nw, nh) != (w, h):
                    img = img.resize((nw, nh), Image.BILINEAR)
                if resize == "shorter-crop" and (nw, nh) != (size, size):
                    left, top = (nw - size) // 2, (nh - size) // 2
                    img = img.crop((left, top, left + size, top + size))
        arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr
