import multiprocessing as mp
import pickle

import h5py
import numpy as np
import pytest

from covidnetx.data import hdf5 as H
from covidnetx.utils import UserError
from tests.conftest import run_cli, write_png


def _raw_folder(tmp_path, n=12, size=20, channels=1):
    rng = np.random.default_rng(0)
    imgs = {}
    for i in range(n):
        cls = ["a", "b", "c"][i % 3]
        shape = (size, size) if channels == 1 else (size, size, 3)
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        rel = f"{cls}/{i:03d}.png"
        write_png(tmp_path / "raw" / rel, arr)
        imgs[rel] = arr if channels == 3 else arr[:, :, None]
    return tmp_path / "raw", imgs


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_lossless_round_trip(tmp_path, encoding):
    raw, imgs = _raw_folder(tmp_path)
    run_cli("pack", "imagefolder", raw, tmp_path / "out", "--encoding", encoding, "--shard-size", "5",
            "--splits", "1,0,0", "--no-progress")
    ds = H.PackedDataset(tmp_path / "out", "train")
    assert len(ds) == 12 and ds.encoding == encoding and ds.channels == 1
    seen = 0
    for i in range(len(ds)):
        assert np.array_equal(ds.read_image(i), imgs[ds.paths[i]]), ds.paths[i]
        seen += 1
    assert seen == 12
    # batch read (unsorted, with a repeat and across shard borders) equals single reads
    order = [7, 2, 3, 4, 5, 11, 0, 7]
    batch = ds.read_images(order)
    for i, img in zip(order, batch):
        assert np.array_equal(img, ds.read_image(i))
    with h5py.File(tmp_path / "out" / ds.shards[0]["file"], "r") as f:
        assert f.attrs["schema_version"] == H.SCHEMA_VERSION
        assert f["label"].dtype == np.int64
        if encoding == "raw":
            assert f["image"].shape == (5, 20, 20, 1) and f["image"].dtype == np.uint8
        else:
            assert f["image"].dtype.metadata["vlen"] == np.uint8


def test_jpeg_is_close_not_exact(tmp_path):
    raw, imgs = _raw_folder(tmp_path, channels=3)
    run_cli("pack", "imagefolder", raw, tmp_path / "out", "--encoding", "jpeg", "--splits", "1,0,0",
            "--no-progress")
    ds = H.PackedDataset(tmp_path / "out", "train")
    assert ds.channels == 3
    img = ds.read_image(0)
    assert img.shape == (20, 20, 3)
    # random noise is JPEG's worst case; the mean error stays bounded
    assert np.abs(img.astype(int) - imgs[ds.paths[0]].astype(int)).mean() < 30


def _child_read(ds, q):
    q.put(int(ds.read_image(3).sum()))


def test_lazy_open_survives_fork_and_pickle(tmp_path):
    raw, _ = _raw_folder(tmp_path)
    run_cli("pack", "imagefolder", raw, tmp_path / "out", "--splits", "1,0,0", "--no-progress")
    ds = H.PackedDataset(tmp_path / "out", "train")
    expect = int(ds.read_image(3).sum())       # parent opens a handle first
    assert ds._files
    clone = pickle.loads(pickle.dumps(ds))     # picklable, and carries no handle
    assert clone._files == {}
    assert int(clone.read_image(3).sum()) == expect
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(ds, q))
    p.start()
    p.join(30)
    assert p.exitcode == 0 and q.get(timeout=5) == expect


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="no index.json"):
        H.PackedDataset(tmp_path)
    raw, _ = _raw_folder(tmp_path)
    run_cli("pack", "imagefolder", raw, tmp_path / "out", "--splits", "1,0,0", "--no-progress")
    with pytest.raises(UserError, match="no split 'test'"):
        H.PackedDataset(tmp_path / "out", "test")
    ds = H.PackedDataset(tmp_path / "out", "train")
    with pytest.raises(IndexError):
        ds.read_image(len(ds))


def test_raw_shards_are_read_through_a_memory_map_and_other_layouts_through_h5py(tmp_path):
    raw, imgs = _raw_folder(tmp_path)
    run_cli("pack", "imagefolder", raw, tmp_path / "out", "--encoding", "raw", "--shard-size", "5",
            "--splits", "1,0,0", "--no-progress")
    ds = H.PackedDataset(tmp_path / "out", "train")
    assert isinstance(ds._image_data(0), np.memmap)           # the packer writes raw images contiguously
    expect = [ds.read_image(i).copy() for i in range(len(ds))]
    assert all(np.array_equal(e, imgs[p]) for e, p in zip(expect, ds.paths))
    # a shard someone re-wrote chunked and compressed (e.g. with h5repack) is still read, through h5py
    shard = tmp_path / "out" / ds.shards[1]["file"]
    ds.close()
    with h5py.File(shard, "a") as f:
        data = f["image"][()]
        del f["image"]
        f.create_dataset("image", data=data, chunks=(1,) + data.shape[1:], compression="gzip")
    ds2 = H.PackedDataset(tmp_path / "out", "train")
    assert not isinstance(ds2._image_data(1), np.memmap) and isinstance(ds2._image_data(0), np.memmap)
    for i in range(len(ds2)):
        assert np.array_equal(ds2.read_image(i), expect[i])
    assert all(np.array_equal(a, b) for a, b in zip(ds2.read_images(range(len(ds2))), expect))
