"""Long phases say where they are: rank 0 prints a plain progress line (step / total, loss, img/s, ETA)
at the log steps, at most every ``progress_s`` seconds, readable in a Slurm output file."""
from covidnetx.cli import main
from covidnetx.utils import Progress
from tests.train_helpers import pretrain_args


def test_the_line_has_step_loss_speed_and_eta():
    p = Progress("run", total=100, batch=32, every_s=30.0, start=0)
    line = p.line(25, 0.41234, p.t0 + 10.0)          # 25 steps x 32 images in 10 s: 80 img/s
    assert line == "[run] step 25/100 (25%) loss 0.4123, 80 img/s, ETA 0m30s"
    resumed = Progress("run", total=100, batch=32, every_s=30.0, start=50)     # a resumed run counts from 50
    assert resumed.line(60, 0.3, resumed.t0 + 4.0) == "[run] step 60/100 (60%) loss 0.3000, 80 img/s, ETA 0m16s"


def test_a_training_run_prints_progress_lines_at_its_log_steps(packed, tmp_path, capsys):
    args = pretrain_args(packed / "nat", tmp_path, steps=12, extra=["backend=none", "data.eval_split=",
                                                                       "log_every=4", "progress_s=0"])
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if "] step " in l]
    assert [l.split("] step ")[1].split(" ")[0] for l in lines] == ["4/12", "8/12", "12/12"], out
    assert "\r" not in out and all(" img/s, ETA " in l and " loss " in l for l in lines)
    assert main(pretrain_args(packed / "nat", tmp_path / "quiet", steps=12,
                              extra=["backend=none", "data.eval_split=", "log_every=4"])) == 0
    assert "] step " not in capsys.readouterr().out            # default: at most one line per 30 s


def test_transfer_defaults_follow_the_protocol(packed, tmp_path, capsys):
    """The shortest command runs in each regime: select on val, score on test (read once)."""
    from covidnetx.results import load_results
    from covidnetx import config as C
    assert C.load_config(None, ["task=transfer"]).data.eval_split == "test"
    assert C.load_config(None, ["task=pretrain"]).data.eval_split == "val"
    assert C.load_config(None, ["task=transfer", "data.eval_split="]).data.eval_split == ""
    for regime in ("linear", "fewshot", "full"):
        extra = ["shots=[2]", "seeds=[0]"] if regime == "fewshot" else (["optim.steps=4", "progress_s=0"]
                                                                         if regime == "full" else [])
        assert main(["transfer", f"data.sources=[{packed / 'cxr'}]", f"regime={regime}", f"out_dir={tmp_path}",
                     "model.name=resnet_w4", "backend=none", *extra]) == 0, capsys.readouterr().err
        if regime == "full":           # evaluation says where it is too
            out = capsys.readouterr().out
            assert "[evaluate test] batch 1/" in out, out
    rows = [r for r in load_results(tmp_path / "results.jsonl") if r.final]
    assert sorted(r.regime for r in rows) == ["fewshot", "full", "linear"]
    assert {r.eval_split for r in rows} == {"test"}
