import copy
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
    assert sorted(p.name for p in packed.iterdir()) == ["natural", "target", "xray"]
    tgt = load_index(packed / "target")
    assert tgt["class_names"] == ["COVID-19", "normal", "pneumonia"] and tgt["num_samples"] == 1200
    assert tgt["splits"]["test"]["count"] >= 300                  # the study's target: >= 300 test images
    assert load_index(packed / "natural")["channels"] == 3
    # a second run keeps everything (idempotent)
    r2 = subprocess.run([sys.executable, "-m", "covidnetx.cli", "demo", "--out", str(tmp_path / "d"), "--np", "2",
                         "--pack-only"], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r2.returncode == 0 and "0 written" in r2.stdout and " 0 kept" not in r2.stdout
    assert len(PackedDataset(packed / "target", "train")) == tgt["splits"]["train"]["count"]


def _shrunk_real(preset: dict) -> dict:
    p = copy.deepcopy(preset)
    p["packs"] = {k: v for k, v in p["packs"].items() if k != "cifar10"}
    p["sources"] = {"natural": {"packs": ["natural-small"], "domain": "natural"},
                    "nih": p["sources"]["nih"],
                    "nih-small": {**p["sources"]["nih-small"], "sizes": [120], "models": ["resnet_w4"]}}
    p["xray_config"] = {k: v for k, v in p["xray_config"].items() if k != "optim"}   # the X-ray recipe, without its 400 steps
    p.update(models=["resnet_w4", "resnet_w6"], data_models=["resnet_w4"], sizes=[40, 120], seeds=[0, 1],
             shots=[1, 25], epochs=1, min_steps=0, transfer_steps=20, scratch=["resnet_w4"],
             baseline={"model": "resnet_w4", "size": 28, "epochs": 0.2, "seeds": "0"})
    return p


def _study(out, capsys):
    from covidnetx import study
    args = study.build_parser().parse_args(["--preset", "real", "--out", str(out), "--np", "2"])
    assert study.run(args) == 0
    return capsys.readouterr().out


def test_study_on_the_real_images_shrunk(tmp_path, monkeypatch, capsys, natural_small):
    """`covidnetx study --preset real` shrunk (natural-small, the NIH sets merged and alone -> kermany-small,
    three classes): pack, pre-train 2 widths and 2 sizes with 2 seeds (np=2), transfer in every regime, a
    scratch baseline, the MedMNIST baseline, fit, report. The report's cells follow the n-rules, hold the
    runs' numbers, and its fits refuse 2 points."""
    need_mpirun()
    from covidnetx import study
    from tests.conftest import shared
    for name in ("nih-small", "nih-pneumonia", "kermany-small"):
        shared(name)
    monkeypatch.setitem(study.PRESETS, "real", _shrunk_real(study.PRESETS["real"]))
    out = tmp_path / "s"
    stdout = _study(out, capsys)
    from covidnetx.results import load_results
    from covidnetx.scaling.cells import format_cell
    rows = [x for x in load_results(out / "study" / "results.jsonl") if x["final"]]
    assert sorted({x["regime"] for x in rows}) == ["fewshot", "full", "linear", "pretrain"]
    assert {x["source"] for x in rows} == {"natural", "nih", "nih-small", "scratch"}
    assert {x["n_classes"] for x in rows if x["task"] == "transfer"} == {3}          # normal, bacterial, viral
    assert {x["n"] for x in rows if x["task"] == "transfer" and x["regime"] != "fewshot"} == {624}   # official test
    nih = [x for x in rows if x["task"] == "pretrain" and x["source"] == "nih"]
    assert {x["n_classes"] for x in nih} == {3}                      # merged, labels kept: normal / abnormal / pneumonia
    assert {x["n_classes"] for x in rows if x["task"] == "pretrain" and x["source"] == "nih-small"} == {2}
    # full fine-tuning under the study's 2 ranks; probes (linear, few-shot) run as one process
    assert all(x["world_size"] == (2 if x["regime"] == "full" else 1) and x["target"] == "target"
               for x in rows if x["task"] == "transfer")
    pre = [x for x in rows if x["task"] == "pretrain"]
    assert len(pre) == 2 * 3 * 2 + 2 and {x["seed"] for x in pre} == {0, 1}   # L design x 2 sources, nih-small
    import yaml
    for f in (out / "study" / "configs").glob("pre-*.yaml"):      # the X-ray recipe only on X-ray sources
        c = yaml.safe_load(f.read_text())
        xray = c["source_domain"] == "xray"
        assert (c["class_weights"], c["data"]["rotate_deg"]) == (("balanced", 10.0) if xray else ("none", 0.0)), f.name
    report = (out / "study" / "report" / "report.md").read_text()
    assert report.startswith("# Transfer scaling study: real") and "Command: `covidnetx study" in report
    assert "Caveats: the NIH labels overlap" in report
    assert "## A published baseline beside covidnetx's" in report and "| MedMNIST v2: ResNet-18 (28) | 28 px | 0.944 | 0.854 |" in report
    assert "covidnetx: resnet_w4 from scratch, 0.2 epochs | 28 px |" in report
    table = report.split("## Transfer results")[1].split("\n## ")[0]
    header = [h.strip() for h in table.splitlines()[2].strip("|").split("|")]
    for src in ("natural", "nih"):
        cell = [x for x in rows if x["source"] == src and x["regime"] == "full" and x["model"] == "resnet_w4"
                and x["pretrain_train_size"] == max(y["pretrain_train_size"] for y in rows if y["source"] == src
                                                    and y["model"] == "resnet_w4" and y["task"] == "transfer")]
        assert len(cell) == 2 and {x["pretrain_seed"] for x in cell} == {0, 1}
        line = [l for l in table.splitlines() if l.startswith(f"| {src} | resnet_w4 |")][-1]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[header.index("full")] == format_cell(cell, "balanced_accuracy")
        assert "(n=2)" in cells[header.index("full")] or "collapsed" in cells[header.index("full")]
    assert "### Intra- minus inter-domain transfer (paired over checkpoints)" in report
    # the NIH set alone (120 images) pairs with the natural source at its matched size, not at its rank
    assert "(nih-small − natural) | 2 |" in report        # 2 seeds at 120 images; not the natural 40-image pairs
    assert "| params | " in report and "| ok |" not in report             # 2 widths: every fit refused
    for name in ("error-vs-params.png", "error-vs-data.pdf", "fewshot.png", "fits-params.csv", "domains.png"):
        assert (out / "study" / "report" / name).is_file(), name
    assert f"report: {out / 'study' / 'report' / 'report.md'}" in stdout
    # rows of runs the plan does not have (an earlier version of the study in the same table) never add to n
    import json
    stray = dict(cell[0], run_id="from-an-earlier-version-of-the-study", time=cell[0]["time"] + 1)
    with open(out / "study" / "results.jsonl", "a") as f:
        f.write(json.dumps(stray) + "\n")
    _study(out, capsys)
    again = (out / "study" / "report" / "report.md").read_text()
    assert "1 row(s) of runs outside this study's plan" in again
    assert again.split("## Transfer results")[1].split("\n## ")[0] == table
