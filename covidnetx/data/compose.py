"""Composition without copying: mixtures of packed datasets over a common label space, seeded nested
fractions for the data-size axis, and seeded few-shot selection (k per class)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from covidnetx.data.hdf5 import PackedDataset
from covidnetx.utils import UserError

LABEL_SPACES = ("union", "intersection")


def merge_class_names(lists: Sequence[Sequence[str]], mode: str) -> list:
    """Union keeps first-seen order; intersection keeps the first dataset's order."""
    if mode not in LABEL_SPACES:
        raise UserError(f"label space {mode!r}: use one of {LABEL_SPACES}")
    if mode == "union":
        out: list = []
        for names in lists:
            for c in names:                 # a rename may give two classes of one dataset the same name
                if c not in out:
                    out.append(c)
        return out
    common = set(lists[0]).intersection(*map(set, lists[1:]))
    out = list(dict.fromkeys(c for c in lists[0] if c in common))
    if not out:
        raise UserError("the datasets share no class name: an intersection label space would be empty "
                        "(rename classes with a mapping, or use union)")
    return out


def fraction_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded, class-stratified subset of about ``fraction`` of the samples, nested in the fraction:
    the 10% subset is contained in the 25% subset for the same seed. Every class keeps >= 1 sample."""
    if not 0 < fraction <= 1:
        raise UserError(f"fraction {fraction}: must be in (0, 1]")
    n = len(labels)
    if fraction == 1:
        return np.arange(n)
    key = labels if labels.ndim == 1 else np.zeros(n, np.int64)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(key):
        members = np.flatnonzero(key == c)
        order = members[rng.permutation(len(members))]
        keep.append(order[:max(1, int(round(fraction * len(members))))])
    return np.sort(np.concatenate(keep))


def few_shot(labels: np.ndarray, class_names: Sequence[str], k: int, seed: int,
             pool: Optional[np.ndarray] = None) -> np.ndarray:
    """k samples per class (multi-class labels), seeded and reproducible; sorted indices."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise UserError("few-shot selection needs multi-class labels")
    if k < 1:
        raise UserError(f"k={k}: need at least one example per class")
    pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
    rng = np.random.default_rng(seed)
    picks = []
    for c, name in enumerate(class_names):
        members = pool[labels[pool] == c]
        if len(members) < k:
            raise UserError(f"few-shot k={k}: class {name!r} has only {len(members)} example(s)")
        picks.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(picks))


class Mixture:
    """Several packed datasets (same split) seen as one, in a merged label space.

    Items are (part, index) pairs; multi-class labels are remapped to the merged class indices (samples
    of classes outside an intersection are dropped); multi-label vectors get NaN (unknown) for classes a
    part does not annotate. ``rename`` maps class names before merging (e.g. {"No Finding": "normal"}).
    """

    def __init__(self, parts: Sequence[PackedDataset], label_space: str = "union", fraction: float = 1.0,
                 seed: int = 0, rename: Optional[dict] = None):
        if not parts:
            raise UserError("a mixture needs at least one dataset")
        kinds = {p.label_kind for p in parts}
        if len(kinds) > 1:
            raise UserError("cannot mix multi-class and multi-label datasets in one label space")
        self.parts = list(parts)
        self.label_kind = kinds.pop()
        rename = rename or {}
        part_names = [[rename.get(c, c) for c in p.class_names] for p in parts]
        self.class_names = merge_class_names(part_names, label_space)
        pos = {c: i for i, c in enumerate(self.class_names)}
        items, labels = [], []
        for pi, (p, names) in enumerate(zip(parts, part_names)):
            lab = p.labels
            if self.label_kind == "multiclass":
                remap = np.array([pos.get(c, -1) for c in names], np.int64)
                mapped = remap[lab] if len(lab) else np.zeros(0, np.int64)
                keep = np.flatnonzero(mapped >= 0)
                labels.append(mapped[keep])
            else:
                mapped = np.full((len(lab), len(self.class_names)), np.nan, np.float32)
                for j, c in enumerate(names):
                    if c in pos:                # classes renamed to one name: positive where either is
                        cur, new = mapped[:, pos[c]], lab[:, j].astype(np.float32)
                        mapped[:, pos[c]] = np.where(np.isnan(cur), new, np.where(np.isnan(new), cur,
                                                                                   np.maximum(cur, new)))
                keep = np.arange(len(lab))
                labels.append(mapped)
            items.append(np.stack([np.full(len(keep), pi), keep], 1))
        self.items = np.concatenate(items).astype(np.int64) if items else np.zeros((0, 2), np.int64)
        self.labels = np.concatenate(labels)
        if fraction != 1.0:
            sel = fraction_subset(self.labels, fraction, seed)
            self.items, self.labels = self.items[sel], self.labels[sel]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def encoding(self) -> str:
        return self.parts[0].encoding

    @property
    def channels(self) -> int:
        return max(p.channels for p in self.parts)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def read_image(self, i: int) -> np.ndarray:
        part, j = self.items[i]
        return self.parts[part].read_image(int(j))

    def read_stored(self, i: int) -> np.ndarray:
        part, j = self.items[i]
        return self.parts[part].read_stored(int(j))

    def stored_shape(self, i: int) -> np.ndarray:
        part, j = self.items[i]
        return self.parts[part].stored_shape(int(j))

    def subset(self, indices) -> "Mixture":
        """The same mixture restricted to ``indices`` (few-shot selections); no data is copied."""
        out = object.__new__(Mixture)
        out.__dict__.update(self.__dict__)
        idx = np.asarray(indices, np.int64)
        out.items, out.labels = self.items[idx], self.labels[idx]
        return out
