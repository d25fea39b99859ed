"""Single-process training (backend none): artifacts, errors, resume equality."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from covidnetx.cli import main
from covidnetx.results import ResultRow, load_results
from tests.conftest import REPO, run_cli
from tests.train_helpers import loss_falls, pretrain_args, scalars, transfer_args


def test_pretrain_then_transfer_single_process(packed, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(pretrain_args(packed / "nat", out, steps=80, extra=["backend=none"])) == 0
    run = out / "pre"
    first, last = loss_falls(run)
    assert last < first - 0.1, (first, last)      # 80 steps: falls by 0.22-0.32 over seeds 0-3; 40 was marginal
    assert {"train/lr", "train/img_per_s", "eval/accuracy", "eval/auc"} <= {
        t for t in ("train/lr", "train/img_per_s", "eval/accuracy", "eval/auc") if scalars(run, t)}
    for f in ("config.yaml", "last.ckpt", "done.json"):
        assert (run / f).is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())["optim"]     # the schedule as it ran, no "unset"
    assert (saved["steps"], saved["epochs"], saved["warmup_steps"], saved["mixup"]) == (80, 0.0, 2, 0.0)
    assert saved["decay_at"] == [0.4, 0.6, 0.8]
    ck = torch.load(run / "last.ckpt", weights_only=False)
    assert ck["step"] == 80 and "resnet_w4" in ck["config"] and len(ck["class_names"]) == 10
    prog = json.loads((run / "progress.json").read_text())           # progress without loading the checkpoint
    assert prog["step"] == 80 and prog["total_steps"] == 80 and prog["samples_seen"] == ck["samples_seen"]
    rows = load_results(out / "results.jsonl")
    assert len(rows) == 1 and isinstance(rows[0], ResultRow)
    r = rows[0]
    assert r["task"] == "pretrain" and r["world_size"] == 1 and r["steps"] == 80 and r["samples_seen"] == 1280
    assert r["n"] == 400 and 0.1 < r["accuracy"] <= 1 and r["ranks_in_sync"] is True
    assert r["flops"] == 3 * r["flops_per_sample_fwd"] * 1280 and r["img_per_s"] > 0
    assert r["accuracy_ci_lo"] <= r["accuracy"] <= r["accuracy_ci_hi"]
    # a rerun of the finished run does nothing
    assert main(pretrain_args(packed / "nat", out, steps=80, extra=["backend=none"])) == 0
    assert "already done" in capsys.readouterr().out and len(load_results(out / "results.jsonl")) == 1
    # linear probe from it: only the head trains
    assert main(transfer_args(packed / "cxr", out, run / "last.ckpt", "linear", extra=["backend=none"])) == 0
    row = load_results(out / "results.jsonl")[-1]
    assert row["regime"] == "linear" and row["trainable_params"] == 3 * 32 + 3     # head of resnet_w4: 32 features
    assert row["source"] == "nat" and row["target"] == "cxr"
    assert row["pretrain_steps"] == 80 and row["n"] == 40


def test_nonfinite_loss_names_the_step(packed, tmp_path, capsys):
    code = main(pretrain_args(packed / "nat", tmp_path, steps=30, extra=["backend=none", "optim.lr=1e30",
                                                                          "optim.warmup_steps=0"]))
    assert code == 3
    assert "non-finite loss" in capsys.readouterr().err


@pytest.mark.parametrize("bad_call", [6, 7])
def test_nonfinite_loss_stops_before_the_optimizer_applies_it(packed, tmp_path, capsys, monkeypatch, bad_call):
    """The loss reaches the host without a synchronisation between forward and backward and is checked
    after the step's backward passes: a NaN in either micro-batch of step 3 (accum 2: loss calls 6, 7) is
    named as step 3, and the optimizer has stepped exactly 3 times."""
    from covidnetx.dist import Dist
    from covidnetx.train.engine import Trainer
    calls, steps = [0], [0]
    real_loss, real_step = Trainer._loss, Dist.step

    def loss(self, logits, y):
        out = real_loss(self, logits, y)
        calls[0] += 1
        return out * float("nan") if calls[0] == bad_call + 1 else out

    def step(self, *args, **kw):
        steps[0] += 1
        return real_step(self, *args, **kw)
    monkeypatch.setattr(Trainer, "_loss", loss)
    monkeypatch.setattr(Dist, "step", step)
    code = main(pretrain_args(packed / "nat", tmp_path, steps=10, extra=["backend=none", "optim.accum_steps=2",
                                                                          "optim.batch_size=8"]))
    assert code == 3 and steps[0] == 3 and calls[0] == 8     # both micro-batches of step 3 ran, none of step 4
    assert "non-finite loss (nan) at step 3, rank 0" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["model.init_from=/nonexistent.ckpt"], "weights file '/nonexistent.ckpt' not found"),
    (["model.drop_head=false"], "checkpoint head has 10 classes, the task has 3"),
    (["regime=fewshot", "shots=[40]"], "class 'normal' has only"),
    (["data.sources=[/nonexistent]"], "'/nonexistent' is not a packed dataset"),
])
def test_transfer_config_errors(packed, tmp_path, capsys, extra, message):
    out = tmp_path / "runs"
    assert main(pretrain_args(packed / "nat", out, steps=2, extra=["backend=none", "data.eval_split="])) == 0
    capsys.readouterr()
    code = main(transfer_args(packed / "cxr", out, out / "pre" / "last.ckpt", "full", extra=["backend=none", *extra]))
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1


def test_evaluate_command_and_its_errors(packed, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(pretrain_args(packed / "nat", out, steps=2, extra=["backend=none"])) == 0
    row = load_results(out / "results.jsonl")[0]
    ck = out / "pre" / "last.ckpt"
    capsys.readouterr()
    assert main(["evaluate", str(ck), "backend=none", "--out", str(tmp_path / "m.json")]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    written = json.loads((tmp_path / "m.json").read_text())
    assert printed == written and written["n"] == row["n"] == 400 and written["step"] == 2
    assert written["accuracy"] == row["accuracy"] and written["split"] == "val"
    assert main(["evaluate", str(ck), "backend=none", "data.eval_split=test"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["n"] == 1000
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    for argv, message in [
        ([str(tmp_path / "none.ckpt")], "none.ckpt' not found"),
        ([str(tmp_path / "junk.ckpt")], "junk.ckpt' is not readable"),
        ([str(ck), "data.eval_split="], "'data.eval_split' is empty"),
        ([str(ck), f"data.sources=[{packed / 'cxr'}]", "data.eval_split=test"], "differ from the checkpoint's"),
        ([str(ck), "data.eval_split=nope"], "no split 'nope'"),
        ([str(ck), "optim.nonsense=1"], "nonsense"),
    ]:
        assert main(["evaluate", *argv, "backend=none"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("error:") == 1, err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []     # atomic --out


# The interrupted run signals itself at the start of step 20: a real SIGUSR1 through the real handler
# and exit path, at a step that does not depend on how fast this machine is (a signal sent from outside
# after a sleep can arrive after a 60-step run has finished).
SIGNAL_AT_STEP = """
import os, signal, sys
from covidnetx.train import engine
step = engine.Trainer._step
def signalling_step(self, s, *a, **k):
    if s == 20:
        os.kill(os.getpid(), signal.SIGUSR1)
    return step(self, s, *a, **k)
