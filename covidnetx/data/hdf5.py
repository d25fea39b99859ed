"""The one definition of the packed HDF5 format: names, dtypes, attributes, schema version.

A packed dataset is a directory::

    OUT_DIR/index.json                  written last (atomically) by rank 0; the dataset exists iff it exists
    OUT_DIR/shards/{split}-{k:05d}.h5   samples [start, start+count) of that split, in manifest order
    OUT_DIR/shards/{split}-{k:05d}.json sidecar: sha256, counts, plan hash (written before the .h5 rename)

Per shard file (datasets, all of length ``count``):

    image       encoding "raw": uint8 (count, H, W, C), contiguous; "png"/"jpeg": vlen uint8 (encoded bytes)
    shape       int32 (count, 3): decoded H, W, C of each image
    label       multiclass: int64 (count,); multilabel: float32 (count, num_classes), NaN = unknown/uncertain
    patient_id, view, source, path: variable-length UTF-8 strings (path is relative to the raw root)

and attributes ``schema_version, split, shard_index, start, count, encoding, channels, label_kind,
class_names`` (JSON list) and ``plan_hash`` (what the shard was made from; used to resume a pack).

Reading: :class:`PackedDataset` opens shard files lazily in whichever process touches them first (h5py
handles never cross a fork) and reads contiguous runs of samples with one slice per run.
"""
from __future__ import annotations

import bisect
import io
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from covidnetx.utils import UserError, atomic_write_json, sha256_file, tmp_path_for

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
    from PIL import Image

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
    from PIL import Image

    with Image.open(io.BytesIO(np.asarray(data, dtype=np.uint8).tobytes())) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        arr = np.asarray(img)
    return arr[:, :, None] if arr.ndim == 2 else arr


# ----------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------
def write_shard(path: str | os.PathLike, *, images: Sequence[np.ndarray], shapes: np.ndarray,
                labels: np.ndarray, strings: dict[str, Sequence[str]], attrs: dict) -> None:
    """Write one shard to a temporary name and rename it into place when complete.

    Byte-identical output for identical input: no timestamps (track_times=False), fixed attribute order.
    """
    path = Path(path)
    tmp = tmp_path_for(path)
    n = len(images)
    encoding = attrs["encoding"]
    try:
        with h5py.File(tmp, "w", libver="earliest", track_order=False) as f:
            if encoding == "raw":
                if n:
                    data = np.stack(images).astype(np.uint8, copy=False)
                else:
                    data = np.zeros((0, 1, 1, attrs["channels"]), np.uint8)
                f.create_dataset("image", data=data, track_times=False)
            else:
                ds = f.create_dataset("image", shape=(n,), dtype=h5py.vlen_dtype(np.uint8),
                                      track_times=False)
                for i, b in enumerate(images):
                    ds[i] = b
            f.create_dataset("shape", data=np.asarray(shapes, np.int32).reshape(n, 3), track_times=False)
            f.create_dataset("label", data=labels, track_times=False)
            sdt = h5py.string_dtype("utf-8")
            for key in STRING_FIELDS:
                f.create_dataset(key, data=np.array(list(strings[key]), dtype=object), dtype=sdt,
                                 track_times=False)
            for key in sorted(attrs):
                v = attrs[key]
                f.attrs[key] = json.dumps(v) if isinstance(v, (list, dict)) else v
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def write_index(root: str | os.PathLike, index: dict) -> None:
    atomic_write_json(Path(root) / INDEX_NAME, index)


# ----------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------
def load_index(root: str | os.PathLike) -> dict:
    p = Path(root) / INDEX_NAME
    if not p.is_file():
        raise UserError(f"{root}: not a packed dataset (no {INDEX_NAME}; was the pack interrupted?)")
    try:
        index = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: unreadable index ({e})") from None
    if index.get("format") != FORMAT_NAME:
        raise UserError(f"{p}: not a {FORMAT_NAME} index")
    if index.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{p}: schema_version {index.get('schema_version')} but this covidnetx reads "
                        f"{SCHEMA_VERSION}; repack the dataset")
    return index


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
            f = h5py.File(self.root / self.shards[k]["file"], "r")
            self._files[k] = f
        return f

    def _image_data(self, k: int):
        """Shard k's ``image`` dataset, opened once per process. A raw shard stored contiguously and
        uncompressed (what the packer writes) is mapped straight from the file instead: reading a sample
        is then a memory copy rather than an HDF5 call (about 100x faster per sample)."""
        ds = self._images.get(k) if self._pid == os.getpid() else None
        if ds is None:
            ds = self._file(k)["image"]
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
            try:
                st = f.stat()
            except OSError:
                raise UserError(f"{f}: shard {k} of {where} is missing; repack the dataset") from None
            key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
            if key in _VERIFIED:
                continue
            if st.st_size != sh.get("bytes", st.st_size) or sha256_file(f) != sh["sha256"]:
                raise UserError(f"{f}: shard {k} of {where} does not match its checksum in {INDEX_NAME} (changed "
                                f"or damaged since it was packed); `covidnetx verify {self.root}` checks every "
                                "shard; repack, or set data.verify=false to read it anyway")
            if self.label_kind == "multiclass":
                labels = self._file(k)["label"][()]
                bad = np.flatnonzero((labels < 0) | (labels >= self.num_classes))
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
        return self._image_data(k)[j]

    def read_image(self, i: int) -> np.ndarray:
        return decode_image(self.read_stored(i), self.encoding, self.channels)

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
            block = self._image_data(k)[a:b]
            for q, p in enumerate(positions):
                out[p] = block[q]
        return out

    def read_images(self, indices: Sequence[int]) -> list[np.ndarray]:
        return [decode_image(s, self.encoding, self.channels) for s in self.read_stored_batch(indices)]
