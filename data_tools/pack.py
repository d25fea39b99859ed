"""The MPI packer: raw dataset -> HDF5 shards + index (the schema of covidnetx.data.hdf5).

Work is defined by sample ranges, never by rank: the plan (splits, shard boundaries, per-shard content
hash) is computed identically on every rank, shards are dealt to ranks, and each shard is a pure function
of its plan. So the output is byte-identical for any number of ranks, and a rerun after a crash keeps
every shard whose file and sidecar checksum agree with the plan and writes only the rest. Rank 0 writes
``index.json`` last; a directory without it is not a dataset.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import fcntl
import os
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from covidnetx import __version__
from covidnetx.data import hdf5 as H
from covidnetx.launch import get_comm, quiet_barrier
from covidnetx.utils import UserError, ensure_writable_dir, sha256_file, stable_hash
from data_tools.adapters import ADAPTERS, get_adapter
from data_tools.images import RESIZE_MODES, image_channels, load_image
from data_tools.manifest import Manifest
from data_tools.splits import assign_splits, parse_fractions


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx pack", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=sorted(ADAPTERS), help="raw layout")
    p.add_argument("raw_root", help="root folder of the raw dataset")
    p.add_argument("out_dir", help="output folder (index.json + shards/)")
    p.add_argument("--size", type=int, default=None, help="target size in pixels (see --resize); default keep")
    p.add_argument("--resize", choices=RESIZE_MODES, default="shorter-crop",
                   help="shorter-crop: shorter side to SIZE, centre crop SIZExSIZE (default)")
    p.add_argument("--channels", choices=("auto", "1", "3"), default="auto",
                   help="1 = gray, 3 = RGB; auto = the adapter's default or the first image's")
    p.add_argument("--encoding", choices=H.ENCODINGS, default="png",
                   help="png/jpeg: encoded bytes (small, GPU-decodable); raw: uint8 arrays (no decode)")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--png-level", type=int, default=1, choices=range(10), metavar="0-9",
                   help="zlib level of png encoding: 1 (default) packs ~3x faster than 6 for ~15%% more bytes")
    p.add_argument("--shard-size", type=int, default=1024, help="samples per shard file")
    p.add_argument("--splits", default="0.7,0.15,0.15",
                   help="train,val,test fractions for sources without official splits (patient-grouped)")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="carve a patient-grouped val split of this fraction out of an official train split")
    p.add_argument("--ignore-official-splits", action="store_true",
                   help="regroup by patient with --splits even where the source has official splits")
    p.add_argument("--seed", type=int, default=0, help="seed of the split assignment")
    p.add_argument("--csv", dest="csv_file", default=None, help="metadata CSV (csv/nih/padchest/ieee8023 kinds)")
    p.add_argument("--classes", default=None, help="comma-separated class list (order = label index)")
    p.add_argument("--map", dest="label_map", default=None, help="rename labels: old=new,old2=new2")
    p.add_argument("--uncertain", choices=("ignore", "ones", "zeros"), default="ignore",
                   help="CheXpert/MIMIC -1 labels: U-ignore (NaN, masked), U-ones, U-zeros")
    p.add_argument("--blank", choices=("ignore", "zeros"), default="ignore",
                   help="CheXpert/MIMIC blank labels: NaN (unknown, masked) or 0")
    p.add_argument("--all-views", action="store_true", help="keep lateral views (default: frontal only)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images, listing them in the index, instead of failing")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept image paths that are absolute or lead out of RAW_ROOT with '..'")
    p.add_argument("--name", default=None, help="dataset name (default: the output folder's name)")
    p.add_argument("--no-progress", action="store_true")
    return p


# ----------------------------------------------------------------------------------------------------
# plan
# ----------------------------------------------------------------------------------------------------
def adapter_options(args) -> dict:
    opts = {"frontal_only": not args.all_views, "uncertain": args.uncertain, "blank": args.blank}
    if args.csv_file:
        opts["csv_file"] = args.csv_file
    if args.classes:
        opts["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    if args.label_map:
        pairs = [kv.split("=", 1) for kv in args.label_map.split(",") if kv.strip()]
        if any(len(kv) != 2 for kv in pairs):
            raise UserError(f"--map {args.label_map!r}: expected old=new,old2=new2")
        opts["label_map"] = {a.strip(): b.strip() for a, b in pairs}
    return opts


def label_array(manifest: Manifest, rows) -> np.ndarray:
    if manifest.label_kind == "multiclass":
        pos = {c: i for i, c in enumerate(manifest.class_names)}
        return np.array([pos[r.label] for r in rows], dtype=np.int64)
    return np.array([r.label for r in rows], dtype=np.float32).reshape(len(rows), len(manifest.class_names))


def probe_channels(manifest: Manifest, skip_bad: bool) -> int:
    """Gray or colour, from the first readable image (with --skip-bad, unreadable ones are passed over here
    as they are when packing; without it the first row must be readable)."""
    for r in manifest.rows:
        path = Path(manifest.root) / r.path
        try:
            return image_channels(str(path))
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for corrupt files
            if not skip_bad:
                reason = "file not found" if not path.exists() else f"cannot read image ({e})"
                raise UserError(f"{r.where or path}: {path}: {reason}") from None
    raise UserError(f"{manifest.kind} {manifest.root}: no readable image (to decide gray or colour); "
                    "pass --channels 1 or 3")


def make_plan(args) -> dict:
    """Everything every rank must agree on, computed from the raw metadata alone (deterministic)."""
    if args.shard_size < 1:
        raise UserError("--shard-size must be >= 1")
    if args.size is not None and args.size < 1:
        raise UserError("--size must be >= 1")
    manifest = get_adapter(args.kind)(args.raw_root, **adapter_options(args))
    manifest.check(allow_outside_root=args.allow_outside_root)
    fractions = parse_fractions(args.splits)
    if not 0 <= args.val_fraction < 1:
        raise UserError("--val-fraction must be in [0, 1)")
    splits = assign_splits(manifest, fractions, args.seed, args.val_fraction, not args.ignore_official_splits)
    if args.channels == "auto":
        if manifest.default_channels:
            channels = manifest.default_channels
        else:
            channels = probe_channels(manifest, args.skip_bad)
    else:
        channels = int(args.channels)
    settings = {"encoding": args.encoding, "channels": channels, "size": args.size, "resize": args.resize,
                "jpeg_quality": args.jpeg_quality if args.encoding == "jpeg" else None,
                "png_level": args.png_level if args.encoding == "png" else None,
                "label_kind": manifest.label_kind, "class_names": manifest.class_names,
                "schema_version": H.SCHEMA_VERSION}
    shards = []
    for split, idx in splits.items():
        for k, start in enumerate(range(0, len(idx), args.shard_size)):
            part = idx[start:start + args.shard_size]
            content = [(manifest.rows[i].path, manifest.rows[i].label if manifest.label_kind == "multiclass"
                        else [None if np.isnan(v) else v for v in manifest.rows[i].label],
                        manifest.rows[i].patient_id, manifest.rows[i].view, manifest.rows[i].source)
                       for i in part]
            shards.append({"split": split, "k": k, "start": start, "rows": part,
                           "file": H.shard_name(split, k),
                           "plan_hash": stable_hash([settings, split, k, start, content], 32)})
    return {"manifest": manifest, "splits": splits, "settings": settings, "shards": shards,
            "warnings": rare_class_warnings(manifest, bool(args.classes))}


RARE = 3                 # a class with fewer images than this (or under 1% of the largest) is suspicious


def rare_class_warnings(manifest: Manifest, classes_given: bool) -> list:
    """A class with very few images is often a typo of another label ("pnuemonia"): one warning per such
    class, with the nearest other label by spelling."""
    if manifest.label_kind != "multiclass" or classes_given:
        return []
    counts = Counter(r.label for r in manifest.rows)
    if len(counts) < 2:
        return []
    largest = max(counts.values())
    out = []
    for c, n in sorted(counts.items()):
        if n < max(RARE, 0.01 * largest):
            near = difflib.get_close_matches(c, [o for o in counts if o != c], n=1, cutoff=0.6)
            out.append(f"class {c!r} has only {n} image(s)" + (f" (a typo of {near[0]!r}?)" if near else "")
                       + "; --classes A,B,... makes any other label an error")
    return out


def deal(shards: list, size: int) -> list:
    """Shard i -> rank: largest shards first, each to the least-loaded rank (deterministic)."""
    load = [0] * size
    owner = [0] * len(shards)
    for i in sorted(range(len(shards)), key=lambda i: (-len(shards[i]["rows"]), i)):
        r = min(range(size), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += len(shards[i]["rows"])
    return owner


# ----------------------------------------------------------------------------------------------------
# one shard
# ----------------------------------------------------------------------------------------------------
def source_stamp(plan: dict, sh: dict) -> str:
    """What a shard's source files were when it was written: (path, SHA-256 of the content) of each,
    hashed. A kept shard must match it, so a changed image is packed again even where its size and
    modification time were kept (``cp -p``, ``rsync -t``, tar); each rank stamps only the shards it
    handles, so the reads run in parallel."""
    root = Path(plan["manifest"].root)
    stamp = []
    for i in sh["rows"]:
        path = plan["manifest"].rows[i].path
        try:
            stamp.append((path, sha256_file(root / path) if (root / path).is_file() else None))
        except OSError:
            stamp.append((path, None))
    return stable_hash(stamp, 32)


LOCK_NAME = ".pack.lock"


def unlock_out(f) -> None:
    """Remove the lock file (while still holding it: no second writer has it) and release the lock."""
    try:
        os.unlink(f.name)
    except OSError:
        pass
    f.close()


def lock_out(out: Path):
    """Rank 0's exclusive lock on the output folder for the whole pack (``unlock_out`` removes it; the
    kernel releases it however the process ends): a second writer gets one error instead of both
    exiting 0 over one folder."""
    ensure_writable_dir(out, "output folder")        # the folder's own problems first, named as such
    try:
        f = open(out / LOCK_NAME, "a+")
    except OSError as e:
        raise UserError(f"{out}: cannot create the pack's lock file ({e.strerror or e})") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise UserError(f"{out}: another covidnetx pack is writing this folder ({holder or 'pid unknown'}); "
                        "wait for it, or pack into another folder") from None
    try:                      # who holds it, for the second writer's message (a full disk only loses this note)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
    except OSError:
        pass
    return f


def shard_is_done(out: Path, sh: dict, plan: dict) -> bool:
    f = out / sh["file"]
    meta = H.read_sidecar(out, sh["file"])
    if meta is None or not f.is_file():
        return False
    return (meta.get("plan_hash") == sh["plan_hash"] and meta.get("sources") == source_stamp(plan, sh)
            and meta.get("sha256") == sha256_file(f))


def pack_shard(out: Path, plan: dict, sh: dict, skip_bad: bool, progress=None) -> None:
    manifest, st = plan["manifest"], plan["settings"]
    root = Path(manifest.root)
    stamp = source_stamp(plan, sh)
    images, shapes, kept, skipped = [], [], [], []
    for i in sh["rows"]:
        r = manifest.rows[i]
        src = root / r.path
        try:
            arr = load_image(str(src), st["channels"], st["size"], st["resize"])
        except Exception as e:  # PIL raises many kinds for corrupt files
            reason = "file not found" if not src.exists() else f"cannot read image ({type(e).__name__}: {e})"
            if not skip_bad:
                raise UserError(f"{r.where or r.path}: {src}: {reason}") from None
            skipped.append({"row": r.where, "path": r.path, "reason": reason})
        else:
            if st["encoding"] == "raw" and shapes and tuple(arr.shape) != tuple(shapes[0]):
                raise UserError(f"{r.where or r.path}: {src}: image is {arr.shape[1]}x{arr.shape[0]} but "
                                f"{manifest.rows[kept[0]].path} is {shapes[0][1]}x{shapes[0][0]}; raw encoding "
                                f"needs one size: pass --size")
            images.append(H.encode_image(arr, st["encoding"], st["jpeg_quality"] or 95, st["png_level"] or 1))
            shapes.append(arr.shape)
            kept.append(i)
        if progress is not None:
            progress.update(1)
    rows = [manifest.rows[i] for i in kept]
    labels = label_array(manifest, rows)
    attrs = H.shard_attrs(split=sh["split"], shard_index=sh["k"], planned_start=sh["start"], count=len(rows),
                          encoding=st["encoding"], channels=st["channels"], label_kind=st["label_kind"],
                          class_names=st["class_names"], plan_hash=sh["plan_hash"])
    strings = {"patient_id": [r.patient_id for r in rows], "view": [r.view for r in rows],
               "source": [r.source for r in rows], "path": [r.path for r in rows]}
    f = out / sh["file"]
    H.write_shard(f, images=images, shapes=np.array(shapes, np.int32).reshape(-1, 3), labels=labels,
                  strings=strings, attrs=attrs)
    counts = H.count_classes(labels, [r.source for r in rows], st["class_names"], st["label_kind"])
    H.write_sidecar(out, sh["file"], {
        "file": sh["file"], "plan_hash": sh["plan_hash"], "sources": stamp, "sha256": sha256_file(f),
        "count": len(rows),
        "bytes": f.stat().st_size, "image_shape": list(shapes[0]) if st["encoding"] == "raw" and shapes else None,
        "counts": counts, "skipped": skipped})


# ----------------------------------------------------------------------------------------------------
# index
# ----------------------------------------------------------------------------------------------------
def build_index(out: Path, plan: dict, args) -> dict:
    """index.json for the finished shards (their sidecars hold what it lists); see ``hdf5.make_index``."""
    st, manifest = plan["settings"], plan["manifest"]
    metas, raw_shape = [], None
    for sh in plan["shards"]:
        meta = H.read_sidecar(out, sh["file"])
        if meta is None:
            raise UserError(f"{out / H.sidecar_name(sh['file'])}: missing or unreadable; pack again")
        if st["encoding"] == "raw" and meta["image_shape"] is not None:
            if raw_shape is None:
                raw_shape = meta["image_shape"]
            elif meta["image_shape"] != raw_shape:
                raise UserError(f"{sh['file']}: images are {meta['image_shape']} but earlier shards hold "
                                f"{raw_shape}; raw encoding needs one size: pass --size")
        metas.append((sh["split"], sh["file"], meta))
    if st["label_kind"] == "multiclass":
        present = {c for _, _, m in metas for c in m["counts"]}
        empty = [c for c in st["class_names"] if c not in present]
        if empty:
            raise UserError(f"{args.raw_root}: class {empty[0]!r} has no readable images after skipping bad "
                            f"files (empty: {', '.join(empty)})")
    image_size = raw_shape[:2] if raw_shape else ([st["size"], st["size"]]
                                                  if st["size"] and st["resize"] in ("shorter-crop", "stretch")
                                                  else None)
    made_by = {"tool": "covidnetx pack", "version": __version__, "kind": args.kind,
               "raw_root": str(Path(args.raw_root).resolve()),
               "options": {k: getattr(args, k) for k in sorted(vars(args))
                           if k not in ("kind", "raw_root", "out_dir", "no_progress", "func")},
               "adapter_notes": manifest.notes}
    return H.make_index(name=args.name or Path(args.out_dir).resolve().name, kind=args.kind,
                        label_kind=st["label_kind"], class_names=st["class_names"], encoding=st["encoding"],
                        channels=st["channels"], image_size=image_size, shards=metas,
                        sources=[r.source for r in manifest.rows], made_by=made_by)


def clean_stale(out: Path, plan: dict) -> None:
    keep = {sh["file"] for sh in plan["shards"]} | {H.sidecar_name(sh["file"]) for sh in plan["shards"]}
    d = out / H.SHARD_DIR
    if d.is_dir():
        for p in d.iterdir():
            rel = f"{H.SHARD_DIR}/{p.name}"
            if rel not in keep:
                if p.is_dir() and not p.is_symlink():
                    raise UserError(f"{p}: a folder inside {H.SHARD_DIR}/, where covidnetx pack keeps only its "
                                    "own files; move it elsewhere and pack again")
                p.unlink()


# ----------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------
def run(args) -> int:
    held = []                     # rank 0's lock on the output folder, removed however the pack ends
    out = Path(args.out_dir)
    existed = out.exists()
    try:
        return _run(args, held)
    finally:
        for f in held:
            # a pack that failed before writing a shard leaves no empty folders behind (rmdir: only if
            # empty; shards/ while the lock is still held, so no second pack's new folder is removed)
            with contextlib.suppress(OSError):
                (out / H.SHARD_DIR).rmdir()
            unlock_out(f)
            if not existed:
                with contextlib.suppress(OSError):
                    out.rmdir()


def _run(args, held: list) -> int:
    comm = get_comm()
    rank, size = comm.Get_rank(), comm.Get_size()
    t0 = time.perf_counter()           # the packer's own time: after MPI start-up
    out = Path(args.out_dir)
    error = None
    plan = None
    try:
        plan = make_plan(args)
    except UserError as e:
        error = str(e)
    except Exception as e:  # noqa: BLE001 - reported with its rank, then every rank exits
        error = f"rank {rank}: {type(e).__name__}: {e}"
    errors = comm.allgather(error)          # every rank computes the same plan; agree before writing
    if any(errors):
        if rank == 0:
            print(f"covidnetx pack: error: {next(e for e in errors if e)}", file=sys.stderr)
        return 2
    if rank == 0:
        for w in plan["warnings"]:
            print(f"covidnetx pack: warning: {w}", file=sys.stderr)
        try:
            held.append(lock_out(out))
            prepare_out(out)
        except UserError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - told to every rank, which then exit together
            error = f"rank 0: {type(e).__name__}: {e}"
    error = comm.bcast(error, root=0)       # every rank waits for rank 0's verdict, never for a crashed rank 0
    if error:
        if rank == 0:
            print(f"covidnetx pack: error: {error}", file=sys.stderr)
        return 2
    owner = deal(plan["shards"], size)
    mine = [sh for sh, o in zip(plan["shards"], owner) if o == rank]
    progress = None
    if rank == 0 and not args.no_progress:
        from tqdm import tqdm  # lazy: optional, the progress bar
        progress = tqdm(total=sum(len(sh["rows"]) for sh in mine), unit="img",
                        desc=f"pack rank 0/{size}", file=sys.stderr, mininterval=1.0)
    done = written = 0
    try:
        for sh in mine:
            if shard_is_done(out, sh, plan):
                done += 1
                if progress is not None:
                    progress.update(len(sh["rows"]))
                continue
            pack_shard(out, plan, sh, args.skip_bad, progress)
            written += 1
    except UserError as e:
        error = f"rank {rank}: {e}" if size > 1 else str(e)
    except Exception as e:  # noqa: BLE001 - reported with its rank, then every rank exits
        error = f"rank {rank}: {type(e).__name__}: {e}\n{traceback.format_exc()}"
    if progress is not None:
        progress.close()
    quiet_barrier(comm)
    results = comm.allgather((error, done, written))
    errors = [r[0] for r in results if r[0]]
    if errors:
        if rank == 0:
            print(f"covidnetx pack: error: {errors[0]}", file=sys.stderr)
        return 2
    status = 0
    if rank == 0:
        try:
            index = build_index(out, plan, args)
            clean_stale(out, plan)
            H.write_index(out, index)
            kept = sum(r[1] for r in results)
            new = sum(r[2] for r in results)
            per = ", ".join(f"{s} {v['count']}" for s, v in index["splits"].items())
            dt = time.perf_counter() - t0
            print(f"packed {index['num_samples']} images ({per}) into {len(plan['shards'])} shards at {out} "
                  f"[{new} written, {kept} kept from an earlier run; {size} rank(s)] "
                  f"in {dt:.2f} s ({index['num_samples'] / dt:.0f} img/s)"
                  + (f"; skipped {len(index['skipped'])} unreadable image(s), listed in index.json"
                     if index["skipped"] else ""))
        except UserError as e:              # also a failed index write (disk full, quota, permissions)
            print(f"covidnetx pack: error: {e}; the dataset has no index until a rerun finishes",
                  file=sys.stderr)
            status = 2
        except Exception as e:  # noqa: BLE001 - still tell the other ranks, which wait for rank 0
            print(f"covidnetx pack: error: rank 0: {type(e).__name__}: {e}\n{traceback.format_exc()}",
                  file=sys.stderr)
            status = 2
    return comm.bcast(status, root=0)


def prepare_out(out: Path) -> None:
    """Rank 0, before any shard: the output folder exists and is writable, and any old index is removed
    (the dataset is incomplete until the new index is written). Problems are UserErrors."""
    ensure_writable_dir(out, "output folder")
    ensure_writable_dir(out / H.SHARD_DIR, "output folder")
    idx = out / H.INDEX_NAME
    try:
        if idx.exists():
            idx.unlink()
    except OSError as e:
        raise UserError(f"{idx}: cannot remove the old index ({e.strerror or e})") from None