engine.Trainer._step = signalling_step
from covidnetx.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_sigusr1_gives_identical_weights(packed, tmp_path):
    # with MixUp, whose draws are keyed by step: the resumed run mixes as the uninterrupted one did
    args = pretrain_args(packed / "nat", tmp_path, steps=60, extra=["backend=none", "data.eval_split=", "optim.mixup=0.2"])
    cmd = [sys.executable, "-m", "covidnetx.cli", *args]
    ref = tmp_path / "ref"
    subprocess.run([*cmd, f"out_dir={ref}"], check=True, cwd=REPO, capture_output=True)
    p = subprocess.run([sys.executable, "-c", SIGNAL_AT_STEP, *args], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    run = tmp_path / "pre"
    err = p.stderr
    assert p.returncode == 75, err
    stopped = torch.load(run / "last.ckpt", weights_only=False)["step"]
    assert 0 < stopped < 60, stopped
    assert f"interrupted at step {stopped}" in err
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and f"resumed from {run / 'last.ckpt'}" in r.stdout
    a = torch.load(run / "last.ckpt", weights_only=False)
    b = torch.load(ref / "pre" / "last.ckpt", weights_only=False)
    assert a["step"] == b["step"] == 60
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_signal_between_runs_exits_75_before_the_next_run_and_resume_finishes(packed, tmp_path, monkeypatch, capsys):
    """A sweep stage runs several configs in one invocation. Slurm's warning may come while no run is
    training (start-up, evaluation, between runs): the handlers are held for the whole invocation, so the
    process is not killed by the signal; it exits 75 before the next run, and the rerun skips what is done."""
    from covidnetx import config as C
    from covidnetx.train import runner as tasks
    out = tmp_path / "runs"
    cfgs = [C.load_config(None, ["task=pretrain", *pretrain_args(packed / "nat", out, steps=3, name=n,
                                                                   extra=["backend=none", "data.eval_split="])[1:]])
            for n in ("a", "b")]
    real_run_one = tasks.run_one
    finished = []

    def run_one_then_signal(cfg, meta, subset, dist, force=False):
        r = real_run_one(cfg, meta, subset, dist, force)
        finished.append(cfg.run_name)
        os.kill(os.getpid(), signal.SIGUSR1)       # lands after run a is done, before run b starts
        return r
    monkeypatch.setattr(tasks, "run_one", run_one_then_signal)
    assert tasks.run_configs(cfgs, "runs") == 75
    assert finished == ["a"] and (out / "a" / "done.json").is_file() and not (out / "b").exists()
    assert "interrupted before run b started, exit 75" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL     # handlers restored after the invocation
    monkeypatch.setattr(tasks, "run_one", real_run_one)
    assert tasks.run_configs(cfgs, "runs") == 0
    assert "[a] already done; skipping" in capsys.readouterr().out
    assert json.loads((out / "b" / "done.json").read_text())["steps"] == 3


def test_mixup_mixes_pairs_reproducibly_and_changes_training(packed, tmp_path):
    from covidnetx.train.engine import mixup_batch
    x = torch.randn(8, 1, 4, 4)
    m, perm, lam = mixup_batch(x, 0.2, [0, 5, 0, 1])
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(8)) and perm.device == x.device
    assert torch.allclose(m, lam * x + (1 - lam) * x[perm])
    m2, perm2, lam2 = mixup_batch(x, 0.2, [0, 5, 0, 1])
    assert lam2 == lam and torch.equal(perm2, perm) and torch.equal(m2, m)        # keyed, not global state
    lams = {mixup_batch(x, 0.2, [0, 5, 0, r])[2] for r in range(4)}
    assert len(lams) == 4                                                          # ranks draw differently
    out = tmp_path / "runs"
    for name, alpha in (("plain", 0.0), ("mix", 0.4), ("mix2", 0.4)):
        assert main(pretrain_args(packed / "nat", out, steps=4, name=name,
                                  extra=["backend=none", "data.eval_split=", f"optim.mixup={alpha}"])) == 0
    w = {n: torch.load(out / n / "last.ckpt", weights_only=False)["model"] for n in ("plain", "mix", "mix2")}
    k = "backbone.stem.0.weight"
    assert not torch.equal(w["plain"][k], w["mix"][k]) and torch.equal(w["mix"][k], w["mix2"][k])
    rows = {r["run_id"]: r for r in load_results(out / "results.jsonl")}
    assert rows["mix"]["mixup"] == 0.4 and rows["plain"]["mixup"] == 0.0


