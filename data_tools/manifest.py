"""Manifest rows: what every adapter produces and the packer consumes."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from covidnetx.utils import UserError


@dataclass
class Row:
    path: str                       # relative to the raw root (as stored); resolved with Manifest.root
    label: object                   # multiclass: class name (str); multilabel: list of floats (NaN = unknown)
    patient_id: str = ""            # "" = unknown: the image is its own group
    view: str = ""
    source: str = ""
    split: Optional[str] = None     # official split if the raw layout has one
    where: str = ""                 # "file:line" of the row in the raw metadata, for error messages


@dataclass
class Manifest:
    kind: str
    root: str
    rows: list
    class_names: list
    label_kind: str = "multiclass"
    default_channels: Optional[int] = None     # None = decide from the first image
    notes: dict = field(default_factory=dict)

    def check(self, allow_outside_root: bool = False) -> None:
        """Unknown labels and empty classes are errors naming the row / class. Image paths must stay inside
        the raw root (no absolute paths, no ``..`` out of it) unless ``allow_outside_root``. A path listed
        twice is an error naming both rows when label or patient differ; identical repeats are dropped
        with one warning."""
        if not self.rows:
            raise UserError(f"{self.kind}: no images found under {self.root}")
        for r in self.rows:
            for what, text in (("image path", r.path), ("label", r.label if isinstance(r.label, str) else "")):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                    raise UserError(f"{r.where or shown}: {what} {shown!r} is not UTF-8 (the packed index stores "
                                    "UTF-8 text); rename it") from None
                if any(ord(c) < 32 or c == "\x7f" for c in text):
                    raise UserError(f"{r.where or r.path}: {what} {text!r} contains a control character")
        if not allow_outside_root:
            for r in self.rows:
                norm = os.path.normpath(r.path)
                if os.path.isabs(r.path) or norm == ".." or norm.startswith(".." + os.sep):
                    raise UserError(f"{r.where or r.path}: image path {r.path!r} is outside the raw root "
                                    f"{self.root} (pack --allow-outside-root to allow it)")
        self._drop_repeats()
        if self.label_kind == "multiclass":
            known = set(self.class_names)
            counts = {c: 0 for c in self.class_names}
            for r in self.rows:
                if r.label not in known:
                    raise UserError(f"{r.where or r.path}: unknown label {r.label!r} "
                                    f"(known: {', '.join(self.class_names)})")
                counts[r.label] += 1
            empty = [c for c, n in counts.items() if n == 0]
            if empty:
                raise UserError(f"{self.kind} {self.root}: class {empty[0]!r} has no images "
                                f"(empty classes: {', '.join(empty)})")
        else:
            n = len(self.class_names)
            for r in self.rows:
                if len(r.label) != n:
                    raise UserError(f"{r.where or r.path}: {len(r.label)} label values, expected {n}")

    def _drop_repeats(self) -> None:
        seen: dict = {}
        keep, dropped = [], 0
        for r in self.rows:
            key = os.path.normpath(r.path)
            label = tuple(r.label) if isinstance(r.label, list) else r.label
            first = seen.get(key)
            if first is None:
                seen[key] = (r, label)
                keep.append(r)
                continue
            f, flabel = first
            same_label = flabel == label or (isinstance(label, tuple) and len(label) == len(flabel) and all(
                a == b or (a != a and b != b) for a, b in zip(label, flabel)))      # NaN = unknown on both
            if not same_label or f.patient_id != r.patient_id:
                what = "label" if not same_label else "patient"
                raise UserError(f"{r.where or r.path}: image {r.path!r} is listed again with another {what} "
                                f"(first at {f.where or f.path}: label {f.label!r}, patient {f.patient_id!r}; "
                                f"here: label {r.label!r}, patient {r.patient_id!r})")
            dropped += 1
        if dropped:
            print(f"warning: {self.kind} {self.root}: {dropped} row(s) repeat an earlier row (same path, label "
                  f"and patient); each image is packed once", file=sys.stderr)
            self.rows = keep
