"""The one definition of the packed HDF5 format: names, dtypes, attributes, schema version.

A packed dataset is a directory::

    OUT_DIR/index.json                  written last (atomically) by rank 0; the dataset exists iff it exists
    OUT_DIR/shards/{split}-{k:05d}.h5   samples [start, start+count) of that split, in manifest order
    OUT_DIR/shards/{split}-{k:05d}.json sidecar: sha256, bytes, count, counts, plan hash, source stamp
                                        (written after its shard; what a resumed pack keeps or redoes)

Per shard file (datasets, all of length ``count``):

    image       encoding "raw": uint8 (count, H, W, C), contiguous; "png"/"jpeg": vlen uint8 (encoded bytes)
    shape       int32 (count, 3): decoded H, W, C of each image
    label       multiclass: int64 (count,); multilabel: float32 (count, num_classes), NaN = unknown/uncertain
    patient_id, view, source, path: variable-length UTF-8 strings (path is relative to the raw root)

and attributes ``schema_version, split, shard_index, planned_start`` (the shard's first row in the pack
plan; the index's ``start`` counts the samples actually kept), ``count, encoding, channels, label_kind,
class_names`` (JSON list) and ``plan_hash`` (what the shard was made from).

``index.json`` (built by :func:`make_index`, read by :func:`load_index`): format, schema_version, name,
kind, label_kind, class_names, encoding, channels, image_size, sources, num_samples, ``splits`` (per
split: count and its shards' file, start, count, sha256, bytes), ``counts`` (split -> class -> source ->
images, by :func:`count_classes`), skipped images and ``made_by`` (tool, version, options).

Reading: :class:`PackedDataset` opens shard files lazily in whichever process touches them first (h5py
handles never cross a fork) and reads contiguous runs of samples with one slice per run.
"""
from __future__ import annotations

import bisect
import io
import json
import os
import re
import stat
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np
from PIL import Image

from covidnetx.utils import (UserError, atomic_write_bytes, atomic_write_json, read_json, read_text, require_file,
                             sha256_file)

SCHEMA_VERSION = 1
FORMAT_NAME = "covidnetx-packed"
INDEX_NAME = "index.json"
SHARD_DIR = "shards"
ENCODINGS = ("png", "jpeg", "raw")
LABEL_KINDS = ("multiclass", "multilabel")
STRING_FIELDS = ("patient_id", "view", "source", "path")
SPLITS = ("train", "val", "test")
_VERIFIED: set = set()      # (shard path, size, mtime) whose checksum this process has checked


def shard_name(split: str, k: int) -> str:
    return f"{SHARD_DIR}/{split}-{k:05d}.h5"


def sidecar_name(shard_file: str) -> str:
    return shard_file[:-3] + ".json"


# ----------------------------------------------------------------------------------------------------
# encoding / decoding of one image
# ----------------------------------------------------------------------------------------------------
def encode_image(arr: np.ndarray, encoding: str, jpeg_quality: int = 95, png_level: int = 1) -> np.ndarray:
    """HWC uint8 array -> what the ``image`` dataset stores for one sample."""
    if encoding == "raw":
        return arr

    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    if encoding == "png":
        img.save(buf, format="PNG", compress_level=png_level)
    elif encoding == "jpeg":
        img.save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)
    else:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def decode_image(data: np.ndarray, encoding: str, channels: int) -> np.ndarray:
    """Stored sample -> HWC uint8 array."""
    if encoding == "raw":
        return np.asarray(data)

    with Image.open(io.BytesIO(np.asarray(data, dtype=np.uint8).tobytes())) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        arr = np.asarray(img)
    return arr[:, :, None] if arr.ndim == 2 else arr


