"""Sweep expansion, stable run ids, rendered job scripts (golden files), and the local executor."""
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from covidnetx.slurm import render_chain
from covidnetx.sweep import expand, load_sweep, write_configs
from covidnetx.utils import UserError
from covidnetx.rundir import RunDir
from tests.train_helpers import make_row
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden"


def _sweep(tmp_path, **over):
    sw = {"name": "tiny", "out_dir": str(tmp_path / "study"), "np": 2,
          "base": {"threads": 1, "bootstrap": 10, "data": {"image_size": 32}, "optim": {"batch_size": 16, "base_batch": 16}},
          "sources": {"nat": {"data": ["/data/nat"], "domain": "natural"},
                      "mix": {"data": ["/data/nat", "/data/cxr-src"], "domain": "mixed", "label_space": "union"}},
          "target": {"data": ["/data/cxr"], "domain": "xray", "name": "cxr"},
          "models": ["resnet_w4", "resnet_w8"], "fractions": [0.5, 1.0],
          "pretrain": {"steps": [10], "config": {"optim": {"lr": 0.1}}},
          "transfer": {"regimes": ["full", "linear", "fewshot"], "shots": [1, 5], "seeds": [0, 1, 2],
                       "config": {"optim": {"steps": 5}}}}
    sw.update(over)
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(sw))
    return p


def test_expansion_counts_and_stable_ids(tmp_path):
    sw = load_sweep(str(_sweep(tmp_path)))
    pre, tr = expand(sw)
    assert len(pre) == 2 * 2 * 2                              # sources x models x fractions x steps
    fulllin = [t for t in tr if t[1].regime in ("full", "linear")]
    fs = [t for t in tr if t[1].regime == "fewshot"]
    assert len(fulllin) == 2 * len(pre)
    assert len(fs) == 2 and all(len(t[2]) == 6 for t in fs)   # largest model/fraction per source; k x seeds
    assert all("resnet_w8-f1" in t[1].model.init_from for t in fs)
    pre2, tr2 = expand(load_sweep(str(_sweep(tmp_path))))
    assert [p[0] for p in pre] == [p[0] for p in pre2] and [t[0] for t in tr] == [t[0] for t in tr2]
    # a changed hyper-parameter changes the id of exactly the runs it touches
    pre3, tr3 = expand(load_sweep(str(_sweep(tmp_path, pretrain={"steps": [10], "config": {"optim": {"lr": 0.2}}}))))
    assert not set(p[0] for p in pre) & set(p[0] for p in pre3)
    mix = [p for p in pre if p[1].source_name == "mix"][0][1]
    assert mix.data.sources == ["/data/nat", "/data/cxr-src"] and mix.source_domain == "mixed"
    t = fulllin[0][1]
    assert t.task == "transfer" and t.data.sources == ["/data/cxr"] and t.target_domain == "xray"
    paths = write_configs(sw, pre, tr)
    assert len(paths) == len(pre) + len(tr) and all(p.is_file() for p in paths.values())


def test_sweep_errors_name_the_key(tmp_path, capsys):
    with pytest.raises(UserError, match="unknown sweep key 'modles' \\(did you mean 'models'\\?\\); `covidnetx sweep --keys`"):
        load_sweep(str(_sweep(tmp_path, modles=["x"])))
    for over, message in [
        ({"transfer": {"shots": ["five"]}}, "sweep key 'transfer.shots[0]': expected an integer, got 'five'"),
        ({"transfer": {"regimes": ["full", "probe"]}}, "sweep key 'transfer.regimes': 'probe' is not one of"),
        ({"sources": {"nat": {"data": ["/d"], "domian": "x"}}}, "unknown sweep key 'sources.nat.domian' (did you mean"),
        ({"slurm": {"nodes": "two"}}, "sweep key 'slurm.nodes': expected an integer, got 'two'"),
        ({"slurm": {"nodes": 0}}, "sweep key 'slurm.nodes': 0 is not valid"),
        ({"sizes": [100], "fractions": [0.5]}, "give one (source sizes in images), not both"),
        ({"pretrain": {"steps": [10], "epochs": [1]}}, "'pretrain.steps' and 'pretrain.epochs': give one"),
        ({"target": {"domain": "xray"}}, "sweep key 'target.data' is required"),
    ]:
        with pytest.raises(UserError) as e:
            load_sweep(str(_sweep(tmp_path, **over)))
        assert message in str(e.value) and "sweep.yaml" in str(e.value), (over, str(e.value))
    from covidnetx.cli import main
    assert main(["sweep", "--keys"]) == 0
    keys = capsys.readouterr().out
    for line in ("transfer.shots", "sources.NAME.label_space", "slurm.tasks_per_node", "pack[].kind"):
        assert line in keys, keys
    assert "labelled images per class" in keys
    bad = _sweep(tmp_path)
    d = yaml.safe_load(bad.read_text())
    d["base"]["optim"]["lrr"] = 1
    bad.write_text(yaml.safe_dump(d))
    with pytest.raises(UserError, match="unknown config key 'optim.lrr'"):
        expand(load_sweep(str(bad)))


