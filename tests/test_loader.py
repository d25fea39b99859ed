"""DALI (CPU) and torch loaders: same tensors for the same samples; exact sharding by global rank."""
import numpy as np
import pytest
import torch

from covidnetx.data.compose import Mixture
from covidnetx.data.hdf5 import PackedDataset
from covidnetx.data.loader import Preprocess, TrainStream, eval_block, make_loader
from tests.conftest import run_cli, write_png

pytest.importorskip("nvidia.dali", reason="nvidia-dali not installed (make setup installs it)")


@pytest.fixture(scope="module")
def packed(tmp_path_factory, cxr_small, natural_small):
    root = tmp_path_factory.mktemp("packed")
    run_cli("pack", "csv", cxr_small, root / "cxr", "--size", "40", "--no-progress")
    run_cli("pack", "csv", natural_small, root / "nat", "--encoding", "raw", "--no-progress", "--val-fraction", "0.1")
    return root


def _collect(kind, view, pp, rank=0, size=1, train=False, steps=None, workers=0, batch=16):
    out = {"image": [], "label": [], "valid": [], "index": []}
    for b in make_loader(kind, view, pp, batch, 0, rank, size, workers=workers, train=train, steps=steps):
        for k in out:
            out[k].append(b[k])
    return {k: torch.cat(v) for k, v in out.items()}


@pytest.mark.parametrize("ds, size, resize, channels, exact", [
    ("cxr", 40, 0, 1, True),       # png bytes, gray, no resampling: identical bytes
    ("cxr", 32, 36, 1, False),     # resize shorter side + centre crop: rounding to uint8 may differ by 1
    ("nat", 32, 0, 3, True),       # raw uint8 arrays, RGB
    ("nat", 24, 28, 3, False),
])
def test_dali_and_torch_give_the_same_eval_tensors(packed, ds, size, resize, channels, exact):
    view = Mixture([PackedDataset(packed / ds, "val")])
    pp = Preprocess(image_size=size, resize_size=resize)
    a = _collect("torch", view, pp)
    b = _collect("dali", view, pp)
    assert torch.equal(a["index"], b["index"]) and torch.equal(a["valid"], b["valid"])
    assert torch.equal(a["label"], b["label"])
    # both hand out uint8 CHW in the stored channel count (normalisation happens on the consumer's device)
    assert a["image"].dtype == b["image"].dtype == torch.uint8
    assert a["image"].shape == b["image"].shape == (len(a["index"]), channels, size, size)
    d = (a["image"].int() - b["image"].int()).abs()
    if exact:
        assert d.max().item() == 0
    else:
        # torch resamples uint8 in fixed point, DALI in float: the roundings part on ~1 pixel in 5, by one level
        assert d.max().item() <= 1 and d.float().mean().item() < 0.35


def test_dali_and_torch_augment_alike(packed):
    view = Mixture([PackedDataset(packed / "nat", "train")])
    pp = Preprocess(image_size=28, rotate_deg=5.0, crop_scale=0.5, hflip=True)
    a = _collect("torch", view, pp, train=True, steps=3)
    b = _collect("dali", view, pp, train=True, steps=3, workers=2)      # parallel external source (fork)
    assert torch.equal(a["index"], b["index"])
    d = (a["image"].int() - b["image"].int()).abs()
    # bilinear sampling of rotated crops, each rounded to uint8, differs by a level here and there; a
    # mismatched crop box, flip or angle would differ by tens of levels nearly everywhere
    assert d.float().mean().item() < 0.5 and (d > 2).float().mean().item() < 0.01
    # augmentation really happens: a second stream position of the same sample differs
    c = _collect("torch", view, Preprocess(image_size=28, augment=False), train=True, steps=3)
    assert (a["image"].int() - c["image"].int()).abs().float().mean().item() > 10


