"""Manifest rows: what every adapter produces and the packer consumes."""
from __future__ import annotations

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

    def check(self) -> None:
        """Unknown labels and empty classes are errors naming the row / class."""
        if not self.rows:
            raise UserError(f"{self.kind}: no images found under {self.root}")
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
