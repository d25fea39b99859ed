"""`covidnetx verify OUT_DIR`: recompute checksums and counts of a packed dataset, print the
split x class x source table, and fail naming the patient if a patient appears in two splits."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from covidnetx.data import hdf5 as H
from covidnetx.utils import UserError


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx verify", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", help="a packed dataset (index.json + shards/)")
    p.add_argument("--quiet", action="store_true", help="print problems only")
    return p


def verify(root) -> tuple[list, dict, dict]:
    """Return (problems, counts[split][class][source], patients[split] -> set)."""
    root = Path(root)
    index = H.load_index(root)
    problems, counts, patients = [], {}, {}
    for split, entry in index["splits"].items():
        total = 0
        for sh in entry["shards"]:
            found, shard_counts, pids = H.check_shard(root, sh, index["label_kind"], index["class_names"],
                                                       index["channels"], index["encoding"])
            problems += found
            total += sh["count"]
            H.merge_counts(counts.setdefault(split, {}), shard_counts)
            if pids:
                patients.setdefault(split, set()).update(pids)
        if not problems and total != entry["count"]:
            problems.append(f"split {split}: {total} samples, index says {entry['count']}")
    counts = {s: c for s, c in counts.items() if c}
    if not problems and counts != index.get("counts", counts):
        problems.append("class counts differ from the index")
    splits = sorted(patients)
    for a_i, a in enumerate(splits):
        for b in splits[a_i + 1:]:
            shared = sorted(patients[a] & patients[b])
            if shared:
                problems.append(f"patient {shared[0]} appears in splits {a} and {b}"
                                + (f" ({len(shared)} patients shared)" if len(shared) > 1 else ""))
    return problems, counts, patients


def format_table(index: dict, counts: dict) -> str:
    names = index["class_names"]
    sources = index["sources"]
    lines = [f"{'split':<6} {'class':<28} " + " ".join(f"{s[:24]:>24}" for s in sources) + f" {'total':>7}"]
    for split in [s for s in ("train", "val", "test") if s in index["splits"]]:
        for c in names:
            row = counts.get(split, {}).get(c, {})
            lines.append(f"{split:<6} {c[:28]:<28} " + " ".join(f"{row.get(s, 0):>24}" for s in sources)
                         + f" {sum(row.values()):>7}")
        lines.append(f"{split:<6} {'(images)':<28} " + " " * (25 * len(sources)) +
                     f"{index['splits'][split]['count']:>7}")
    return "\n".join(lines)


def run(args) -> int:
    try:
        index = H.load_index(args.out_dir)
        problems, counts, patients = verify(args.out_dir)
    except UserError as e:
        print(f"covidnetx verify: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"{args.out_dir}: {index['name']} ({index['kind']}), {index['num_samples']} images, "
              f"{index['label_kind']}, {len(index['class_names'])} classes, encoding {index['encoding']}, "
              f"{index['channels']} channel(s)")
        print(format_table(index, counts))
        print("patients per split: " + ", ".join(f"{s} {len(p)}" for s, p in sorted(patients.items()))
              + (" (no patient ids)" if not patients else ""))
        if index.get("skipped"):
            print(f"skipped at pack time: {len(index['skipped'])} image(s) (see index.json)")
    for p in problems:
        print(f"covidnetx verify: {args.out_dir}: {p}", file=sys.stderr)
    if problems:
        return 1
    if not args.quiet:
        print("OK: checksums, counts and patient-disjoint splits verified")
    return 0