def test_dali_workers_started_by_spawn_give_what_fork_gives(packed):
    """A GPU job has initialised CUDA before its loader starts, and DALI then refuses to fork its workers;
    the loader spawns them instead (dali_start_method). Spawned workers must deliver the same batches."""
    from covidnetx.data.loader import dali_loader, dali_start_method
    assert dali_start_method() == "fork"           # no CUDA initialised here
    view = Mixture([PackedDataset(packed / "cxr", "train")])
    pp = Preprocess(image_size=24, rotate_deg=0.0)
    got = {}
    for method in ("fork", "spawn"):
        bs = list(dali_loader(view, pp, 8, 3, 0, 1, workers=2, train=True, steps=2, start_method=method))
        got[method] = torch.cat([b["image"] for b in bs]), torch.cat([b["index"] for b in bs])
    assert torch.equal(got["fork"][1], got["spawn"][1])
    assert torch.equal(got["fork"][0], got["spawn"][0])


def test_normalize_makes_the_model_input_on_the_consumer_side():
    from covidnetx.data.loader import normalize, transform_torch
    pp = Preprocess(image_size=4, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.1))
    x = torch.tensor([0, 51, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2)
    y = normalize(x, pp)
    assert y.dtype == torch.float32 and y.shape == (1, 1, 2, 2)        # gray stays 1 channel
    assert torch.allclose(y.flatten(), (torch.tensor([0, 51, 128, 255.]) / 255 - 0.5) / 0.25, atol=1e-5)
    y3 = normalize(x, pp, expand=True)                                   # the RGB model's input, if asked
    assert y3.shape == (1, 3, 2, 2) and torch.equal(y3[:, 2], y[:, 0])
    rgb = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    assert torch.allclose(normalize(rgb, pp).flatten(), torch.tensor([2.0, 3.0, 7.0]), atol=1e-5)
    img = np.arange(64, dtype=np.uint8).reshape(8, 8, 1) * 3
    one = normalize(transform_torch(img, Preprocess(image_size=4, resize_size=4), None)[None], pp, expand=True)[0]
    assert one.shape == (3, 4, 4)


@pytest.mark.parametrize("channels", [1, 3])
def test_opencv_upscaling_matches_the_torch_reference(monkeypatch, channels):
    """Crops that grow on both axes go through OpenCV's bilinear kernel (no antialiasing needed), the rest
    through torch's antialiased one, and rotations through warpAffine; switched off, everything takes
    torch's kernels: the two agree to a level."""
    from covidnetx.data import transforms as loader
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless not installed (make setup installs it)")
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (64, 80, channels), dtype=np.uint8), (5, 5), 1.5)
    img = img.reshape(64, 80, channels)
    boxes = [(3, 5, 20, 30, 32, 32), (0, 0, 64, 80, 64, 96), (10, 7, 31, 17, 48, 40), (0, 0, 64, 80, 32, 40)]
    got = {}
    for use in (True, False):
        loader._CV2.clear()
        monkeypatch.setenv("COVIDNETX_NO_CV2", "0" if use else "1")
        got[use] = [loader._crop_resize(img, *b) for b in boxes] + [loader._rotate_u8(img, 4.3)]
        assert (loader._cv2() is not None) == use
    loader._CV2.clear()
    for b, a, r in zip(boxes + [(0, 0, 64, 80, 64, 80)], got[True], got[False]):
        assert a.shape == r.shape == (b[4], b[5], channels) and a.dtype == r.dtype == np.uint8
        d = np.abs(a.astype(int) - r.astype(int))
        assert d.max() <= 1 and d.mean() < 0.4, b
    assert np.array_equal(got[True][3], got[False][3])     # shrinking: the torch kernel in both cases
    # a mismatched box would be far off: the crop's content differs from the image's other parts
    wrong = loader._crop_resize(img, 4, 5, 20, 30, 32, 32)
    assert np.abs(wrong.astype(int) - got[False][0].astype(int)).mean() > 2
    assert np.abs(loader._rotate_u8(img, -4.3).astype(int) - got[False][4].astype(int)).mean() > 2


