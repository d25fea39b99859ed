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
    from covidnetx.bench import NAMES
    assert all(b in SUBCOMMANDS["bench"][1] for b in NAMES)          # every benchmark named in the help
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


def test_demo_packing_stage_with_two_ranks(tmp_path):
    need_mpirun()
    r = subprocess.run([sys.executable, "-m", "covidnetx.cli", "demo", "--out", str(tmp_path / "d"), "--np", "2",
                        "--pack-only"], capture_output=True, text=True, cwd=REPO, timeout=900)
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
    r2 = subprocess.run([sys.executable, "-m", "covidnetx.cli", "demo", "--out", str(tmp_path / "d"), "--np", "2",
                         "--pack-only"], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r2.returncode == 0 and "0 written" in r2.stdout and " 0 kept" not in r2.stdout
    assert len(PackedDataset(packed / "xray-target", "train")) == tgt["splits"]["train"]["count"]


def test_demo_study_on_the_real_images(tmp_path, natural_small, cxr_small):
    """`covidnetx demo --source natural-small --target cxr-small`, shrunk: pack, pre-train 2 sizes (np=2),
    transfer in all three regimes, fit, report; the report's table must hold the numbers of the runs."""
    need_mpirun()
    out = tmp_path / "d"
    r = subprocess.run([sys.executable, "-m", "covidnetx.cli", "demo", "--out", str(out), "--np", "2",
                        "--source", str(natural_small), "--target", str(cxr_small), "--models", "resnet_w4,resnet_w8",
                        "--fractions", "1.0", "--pretrain-steps", "8", "--transfer-steps", "4", "--shots", "1",
                        "--seeds", "0,1"], capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from covidnetx.results import load_results
    rows = [x for x in load_results(out / "study" / "results.jsonl") if x["final"]]
    assert sorted({x["regime"] for x in rows}) == ["fewshot", "full", "linear", "pretrain"]
    assert all(x["world_size"] == 2 and x["target"] == "target-cxr-small" for x in rows if x["task"] == "transfer")
    report = (out / "study" / "report" / "report.md").read_text()
    for x in rows:
        if x["regime"] in ("full", "linear"):
            line = [l for l in report.splitlines() if l.startswith(f"| {x['source']} | {x['model']} | 1 |")][0]
            cells = [c.strip() for c in line.strip("|").split("|")]
            header = [h.strip() for h in report.split("## Transfer results")[1].splitlines()[2].strip("|").split("|")]
            assert cells[header.index(x["regime"])] == f"{100 * x['accuracy']:.1f}"
    fs = [100 * x["accuracy"] for x in rows if x["regime"] == "fewshot" and x["model"] == "resnet_w8"]
    import numpy as np
    assert f"{np.mean(fs):.1f} ± {np.std(fs):.1f} (n=2)" in report
    for name in ("error-vs-params.png", "error-vs-data.pdf", "fewshot.png", "fits-compute.csv"):
        assert (out / "study" / "report" / name).is_file()
    assert f"report: {out / 'study' / 'report' / 'report.md'}" in r.stdout
