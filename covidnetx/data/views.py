"""A run config's data: its packed sources checked, and the train / eval / val views of their splits
(the trainer, the probe and the ``evaluate`` command read data through these)."""
from __future__ import annotations

import sys

from covidnetx import config as C
from covidnetx.data.compose import Mixture
from covidnetx.data.hdf5 import PackedDataset, index_path, is_packed
from covidnetx.launch import world_from_env
from covidnetx.utils import UserError


def check_sources(cfg: C.Config) -> None:
    if not cfg.data.sources:
        raise UserError("config key 'data.sources': no packed dataset given")
    for s in cfg.data.sources:
        if not is_packed(s):
            raise UserError(f"config key 'data.sources': {s!r} is not a packed dataset (no {index_path(s).name})")


_UPSAMPLE_SAID: set = set()


def packed(cfg: C.Config, root: str, split: str) -> PackedDataset:
    """One split of a packed source, checked before training or evaluation reads it (``data.verify``).
    Says once per source when ``data.image_size`` is larger than the packed images (they are upsampled)."""
    ds = PackedDataset(root, split)
    size = ds.index.get("image_size")
    if size and max(size) < cfg.data.image_size and str(root) not in _UPSAMPLE_SAID:
        _UPSAMPLE_SAID.add(str(root))
        if world_from_env().rank == 0:
            print(f"note: data.image_size={cfg.data.image_size} is larger than the packed images of {root} "
                  f"({size[0]}x{size[1]}): they are upsampled; pack with --size {cfg.data.image_size} or lower "
                  "data.image_size if that is not meant", file=sys.stderr, flush=True)
    return ds.verify() if cfg.data.verify else ds


def views(cfg: C.Config):
    """(train, eval, val) views of the config's data: the train split (with the source fraction for
    pre-training), the split scored at the end, and the val split used for choices during a run (None
    when it is absent or is the eval split itself)."""
    check_sources(cfg)
    if cfg.task == "transfer" and cfg.data.fraction != 1.0:
        raise UserError("config key 'data.fraction': applies to pre-training sources only; transfer uses the "
                        "whole target train split (few-shot: shots)")
    train_parts = [packed(cfg, s, cfg.data.train_split) for s in cfg.data.sources]
    frac = cfg.data.fraction if cfg.task == "pretrain" else 1.0
    train = Mixture(train_parts, cfg.data.label_space, frac, cfg.data.fraction_seed, cfg.data.rename)

    def view(split):
        v = Mixture([packed(cfg, s, split) for s in cfg.data.sources], cfg.data.label_space, 1.0, 0,
                    cfg.data.rename)
        if v.class_names != train.class_names:
            raise UserError(f"train and {split} splits map to different class lists")
        return v
    ev = view(cfg.data.eval_split) if cfg.data.eval_split else None
    val = None
    if cfg.data.val_split and cfg.data.val_split != cfg.data.eval_split:
        try:
            val = view(cfg.data.val_split)
        except UserError:
            val = None
    return train, ev, val


def source_name(cfg: C.Config) -> str:
    return "+".join(PackedDataset(s, cfg.data.train_split).index["name"] for s in cfg.data.sources)
