"""Hostile values (round two): metrics that cannot be statistics, impossible normalisation, over-long run
names and a reader that goes away. Each is one clear error (or, where asked, a counted omission)."""
import json
import re
import subprocess
import sys

import pytest

from covidnetx import config as C
from covidnetx.cli import main
from covidnetx.utils import UserError
from tests.conftest import REPO


def _csv(tmp_path, accs):
    p = tmp_path / "t.csv"
    p.write_text("width,acc\n" + "".join(f"{w},{a}\n" for w, a in zip([4, 6, 8, 11, 16, 32, 64], accs)))
    return p


@pytest.mark.parametrize("bad, line, why", [
    ("nan", 4, "nan is not finite"), ("inf", 5, "inf is not finite"), ("-0.3", 3, "-0.3 is outside [0, 1]"),
    ("1.7", 6, "1.7 is outside [0, 1]"), ("high", 2, "'high' is not a number"),
])
def test_fit_refuses_a_metric_that_cannot_be_a_statistic(tmp_path, capsys, bad, line, why):
    accs = ["0.5", "0.6", "0.65", "0.7", "0.72", "0.74", "0.75"]
    accs[line - 2] = bad
    t = _csv(tmp_path, accs)
    assert main(["fit", str(t), "--x", "width", "--metric", "acc", "--by", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"{t}:{line}: column 'acc': {why}" in err, err
    assert not (tmp_path / "fits").exists()
    # with the flag the row is left out and counted
    assert main(["fit", str(t), "--x", "width", "--metric", "acc", "--by", "", "--drop-invalid"]) == 0
    assert "1 row(s) with an invalid acc or width left out (--drop-invalid)" in capsys.readouterr().out


@pytest.mark.parametrize("bad, why", [("abc", "'abc' is not a number"), ("nan", "nan is not finite"),
                                      ("-inf", "-inf is not finite"), ("-3", "-3 is negative")])
def test_fit_refuses_an_x_that_cannot_be_one(tmp_path, capsys, bad, why):
    t = tmp_path / "t.csv"
    t.write_text("width,acc\n4,0.5\n6,0.6\n" + f"{bad},0.65\n" + "11,0.7\n16,0.72\n32,0.74\n64,0.75\n")
    assert main(["fit", str(t), "--x", "width", "--metric", "acc", "--by", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"{t}:4: column 'width': {why}" in err, err
    assert main(["fit", str(t), "--x", "width", "--metric", "acc", "--by", "", "--drop-invalid"]) == 0
    assert "1 row(s) with an invalid acc or width left out" in capsys.readouterr().out


def test_the_x_checked_is_the_column_the_fit_reads(tmp_path, capsys):
    """In a plain table, --x data is the column named data (the derived axes are for covidnetx rows):
    a junk column the fit never reads is not checked; an integer beyond a float is one error."""
    t = tmp_path / "t.csv"
    t.write_text("data,train_size,acc\n" + "".join(f"{d},n/a,{a}\n" for d, a in
                                                    zip([10, 30, 100, 300, 1000], [0.5, 0.6, 0.65, 0.7, 0.72])))
    assert main(["fit", str(t), "--x", "data", "--metric", "acc", "--by", ""]) == 0, capsys.readouterr().err
    big = tmp_path / "big.jsonl"
    big.write_text("".join(f'{{"size": {s}, "acc": 0.5}}\n' for s in (10, 30, 100, "1" + "0" * 400)))
    assert main(["fit", str(big), "--x", "size", "--metric", "acc", "--by", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"{big}:4: column 'size': 100000000000...(401 digits) is not finite" in err, err


def test_an_error_metric_may_exceed_one_but_not_go_below_zero(tmp_path, capsys):
    t = _csv(tmp_path, ["2.5", "2.0", "1.7", "1.5", "1.4", "1.35", "1.3"])      # losses
    assert main(["fit", str(t), "--x", "width", "--metric", "acc", "--error", "--by", ""]) == 0
    t = _csv(tmp_path, ["2.5", "2.0", "-1.7", "1.5", "1.4", "1.35", "1.3"])
    assert main(["fit", str(t), "--x", "width", "--metric", "acc", "--error", "--by", ""]) == 2
    assert f"{t}:4: column 'acc': -1.7 is below 0" in capsys.readouterr().err


def test_csv_errors_name_the_physical_line_where_the_row_starts(tmp_path, capsys):
    p = tmp_path / "t.csv"
    p.write_text('width,acc,note\n4,0.5,"two\nlines"\n6,0.6\n')
    assert main(["fit", str(p), "--x", "width", "--metric", "acc", "--by", ""]) == 2
    assert f"{p}:4: 2 fields, the header has 3" in capsys.readouterr().err


def test_report_refuses_nan_rows_and_counts_them_when_asked(tmp_path, capsys):
    from tests.test_report import study       # covidnetx result rows of a small study
    res = tmp_path / "results.jsonl"
    rows = [r.as_dict() for r in study({"natural": [0.0, 0.1, -0.1], "xray": [0.08, -0.05, 0.02]})]
    rows[1]["balanced_accuracy"] = float("nan")
    res.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(res), "--metric", "balanced_accuracy"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"{res}:2: column 'balanced_accuracy': nan is not finite" in err
    assert main(["report", str(res), "--metric", "balanced_accuracy", "--drop-invalid"]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "1 row(s) with a balanced_accuracy that is not finite or outside [0, 1] left out" in md
    assert "nan" not in md.split("## Headline")[1]


@pytest.mark.parametrize("key, value, n", [("data.mean", "[0.1,0.9]", 2), ("data.std", "[0.2,0.2,0.2,0.2]", 4)])
def test_normalisation_needs_one_or_three_values(key, value, n):
    with pytest.raises(UserError, match=rf"config key '{key}': .* has {n} values; give 1 \(every channel\) or 3"):
        C.load_config(None, [f"{key}={value}"])


def test_one_normalisation_value_serves_every_channel():
    from covidnetx.data.transforms import Preprocess
    cfg = C.load_config(None, ["data.mean=[0.4]", "data.std=[0.2]"])
    pp = Preprocess.from_config(cfg.data)
    assert pp.mean == (0.4, 0.4, 0.4) and pp.std == (0.2, 0.2, 0.2)


def test_an_over_long_run_name_is_refused_up_front():
    with pytest.raises(UserError, match=r"config key 'run_name': 300 bytes long; at most 200"):
        C.load_config(None, ["run_name=" + "r" * 300])
    assert C.load_config(None, ["run_name=" + "r" * 200]).run_name == "r" * 200


def test_a_reader_that_goes_away_ends_the_output_quietly(tmp_path):
    # more output than a pipe buffer, read one line, close: no traceback
    code = ("import sys; from covidnetx.cli import main; sys.exit(main(['pretrain', '--keys']))")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) in (0, 141) and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_typo_label_is_warned_about_with_the_nearest_label(tmp_path):
    from tests.test_hostile import _raw
    lines = ["path,label,patient_id"] + [f"img{i}.png,{'normal' if i % 2 else 'pneumonia'},p{i}" for i in range(11)] \
        + ["img11.png,pnuemonia,p11"]
    raw = _raw(tmp_path, lines, n=12)
    from tests.conftest import run_cli
    r = run_cli("pack", "csv", raw, tmp_path / "out", "--no-progress", check=False)
    assert r.returncode == 0
    assert ("covidnetx pack: warning: class 'pnuemonia' has only 1 image(s) (a typo of 'pneumonia'?); "
            "--classes A,B,... makes any other label an error") in r.stderr
    assert "'normal'" not in r.stderr
    r = run_cli("pack", "csv", raw, tmp_path / "out2", "--no-progress", "--classes", "normal,pneumonia", check=False)
    assert r.returncode == 2 and "pnuemonia" in r.stderr and "warning" not in r.stderr


def test_a_weights_path_that_is_not_a_file_is_named_for_what_it_is(tmp_path):
    import os
    from covidnetx.models.weights import read
    from covidnetx.rundir import load_checkpoint
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((tmp_path, "is a directory"), (fifo, "is a FIFO (named pipe)"), ("/dev/zero", "is a device"),
                       (tmp_path / "nope.ckpt", "not found")):
        for reader in (read, load_checkpoint):
            with pytest.raises(UserError, match=re.escape(kind)):
                reader(str(path))


def test_an_image_replaced_with_its_size_and_mtime_kept_is_repacked(tmp_path):
    import os
    import numpy as np
    from tests.conftest import run_cli, write_png
    from tests.test_hostile import GOOD, _raw
    raw = _raw(tmp_path, GOOD)
    img = raw / "img0.png"
    write_png(img, np.full((8, 8), 7, dtype=np.uint8))
    out = tmp_path / "out"
    run_cli("pack", "csv", raw, out, "--no-progress", "--splits", "1,0,0")
    st, before = os.stat(img), img.read_bytes()
    write_png(img, np.full((8, 8), 9, dtype=np.uint8))            # another image of the same size
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))             # as cp -p, rsync -t or tar leave it
    assert img.read_bytes() != before and os.stat(img).st_size == st.st_size
    assert os.stat(img).st_mtime_ns == st.st_mtime_ns
    r = run_cli("pack", "csv", raw, out, "--no-progress", "--splits", "1,0,0")
    assert "[1 written, 0 kept" in r.stdout, r.stdout
    r = run_cli("pack", "csv", raw, out, "--no-progress", "--splits", "1,0,0")
    assert "[0 written, 1 kept" in r.stdout, r.stdout                # unchanged: kept


def test_a_second_pack_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    from data_tools.pack import LOCK_NAME, lock_out, unlock_out
    out = tmp_path / "out"
    held = lock_out(out)
    with pytest.raises(UserError, match=r"another covidnetx pack is writing this folder \(pid \d+ on "):
        lock_out(out)
    unlock_out(held)                               # the first pack ends: the folder is free again, no file left
    assert not (out / LOCK_NAME).exists()
    unlock_out(lock_out(out))
    held = lock_out(out)
    held.close()                                   # a killed pack: the kernel releases the lock, the file stays
    unlock_out(lock_out(out))


def test_a_pack_csv_row_with_a_quoted_newline_is_named_by_its_first_line(tmp_path):
    from tests.conftest import run_cli
    from tests.test_hostile import GOOD, _raw
    lines = GOOD[:3] + ['img2.png,"a\nb",p2,PA'] + GOOD[4:]        # starts on line 4, one field short
    raw = _raw(tmp_path, lines)
    r = run_cli("pack", "csv", raw, tmp_path / "out", "--no-progress", check=False)
    assert r.returncode == 2 and "labels.csv:4: malformed row: 4 fields" in r.stderr, r.stderr


def test_a_failed_pack_leaves_no_empty_folders(tmp_path):
    from tests.conftest import run_cli
    from tests.test_hostile import GOOD, _raw
    raw = _raw(tmp_path, GOOD)
    (raw / "img1.png").write_bytes(b"not an image")          # found while the one shard is written
    for out in (tmp_path / "new", tmp_path / "mine"):
        if out.name == "mine":
            out.mkdir()                       # a folder the user made stays, empty as it was
        r = run_cli("pack", "csv", raw, out, "--no-progress", "--splits", "1,0,0", check=False)
        assert r.returncode == 2 and "img1.png: cannot read image" in r.stderr, r.stderr
        assert (sorted(out.iterdir()) if out.exists() else None) == ([] if out.name == "mine" else None)


def test_an_impossible_value_in_a_sweep_section_names_the_file_and_section(tmp_path, capsys):
    import yaml
    from covidnetx.cli import main
    base = {"sources": {"a": {"data": [str(tmp_path)], "domain": "xray"}},
            "target": {"data": [str(tmp_path)], "domain": "xray"}, "models": ["resnet_w8"], "seeds": [0],
            "fractions": [1.0], "out_dir": str(tmp_path / "o")}
    for where, patch, message in (
            ("base", {"base": {"optim": {"lr": "abc"}}},
             "sources.a (base + pretrain.config + sources.a.config): config key 'optim.lr': expected a number"),
            ("pretrain", {"pretrain": {"steps": [5], "config": {"optim": {"momentum": "7x"}}}},
             "sources.a (base + pretrain.config + sources.a.config): config key 'optim.momentum'"),
            ("source", {"sources": {"a": {**base["sources"]["a"], "config": {"data": {"hflip": "maybe"}}}}},
             "config key 'data.hflip': expected true/false"),
            ("transfer", {"transfer": {"config": {"optim": {"nosuch": 1}}}},
             "transfer (base + transfer.config): unknown config key 'optim.nosuch'")):
        sw = tmp_path / f"{where}.yaml"
        sw.write_text(yaml.safe_dump({**base, **patch}))
        assert main(["sweep", str(sw), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and f"{sw}: " in err and message in err, err


def test_review_round_two_values(tmp_path, capsys):
    """Values a review found accepted, or ending in a traceback: each is now one error up front."""
    for override, message in (("seed=-5", "config key 'seed'"), ("seed=" + "9" * 30, "config key 'seed'"),
                              ("data.image_size=100000", "config key 'data.image_size'"),
                              ("data.mean=[.nan]", "config key 'data.mean'")):
        with pytest.raises(UserError, match=re.escape(message)):
            C.load_config(None, [override])
    with pytest.raises(UserError, match="merge keys"):
        from covidnetx.utils import read_yaml
        read_yaml("optim: {lr: 0.1}\n<<: {optim: {lr: 0.5}}\n", "f.yaml")
    t = _csv(tmp_path, ["0.5", "0.6", "0.65", "0.7", "0.72", "0.74", "0.75"])
    for argv, message in ((["--alpha", "5"], "--alpha 5.0: a test level is in (0, 1)"),
                          (["--predict", "abc"], "--predict 'abc': not a number"),
                          (["--out", str(t)], "exists and is not a folder")):
        assert main(["fit", str(t), "--x", "width", "--metric", "acc", "--by", "", *argv]) == 2
        assert message in capsys.readouterr().err
    dup = tmp_path / "dup.csv"
    dup.write_text("width,acc,acc\n4,0.5,0.6\n")
    assert main(["fit", str(dup), "--x", "width", "--metric", "acc", "--by", ""]) == 2
    assert "column 'acc' appears twice in the header" in capsys.readouterr().err
    big = tmp_path / "big.csv"
    big.write_text('width,acc\n4,"' + "x" * 200_000 + '"\n')
    assert main(["fit", str(big), "--x", "width", "--metric", "acc", "--by", ""]) == 2
    assert "malformed CSV" in capsys.readouterr().err


class NotWeights:
    pass


def test_an_empty_config_path_and_a_pickle_are_one_line_each(tmp_path, capsys):
    import torch
    with pytest.raises(UserError, match=r"--config '': give a config file"):
        C.load_config("")
    p = tmp_path / "evil.pth"
    torch.save({"x": NotWeights()}, p)              # a pickle of an object, not weights
    import warnings
    from covidnetx.rundir import load_checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # any warning on the way would fail here
        with pytest.raises(UserError, match="is not readable as a weights-only checkpoint"):
            load_checkpoint(p)
