"""A crafted index.json (round two): it is read through one schema check, so a missing or mistyped key,
a shard named outside the dataset folder or a special file is one error naming it, at once; nothing
reads /dev/zero or a FIFO."""
import json
import os
import shutil
import time

import pytest

from covidnetx.cli import main
from covidnetx.data.hdf5 import PackedDataset, load_index
from covidnetx.utils import UserError


@pytest.fixture
def copy(packed, tmp_path):
    dst = tmp_path / "cxr"
    shutil.copytree(packed / "cxr", dst)
    return dst


def _edit(root, fn):
    p = root / "index.json"
    index = json.loads(p.read_text())
    fn(index)
    p.write_text(json.dumps(index))


def _first(index):
    return index["splits"]["train"]["shards"][0]


@pytest.mark.parametrize("edit, message", [
    (lambda ix: _first(ix).pop("sha256"), "key 'splits.train.shards[0].sha256' is missing"),
    (lambda ix: _first(ix).pop("bytes"), "key 'splits.train.shards[0].bytes' is missing"),
    (lambda ix: _first(ix).update(file="/dev/zero"), "'/dev/zero' is not a path inside the dataset folder"),
    (lambda ix: _first(ix).update(file="../../etc/passwd"), "is not a path inside the dataset folder"),
    (lambda ix: _first(ix).update(count="7"), "key 'splits.train.shards[0].count' has an invalid value"),
    (lambda ix: ix.update(class_names=None), "key 'class_names' has an invalid value"),
    (lambda ix: ix.pop("channels"), "key 'channels' is missing"),
    (lambda ix: ix.update(num_samples=ix["num_samples"] + 1), "key 'num_samples' is"),
    (lambda ix: ix["splits"]["train"].update(count=1), "key 'splits.train.count' is 1, its shards hold"),
])
def test_a_crafted_index_is_one_error_naming_the_key(copy, capsys, edit, message):
    _edit(copy, edit)
    with pytest.raises(UserError, match="repack the dataset") as e:
        load_index(copy)
    assert message in str(e.value)
    assert main(["verify", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err


def test_an_index_that_is_null_or_a_list_is_not_an_index(copy):
    for text in ("null", "[1, 2]", '"x"'):
        (copy / "index.json").write_text(text)
        with pytest.raises(UserError, match="not a covidnetx-packed index"):
            load_index(copy)


def test_a_shard_that_is_a_link_to_a_device_or_fifo_is_named_not_read(copy, tmp_path, capsys):
    shard = copy / _first(json.loads((copy / "index.json").read_text()))["file"]
    shard.unlink()
    os.symlink("/dev/zero", shard)
    t = time.perf_counter()
    assert main(["verify", str(copy)]) != 0
    out = capsys.readouterr()
    assert "not a regular file" in out.out + out.err and "missing" not in out.out + out.err
    with pytest.raises(UserError, match="not a regular file"):
        PackedDataset(copy, "train").verify()
    shard.unlink()
    os.mkfifo(shard)
    with pytest.raises(UserError, match="not a regular file"):
        PackedDataset(copy, "train").verify()
    assert time.perf_counter() - t < 30


def test_round_two_review_cases(copy, tmp_path, capsys):
    """Cases an adversarial review found: a shard that is a FIFO is never opened by any reader; an index
    that says raw over encoded shards is an error, not a crash; non-UTF-8, too-deep and too-long JSON."""
    index = json.loads((copy / "index.json").read_text())
    fifo = copy / "shards" / "fifo.h5"
    os.mkfifo(fifo)
    _edit(copy, lambda ix: _first(ix).update(file="shards/fifo.h5"))
    t = time.perf_counter()
    assert main(["inspect", str(copy)]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert time.perf_counter() - t < 20
    (copy / "index.json").write_text(json.dumps({**index, "encoding": "raw"}))
    with pytest.raises(UserError, match="holds encoded images, but index.json says encoding 'raw'"):
        PackedDataset(copy, "train").read_image(0)
    for data, message in ((b'{"a": \xff}', r"not UTF-8 text \(byte 0xff"), (b"[" * 100000, "nested too deeply"),
                          (b'{"a": ' + b"9" * 5000 + b"}", "unreadable JSON")):
        (copy / "index.json").write_bytes(data)
        with pytest.raises(UserError, match=message):
            load_index(copy)


def test_a_labels_csv_image_that_is_a_fifo_is_named_not_read(tmp_path):
    from tests.conftest import run_cli
    from tests.test_hostile import GOOD, _raw
    raw = _raw(tmp_path, GOOD[:-1] + ["fifo.png,b,p9,PA,x"])
    os.mkfifo(raw / "fifo.png")
    r = run_cli("pack", "csv", raw, tmp_path / "out", "--no-progress", check=False, timeout=60)
    assert r.returncode == 2 and "is a FIFO (named pipe)" in r.stderr and r.stderr.count("error:") == 1, r.stderr


def test_an_index_whose_label_kind_does_not_match_its_shards(copy, capsys):
    _edit(copy, lambda ix: ix.update(label_kind="multilabel"))
    assert main(["verify", str(copy)]) != 0
    out = capsys.readouterr()
    assert "labels of shape () per sample, but the index says multilabel" in out.out + out.err
    with pytest.raises(UserError, match="labels of shape"):
        PackedDataset(copy, "train").read_image(0)


def test_an_index_whose_channels_contradict_the_shards_is_named(copy, capsys):
    """index.json says 3 channels of images its shards store with 1 (or the reverse): verify names the shard,
    and training stops at the first read with one error, instead of a tensor-shape traceback."""
    channels = load_index(copy)["channels"]
    _edit(copy, lambda ix: ix.update(channels=4 - channels))         # 1 <-> 3
    assert main(["verify", str(copy)]) != 0
    out = capsys.readouterr()
    assert f"channel(s), but index.json says {4 - channels}" in out.out + out.err
    ds = PackedDataset(copy, "train")
    with pytest.raises(UserError, match=rf"train-.*\.h5: images with {channels} channel\(s\), but index.json "
                                        rf"says {4 - channels}; repack the dataset"):
        ds.read_image(0)


def test_a_stop_signal_while_shards_are_hashed_ends_the_run_at_once(copy, tmp_path, monkeypatch, capsys):
    """SIGTERM (scancel, Slurm's time limit) that arrives while training start-up checks the shards'
    checksums ends the command with the requeue code within one 1 MiB block, not after every shard has been
    read (a huge or endless file took until SIGKILL); nothing of the run is written."""
    import signal
    import covidnetx.data.hdf5 as H
    import covidnetx.utils as U
    from covidnetx.launch import EXIT_REQUEUE
    from tests.train_helpers import pretrain_args
    calls = []

    def hash_after_a_signal(path, *a, **k):    # the signal lands as the first shard's hashing begins
        calls.append(path)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return U.sha256_file(path, *a, **k)
    monkeypatch.setattr(H, "sha256_file", hash_after_a_signal)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "runs"
    assert main(pretrain_args(copy, out, steps=5, extra=["backend=none"])) == EXIT_REQUEUE   # a copy: not yet hashed
    assert "interrupted during start-up, exit 75" in capsys.readouterr().err
    assert len(calls) == 1                     # the other shards were never hashed
    assert not list(out.rglob("config.yaml"))
    assert signal.getsignal(signal.SIGTERM) is before       # the handlers are put back
    U.check_stop()                             # outside a run the check never stops anything


def test_ctrl_c_while_shards_are_hashed_is_one_line(copy, tmp_path, monkeypatch, capsys):
    import signal
    import covidnetx.data.hdf5 as H
    import covidnetx.utils as U
    from tests.train_helpers import pretrain_args

    def hash_after_ctrl_c(path, *a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        return U.sha256_file(path, *a, **k)
    monkeypatch.setattr(H, "sha256_file", hash_after_ctrl_c)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)   # Python's own, as in a fresh process
    out = tmp_path / "runs"
    assert main(pretrain_args(copy, out, steps=5, extra=["backend=none"])) == 130
    err = capsys.readouterr().err
    signal.signal(signal.SIGINT, old)
    assert err.strip() == "covidnetx pretrain: interrupted (SIGINT)" and "Traceback" not in err, err
    assert not list(out.rglob("config.yaml"))
