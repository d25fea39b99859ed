"""Hostile YAML (round two): every YAML covidnetx reads from a user (run configs, sweep files, --config
presets, key=value overrides) refuses aliases (no expansion bombs) and duplicate keys (no silent last-wins),
each as one error naming the file (or override) and line, in well under a second."""
import time

import pytest

from covidnetx import config as C
from covidnetx.cli import main
from covidnetx.utils import UserError, dump_yaml, read_yaml

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def test_an_alias_bomb_is_refused_at_once():
    t = time.perf_counter()
    with pytest.raises(UserError, match=r"^f\.yaml:2: aliases \(\*a\) are not accepted"):
        read_yaml(BOMB, "f.yaml")
    assert time.perf_counter() - t < 1.0


@pytest.mark.parametrize("text, line, key", [
    ("seeds: [0]\nmodels: [m]\nseeds: [1]\n", 3, "'seeds'"),
    ("data:\n  rename:\n    a: b\n    a: c\n", 4, "'a'"),
    ("optim: {lr: 0.1, lr: 0.2}\n", 1, "'lr'"),
])
def test_duplicate_keys_are_refused_with_both_lines(text, line, key):
    with pytest.raises(UserError, match=rf"^f\.yaml:{line}: duplicate key {key} \(first on line \d\)"):
        read_yaml(text, "f.yaml")


def test_every_reader_refuses(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task: pretrain\ntask: transfer\n")
    with pytest.raises(UserError, match=rf"^{cfg}:2: duplicate key 'task'"):
        C.load_config(str(cfg))
    with pytest.raises(UserError, match=r"^override 'data.rename=\*a':1: aliases"):
        C.load_config(None, ["data.rename=*a"])
    sweep = tmp_path / "s.yaml"
    sweep.write_text("models: [resnet_w4]\ndata:\n  rename: " + BOMB.splitlines()[1].split(": ", 1)[1] + "\n")
    assert main(["sweep", str(sweep), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"{sweep}:3: aliases (*a) are not accepted" in err
    sweep.write_text("models: [a]\nseeds: [0]\nseeds: [1]\n")
    assert main(["sweep", str(sweep), "--dry-run"]) == 2
    assert f"{sweep}:3: duplicate key 'seeds' (first on line 2)" in capsys.readouterr().err
    assert main(["pretrain", "--config", str(cfg)]) == 2
    assert f"{cfg}:2: duplicate key 'task'" in capsys.readouterr().err


def test_what_covidnetx_writes_it_reads_back():
    shared = {"pneumonia": "abnormal"}
    doc = {"a": {"rename": shared}, "b": {"rename": shared}}       # one object used twice
    text = dump_yaml(doc)
    assert "&" not in text and "*" not in text
    assert read_yaml(text, "x") == doc
    cfg = C.load_config(None, ["data.rename={p: a}"])
    assert read_yaml(C.dump(cfg), "x")["data"]["rename"] == {"p": "a"}


def test_job_script_values_cannot_inject_lines_or_shell(tmp_path, capsys):
    import yaml
    for over, message in (({"name": "x\ntouch PWNED"}, "contains a control character"),
                          ({"slurm": {"time": "01:00:00\n#SBATCH --wrap=id"}}, "contains a control character"),
                          ({"out_dir": str(tmp_path / "o$(id)x")}, "contains '$'")):
        sw = {"models": ["resnet_w4"], "sources": {"s": {"data": [str(tmp_path)]}}, "target": {"data": [str(tmp_path)]},
              "out_dir": str(tmp_path / "study"), **over}
        p = tmp_path / "s.yaml"
        p.write_text(yaml.safe_dump(sw))
        assert main(["sweep", str(p), "--executor", "slurm", "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and message in err, err


def test_non_utf8_and_huge_numbers_in_yaml_are_one_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"seed: 1\noptim: {lr: \xff}\n")
    with pytest.raises(UserError, match=r"c\.yaml:2: not UTF-8 text \(byte 0xff at column 13\)"):
        C.load_config(str(p))
    with pytest.raises(UserError, match="unreadable value"):
        C.load_config(None, ["seed=" + "9" * 5000])
    with pytest.raises(UserError, match="is a directory"):
        C.load_config(str(tmp_path))


def test_a_sweep_that_repeats_a_value_or_asks_absurd_ranks_is_refused(tmp_path, capsys):
    import yaml
    for over, message in (({"seeds": [0, 0]}, "sweep key 'seeds': [0, 0] repeats a value"),
                          ({"models": ["resnet_w4", "resnet_w4"]}, "sweep key 'models'"),
                          ({"np": 10 ** 25}, "sweep key 'np'")):
        sw = {"models": ["resnet_w4"], "sources": {"s": {"data": [str(tmp_path)]}}, "target": {"data": [str(tmp_path)]},
              "out_dir": str(tmp_path / "study"), **over}
        p = tmp_path / "s.yaml"
        p.write_text(yaml.safe_dump(sw))
        assert main(["sweep", str(p), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and message in err, err
