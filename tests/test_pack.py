import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidnetx.data.hdf5 import PackedDataset, load_index
from covidnetx.launch import mpirun_cmd
from data_tools.verify import verify
from tests.conftest import REPO, need_mpirun, run_cli, tree_bytes, write_png


# ---------------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------------
def test_pack_cxr_small_patient_disjoint_and_exact_pixels(cxr_small, tmp_path):
    out = tmp_path / "cxr"
    run_cli("pack", "csv", cxr_small, out, "--encoding", "raw", "--no-progress")
    idx = load_index(out)
    assert idx["num_samples"] == 265 and idx["channels"] == 1 and idx["image_size"] == [256, 256]
    assert sum(v["count"] for v in idx["splits"].values()) == 265
    r = run_cli("verify", out)
    assert "OK" in r.stdout and "patients per split" in r.stdout
    problems, counts, patients = verify(out)
    assert problems == []
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert sum(len(p) for p in patients.values()) == 146
    # every class reaches every split (stratified grouping), totals match labels.csv
    total = {c: sum(counts[s].get(c, {}).get("ieee8023-covid-chestxray", 0) for s in counts) for c in idx["class_names"]}
    assert total == {"COVID-19": 194, "normal": 12, "pneumonia": 59}
    for s in ("train", "val", "test"):
        assert set(counts[s]) == {"COVID-19", "normal", "pneumonia"}
    # decoded pixels round-trip exactly (raw encoding, no resize)
    ds = PackedDataset(out, "test")
    for i in range(len(ds)):
        with Image.open(cxr_small / ds.paths[i]) as im:
            assert np.array_equal(ds.read_image(i)[:, :, 0], np.asarray(im.convert("L")))


def test_pack_natural_small_official_split_rgb(natural_small, tmp_path):
    out = tmp_path / "nat"
    run_cli("pack", "csv", natural_small, out, "--no-progress", "--shard-size", "2000")
    idx = load_index(out)
    assert idx["channels"] == 3 and len(idx["class_names"]) == 10
    labels = [l.split(",") for l in (natural_small / "labels.csv").read_text().splitlines()[1:]]
    want = {s: sum(1 for l in labels if l[-1] == s) for s in ("train", "test")}
    assert {s: v["count"] for s, v in idx["splits"].items()} == want
    assert run_cli("verify", out).returncode == 0
    ds = PackedDataset(out, "train")
    assert ds.read_image(0).shape == (32, 32, 3)


# ---------------------------------------------------------------------------------------------------
# determinism across rank counts and after kill -9
# ---------------------------------------------------------------------------------------------------
def _pack_cmd(raw, out, np_=1, extra=()):
    cmd = [sys.executable, "-m", "covidnetx.cli", "pack", "csv", str(raw), str(out), "--name", "x",
           "--shard-size", "16", "--no-progress", *extra]
    return (mpirun_cmd(np_) if np_ > 1 else []) + cmd


