"""Loaders over packed data, by concern: ``sampling`` (which sample each rank reads, and its augmentation
draws), ``transforms`` (the preprocessing and ``normalize``), ``torch_loader`` and ``dali`` (the two
implementations, which give the same batches). ``make_loader`` picks one.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch

from covidnetx.data.dali import dali_loader, dali_start_method  # noqa: F401  (re-exported)
from covidnetx.data.sampling import TrainStream, augment_params, eval_block  # noqa: F401
from covidnetx.data.torch_loader import torch_loader
from covidnetx.data.transforms import Preprocess, normalize, transform_torch  # noqa: F401


def make_loader(kind: str, view, pp: Preprocess, batch: int, seed: int, rank: int, size: int, *, workers: int = 0,
                train: bool = True, start_step: int = 0, steps: Optional[int] = None, device: str = "cpu",
                torch_device: Optional[torch.device] = None, start_method: Optional[str] = None) -> Iterator[dict]:
    """Batches of ``view`` for this rank: dicts of uint8 ``image`` (N, C, H, W), ``label``, ``valid`` (0 for
    evaluation padding) and ``index``. ``kind`` torch or dali; ``device``/``torch_device`` place DALI's
    work and output (the torch loader yields host batches; ``normalize`` moves them); ``start_method``
    how DALI starts its workers (default: ``dali.dali_start_method``)."""
    if kind == "dali":
        return dali_loader(view, pp, batch, seed, rank, size, workers=workers, train=train, start_step=start_step,
                           steps=steps, device=device, torch_device=torch_device,
                           start_method=start_method)
    return torch_loader(view, pp, batch, seed, rank, size, workers=workers, train=train, start_step=start_step,
                        steps=steps)
