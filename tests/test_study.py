"""covidnetx.study's steps that decide what the report says of the study (the whole study runs in
test_cli.py and test_planted.py)."""
import json

from covidnetx.study import PRESETS, copy_report, run_ids, study_command, study_info


def test_the_command_printed_is_the_one_typed_or_the_preset():
    assert study_command(["covidnetx", "study", "--preset", "real", "--report-to", "docs/a b"], "real") == \
        "covidnetx study --preset real --report-to 'docs/a b'"
    assert study_command(["pytest", "-q"], "demo") == "covidnetx study --preset demo"


def test_run_ids_list_pretraining_then_every_transfer_stage():
    pre = [("p0", "cfg"), ("p1", "cfg")]
    tr = [("stage", "cfg", ["t0", "t1"]), ("stage2", "cfg", ["t2"])]
    assert run_ids(pre, tr) == ["p0", "p1", "t0", "t1", "t2"]


def _info(done_before, seconds, note=""):
    return {"command": "c", "preset": "p", "seconds": seconds, "done_before": done_before, "note": note,
            "baseline": "", "runs": {"pretrain": 2, "transfer": 3}, "credits": "cr", "caveats": "cv"}


def test_a_rerun_that_ran_nothing_keeps_the_record_of_the_run_that_did_the_work(tmp_path):
    stamp = tmp_path / "study.json"
    first = study_info(stamp, _info(0, 2200))
    assert first["seconds"] == 2200                         # no record yet: this invocation's
    stamp.write_text(json.dumps(first))
    again = study_info(stamp, _info(5, 3, note="k=100 left out"))
    assert again["seconds"] == 2200 and again["done_before"] == 0 and again["note"] == "k=100 left out"
    partly = study_info(stamp, _info(4, 300))              # a resumed study that ran one run: says so
    assert partly["seconds"] == 300 and partly["done_before"] == 4


def test_copy_report_takes_the_documents_and_figures_only(tmp_path):
    rep = tmp_path / "report"
    rep.mkdir()
    for name in ("report.md", "a.png", "a.pdf", "fits.csv", "fits.json", "scratch.tmp"):
        (rep / name).write_text(name)
    got = copy_report(rep, tmp_path / "docs" / "out")
    assert sorted(p.name for p in got) == ["a.png", "fits.csv", "fits.json", "report.md"]
    assert (tmp_path / "docs" / "out" / "report.md").read_text() == "report.md"


def test_the_real_preset_weighs_classes_only_on_xray_sources():
    real = PRESETS["real"]
    assert real["xray_config"]["class_weights"] == "balanced"
    assert all("class_weights" not in p.get("xray_config", {}) for k, p in PRESETS.items() if k != "real")
    assert "Caveats:" in real["caveats"]