@pytest.mark.parametrize("template, extra", [
    ("generic", {"tasks_per_node": 2, "srun_args": "--mpi=pmix"}),
    ("juwels", {"account": "covidnetx", "partition": "booster", "nodes": 4, "time": "02:00:00",
                "modules": "Stages/2024 GCC OpenMPI CUDA NCCL"}),
])
def test_rendered_job_scripts_match_golden_files(tmp_path, template, extra):
    study = tmp_path / "study"
    sw = load_sweep(str(_sweep(tmp_path, out_dir=str(study),
                               slurm={"template": template, "python": "/opt/venv/bin/python", "workdir": "/home/me/covidnetx",
                                      **extra},
                               pack=[{"kind": "csv", "raw": "/raw/cxr", "out": "/data/cxr", "args": ["--size", "256"]}])))
    pre, tr = expand(sw)
    paths = {n[0]: study / "configs" / f"{n[0]}.yaml" for n in pre + tr}
    chain = render_chain(sw, pre, tr, paths)
    assert [c[0] for c in chain] == ["pack", "pretrain", "transfer", "report"]
    jobscripts = str(REPO / "jobscripts")
    for stage, path, text in chain:
        text = text.replace(jobscripts, "JOBSCRIPTS").replace(str(study), "/scratch/study")
        golden = GOLDEN / f"{template}-{stage}.sbatch"
        if os.environ.get("COVIDNETX_UPDATE_GOLDEN"):
            golden.write_text(text)
        assert text == golden.read_text(), f"{golden} differs (COVIDNETX_UPDATE_GOLDEN=1 rewrites it)"
    pre_text = chain[1][2]
    assert f"#SBATCH --array=0-{len(pre) - 1}" in pre_text and "--signal=B:USR1@120" in pre_text
    if template == "juwels":
        assert "#SBATCH --gres=gpu:4" in pre_text and "#SBATCH --ntasks-per-node=4" in pre_text
        assert "#SBATCH --nodes=4" in pre_text and "#SBATCH --account=covidnetx" in pre_text
    lines = (study / "jobs" / "pretrain.list").read_text().splitlines()
    assert len(lines) == len(pre)
    r = subprocess.run(["bash", "-n", str(chain[1][1])], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_juwels_template_requires_account(tmp_path):
    sw = load_sweep(str(_sweep(tmp_path, slurm={"template": "juwels"})))
    pre, tr = expand(sw)
    with pytest.raises(UserError, match="slurm.account is required"):
        render_chain(sw, pre, tr, {})
    sw = load_sweep(str(_sweep(tmp_path, slurm={"template": "juwels", "account": "a", "partition": "p",
                                                 "tasks_per_node": 4, "gpus_per_node": 2})))
    with pytest.raises(UserError, match="one task per GPU .*tasks_per_node 4 differs from gpus_per_node 2"):
        render_chain(sw, pre, tr, {})


def test_status_reports_each_run_and_exits_1_until_all_are_done(tmp_path, capsys):
    import json
    import time
    from covidnetx.cli import main
    path = _sweep(tmp_path, transfer={"regimes": ["full"], "config": {"optim": {"steps": 5}}})
    sw = load_sweep(str(path))
    pre, tr = expand(sw)
    runs = Path(sw.out_dir) / "runs"
    # pre[0] done, pre[1] checkpointed at step 4 (written 2 hours ago), pre[2] started without a checkpoint
    for name, _ in pre[:3]:
        (runs / name).mkdir(parents=True)
        (runs / name / "config.yaml").write_text("x")
    RunDir(runs / pre[0][0]).publish(make_row(pre[0][0], collapsed=True), str(tmp_path / "elsewhere.jsonl"))
    (runs / pre[1][0] / "progress.json").write_text(json.dumps({"step": 4, "total_steps": 10}))
    old = time.time() - 7200
    for f in (runs / pre[1][0]).iterdir():
        os.utime(f, (old, old))
    assert main(["sweep", str(path), "--status"]) == 1
    out = capsys.readouterr().out
    assert f"pretrain: {len(pre)} runs: 1 done, 1 checkpointed, 1 started, {len(pre) - 3} not started" in out
    assert f"checkpointed {pre[1][0]}: step 4 of 10, last write 2.0 h ago" in out
    assert f"collapsed (one class predicted for every image): {pre[0][0]}" in out
    assert f"started      {pre[2][0]}: no checkpoint yet, last write 0 min ago" in out
    assert f"transfer: {len(tr)} runs: {len(tr)} not started" in out and f"1 of {len(pre) + len(tr)} runs done" in out
    assert not (Path(sw.out_dir) / "configs").exists()          # a query writes nothing
    for name in [n for n, _ in pre] + [s for *_, subs in tr for s in subs]:
        (runs / name).mkdir(parents=True, exist_ok=True)
        RunDir(runs / name).publish(make_row(name), str(Path(sw.out_dir) / "results.jsonl"))
    assert main(["sweep", str(path), "--status"]) == 0
    n = len(pre) + len(tr)
    assert f"{n} of {n} runs done; {Path(sw.out_dir) / 'results.jsonl'}: {n} result row(s), {n} final" in capsys.readouterr().out
    (runs / pre[0][0] / "done.json").write_text("{}")             # a damaged record is named, not counted
    assert main(["sweep", str(path), "--status"]) == 2
    assert f"{runs / pre[0][0] / 'done.json'}: result row lacks run_id" in capsys.readouterr().err


def test_study_design_expansion_seeds_sizes_and_scratch(tmp_path):
    """The study's design: an L of widths (at the largest size) and sizes (on one width), every pre-training
    seed its own run, each checkpoint transferred with its own seed (full, linear), few-shot k x seeds from
    the largest model's checkpoints, and a from-scratch baseline per seed; sizes become per-source fractions."""
    import json
    for name, n in (("nat", 1000), ("xr", 500)):
        d = tmp_path / name
        d.mkdir()
        shard = {"file": "shards/train-00000.h5", "start": 0, "count": n, "sha256": "0" * 64, "bytes": 0}
        (d / "index.json").write_text(json.dumps({      # an index that passes the schema (no shard is read)
            "format": "covidnetx-packed", "schema_version": 1, "name": name, "kind": "csv",
            "label_kind": "multiclass", "class_names": ["a", "b"], "encoding": "png", "channels": 1,
            "image_size": None, "num_samples": n, "sources": [], "skipped": [], "splits": {"train": {"count": n, "shards": [shard]}}}))
    p = _sweep(tmp_path, sources={"nat": {"data": [str(tmp_path / "nat")], "domain": "natural",
                                          "config": {"data": {"hflip": True}}},
                                  "xr": {"data": [str(tmp_path / "xr")], "domain": "xray"}},
               models=["resnet_w4", "resnet_w6", "resnet_w8"], data_models=["resnet_w6"], fractions=None,
               sizes=[50, 200, 500], seeds=[0, 1, 2], pretrain={"epochs": 3},
               transfer={"regimes": ["full", "linear", "fewshot"], "shots": [1, 5], "seeds": [0, 1, 2, 3, 4],
                         "scratch": {"models": ["resnet_w8"], "regimes": ["full", "linear"]}})
    d = yaml.safe_load(p.read_text())
    d.pop("fractions")
    p.write_text(yaml.safe_dump(d))
    sw = load_sweep(str(p))
    pre, tr = expand(sw)
    assert len(pre) == 2 * (2 + 3) * 3                         # (2 widths at 500 + w6 at 3 sizes) x 3 seeds
    by_src = {s: [c for _, c in pre if c.source_name == s] for s in ("nat", "xr")}
    assert sorted({c.data.fraction for c in by_src["nat"]}) == [0.05, 0.2, 0.5]
    assert sorted({c.data.fraction for c in by_src["xr"]}) == [0.1, 0.4, 1.0]
    assert all(c.data.hflip for c in by_src["nat"]) and not any(c.data.hflip for c in by_src["xr"])
    assert all(c.optim.epochs == 3 and c.optim.steps == 0 and c.seeds == [] for _, c in pre)
    assert sorted({c.seed for _, c in pre}) == [0, 1, 2]
    full = [c for _, c, _ in tr if c.regime == "full" and c.source_name != "scratch"]
    assert len(full) == len(pre)
    for c in full:                                              # paired: the checkpoint's own seed
        ck = c.model.init_from.split("/")[-2]
        assert ck.endswith("-" + ck.split("-")[-1]) and f"-s{c.seed}-" in ck and c.seeds == []
    fs = [t for t in tr if t[1].regime == "fewshot"]
    assert len(fs) == 2 * 3 and all(len(t[2]) == 2 * 5 for t in fs)       # per source: 3 checkpoints of w8
    assert all("resnet_w8-f" in t[1].model.init_from for t in fs)
    scratch = [t for t in tr if t[1].source_name == "scratch"]
    assert len(scratch) == 2 * 3 and all(t[1].model.init_from == "" for t in scratch)
    with pytest.raises(UserError, match="sizes: 2000 images asked of a source with 1000"):
        d["sizes"] = [2000]
        p.write_text(yaml.safe_dump(d))
        expand(load_sweep(str(p)))


def test_a_non_editable_install_renders_a_slurm_sweep(tmp_path):
    """`pip install` of a wheel (not editable) into a fresh venv ships the job-script templates and
    configs: `covidnetx sweep --executor slurm` renders a chain from another directory, sourcing the
    installed common.sh. (The venv borrows this environment's third-party packages through a .pth file;
    covidnetx itself comes from the wheel alone.)"""
    import shutil
    import site
    import sys
    wheels, venv, elsewhere = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    # the checkout's own files only: a build/ folder left by an earlier build would ship renamed modules
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             check=True, capture_output=True, text=True).stdout.split()
    src = tmp_path / "src"
    for name in tracked:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(src)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    subprocess.run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(next(wheels.glob("covidnetx-*.whl")))], check=True, capture_output=True)
    vsite = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
    (Path(vsite) / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(vpy), "-c", "import covidnetx, covidnetx.slurm as s; print(covidnetx.__file__); "
                        "print(s.JOBSCRIPTS)"], cwd=elsewhere, env=env, check=True, capture_output=True, text=True)
    module, jobscripts = r.stdout.split()
    assert module.startswith(vsite) and jobscripts == f"{vsite}/covidnetx/jobscripts", r.stdout
    sweep = _sweep(elsewhere, out_dir=str(elsewhere / "study"), slurm={"template": "generic"})
    r = subprocess.run([str(venv / "bin" / "covidnetx"), "sweep", str(sweep), "--executor", "slurm", "--dry-run"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (elsewhere / "study").exists()                  # --dry-run writes nothing
    script = r.stdout.split(f"# ---- {elsewhere / 'study' / 'jobs' / 'pretrain.sbatch'} (not written: --dry-run) ----")[1]
    script = script.split("# ---- ")[0]
    assert f"source {jobscripts}/common.sh" in script and (Path(jobscripts) / "common.sh").is_file()
    assert str(REPO) not in script
    assert (Path(vsite) / "covidnetx" / "configs" / "pretrain_cpu.yaml").is_file()