@pytest.mark.parametrize("kind", ["torch", "dali"])
def test_eval_sees_every_sample_exactly_once_across_ranks(packed, kind):
    view = Mixture([PackedDataset(packed / "cxr", "test")])
    n = len(view)
    pp = Preprocess(image_size=40)
    got = []
    for rank in range(3):      # 3 ranks, batch 16: uneven blocks and padding
        r = _collect(kind, view, pp, rank=rank, size=3)
        assert len(r["index"]) % 16 == 0
        got.append(r["index"][r["valid"].bool()])
    allidx = torch.cat(got).sort().values
    assert torch.equal(allidx, torch.arange(n))


def test_train_stream_shards_each_epoch_without_repeats():
    n, size = 103, 4
    streams = [TrainStream(n, r, size, seed=5) for r in range(size)]
    per = n // size
    for epoch in range(3):
        seen = np.concatenate([[s[epoch * per + j] for j in range(per)] for s in streams])
        assert len(seen) == len(set(seen)) == per * size          # no sample twice in an epoch
    even = [TrainStream(100, r, 4, seed=5) for r in range(4)]
    seen = sorted(s[j] for s in even for j in range(25))
    assert seen == list(range(100))                               # n % size == 0: each exactly once
    assert TrainStream(n, 1, size, 5)[40] == streams[1][40]       # a pure function of the position
    # fewer samples than ranks (few-shot k=1, 3 classes, 4 ranks): every rank still gets one per epoch,
    # and each epoch uses every sample
    tiny = [TrainStream(3, r, 4, seed=5) for r in range(4)]
    for epoch in range(3):
        got = [s[epoch] for s in tiny]
        assert set(got) == {0, 1, 2} and len(got) == 4
    idx, valid = eval_block(10, 2, 3, 4)
    assert idx[valid.astype(bool)].tolist() == [8, 9] and len(idx) == 4


@pytest.mark.parametrize("kind", ["torch", "dali"])
def test_ranks_draw_different_augmentations(tmp_path, kind):
    """All images identical: what tells two augmented samples apart is their crop, flip and angle. Rank 0
    and rank 1 of 2 must not draw the same ones at the same stream position (they did: the draw was keyed
    by the rank's own position, so a global batch held each augmentation once per rank)."""
    img = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    for c in ("a", "b"):
        for i in range(8):
            write_png(tmp_path / "raw" / c / f"{i}.png", img)
    run_cli("pack", "imagefolder", tmp_path / "raw", tmp_path / "p", "--splits", "1,0,0", "--encoding", "raw",
            "--no-progress")
    view = Mixture([PackedDataset(tmp_path / "p", "train")])
    pp = Preprocess(image_size=32, rotate_deg=10.0, crop_scale=0.5, hflip=True)
    r0, r1 = (_collect(kind, view, pp, rank=r, size=2, train=True, steps=2, batch=4)["image"] for r in (0, 1))
    same = [torch.equal(a, b) for a, b in zip(r0, r1)]
    assert not any(same), same
    # one rank alone keeps its old stream: slot = position
    assert [TrainStream(16, 0, 1, 0).slot(p) for p in range(3)] == [0, 1, 2]
    assert [TrainStream(16, 1, 2, 0).slot(p) for p in range(3)] == [1, 3, 5]


@pytest.mark.parametrize("kind, method", [("torch", "fork"), ("dali", "fork"), ("dali", "spawn")])
def test_loader_workers_outlive_slurms_warning_signals(packed, kind, method):
    """srun forwards SIGUSR1 (and SIGTERM) to every process of a step; a loader worker that died of it
    made the training process fail at the next batch instead of saving its checkpoint (torch: "worker
    killed by signal", DALI fork: "Worker data receiving interrupted", DALI spawn: the worker and
    multiprocessing's resource tracker died). Workers now outlive both signals and the batches go on."""
    import json
    import subprocess
    import sys
    from tests.conftest import REPO
    r = subprocess.run([sys.executable, str(REPO / "tests" / "mp" / "loader_signals.py"), kind, method,
                        str(packed / "nat")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["signalled"] >= 1 and res["alive"] == res["signalled"] and res["batches_equal"], res
    assert "Traceback" not in r.stderr and "died unexpectedly" not in r.stderr, r.stderr[-2000:]