def test_np1_and_np2_give_identical_files(synth_raw, tmp_path):
    need_mpirun()
    raw = synth_raw["xray-source"]
    for n in (1, 2):
        r = subprocess.run(_pack_cmd(raw, tmp_path / f"np{n}", n), capture_output=True, text=True, cwd=REPO,
                           timeout=300)
        assert r.returncode == 0, r.stderr
    assert "2 rank(s)" in r.stdout
    a, b = tree_bytes(tmp_path / "np1"), tree_bytes(tmp_path / "np2")
    counts = [v["count"] for v in load_index(tmp_path / "np1")["splits"].values()]
    assert sum(counts) == 160
    assert len([k for k in a if k.endswith(".h5")]) == sum(-(-c // 16) for c in counts) > 2
    assert a == b


def test_kill9_then_rerun_gives_identical_files(synth_raw, tmp_path):
    raw = synth_raw["xray-source"]
    ref = tmp_path / "ref"
    subprocess.run(_pack_cmd(raw, ref, extra=("--shard-size", "4")), check=True, cwd=REPO, capture_output=True)
    out = tmp_path / "out"
    p = subprocess.Popen(_pack_cmd(raw, out, extra=("--shard-size", "4")), cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "shards").glob("*.json"))) < 3:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    done_before = len(list((out / "shards").glob("*.json")))
    assert 3 <= done_before < 40, "the pack finished before it could be killed"
    assert not (out / "index.json").exists()       # incomplete: no index, so not a dataset
    with pytest.raises(Exception, match="no index.json"):
        PackedDataset(out)
    r = subprocess.run(_pack_cmd(raw, out, extra=("--shard-size", "4")), cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    kept = int(r.stdout.split(" kept from")[0].split()[-1])
    assert kept >= done_before - 1                  # finished shards were kept (checked by checksum)
    assert tree_bytes(out) == tree_bytes(ref)


def test_rerun_rewrites_a_tampered_shard(synth_raw, tmp_path):
    raw = synth_raw["xray-target"]
    out = tmp_path / "out"
    subprocess.run(_pack_cmd(raw, out), check=True, cwd=REPO, capture_output=True)
    ref = tree_bytes(out)
    victim = sorted((out / "shards").glob("*.h5"))[1]
    with open(victim, "r+b") as f:
        f.seek(-50, 2)
        f.write(b"\xff" * 10)
    problems, _, _ = verify(out)
    assert problems == [f"shards/{victim.name}: checksum mismatch (file changed or corrupt)"]
    assert run_cli("verify", out, check=False).returncode == 1
    r = subprocess.run(_pack_cmd(raw, out), cwd=REPO, capture_output=True, text=True)
    assert "1 written" in r.stdout
    assert tree_bytes(out) == ref


# ---------------------------------------------------------------------------------------------------
# verify catches leakage
# ---------------------------------------------------------------------------------------------------
def test_verify_names_a_patient_in_two_splits(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["path,label,patient_id,split"]
    for i in range(6):
        write_png(tmp_path / "raw" / f"{i}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
        split = "train" if i < 4 else "test"
        pid = "p-leak" if i in (0, 5) else f"p{i}"
        rows.append(f"{i}.png,{'ab'[i % 2]},{pid},{split}")
    (tmp_path / "raw" / "labels.csv").write_text("\n".join(rows) + "\n")
    run_cli("pack", "csv", tmp_path / "raw", tmp_path / "out", "--no-progress")
    r = run_cli("verify", tmp_path / "out", check=False)
    assert r.returncode == 1
    assert "patient p-leak appears in splits test and train" in r.stderr


# ---------------------------------------------------------------------------------------------------
# bad input: one clear error, non-zero exit, nothing that looks complete
# ---------------------------------------------------------------------------------------------------
def _csv_raw(tmp_path, n=8, rows_extra=()):
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    rows = ["path,label,patient_id"]
    for i in range(n):
        write_png(raw / f"img{i}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
        rows.append(f"img{i}.png,{'ab'[i % 2]},p{i}")
    rows += list(rows_extra)
    (raw / "labels.csv").write_text("\n".join(rows) + "\n")
    return raw


@pytest.mark.parametrize("np_", [1, 2])
def test_missing_image_names_row_and_file(tmp_path, np_):
    raw = _csv_raw(tmp_path, rows_extra=["gone.png,a,p99"])
    r = run_cli("pack", "csv", raw, tmp_path / "out", "--no-progress", "--shard-size", "2", np_=np_, check=False)
    assert r.returncode != 0
    assert "labels.csv:10:" in r.stderr and "gone.png: file not found" in r.stderr
    assert r.stderr.count("error:") == 1
    assert not (tmp_path / "out" / "index.json").exists()
    assert not list((tmp_path / "out" / "shards").glob(".tmp*"))


def test_corrupt_image_and_skip_bad(tmp_path):
    raw = _csv_raw(tmp_path, rows_extra=["broken.png,b,p50"])
    (raw / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    r = run_cli("pack", "csv", raw, tmp_path / "out", "--no-progress", check=False)
    assert r.returncode == 2 and "labels.csv:10:" in r.stderr and "cannot read image" in r.stderr
    assert not (tmp_path / "out" / "index.json").exists()
    r = run_cli("pack", "csv", raw, tmp_path / "out", "--no-progress", "--skip-bad")
    assert "skipped 1 unreadable image(s)" in r.stdout
    idx = load_index(tmp_path / "out")
    assert idx["num_samples"] == 8
    assert [s["path"] for s in idx["skipped"]] == ["broken.png"] and idx["skipped"][0]["row"].endswith(":10")
    assert run_cli("verify", tmp_path / "out").returncode == 0


def test_malformed_csv_row(tmp_path):
    raw = _csv_raw(tmp_path, rows_extra=["onlyonefield"])
    r = run_cli("pack", "csv", raw, tmp_path / "out", "--no-progress", check=False)
    assert r.returncode == 2
    assert "labels.csv:10: malformed row: 1 fields, the header has 3" in r.stderr


def test_unknown_label_and_empty_class(tmp_path):
    raw = _csv_raw(tmp_path)
    r = run_cli("pack", "csv", raw, tmp_path / "out", "--no-progress", "--classes", "a", check=False)
    assert r.returncode == 2 and "labels.csv:3: unknown label 'b' (known: a)" in r.stderr
    r = run_cli("pack", "csv", raw, tmp_path / "out", "--no-progress", "--classes", "a,b,c", check=False)
    assert r.returncode == 2 and "class 'c' has no images" in r.stderr
    assert not (tmp_path / "out" / "index.json").exists()


def test_raw_encoding_needs_one_size(tmp_path):
    raw = _csv_raw(tmp_path)
    write_png(raw / "img3.png", np.zeros((9, 8), np.uint8))
    r = run_cli("pack", "csv", raw, tmp_path / "out", "--no-progress", "--encoding", "raw", "--splits", "1,0,0",
                check=False)
    assert r.returncode == 2 and "pass --size" in r.stderr
    run_cli("pack", "csv", raw, tmp_path / "out", "--no-progress", "--encoding", "raw", "--size", "6")
    assert load_index(tmp_path / "out")["image_size"] == [6, 6]


def test_repack_with_other_options_leaves_no_stale_shards(synth_raw, tmp_path):
    raw = synth_raw["xray-target"]
    out = tmp_path / "out"
    subprocess.run(_pack_cmd(raw, out, extra=("--shard-size", "5")), check=True, cwd=REPO, capture_output=True)
    many = len(list((out / "shards").glob("*.h5")))
    subprocess.run(_pack_cmd(raw, out, extra=("--shard-size", "50")), check=True, cwd=REPO, capture_output=True)
    files = sorted(p.name for p in (out / "shards").iterdir())
    idx = load_index(out)
    listed = sorted(Path(s["file"]).name for v in idx["splits"].values() for s in v["shards"])
    assert many > len(listed)
    assert files == sorted(listed + [n[:-3] + ".json" for n in listed])
    assert verify(out)[0] == []
