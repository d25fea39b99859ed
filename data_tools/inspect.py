"""`covidnetx inspect DIR [DIR ...]`: a packed dataset's summary and first rows; with several folders,
the merged label space of their mixture; with --fraction / --shots, what that selection would hold."""
from __future__ import annotations

import argparse
from collections import Counter
from typing import Optional

import numpy as np

from covidnetx.data.compose import LABEL_SPACES, Mixture, few_shot
from covidnetx.data.hdf5 import PackedDataset
from covidnetx.utils import UserError


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx inspect", description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", help="packed dataset folder(s)")
    p.add_argument("--split", default="train")
    p.add_argument("--label-space", choices=LABEL_SPACES, default="union")
    p.add_argument("--rename", default=None, help="class renames before merging: old=new,...")
    p.add_argument("--fraction", type=float, default=1.0, help="seeded class-stratified subset")
    p.add_argument("--shots", type=int, default=None, help="k examples per class (few-shot selection)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", type=int, default=5, help="sample rows to print")
    return p


def run(args) -> int:
    parts = [PackedDataset(d, args.split) for d in args.dirs]
    pairs = [kv.split("=", 1) for kv in args.rename.split(",")] if args.rename else []
    if any(len(kv) != 2 for kv in pairs):
        raise UserError(f"--rename {args.rename!r}: expected old=new,old2=new2")
    rename = dict(pairs) or None
    mix = Mixture(parts, args.label_space, args.fraction, args.seed, rename)
    for d, p in zip(args.dirs, parts):
        print(f"{d} [{args.split}]: {len(p)} images, {p.label_kind}, classes {p.class_names}, "
              f"encoding {p.encoding}")
        for i in range(min(args.rows, len(p))):
            img = p.read_image(i)
            lab = p.labels[i]
            lab_s = p.class_names[int(lab)] if p.label_kind == "multiclass" else np.array2string(lab, precision=0)
            print(f"  {i:>5} {p.paths[i]}  {img.shape}  {lab_s}  patient={p.patient_ids[i] or '-'}")
    print(f"mixture ({args.label_space}, fraction {args.fraction}, seed {args.seed}): {len(mix)} images, "
          f"classes {mix.class_names}")
    sel = np.arange(len(mix))
    if args.shots:
        sel = few_shot(mix.labels, mix.class_names, args.shots, args.seed)
        print(f"few-shot k={args.shots} seed={args.seed}: {len(sel)} images")
    if mix.label_kind == "multiclass":
        c = Counter(int(x) for x in mix.labels[sel])
        print("per class: " + ", ".join(f"{n} {c.get(i, 0)}" for i, n in enumerate(mix.class_names)))
    return 0
