"""Split assignment: official splits where the source has them, else patient-grouped seeded fractions."""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Optional, Sequence

import numpy as np

from covidnetx.utils import UserError
from data_tools.manifest import Manifest

SPLIT_ORDER = ("train", "val", "test")


def parse_fractions(text: str) -> dict:
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--splits {text!r}: expected three numbers train,val,test (e.g. 0.7,0.15,0.15)") from None
    if len(vals) != 3 or any(v < 0 for v in vals) or abs(sum(vals) - 1.0) > 1e-6 or vals[0] <= 0:
        raise UserError(f"--splits {text!r}: need three non-negative fractions train,val,test summing to 1")
    return dict(zip(SPLIT_ORDER, vals))


def _group_keys(manifest: Manifest, idx: Sequence[int]) -> list:
    # an image without a patient id is its own group
    return [manifest.rows[i].patient_id or f"\0{manifest.rows[i].path}" for i in idx]


def _stratum(manifest: Manifest, i: int) -> str:
    r = manifest.rows[i]
    return r.label if manifest.label_kind == "multiclass" else "*"


def grouped_split(manifest: Manifest, idx: Sequence[int], fractions: dict, seed: int) -> dict:
    """Assign rows ``idx`` to splits so that no group (patient) spans two splits, each split gets about
    its fraction of every class, and the result depends only on the rows and ``seed``."""
    groups = defaultdict(list)
    for i, g in zip(idx, _group_keys(manifest, idx)):
        groups[g].append(i)
    names = sorted(groups)
    rng = np.random.default_rng(seed)
    perm = [names[j] for j in rng.permutation(len(names))]
    perm.sort(key=lambda g: -len(groups[g]))           # big groups first (stable: ties keep random order)
    totals = Counter(_stratum(manifest, i) for i in idx)
    got = {s: Counter() for s in SPLIT_ORDER}
    active = [s for s in SPLIT_ORDER if fractions.get(s, 0) > 0]
    out = {}
    for g in perm:
        strata = Counter(_stratum(manifest, i) for i in groups[g])
        key = strata.most_common(1)[0][0]
        # the split furthest below its target count for this group's class; ties: the larger fraction
        best = max(active, key=lambda s: (fractions[s] * totals[key] - got[s][key], fractions[s]))
        for i in groups[g]:
            out[i] = best
        got[best].update(_stratum(manifest, i) for i in groups[g])
    return out


def assign_splits(manifest: Manifest, fractions: Optional[dict], seed: int, val_fraction: float = 0.0,
                  use_official: bool = True) -> dict:
    """Return {split: [row indices in manifest order]}."""
    n = len(manifest.rows)
    official = [r.split for r in manifest.rows]
    have = [s is not None for s in official]
    if use_official and any(have):
        if not all(have):
            r = manifest.rows[have.index(False)]
            raise UserError(f"{r.where or r.path}: row has no split while others do; give every row a split "
                            f"or pass --ignore-official-splits")
        assign = dict(enumerate(official))
        if val_fraction > 0 and "val" not in set(official):
            train = [i for i in range(n) if official[i] == "train"]
            sub = grouped_split(manifest, train, {"train": 1 - val_fraction, "val": val_fraction, "test": 0},
                                seed)
            assign.update(sub)
    else:
        assign = grouped_split(manifest, list(range(n)), fractions or parse_fractions("0.7,0.15,0.15"), seed)
    out = {s: [] for s in SPLIT_ORDER}
    for i in range(n):
        out[assign[i]].append(i)
    return {s: v for s, v in out.items() if v}