def test_multilabel_pretrain_masks_uncertain_labels(tmp_path):
    """CheXpert-layout source (U-ignore: -1 and blank are NaN): masked BCE trains, metrics skip NaN."""
    from tests import raw_layouts as L
    base = L.make_chexpert(tmp_path / "raw")
    run_cli("pack", "chexpert", base, tmp_path / "cx", "--size", "32", "--ignore-official-splits",
            "--splits", "1,0,0", "--no-progress")
    out = tmp_path / "runs"
    code = main(["pretrain", f"data.sources=[{tmp_path / 'cx'}]", f"out_dir={out}", "run_name=ml", "backend=none",
                 "model.name=resnet_w4", "optim.steps=3", "optim.batch_size=2", "data.eval_split=train",
                 "bootstrap=5", "threads=1", "data.image_size=32", "optim.mixup=0.3"])   # soft multi-label targets
    assert code == 0
    row = load_results(out / "results.jsonl")[0]
    assert row["n"] == 4 and row["task"] == "pretrain"
    ck = torch.load(out / "ml" / "last.ckpt", weights_only=False)
    assert len(ck["class_names"]) == 14
    assert row["auc"] is None or 0.0 <= row["auc"] <= 1.0
    assert main(["pretrain", f"data.sources=[{tmp_path / 'cx'}]", f"out_dir={out}", "run_name=ml2", "backend=none",
                 "loss=ce", "optim.steps=1"]) == 2