# ----------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------
def write_shard(path: str | os.PathLike, *, images: Sequence[np.ndarray], shapes: np.ndarray,
                labels: np.ndarray, strings: dict[str, Sequence[str]], attrs: dict) -> None:
    """Build one shard in memory, then write its bytes to a temporary name and rename it into place.

    HDF5 never writes to disk itself: a full disk, a quota or a file-size limit is one UserError naming
    the file (HDF5 meeting ENOSPC mid-file fails inside its own caches, sometimes fatally), and no part
    of a shard is ever left under its final name. Byte-identical output for identical input: no
    timestamps (track_times=False), fixed attribute order.
    """
    path = Path(path)
    n = len(images)
    encoding = attrs["encoding"]
    with h5py.File(f"{path.name}.in-memory", "w", driver="core", backing_store=False, libver="earliest",
                   track_order=False) as f:
        if encoding == "raw":
            if n:
                data = np.stack(images).astype(np.uint8, copy=False)
            else:
                data = np.zeros((0, 1, 1, attrs["channels"]), np.uint8)
            f.create_dataset("image", data=data, track_times=False)
        else:
            ds = f.create_dataset("image", shape=(n,), dtype=h5py.vlen_dtype(np.uint8), track_times=False)
            for i, b in enumerate(images):
                ds[i] = b
        f.create_dataset("shape", data=np.asarray(shapes, np.int32).reshape(n, 3), track_times=False)
        f.create_dataset("label", data=labels, track_times=False)
        sdt = h5py.string_dtype("utf-8")
        for key in STRING_FIELDS:
            f.create_dataset(key, data=np.array(list(strings[key]), dtype=object), dtype=sdt, track_times=False)
        for key in sorted(attrs):
            v = attrs[key]
            f.attrs[key] = json.dumps(v) if isinstance(v, (list, dict)) else v
        f.flush()
        blob = f.id.get_file_image()
    atomic_write_bytes(path, blob)


def shard_attrs(*, split: str, shard_index: int, planned_start: int, count: int, encoding: str, channels: int,
                label_kind: str, class_names: Sequence[str], plan_hash: str) -> dict:
    """A shard file's attributes (every name the format defines, and no other)."""
    return {"schema_version": SCHEMA_VERSION, "split": split, "shard_index": shard_index,
            "planned_start": planned_start, "count": count, "encoding": encoding, "channels": channels,
            "label_kind": label_kind, "class_names": list(class_names), "plan_hash": plan_hash}


def count_classes(labels: np.ndarray, sources: Sequence[str], class_names: Sequence[str], label_kind: str,
                  counts: dict | None = None) -> dict:
    """Images per class and source, {class: {source: n}} (added to ``counts`` when given): the one count
    that the sidecars, index.json and ``covidnetx verify`` all use. A multi-label image counts once for
    each positive class. Multi-class labels outside the classes raise ValueError."""
    counts = {} if counts is None else counts
    if label_kind == "multiclass":
        bad = bad_labels(np.asarray(labels), len(class_names))
        if bad.size:
            raise ValueError(f"sample {int(bad[0])} has label {int(labels[bad[0]])}, outside the "
                             f"{len(class_names)} classes")
    for lab, src in zip(labels, sources):
        if label_kind == "multiclass":
            names = [class_names[int(lab)]]
        else:
            names = [c for c, v in zip(class_names, lab) if v == 1.0]
        for c in names:
            d = counts.setdefault(c, {})
            d[src] = d.get(src, 0) + 1
    return counts


