import subprocess
import sys
from pathlib import Path

from covidnetx.cli import SUBCOMMANDS, main
from covidnetx.data.hdf5 import PackedDataset, load_index
from tests.conftest import REPO, need_mpirun


def test_help_lists_every_subcommand(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out
    exe = Path(sys.executable).with_name("covidnetx")
    r = subprocess.run([str(exe), "pack", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--encoding" in r.stdout and "--skip-bad" in r.stdout


def test_generated_data_is_deterministic(tmp_path):
    from data_tools.synth import generate
    from tests.conftest import tree_bytes
    a = generate(tmp_path / "a", per_class=3, target_per_class=3, seed=7)
    b = generate(tmp_path / "b", per_class=3, target_per_class=3, seed=7)
    assert tree_bytes(Path(a["xray-target"])) == tree_bytes(Path(b["xray-target"]))
    labels = (Path(a["xray-source"]) / "labels.csv").read_text().splitlines()
    assert labels[0] == "path,label,patient_id,view,source" and len(labels) == 1 + 4 * 3


def test_demo_end_to_end_with_two_ranks(tmp_path):
    need_mpirun()
    r = subprocess.run([sys.executable, "-m", "covidnetx.cli", "demo", "--out", str(tmp_path / "d"), "--np", "2"],
                       capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("OK: checksums, counts and patient-disjoint splits verified") == 3
    assert "2 rank(s)" in r.stdout
    packed = tmp_path / "d" / "packed"
    assert sorted(p.name for p in packed.iterdir()) == ["natural", "xray-source", "xray-target"]
    tgt = load_index(packed / "xray-target")
    assert tgt["class_names"] == ["COVID-19", "normal", "pneumonia"] and tgt["num_samples"] == 300
    assert load_index(packed / "natural")["channels"] == 3
    # merged label space of the two sources: 5 natural + 4 x-ray classes
    assert "classes ['cross', 'disc', 'ring', 'square', 'stripes', 'cardiomegaly', 'clear', 'effusion', 'nodule']" in r.stdout
    # a second run keeps everything (idempotent)
    r2 = subprocess.run([sys.executable, "-m", "covidnetx.cli", "demo", "--out", str(tmp_path / "d"), "--np", "2"],
                        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r2.returncode == 0 and "0 written" in r2.stdout and " 0 kept" not in r2.stdout
    assert len(PackedDataset(packed / "xray-target", "train")) == tgt["splits"]["train"]["count"]