def test_default_threads_follow_the_launchers_binding(monkeypatch):
    """threads=0: a bound rank (srun --cpus-per-task=8 on a 128-core node) uses its 8 CPUs; an unbound
    one (mpirun --bind-to none) splits the machine among the ranks of its node."""
    from covidnetx.dist import default_threads
    monkeypatch.setattr("os.cpu_count", lambda: 128)
    for v in ("OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE",
              "SLURM_NTASKS", "HOROVOD_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8, 16)))
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    assert default_threads() == 8
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(128)))
    assert default_threads() == 32
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2")
    assert default_threads() == 64
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_SIZE")
    assert default_threads() == 128                                # one process alone


def test_default_augmentation_keeps_32px_digits_learnable(tmp_path):
    """The pretrain_cpu preset on 32 px hand-written digits (scikit-learn's, upscaled), 200 steps, seeds 0-2
    (one run per seed and setting; single runs differ by several points, so the claims are over seeds with
    stated margins). The old default augmentation (crops down to half the area, flips, 15 degree rotation)
    costs about 35 points; the mild default (crops of 80-100% of the area, no flips, no rotation) must beat
    it by at least 12 points at every seed, stay within 15 points of no augmentation on average and reach
    65% at every seed (the margins to the measured values are in benchmarks/results/HISTORY.md)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    d = load_digits()
    raw = tmp_path / "raw"
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        arr = (img * (255 / 16)).astype("uint8")
        p = raw / str(y) / f"{i:04d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).resize((32, 32), Image.BILINEAR).save(p)
    run_cli("pack", "imagefolder", raw, tmp_path / "digits", "--splits", "0.7,0.3,0", "--no-progress")
    settings = {"mild": ["data.augment=true"], "none": ["data.augment=false"],
                "old": ["data.augment=true", "data.crop_scale=0.5", "data.hflip=true", "data.rotate_deg=15"]}
    acc = {}
    for seed in (0, 1, 2):
        for name, extra in settings.items():
            out = tmp_path / f"runs-{name}-{seed}"
            assert main(["pretrain", "--config", "pretrain_cpu", f"data.sources=[{tmp_path / 'digits'}]",
                         f"out_dir={out}", "run_name=d", "backend=none", "threads=1", "optim.steps=200",
                         f"seed={seed}", *extra]) == 0
            acc[name, seed] = load_results(out / "results.jsonl")[0]["accuracy"]
    seeds = (0, 1, 2)
    assert all(acc["mild", s] - acc["old", s] >= 0.12 for s in seeds), acc
    assert np.mean([acc["none", s] - acc["mild", s] for s in seeds]) <= 0.15, acc
    assert min(acc["mild", s] for s in seeds) >= 0.65, acc


class _Payload:
    """Unpickling this calls os.system: a checkpoint that runs code."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(packed, tmp_path, capsys):
    import torch
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"model": _Payload(marker)}, evil)
    out = tmp_path / "runs"
    cases = [
        ["evaluate", str(evil), "backend=none"],
        transfer_args(packed / "cxr", out, evil, "full", extra=["backend=none", "run_name=a"]),
        pretrain_args(packed / "nat", out, steps=2, name="b", extra=["backend=none", f"resume={evil}"]),
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "evil.ckpt' is not readable as a weights-only checkpoint" in err and err.count("error:") == 1, err
        assert not marker.exists(), argv
    assert not (out / "results.jsonl").exists()


def test_a_timm_model_pretrains_and_transfers_in_every_regime(packed, tmp_path, capsys):
    """timm:convnext_atto through the engine: pre-training, then full fine-tuning, the linear probe and
    few-shot from its checkpoint, and full fine-tuning from a timm-layout .safetensors file."""
    from safetensors.torch import save_file
    out = tmp_path / "runs"
    model = ["model.name=timm:convnext_atto", "optim.lr=0.01", "backend=none"]
    assert main(pretrain_args(packed / "nat", out, steps=4, extra=model)) == 0
    ck = out / "pre" / "last.ckpt"
    rows = load_results(out / "results.jsonl")
    assert rows[-1].model == "timm:convnext_atto" and rows[-1].params > 3_000_000 and rows[-1].flops > 0
    for regime, extra in (("full", []), ("linear", []), ("fewshot", ["shots=[2]"])):
        assert main(transfer_args(packed / "cxr", out, ck, regime, steps=3, extra=model + extra)) == 0, regime
    printed = capsys.readouterr().out
    assert f"initialised from {ck} (covidnetx checkpoint): " in printed and "left at init: head.weight, head.bias" in printed
    rows = load_results(out / "results.jsonl")
    assert [r.regime for r in rows] == ["pretrain", "full", "linear", "fewshot"]
    assert all(r.model == "timm:convnext_atto" and r.source == "nat" and r.n == 40 for r in rows[1:])
    assert rows[2].trainable_params == 3 * 320 + 3 and rows[3].shots == 2
    # a timm state dict as .safetensors (its classifier is not used)
    import timm
    src = timm.create_model("convnext_atto", pretrained=False, num_classes=11)
    st = tmp_path / "convnext_atto.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(st))
    assert main(transfer_args(packed / "cxr", out, st, "full", steps=2, extra=model + ["run_name=from-st"])) == 0
    printed = capsys.readouterr().out
    assert f"initialised from {st} (safetensors): " in printed and "not used: head.fc.bias, head.fc.weight" in printed, printed
    assert load_results(out / "results.jsonl")[-1].source == "unknown"


def test_balanced_class_weights_weigh_each_class_alike():
    from covidnetx.train.engine import balanced_class_weights
    from covidnetx.utils import UserError
    w = balanced_class_weights(np.array([0, 0, 0, 1, 2, 2]), ["a", "b", "c"])
    assert w.tolist() == pytest.approx([6 / 9, 6 / 3, 6 / 6])
    counts = np.array([3, 1, 2])
    assert float((w.numpy() * counts).sum()) == pytest.approx(6.0)      # the total weight stays n
    with pytest.raises(UserError, match="it has no 'b'"):
        balanced_class_weights(np.array([0, 2, 2]), ["a", "b", "c"])


def test_class_weights_change_the_loss_on_imbalanced_data_and_need_ce(packed, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(pretrain_args(packed / "nat", out, steps=2, extra=["backend=none", "data.eval_split="])) == 0
    first = {}
    for cw in ("none", "balanced"):
        assert main(transfer_args(packed / "cxr", out, out / "pre" / "last.ckpt", "full", steps=2,
                                  extra=["backend=none", f"class_weights={cw}", f"run_name=t-{cw}"])) == 0
        first[cw] = scalars(out / f"t-{cw}", "train/loss")[1]     # step 1's is ln 3 either way: a zero head
        cfg = yaml.safe_load((out / f"t-{cw}" / "config.yaml").read_text())
        assert cfg["class_weights"] == cw
    assert first["none"][0] == first["balanced"][0] == 2
    assert first["none"][1] != pytest.approx(first["balanced"][1], rel=1e-4)   # cxr-small is imbalanced
    capsys.readouterr()
    code = main(transfer_args(packed / "cxr", out, out / "pre" / "last.ckpt", "full",
                              extra=["backend=none", "class_weights=balanced", "loss=bce", "run_name=t-bce"]))
    assert code == 2 and "'class_weights': balanced needs the ce loss" in capsys.readouterr().err
    assert not (out / "t-bce").exists()