def bad_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Positions of multi-class labels outside [0, num_classes)."""
    return np.flatnonzero((labels < 0) | (labels >= num_classes))


def shard_intact(path: Path, entry: dict) -> bool:
    """A regular shard file is what index.json lists: its size and its SHA-256 (the size first, so a
    hash never reads more than the listed bytes' worth of a file of the right size)."""
    return path.stat().st_size == entry["bytes"] and sha256_file(path, stoppable=True) == entry["sha256"]


def merge_counts(into: dict, counts: dict) -> dict:
    """Add {class: {source: n}} ``counts`` into ``into``."""
    for c, by_src in counts.items():
        d = into.setdefault(c, {})
        for src, n in by_src.items():
            d[src] = d.get(src, 0) + n
    return into


def make_index(*, name: str, kind: str, label_kind: str, class_names: Sequence[str], encoding: str, channels: int,
               image_size, shards: Sequence[tuple], sources: Iterable[str] = (), made_by: dict) -> dict:
    """index.json's content from the shards in order: ``shards`` holds (split, file, sidecar) with the
    sidecar's count, sha256, bytes, counts and skipped."""
    splits, counts, skipped, all_sources = {}, {}, [], set(sources)
    for split, file, meta in shards:
        entry = splits.setdefault(split, {"count": 0, "shards": []})
        entry["shards"].append({"file": file, "start": entry["count"], "count": meta["count"],
                                "sha256": meta["sha256"], "bytes": meta["bytes"]})
        entry["count"] += meta["count"]
        merge_counts(counts.setdefault(split, {}), meta["counts"])
        all_sources.update(src for by_src in meta["counts"].values() for src in by_src)
        skipped.extend(meta.get("skipped", []))
    return {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, "name": name, "kind": kind,
            "label_kind": label_kind, "class_names": list(class_names), "encoding": encoding,
            "channels": channels, "image_size": image_size, "sources": sorted(all_sources),
            "num_samples": sum(s["count"] for s in splits.values()), "splits": splits,
            "counts": {split: c for split, c in counts.items() if c},
            "skipped": skipped, "made_by": made_by}


def write_index(root: str | os.PathLike, index: dict) -> None:
    atomic_write_json(Path(root) / INDEX_NAME, index)


def write_sidecar(root: str | os.PathLike, shard_file: str, meta: dict) -> None:
    atomic_write_json(Path(root) / sidecar_name(shard_file), meta)


def read_sidecar(root: str | os.PathLike, shard_file: str):
    """A shard's sidecar, or None where it is missing or unreadable (the shard is then packed again)."""
    try:
        return json.loads((Path(root) / sidecar_name(shard_file)).read_text())
    except (OSError, ValueError):
        return None


def pixel_problem(h, channels: int, encoding: str) -> str:
    """'' when shard ``h``'s images have the index's channel count (raw: the image dataset's last axis;
    every encoding: the recorded shapes), else what differs."""
    ds, shapes = h["image"], h["shape"]
    if encoding == "raw" and ds.dtype.kind != "O" and (ds.ndim != 4 or ds.shape[-1] != channels):
        return f"images of shape {tuple(ds.shape[1:])} per sample, but {INDEX_NAME} says {channels} channel(s)"
    if shapes.ndim != 2 or shapes.shape[1] != 3:
        return f"a shape column of shape {tuple(shapes.shape[1:])} per sample (expected H, W, C)"
    c = np.unique(shapes[:, 2]) if shapes.shape[0] else np.asarray([channels])
    if len(c) != 1 or int(c[0]) != channels:
        return f"images with {', '.join(map(str, c.tolist()))} channel(s), but {INDEX_NAME} says {channels}"
    return ""


def check_shard(root: str | os.PathLike, entry: dict, label_kind: str, class_names: Sequence[str],
                channels: int | None = None, encoding: str | None = None) -> tuple:
    """(problems, counts {class: {source: n}}, patient ids) of one shard listed in index.json: present,
    its SHA-256 as listed, its datasets of one length equal to the listed count, its labels in range.
    What ``covidnetx verify`` runs for every shard."""
    f = Path(root) / entry["file"]
    problem = shard_problem(root, entry)
    if problem:
        return [problem], {}, set()
    if not shard_intact(f, entry):
        return [f"{entry['file']}: checksum mismatch (file changed or corrupt)"], {}, set()
    problems = []
    with h5py.File(f, "r") as h:
        n = h["label"].shape[0]
        if any(h[k].shape[0] != n for k in ("image", "shape") + STRING_FIELDS):
            problems.append(f"{entry['file']}: datasets of different lengths")
        if n != entry["count"]:
            problems.append(f"{entry['file']}: holds {n} samples, index says {entry['count']}")
        pix = pixel_problem(h, channels, encoding) if channels else ""
        if pix:
            problems.append(f"{entry['file']}: {pix}")
        labels = h["label"][()]
        srcs = [x.decode() if isinstance(x, bytes) else x for x in h["source"][()]]
        pids = {x.decode() if isinstance(x, bytes) else x for x in h["patient_id"][()]}
    if labels.shape[1:] != (() if label_kind == "multiclass" else (len(class_names),)):
        return problems + [f"{entry['file']}: labels of shape {labels.shape[1:]} per sample, but the index says "
                           f"{label_kind} over {len(class_names)} classes"], {}, pids - {""}
    try:
        counts = count_classes(labels, srcs, class_names, label_kind)
    except (ValueError, IndexError) as e:
        return problems + [f"{entry['file']}: {e}"], {}, pids - {""}
    return problems, counts, pids - {""}


# ----------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------
def index_path(root: str | os.PathLike) -> Path:
    """Where a packed dataset's index is (it exists exactly when the dataset is complete)."""
    return Path(root) / INDEX_NAME


def is_packed(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds a complete packed dataset (its index is written last)."""
    return index_path(root).is_file()


def load_index(root: str | os.PathLike) -> dict:
    p = index_path(root)
    if p.exists() or p.is_symlink():
        require_file(p, "index")
    if not p.is_file():
        raise UserError(f"{root}: not a packed dataset (no {INDEX_NAME}; was the pack interrupted?)")
    index = read_json(read_text(p, "index"), str(p))
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME:
        raise UserError(f"{p}: not a {FORMAT_NAME} index")
    if not _is_int(index.get("schema_version")) or index.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{p}: schema_version {index.get('schema_version')} but this covidnetx reads "
                        f"{SCHEMA_VERSION}; repack the dataset")
    check_index(index, p)
    return index


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# index.json's keys and what each must be (the schema the reader holds the file to)
_INDEX_KEYS = {
    "name": lambda v: isinstance(v, str), "kind": lambda v: isinstance(v, str),
    "label_kind": lambda v: v in ("multiclass", "multilabel"),
    "class_names": lambda v: isinstance(v, list) and v and all(isinstance(c, str) for c in v)
    and len(set(v)) == len(v),
    "encoding": lambda v: v in ("raw", "png", "jpeg"), "channels": lambda v: _is_int(v) and v in (1, 3),
    "image_size": lambda v: v is None or (isinstance(v, list) and len(v) == 2
                                          and all(_is_int(x) and 0 < x <= 1 << 16 for x in v)),
    "num_samples": lambda v: _is_int(v) and 0 <= v < 1 << 40,
    "sources": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "skipped": lambda v: isinstance(v, list), "splits": lambda v: isinstance(v, dict) and v,
}
_SHARD_KEYS = {"file": lambda v: isinstance(v, str) and v and "\0" not in v,
               "start": lambda v: _is_int(v) and 0 <= v < 1 << 40, "count": lambda v: _is_int(v) and 0 <= v < 1 << 40,
               "sha256": lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
               "bytes": lambda v: _is_int(v) and v >= 0}


def check_index(index: dict, p: Path) -> None:
    """index.json held to its schema (types, required keys, counts that add up, shard files named inside
    the dataset folder): any violation is one UserError naming the key. Shard files themselves are
    checked where they are read (``shard_problem``)."""
    def bad(key, why):
        raise UserError(f"{p}: key {key!r} {why}; repack the dataset")

    for key, ok in _INDEX_KEYS.items():
        if key not in index:
            bad(key, "is missing")
        if not ok(index[key]):
            bad(key, f"has an invalid value {str(index[key])[:80]!r}")
    total = 0
    for split, entry in index["splits"].items():
        if not isinstance(entry, dict) or not _is_int(entry.get("count")) or not isinstance(entry.get("shards"), list):
            bad(f"splits.{split}", "needs a count (integer) and shards (list)")
        start = 0
        for k, sh in enumerate(entry["shards"]):
            where = f"splits.{split}.shards[{k}]"
            if not isinstance(sh, dict):
                bad(where, "is not an object")
            for key, ok in _SHARD_KEYS.items():
                if key not in sh:
                    bad(f"{where}.{key}", "is missing")
                if not ok(sh[key]):
                    bad(f"{where}.{key}", f"has an invalid value {str(sh[key])[:80]!r}")
            f = Path(sh["file"])
            if f.is_absolute() or ".." in f.parts:
                bad(f"{where}.file", f"{sh['file']!r} is not a path inside the dataset folder")
            if sh["start"] != start:
                bad(f"{where}.start", f"is {sh['start']}, the shards before it hold {start}")
            start += sh["count"]
        if start != entry["count"]:
            bad(f"splits.{split}.count", f"is {entry['count']}, its shards hold {start}")
        total += start
    if total != index["num_samples"]:
        bad("num_samples", f"is {index['num_samples']}, the splits hold {total}")


def shard_problem(root: Path, entry: dict) -> str:
    """Why a shard file listed in index.json cannot be read ("" when it can): it must be a regular file
    inside the dataset folder (after links); its size and checksum are ``shard_intact``'s. Never opens a
    special file (a FIFO or a device could block or never end)."""
    f = Path(root) / entry["file"]
    try:
        st = os.stat(f)
    except FileNotFoundError:
        return f"{entry['file']}: missing"
    except OSError as e:
        return f"{entry['file']}: cannot be read ({e.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return f"{entry['file']}: not a regular file (a folder, FIFO or device)"
    if Path(root).resolve() not in f.resolve().parents:
        return f"{entry['file']}: links outside the dataset folder"
    return ""


class PackedDataset:
    """One split of a packed dataset. Picklable; shard files open lazily per process."""

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        self.root = Path(root)
        self.index = load_index(root)
        if split not in self.index["splits"]:
            raise UserError(f"{root}: no split {split!r} (has {sorted(self.index['splits'])})")
        self.split = split
        self.shards = self.index["splits"][split]["shards"]
        self.offsets = [0]
        for s in self.shards:
            self.offsets.append(self.offsets[-1] + s["count"])
        self.encoding = self.index["encoding"]
        self.channels = self.index["channels"]
        self.label_kind = self.index["label_kind"]
        self.class_names = list(self.index["class_names"])
        self._files: dict[int, h5py.File] = {}
        self._images: dict[int, object] = {}   # shard -> h5py image dataset, or np.memmap of a raw one
        self._pid = None
        self._meta: dict[str, np.ndarray] = {}

    # pickling (DALI workers, DataLoader workers): never carry open handles
    def __getstate__(self):
        d = dict(self.__dict__)
        d["_files"], d["_images"], d["_pid"] = {}, {}, None
        return d

    def __len__(self) -> int:
        return self.offsets[-1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _file(self, k: int) -> h5py.File:
        if self._pid != os.getpid():
            self._files, self._images, self._pid = {}, {}, os.getpid()
        f = self._files.get(k)
        if f is None:
            problem = shard_problem(self.root, self.shards[k])      # never open a FIFO, device or outside link
            if problem:
                raise UserError(f"{self.root}/{problem} (shard {k} of {self.root}:{self.split}); repack the dataset")
            path = self.root / self.shards[k]["file"]
            try:
                f = h5py.File(path, "r")
                shape = f["label"].shape
            except (OSError, KeyError) as e:
                raise UserError(f"{path}: not a readable HDF5 shard ({e})") from None
            if shape[1:] != (() if self.label_kind == "multiclass" else (len(self.class_names),)):
                f.close()
                raise UserError(f"{path}: labels of shape {shape[1:]} per sample, but {INDEX_NAME} says "
                                f"{self.label_kind} over {len(self.class_names)} classes; repack the dataset")
            try:
                pix = pixel_problem(f, self.channels, self.encoding)
            except (OSError, KeyError) as e:
                pix = f"not a readable HDF5 shard ({e})"
            if pix:
                f.close()
                raise UserError(f"{path}: {pix}; repack the dataset")
            self._files[k] = f
        return f

    def _image_data(self, k: int):
        """Shard k's ``image`` dataset, opened once per process. A raw shard stored contiguously and
        uncompressed (what the packer writes) is mapped straight from the file instead: reading a sample
        is then a memory copy rather than an HDF5 call."""
        ds = self._images.get(k) if self._pid == os.getpid() else None
        if ds is None:
            ds = self._file(k)["image"]
            if (ds.dtype.kind == "O") != (self.encoding != "raw"):
                raise UserError(f"{self.root / self.shards[k]['file']}: holds {'encoded' if ds.dtype.kind == 'O' else 'raw'} "
                                f"images, but {INDEX_NAME} says encoding {self.encoding!r}; repack the dataset")
            if self.encoding == "raw" and ds.chunks is None and ds.compression is None and ds.size:
                offset = ds.id.get_offset()
                if offset is not None:
                    ds = np.memmap(self.root / self.shards[k]["file"], dtype=ds.dtype, mode="r", offset=offset,
                                   shape=ds.shape)
            self._images[k] = ds
        return ds

    def verify(self) -> "PackedDataset":
        """Check what training will read, once per process and shard file: each shard's size and SHA-256
        against index.json (a flipped byte cannot pass), and multi-class labels within the class range.
        A mismatch is a UserError naming the shard. Returns self."""
        where = f"{self.root}:{self.split}"
        for k, sh in enumerate(self.shards):
            f = self.root / sh["file"]
            problem = shard_problem(self.root, sh)
            if problem:
                raise UserError(f"{self.root}/{problem} (shard {k} of {where}); repack the dataset")
            st = f.stat()
            key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
            if key in _VERIFIED:
                continue
            if not shard_intact(f, sh):
                raise UserError(f"{f}: shard {k} of {where} does not match its checksum in {INDEX_NAME} (changed "
                                f"or damaged since it was packed); `covidnetx verify {self.root}` checks every "
                                "shard; repack, or set data.verify=false to read it anyway")
            if self.label_kind == "multiclass":
                labels = self._file(k)["label"][()]
                bad = bad_labels(labels, self.num_classes)
                if bad.size:
                    raise UserError(f"{f}: sample {int(bad[0])} has label {int(labels[bad[0]])}, outside the "
                                    f"{self.num_classes} classes of {where}")
            _VERIFIED.add(key)
        return self

    def close(self) -> None:
        if self._pid == os.getpid():
            for f in self._files.values():
                f.close()
        self._files, self._images = {}, {}

    def locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {self.root}:{self.split} ({len(self)})")
        k = bisect.bisect_right(self.offsets, i) - 1
        return k, i - self.offsets[k]

    def _column(self, key: str) -> np.ndarray:
        if key not in self._meta:
            parts = [self._file(k)[key][()] for k in range(len(self.shards))]
            if key in STRING_FIELDS:
                parts = [np.array([x.decode() if isinstance(x, bytes) else x for x in p], dtype=object)
                         for p in parts]
            if parts:
                col = np.concatenate(parts)
            elif key == "label" and self.label_kind == "multilabel":
                col = np.zeros((0, self.num_classes), np.float32)
            elif key == "shape":
                col = np.zeros((0, 3), np.int32)
            else:
                col = np.zeros((0,), np.int64 if key == "label" else object)
            self._meta[key] = col
        return self._meta[key]

    @property
    def labels(self) -> np.ndarray:
        return self._column("label")

    @property
    def patient_ids(self) -> np.ndarray:
        return self._column("patient_id")

    @property
    def sources(self) -> np.ndarray:
        return self._column("source")

    @property
    def paths(self) -> np.ndarray:
        return self._column("path")

    def stored_shape(self, i: int) -> np.ndarray:
        """Decoded (H, W, C) of sample i (from the ``shape`` column; no image read)."""
        return self._column("shape")[i]

    def read_stored(self, i: int) -> np.ndarray:
        """The stored form: encoded bytes as uint8 array (png/jpeg) or the HWC array (raw)."""
        k, j = self.locate(i)
        try:
            return self._image_data(k)[j]
        except Exception as e:  # noqa: BLE001 - h5py raises OSError, KeyError, RuntimeError on damaged files
            raise self._unreadable(i, e) from None

    def read_image(self, i: int) -> np.ndarray:
        stored = self.read_stored(i)
        try:
            return decode_image(stored, self.encoding, self.channels)
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for damaged bytes
            raise self._unreadable(i, e) from None

    def _unreadable(self, i: int, e: Exception) -> UserError:
        """The error for a sample that cannot be read or decoded: its shard file and place in it."""
        k, j = self.locate(i)
        why = re.sub(r" <[^>]*>", "", str(e))          # PIL names its in-memory file object
        return UserError(f"{self.root / self.shards[k]['file']}: sample {j} of shard {k} (index {i} of "
                         f"{self.root}:{self.split}) cannot be read ({type(e).__name__}: {why}); "
                         f"covidnetx verify {self.root} checks every shard")

    def _runs(self, indices: Sequence[int]) -> Iterable[tuple[int, int, int, list[int]]]:
        """Group sorted sample indices into (shard, local_start, local_stop, positions) contiguous runs."""
        order = sorted(range(len(indices)), key=lambda p: indices[p])
        run: list[int] = []
        for p in order:
            i = indices[p]
            k, j = self.locate(i)
            if run:
                k0, j0 = self.locate(indices[run[0]])
                if k == k0 and j == j0 + len(run) and indices[run[-1]] + 1 == i:
                    run.append(p)
                    continue
                yield k0, j0, j0 + len(run), run
            run = [p]
        if run:
            k0, j0 = self.locate(indices[run[0]])
            yield k0, j0, j0 + len(run), run

    def read_stored_batch(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Stored samples for ``indices`` (in that order), one HDF5 slice per contiguous run."""
        out: list = [None] * len(indices)
        for k, a, b, positions in self._runs(list(indices)):
            try:
                block = self._image_data(k)[a:b]
            except Exception as e:  # noqa: BLE001 - h5py raises OSError, KeyError, RuntimeError on damaged files
                raise self._unreadable(int(indices[positions[0]]), e) from None
            for q, p in enumerate(positions):
                out[p] = block[q]
        return out

    def read_images(self, indices: Sequence[int]) -> list[np.ndarray]:
        out = []
        for i, stored in zip(indices, self.read_stored_batch(indices)):
            try:
                out.append(decode_image(stored, self.encoding, self.channels))
            except Exception as e:  # noqa: BLE001 - PIL raises many kinds for damaged bytes
                raise self._unreadable(int(i), e) from None
        return out
