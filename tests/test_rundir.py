"""covidnetx.rundir: the run directory's one owner (checkpoints, the results path, publishing a row,
claiming a directory for a config, resuming)."""
import json

import pytest
import torch

from covidnetx import config as C
from covidnetx.results import load_results
from covidnetx.rundir import (CHECKPOINT_KEYS, RunDir, checkpoint, is_checkpoint, read_checkpoint, results_path,
                              save_checkpoint)
from covidnetx.utils import UserError
from tests.train_helpers import make_row


class _Primary:
    is_primary = True


def test_one_builder_and_one_rule_for_a_covidnetx_checkpoint(tmp_path):
    ck = checkpoint(model={"w": torch.ones(2)}, class_names=("a", "b"), config="task: pretrain\n",
                    meta={"seed": 1}, step=7, samples_seen=70)
    assert set(CHECKPOINT_KEYS) <= set(ck) and is_checkpoint(ck)
    assert ck["class_names"] == ["a", "b"] and ck["optimizer"] is None and ck["scaler"] is None
    save_checkpoint(ck, tmp_path / "a.ckpt")
    back = read_checkpoint(tmp_path / "a.ckpt")
    assert back["step"] == 7 and torch.equal(back["model"]["w"], torch.ones(2)) and back["meta"] == {"seed": 1}
    for missing in CHECKPOINT_KEYS:                 # every key is part of the rule, for resume and evaluate alike
        save_checkpoint({k: v for k, v in ck.items() if k != missing}, tmp_path / "b.ckpt")
        assert not is_checkpoint(torch.load(tmp_path / "b.ckpt", weights_only=True))
        with pytest.raises(UserError, match=rf"b.ckpt: not a covidnetx checkpoint \(lacks {missing}\); hint"):
            read_checkpoint(tmp_path / "b.ckpt", hint="hint")
    torch.save({"w": torch.ones(1)}, tmp_path / "plain.pt")     # plain weights: not a checkpoint either
    with pytest.raises(UserError, match="lacks model, step, class_names, config"):
        read_checkpoint(tmp_path / "plain.pt")


def test_resume_order_is_own_checkpoint_then_resume_then_scratch(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.resume_from("") == (None, "scratch")
    other = tmp_path / "other.ckpt"
    save_checkpoint(checkpoint(model={}, class_names=["a"], config="", meta={}, step=3), other)
    state, how = run.resume_from(str(other))
    assert state["step"] == 3 and how == f"resumed from {other}"
    run.path.mkdir()
    run.save(checkpoint(model={}, class_names=["a"], config="", meta={}, step=5), step=5, total_steps=9,
             samples_seen=50)
    state, how = run.resume_from(str(other))
    assert state["step"] == 5 and how == f"resumed from {run.ckpt}"
    assert run.progress()["step"] == 5 and run.state()[0] == "checkpointed"


def test_publish_appends_the_row_then_marks_a_final_row_done(tmp_path):
    cfg = C.load_config(None, [f"out_dir={tmp_path / 'runs'}"])
    assert results_path(cfg) == str(tmp_path / "runs" / "results.jsonl")
    assert results_path(C.copy_with(cfg, results=str(tmp_path / "t.jsonl"))) == str(tmp_path / "t.jsonl")
    run = RunDir(tmp_path / "runs" / "r")
    run.publish(make_row("r", final=False), results_path(cfg))
    assert not run.is_done() and run.result() is None           # an evaluation during the run: no done.json
    run.publish(make_row("r", final=True), results_path(cfg))
    assert run.is_done() and run.result().run_id == "r" and run.state()[0] == "done"
    assert [r.final for r in load_results(results_path(cfg))] == [False, True]
    assert json.loads((run.path / "done.json").read_text())["run_id"] == "r"


def test_a_run_directory_belongs_to_one_config(tmp_path, capsys):
    cfg = C.load_config(None, ["run_name=r", "optim.lr=0.1"])
    run = RunDir(tmp_path / "r")
    run.claim(cfg, _Primary())                                 # nothing there yet
    run.write_config(C.dump(cfg))
    run.claim(cfg, _Primary())                                 # the same config: resumed or skipped
    run.claim(C.copy_with(cfg, log_every=3), _Primary())       # keys that change nothing may differ
    other = C.load_config(None, ["run_name=r", "optim.lr=0.2"])
    with pytest.raises(UserError, match=r"holds a run of another config \(optim.lr: 0.1 -> 0.2\)"):
        run.claim(other, _Primary())
    run.claim(other, _Primary(), force=True)
    assert not run.path.exists() and "--force: removed the earlier run" in capsys.readouterr().out
    run.write_config("{not yaml: [")
    with pytest.raises(UserError, match="its config.yaml is not readable"):
        run.claim(cfg, _Primary())


def test_a_resumed_run_must_resolve_to_the_schedule_it_started_with(tmp_path):
    from covidnetx.train.schedule import resolve_run
    cfg = C.load_config(overrides=["task=transfer", "optim.epochs=2"])
    rd = RunDir(tmp_path / "run")
    rd.write_config(C.dump(resolve_run(cfg, 265, 1)[0]))
    rd.check_resolved(resolve_run(cfg, 265, 1)[0])
    with pytest.raises(UserError, match=r"run directory .*run was started with another resolved schedule "
                                        r"\(optim.steps: 17 -> 9; optim.warmup_steps: 3 -> 1\)"):
        rd.check_resolved(resolve_run(cfg, 265, 2)[0])
    rd.write_config(C.dump(cfg))          # a config saved before schedules were resolved: its unset keys match
    rd.check_resolved(resolve_run(cfg, 265, 2)[0])
