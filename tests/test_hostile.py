"""Hostile-but-fair inputs: each gives one clear error naming the file, row or key, a non-zero exit, and
leaves nothing that a later command accepts as valid. (Checkpoints that would run code: test_train.py.)"""
import json
import os
import stat

import numpy as np
import pytest

from covidnetx.cli import main
from covidnetx.data.hdf5 import load_index
from tests.conftest import run_cli, write_png
from tests.train_helpers import pretrain_args


def _raw(tmp_path, lines, n=6):
    """n small images img0..img{n-1}.png and a labels.csv of the given lines (header first)."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    for i in range(n):
        write_png(raw / f"img{i}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    (raw / "labels.csv").write_bytes(("\n".join(lines) + "\n").encode() if isinstance(lines, list) else lines)
    return raw


GOOD = ["path,label,patient_id,view,source"] + [f"img{i}.png,{'ab'[i % 2]},p{i},PA,x" for i in range(6)]


def _pack_fails(raw, out, *extra):
    r = run_cli("pack", "csv", raw, out, "--no-progress", *extra, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("error:") == 1, r.stderr
    assert not (out / "index.json").exists()
    return r.stderr


@pytest.mark.parametrize("bad_line, message", [
    ("img5.png,b,p5PA,x", "labels.csv:7: malformed row: 4 fields, the header has 5"),     # a missing comma
    ("img5.png,b", "labels.csv:7: malformed row: 2 fields, the header has 5"),            # only path,label
    ("img5.png,b,p5,PA,x,extra", "labels.csv:7: malformed row: 6 fields, the header has 5"),
])
def test_csv_rows_with_the_wrong_number_of_fields(tmp_path, bad_line, message):
    raw = _raw(tmp_path, GOOD[:-1] + [bad_line])
    assert message in _pack_fails(raw, tmp_path / "out")


def test_csv_with_bytes_that_are_not_utf8(tmp_path):
    text = "\n".join(GOOD[:4]).encode() + b"\nimg3.png,b,p\xff3,PA,x\n" + "\n".join(GOOD[5:]).encode() + b"\n"
    raw = _raw(tmp_path, text)
    assert "labels.csv:5: not UTF-8 text" in _pack_fails(raw, tmp_path / "out")


def test_a_path_listed_twice(tmp_path):
    raw = _raw(tmp_path, GOOD + ["img1.png,a,p1,PA,x"])          # the same image as another class
    assert ("labels.csv:8: image 'img1.png' is listed again with another label (first at" in
            _pack_fails(raw, tmp_path / "out"))
    raw = _raw(tmp_path, GOOD + ["img1.png,b,p9,PA,x"])          # as another patient
    assert "listed again with another patient" in _pack_fails(raw, tmp_path / "out")
    raw = _raw(tmp_path, GOOD + ["img1.png,b,p1,PA,x"])          # an exact repeat: one copy, one warning
    r = run_cli("pack", "csv", raw, tmp_path / "out", "--no-progress")
    assert "1 row(s) repeat an earlier row" in r.stderr
    assert load_index(tmp_path / "out")["num_samples"] == 6


@pytest.mark.parametrize("path", ["../outside.png", "sub/../../outside.png", "ABS"])
def test_paths_outside_the_raw_root(tmp_path, path):
    outside = tmp_path / "outside.png"
    write_png(outside, np.zeros((8, 8), np.uint8))
    path = str(outside) if path == "ABS" else path
    raw = _raw(tmp_path, GOOD + [f"{path},a,p7,PA,x"])
    (raw / "sub").mkdir()
    assert f"labels.csv:8: image path {path!r} is outside the raw root" in _pack_fails(raw, tmp_path / "out")
    run_cli("pack", "csv", raw, tmp_path / "out", "--no-progress", "--allow-outside-root")
    assert load_index(tmp_path / "out")["num_samples"] == 7


@pytest.mark.parametrize("override, message", [
    ("optim.steps=-5", "config key 'optim.steps': -5 is not valid (must be >= 0)"),
    ("log_every=0", "config key 'log_every': 0 is not valid (must be >= 1)"),
    ("data.image_size=0", "config key 'data.image_size': 0 is not valid (must be in [1, 8192])"),
    ("data.image_size=-8", "config key 'data.image_size': -8 is not valid"),
    ("threads=-1", "config key 'threads': -1 is not valid (must be >= 0)"),
    ("data.workers=-1", "config key 'data.workers': -1 is not valid (must be >= 0)"),
    ("optim.lr=0", "config key 'optim.lr': 0.0 is not valid (must be > 0)"),
    ("optim.momentum=1.5", "config key 'optim.momentum': 1.5 is not valid (must be in [0, 1))"),
    ("shots=[5,0]", "config key 'shots': [5, 0] is not valid (must be >= 1 for each value)"),
    ("optim.mixup=-0.5", "config key 'optim.mixup': -0.5 is not valid (-1 = BiT-HyperRule, or >= 0)"),
    ("run_name=../../x", "config key 'run_name': '../../x' is not a plain folder name"),
    ("run_name=a/b", "config key 'run_name': 'a/b' is not a plain folder name"),
])
def test_config_values_out_of_range(tmp_path, capsys, override, message):
    out = tmp_path / "runs"
    assert main(pretrain_args(tmp_path / "nowhere", out, steps=2, extra=[override])) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1, err
    assert not out.exists() or not any(out.rglob("*"))


def test_files_get_the_umask_permissions(tmp_path):
    from covidnetx.utils import atomic_write_bytes, atomic_write_json
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "b.json", {"a": 1})
        run_cli("pack", "csv", _raw(tmp_path, GOOD), tmp_path / "out", "--no-progress")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "c.bin", b"x")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)            # noqa: E731
    assert mode(tmp_path / "a.bin") == mode(tmp_path / "b.json") == 0o644
    assert mode(tmp_path / "out" / "index.json") == 0o644
    assert {mode(p) for p in (tmp_path / "out" / "shards").iterdir()} == {0o644}
    assert mode(tmp_path / "c.bin") == 0o600


def test_a_changed_image_is_packed_again(tmp_path):
    raw = _raw(tmp_path, GOOD)
    out = tmp_path / "out"
    run_cli("pack", "csv", raw, out, "--no-progress", "--shard-size", "2", "--encoding", "raw")
    r = run_cli("pack", "csv", raw, out, "--no-progress", "--shard-size", "2", "--encoding", "raw")
    assert "0 written" in r.stdout, r.stdout
    new = np.full((8, 8), 7, np.uint8)
    write_png(raw / "img3.png", new)                    # same size on disk is possible: stamp is size + mtime
    r = run_cli("pack", "csv", raw, out, "--no-progress", "--shard-size", "2", "--encoding", "raw")
    assert "1 written" in r.stdout, r.stdout
    from covidnetx.data.hdf5 import PackedDataset
    found = []
    for split in load_index(out)["splits"]:
        ds = PackedDataset(out, split)
        found += [ds.read_image(i) for i, p in enumerate(ds.paths) if p == "img3.png"]
    assert len(found) == 1 and (found[0] == 7).all()
    assert run_cli("verify", out).returncode == 0


def test_a_run_name_reused_with_another_config(packed, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(pretrain_args(packed / "nat", out, steps=2, extra=["backend=none", "data.eval_split="])) == 0
    capsys.readouterr()
    assert main(pretrain_args(packed / "nat", out, steps=2, extra=["backend=none", "data.eval_split="])) == 0
    assert "already done; skipping" in capsys.readouterr().out              # the same config: skipped
    changed = pretrain_args(packed / "nat", out, steps=3, extra=["backend=none", "data.eval_split=", "optim.lr=0.1"])
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "holds a run of another config (optim.lr: 0.2 -> 0.1; optim.steps: 2 -> 3)" in err, err
    assert err.count("error:") == 1
    assert main(changed + ["--force"]) == 0
    assert "removed the earlier run" in capsys.readouterr().out
    from covidnetx.results import load_results
    rows = load_results(out / "results.jsonl")
    assert [r["steps"] for r in rows] == [2, 3]


def test_training_refuses_a_damaged_shard(tmp_path, capsys):
    raw = _raw(tmp_path, GOOD)
    data = tmp_path / "data"
    run_cli("pack", "csv", raw, data, "--no-progress", "--encoding", "raw", "--splits", "1,0,0")
    shard = next((data / "shards").glob("train-*.h5"))
    blob = bytearray(shard.read_bytes())
    blob[-100] ^= 0xFF                                             # one pixel byte: HDF5 itself cannot notice
    shard.write_bytes(bytes(blob))
    out = tmp_path / "runs"
    args = pretrain_args(data, out, steps=1, extra=["backend=none", "data.eval_split=", "bootstrap=0"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{shard}: shard 0 of {data}:train does not match its checksum" in err and err.count("error:") == 1
    assert not (out / "results.jsonl").exists() and not list(out.rglob("done.json"))
    assert main(args + ["data.verify=false", "run_name=anyway"]) == 0           # for those who know


@pytest.mark.parametrize("case", ["out-is-a-file", "folder-in-shards", "csv-broken"])
def test_pack_under_mpirun_ends_every_rank_on_a_rank_0_problem(tmp_path, case):
    """Problems that only rank 0 meets (it alone prepares the folder and writes the index) end all ranks
    with one message and exit 2, well within the 60 s timeout, instead of leaving a rank waiting."""
    raw = _raw(tmp_path, GOOD)
    out = tmp_path / "out"
    if case == "out-is-a-file":
        out.write_text("")
        message = f"output folder: {out} is a file, not a folder"
    elif case == "folder-in-shards":
        run_cli("pack", "csv", raw, out, "--no-progress")
        (out / "shards" / "stray").mkdir()
        message = "stray: a folder inside shards/"
    else:
        (raw / "labels.csv").write_text("\n".join(GOOD + ["img0.png"]) + "\n")
        message = "labels.csv:8: malformed row"
    r = run_cli("pack", "csv", raw, out, "--no-progress", np_=2, check=False, timeout=60)
    assert r.returncode != 0 and message in r.stderr and r.stderr.count("error:") == 1, r.stderr
    if case == "folder-in-shards":
        assert not (out / "index.json").exists()


def test_skip_bad_covers_the_first_row(tmp_path):
    raw = _raw(tmp_path, GOOD[:1] + ["broken.png,a,p9,PA,x"] + GOOD[1:])
    (raw / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    assert "labels.csv:2:" in _pack_fails(raw, tmp_path / "out")
    r = run_cli("pack", "csv", raw, tmp_path / "out", "--no-progress", "--skip-bad")
    assert "skipped 1 unreadable image(s)" in r.stdout
    assert load_index(tmp_path / "out")["num_samples"] == 6


def test_upsampling_is_said_once(tmp_path, capsys):
    data = tmp_path / "data"
    run_cli("pack", "csv", _raw(tmp_path, GOOD), data, "--no-progress", "--size", "8", "--splits", "1,0,0")
    args = pretrain_args(data, tmp_path / "runs", steps=1, extra=["backend=none", "data.eval_split=", "bootstrap=0",
                                                                  "data.image_size=16", "seeds=[0,1]"])
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count(f"data.image_size=16 is larger than the packed images of {data} (8x8)") == 1, err


def test_checkpoints_of_another_model_and_unwritable_outputs(tmp_path, capsys):
    data = tmp_path / "data"
    run_cli("pack", "csv", _raw(tmp_path, GOOD), data, "--no-progress", "--splits", "1,0,0")
    common = ["backend=none", "data.eval_split=", "bootstrap=0"]
    out = tmp_path / "runs"
    assert main(pretrain_args(data, out, steps=1, extra=common)) == 0
    ck = out / "pre" / "last.ckpt"
    capsys.readouterr()
    cases = [
        (["model.name=resnet_w8", "run_name=w8", f"resume={ck}"], f"{ck}: weights do not fit model 'resnet_w8'"),
        (["model.name=resnet_w8", "run_name=w8b", f"model.init_from={ck}", "task=transfer"],
         f"{ck}: weights do not fit model 'resnet_w8'"),
        ([f"out_dir={ck}", "run_name=x"], f"config key 'out_dir': {ck} is a file, not a folder"),
        ([f"out_dir={ck}/sub", "run_name=x"], "is a file, not a folder"),
    ]
    for extra, message in cases:
        args = pretrain_args(data, out, steps=1, extra=common + extra)
        assert main(args) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("error:") == 1, err
    import torch
    torch.save({"a": torch.zeros(2)}, tmp_path / "plain.ckpt")
    assert main(pretrain_args(data, out, steps=1, extra=common + ["run_name=p", f"resume={tmp_path / 'plain.ckpt'}"])) == 2
    assert "plain.ckpt: not a covidnetx checkpoint" in capsys.readouterr().err


def test_a_file_name_that_is_not_utf8(tmp_path):
    raw = tmp_path / "raw"
    for cls in ("a", "b"):
        for i in range(3):
            write_png(raw / cls / f"img{i}.png", np.zeros((8, 8), np.uint8))
    bad = os.fsencode(raw / "b") + b"/img\xff.png"
    with open(bad, "wb") as f:
        f.write((raw / "a" / "img0.png").read_bytes())
    r = run_cli("pack", "imagefolder", raw, tmp_path / "out", "--no-progress", check=False)
    assert r.returncode == 2 and r.stderr.count("error:") == 1, r.stderr
    assert "b/img\\\\xff.png' is not UTF-8" in r.stderr, r.stderr
    assert not (tmp_path / "out" / "index.json").exists()


# ----------------------------------------------------------------------------------------------------
# faults: a full disk, a read-only folder, a damaged sample, failures on one rank of several
# ----------------------------------------------------------------------------------------------------
def _limited(args, *, np_=1, file_kb=None, rank0_only=False, timeout=60):
    """`covidnetx ARGS` with a file-size limit (RLIMIT_FSIZE, in KiB: a write past it fails with EFBIG,
    as a full disk fails with ENOSPC) on every rank or on rank 0 alone; under mpirun -np np_."""
    import subprocess
    import sys
    from covidnetx.launch import mpirun_cmd
    from tests.conftest import REPO, need_mpirun
    limit = "" if file_kb is None else f"ulimit -f {file_kb}; "
    if rank0_only:
        limit = f'[ "${{OMPI_COMM_WORLD_RANK:-0}}" = 0 ] && {{ {limit}}}; '
    cmd = ["bash", "-c", limit + 'exec "$@"', "bash", sys.executable, "-m", "covidnetx.cli", *map(str, args)]
    if np_ > 1:
        need_mpirun()
        cmd = mpirun_cmd(np_) + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _one_error(r, message, most=1):
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert 1 <= r.stderr.count("error:") <= most, r.stderr


@pytest.mark.parametrize("np_", [1, 2])
def test_pack_when_the_disk_fills(tmp_path, np_):
    """Shards are built in memory and written by one call: a full disk is one error naming the shard, no
    shard is left half-written, and a rerun with space finishes (keeping what was complete)."""
    raw = _raw(tmp_path, GOOD)
    out = tmp_path / "out"
    r = _limited(["pack", "csv", raw, out, "--no-progress", "--encoding", "raw", "--size", "64"], np_=np_, file_kb=8)
    _one_error(r, "cannot write (File too large); nothing was replaced")
    assert "shards/" in r.stderr and (np_ == 1 or "rank " in r.stderr)
    assert not (out / "index.json").exists()
    assert not [p for p in out.rglob(".tmp*")]                  # (an empty shards/ is removed too)
    run_cli("pack", "csv", raw, out, "--no-progress", "--encoding", "raw", "--size", "64")
    assert run_cli("verify", out).returncode == 0


def test_pack_index_write_fails_on_rank_0_under_mpirun(tmp_path):
    """Only rank 0 writes the index: a full disk there ends both ranks with one message, and the dataset
    stays without an index (verify refuses it) until a rerun writes one."""
    raw = _raw(tmp_path, GOOD)
    out = tmp_path / "out"
    run_cli("pack", "csv", raw, out, "--no-progress")
    r = _limited(["pack", "csv", raw, out, "--no-progress"], np_=2, file_kb=0, rank0_only=True)
    _one_error(r, "index.json: cannot write (File too large)")
    assert "the dataset has no index until a rerun finishes" in r.stderr
    assert not (out / "index.json").exists()
    assert run_cli("verify", out, check=False).returncode != 0
    r = run_cli("pack", "csv", raw, out, "--no-progress", np_=2)
    assert "0 written, 2 kept" in r.stdout
    assert run_cli("verify", out).returncode == 0


@pytest.mark.parametrize("np_", [1, 2])
def test_training_when_rank_0_cannot_write_its_checkpoint(tmp_path, np_):
    """Only rank 0 writes checkpoints and results: a full disk there is one message naming the file and
    the rank, every rank ends within the timeout, nothing is recorded as done, and a rerun finishes."""
    data = tmp_path / "data"
    run_cli("pack", "csv", _raw(tmp_path, GOOD), data, "--no-progress", "--splits", "1,0,0")
    out = tmp_path / "runs"
    args = pretrain_args(data, out, steps=4, extra=["data.eval_split=", "bootstrap=0", "ckpt_every=2"])
    args += [] if np_ > 1 else ["backend=none"]
    r = _limited(args, np_=np_, file_kb=32, rank0_only=True)
    _one_error(r, f"{out}/pre/last.ckpt: cannot write (File too large)")
    assert np_ == 1 or "error: rank 0: " in r.stderr
    assert not (out / "pre" / "done.json").exists() and not (out / "results.jsonl").exists()
    assert not (out / "pre" / "last.ckpt").exists()
    r = _limited(args, np_=np_)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "pre" / "done.json").read_text())["steps"] == 4


def _damage_sample(shard, j):
    """Replace stored sample j of a png shard by bytes that are not an image (same length)."""
    import h5py
    with h5py.File(shard, "r+") as f:
        n = len(f["image"][j])
        f["image"][j] = np.frombuffer(b"\x89PNG" + b"\x00" * (n - 4), np.uint8)


@pytest.mark.parametrize("np_, loader, workers", [(1, "torch", 2), (1, "dali", 2), (2, "torch", 0)])
def test_a_sample_that_cannot_be_decoded(tmp_path, np_, loader, workers):
    """With checks off (data.verify=false) a damaged sample is named by shard and index, by either loader
    and from loader worker processes (which end with the run); under mpirun the rank that met it ends the
    job (the other waits in a collective) within the timeout."""
    data = tmp_path / "data"
    run_cli("pack", "csv", _raw(tmp_path, GOOD), data, "--no-progress", "--splits", "1,0,0", "--encoding", "png")
    shard = next((data / "shards").glob("train-*.h5"))
    _damage_sample(shard, 3)
    out = tmp_path / "runs"
    args = pretrain_args(data, out, steps=3, extra=["data.eval_split=", "bootstrap=0", "data.verify=false",
                                                    "optim.batch_size=6", f"data.loader={loader}", f"data.workers={workers}"])
    args += [] if np_ > 1 else ["backend=none"]
    r = _limited(args, np_=np_)
    # (each rank may meet the sample: then each may say so before the job ends)
    _one_error(r, f"{shard}: sample 3 of shard 0 (index 3 of {data}:train) cannot be read", most=np_)
    assert np_ == 1 or "error: rank " in r.stderr
    assert not (out / "pre" / "done.json").exists()
    r = _limited(args + ["data.verify=true", "run_name=checked"], np_=np_)
    assert r.returncode != 0 and "does not match its checksum" in r.stderr, r.stderr


def _mount_tmpfs(path, options):
    """A tmpfs at ``path`` (for a full or a read-only file system); skips where this process cannot mount."""
    import subprocess
    path.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"needs permission to mount a tmpfs here: {r.stderr.decode().strip()}")
    return lambda: subprocess.run(["umount", str(path)], check=True)


def test_pack_onto_a_file_system_that_fills(tmp_path):
    """A real ENOSPC, at several sizes (HDF5 writing to disk itself once crashed at some of them): either
    the pack finishes and verifies, or it is one error naming the shard, with nothing half-written."""
    raw = _raw(tmp_path, GOOD)
    failed = 0
    for kb in (12, 20, 28, 36):
        small = tmp_path / f"fs{kb}"
        undo = _mount_tmpfs(small, f"size={kb}k")
        try:
            out = small / "out"
            r = run_cli("pack", "csv", raw, out, "--no-progress", "--encoding", "raw", "--size", "48", check=False)
            if r.returncode == 0:
                assert run_cli("verify", out).returncode == 0
                continue
            failed += 1
            _one_error(r, "cannot write (No space left on device); nothing was replaced")
            assert r.returncode == 2 and not (out / "index.json").exists()
            assert not [p for p in out.rglob(".tmp*")]
        finally:
            undo()
    assert failed >= 1


def _read_only_folder(path):
    """A folder that cannot be written: a read-only tmpfs where this process may mount one (root ignores
    file modes), else mode 0555 (a user that is not root); skips where neither makes one."""
    if os.geteuid() != 0:
        path.mkdir()
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    return _mount_tmpfs(path, "ro,size=1m")           # root ignores file modes


def test_a_read_only_output_folder(tmp_path):
    ro = tmp_path / "ro"
    undo = _read_only_folder(ro)
    try:
        r = run_cli("pack", "csv", _raw(tmp_path, GOOD), ro / "data", "--no-progress", check=False)
        _one_error(r, f"output folder: cannot write in {ro / 'data'}")
        r = run_cli("pack", "csv", _raw(tmp_path, GOOD), ro, "--no-progress", check=False)
        _one_error(r, f"output folder: cannot write in {ro}")
        data = tmp_path / "data"
        run_cli("pack", "csv", _raw(tmp_path, GOOD), data, "--no-progress", "--splits", "1,0,0")
        r = run_cli(*pretrain_args(data, ro / "runs", steps=1, extra=["backend=none", "data.eval_split="]),
                    check=False)
        _one_error(r, f"config key 'out_dir': cannot write in {ro / 'runs'}")
        assert list(ro.iterdir()) == []
    finally:
        undo()


def test_training_refuses_bad_labels_truncated_shards_and_garbage_weights(tmp_path, capsys):
    """A label outside the classes (in a shard whose listed checksum was made to match: a packer bug or a
    hand-edited dataset), a truncated shard, and a file that is not a checkpoint given as init_from or
    resume: each one error naming the file, and no run is recorded."""
    import h5py
    from covidnetx.utils import atomic_write_json, sha256_file
    data = tmp_path / "data"
    run_cli("pack", "csv", _raw(tmp_path, GOOD), data, "--no-progress", "--splits", "1,0,0")
    shard = next((data / "shards").glob("train-*.h5"))
    pristine = shard.read_bytes()
    with h5py.File(shard, "r+") as f:
        f["label"][2] = 5
    index = load_index(data)
    entry = index["splits"]["train"]["shards"][0]
    entry["sha256"], entry["bytes"] = sha256_file(shard), shard.stat().st_size
    atomic_write_json(data / "index.json", index)
    out = tmp_path / "runs"
    common = ["backend=none", "data.eval_split=", "bootstrap=0"]
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint\n")
    cases = [
        ([], data, f"{shard}: sample 2 has label 5, outside the 2 classes of {data}:train"),
        ([f"model.init_from={garbage}", "run_name=g1"], None, f"weights file '{garbage}' is not readable"),
        ([f"resume={garbage}", "run_name=g2"], None, f"config key 'resume': checkpoint '{garbage}' is not readable"),
        (["run_name=t"], "truncate", f"{shard}: shard 0 of {data}:train does not match its checksum"),
    ]
    for extra, prepare, message in cases:
        if prepare is None:
            shard.write_bytes(pristine)
            entry["sha256"], entry["bytes"] = sha256_file(shard), shard.stat().st_size
            atomic_write_json(data / "index.json", index)
        elif prepare == "truncate":
            shard.write_bytes(pristine[: len(pristine) // 2])
        assert main(pretrain_args(data, out, steps=1, extra=common + extra)) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("error:") == 1, err
    assert not (out / "results.jsonl").exists() and not list(out.rglob("done.json"))
    # nor a run directory: fixing the path and running again is not refused as "a run of another config"
    assert not list(out.rglob("config.yaml")), list(out.rglob("*"))
