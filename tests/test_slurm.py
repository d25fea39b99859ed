"""Against a real local Slurm (munged + slurmctld + two slurmd nodes with fake GPUs, started and stopped
here): a tiny sweep submitted as a chained set of jobs with a 2-task srun Horovod run inside; the JUWELS
Booster template on 2 nodes x 2 tasks (ranks, local ranks, node ids, one GPU per task, a checked
allreduce); and a 2-node sweep stage that gets USR1, checkpoints, requeues itself and finishes."""
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from covidnetx.results import load_results
from tests.slurm_cluster import LocalSlurm, available

pytest.importorskip("horovod.torch", reason="horovod not installed (make setup builds it)")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = available()
    if why:
        pytest.skip(why)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


JUWELS_2x2 = {"template": "juwels", "account": "testacct", "partition": "debug", "nodes": 2, "tasks_per_node": 2,
             "gpus_per_node": 2, "cpus_per_task": 1}


def _sweep(tmp_path, packed, steps=8, regimes=("full", "fewshot"), name="tiny", slurm=None):
    sw = {"name": name, "out_dir": str(tmp_path / "study"),
          "base": {"threads": 1, "bootstrap": 10, "log_every": 1, "alignment_samples": 32,
                   "data": {"image_size": 32}, "optim": {"batch_size": 8, "base_batch": 16}},
          "sources": {"nat": {"data": [str(packed / "nat")], "domain": "natural"}},
          "target": {"data": [str(packed / "cxr")], "domain": "xray", "name": "cxr"},
          "models": ["resnet_w4"], "fractions": [1.0],
          "pretrain": {"steps": [steps], "config": {"optim": {"lr": 0.1}, "data": {"eval_split": "val"}}},
          "transfer": {"regimes": list(regimes), "shots": [1], "seeds": [0],
                       "config": {"optim": {"steps": 4}, "data": {"eval_split": "test"}}},
          "slurm": {"template": "generic", "tasks_per_node": 2, "srun_args": "--mpi=pmix", "time": "00:10:00",
                    "signal_lead": 30, "python": sys.executable, **(slurm or {})}}
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(sw))
    return p


def test_sweep_as_a_job_chain_with_srun_horovod(slurm, packed, tmp_path):
    sweep = _sweep(tmp_path, packed)
    r = slurm.run(sys.executable, "-m", "covidnetx.cli", "sweep", sweep, "--executor", "slurm", timeout=120)
    assert r.returncode == 0, r.stderr
    ids = [l.split("job ")[1].split()[0] for l in r.stdout.splitlines() if l.startswith("submitted")]
    assert len(ids) == 3 and "(after" in r.stdout                   # pretrain -> transfer -> report
    slurm.wait_all(timeout=600)
    study = tmp_path / "study"
    logs = "\n".join(p.read_text() for p in sorted((study / "logs").glob("*.out")))
    rows = load_results(study / "results.jsonl")
    finals = [x for x in rows if x["final"]]
    assert sorted(x["regime"] for x in finals) == ["fewshot", "full", "pretrain"], logs[-3000:]
    for x in finals:
        assert x["world_size"] == 2 and x["backend"] == "horovod"
        # engine runs end with every rank in sync; the few-shot row is a probe on cached features
        assert x["ranks_in_sync"] is True if x["regime"] != "fewshot" else "probe_c" in x
    assert (study / "report" / "report.md").is_file(), logs[-3000:]
    assert (study / "report" / "fewshot.png").is_file()


def test_juwels_template_on_two_nodes_gives_each_task_its_rank_node_and_gpu(slurm, tmp_path):
    """The JUWELS Booster job script as the sweep renders it, 2 nodes x 2 tasks with 2 (fake) GPUs per
    node, running `covidnetx launch-check`: 4 Horovod ranks, local ranks 0-1 on each node, SLURM_NODEID 0
    and 1, one CUDA_VISIBLE_DEVICES per task, and an allreduce whose sum is checked."""
    from covidnetx import slurm as S
    from tests.conftest import REPO
    values = {"stage": "check", "job_name": "launch-check", "account": "testacct", "partition": "debug", "nodes": 2,
              "tasks_per_node": 2, "gpus_per_node": 2, "cpus_per_task": 1, "time": "00:05:00", "log_dir": tmp_path,
              "signal_lead": 30, "array_line": "", "modules": "", "jobscripts": S.JOBSCRIPTS, "workdir": REPO,
              "srun_args": "--mpi=pmix", "python": sys.executable, "command": "launch-check"}
    script = tmp_path / "check.sbatch"
    script.write_text(S.render("juwels", values))
    assert "--gpus-per-task=1" in script.read_text() and "#SBATCH --gres=gpu:2" in script.read_text()
    r = slurm.run("sbatch", "--parsable", script, timeout=60)
    assert r.returncode == 0, r.stderr
    slurm.wait_all(timeout=180)
    log = "\n".join(p.read_text() for p in tmp_path.glob("launch-check-*.out"))
    lines = [l for l in log.splitlines() if l.startswith("LAUNCH ")]
    assert len(lines) == 1, log[-3000:]
    launch = json.loads(lines[0][7:])
    assert launch["backend"] == "horovod" and launch["size"] == 4 and launch["problems"] == []
    assert launch["allreduce_sum"] == 1 + 2 + 3 + 4
    ranks = launch["ranks"]
    assert sorted((r["node"], r["local_rank"]) for r in ranks) == [("0", 0), ("0", 1), ("1", 0), ("1", 1)]
    assert {r["node"]: r["slurm_nodename"] for r in ranks} == {"0": "n1", "1": "n2"}
    for node in ("0", "1"):         # each task one device of its node's two, none shared
        assert sorted(r["cuda_visible_devices"] for r in ranks if r["node"] == node) == ["0", "1"]


def test_usr1_checkpoints_requeues_and_finishes_on_two_nodes(slurm, packed, tmp_path):
    """A pre-training stage with the JUWELS template on 2 nodes x 2 tasks: USR1 to the batch shell, the
    4 ranks checkpoint and exit 75, the job requeues itself and resumes to the end on both nodes."""
    sweep = _sweep(tmp_path, packed, steps=400, regimes=(), name="requeue", slurm=JUWELS_2x2)
    r = slurm.run(sys.executable, "-m", "covidnetx.cli", "sweep", sweep, "--executor", "slurm", timeout=120)
    assert r.returncode == 0, r.stderr
    job = r.stdout.splitlines()[0].split("job ")[1].split()[0]
    study = tmp_path / "study"
    run = next((study / "configs").glob("pre-*.yaml")).stem
    tb = study / "runs" / run / "tb"
    deadline = time.time() + 180
    while time.time() < deadline and not list(tb.glob("events*")):
        time.sleep(0.5)
    time.sleep(3)
    slurm.run("scancel", "--batch", "--signal=USR1", f"{job}_0")
    ck = study / "runs" / run / "last.ckpt"
    deadline = time.time() + 120
    while time.time() < deadline and not ck.is_file():
        time.sleep(0.5)
    assert ck.is_file(), "no checkpoint after USR1"
    stopped = torch.load(ck, weights_only=False)["step"]
    assert 0 < stopped < 400
    # a requeued job waits for its begin time; start it now
    deadline = time.time() + 60
    while time.time() < deadline:
        state = slurm.job_state(f"{job}_0")
        if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD"):
            slurm.run("scontrol", "release", f"{job}_0", check=False)
            slurm.run("scontrol", "update", f"JobId={job}_0", "StartTime=now+2", check=False)
            break
        time.sleep(0.5)
    slurm.wait_all(timeout=600)
    logs = "\n".join(p.read_text() for p in sorted((study / "logs").glob("*.out")))
    assert "requeueing job" in logs and f"interrupted at step {stopped}" in logs, logs[-3000:]
    assert "resumed from" in logs and "4 rank(s)" in logs
    done = json.loads((study / "runs" / run / "done.json").read_text())
    assert done["steps"] == 400 and done["world_size"] == 4 and done["ranks_in_sync"] is True


def test_scaling_jobs_run_under_srun_and_gather_into_one_table(slurm, tmp_path):
    """jobscripts/scaling.sbatch, submitted as it is (GPU request overridden: this cluster has none) at 1
    and 2 tasks, then `benchmarks/scaling.py --gather` turns the job outputs into the CSV/table/plot."""
    from tests.conftest import REPO
    out = tmp_path / "bench"
    out.mkdir()
    env = {**slurm.env, "MODEL": "resnet_w4", "BATCH": "8", "SIZE": "32", "PRECISION": "fp32", "ITERS": "4",
           "WARMUP": "1", "SRUN_ARGS": "--mpi=pmix", "COVIDNETX_PYTHON": sys.executable, "OUT_DIR": str(out)}
    for n in (1, 2):
        r = subprocess.run(["sbatch", "--gres=none", f"--ntasks-per-node={n}", "--cpus-per-task=1",
                            f"--output={out}/job-np{n}-%j.out", "--chdir", str(REPO),
                            str(REPO / "jobscripts" / "scaling.sbatch")],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
    slurm.wait_all(timeout=300)
    logs = "\n".join(p.read_text() for p in sorted(out.glob("job-*.out")))
    results = sorted(p.name for p in out.glob("scaling-*.json"))
    assert results == ["scaling-resnet_w4-b8-np1.json", "scaling-resnet_w4-b8-np2.json"], logs[-3000:]
    assert not list(out.glob("*.tmp"))
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scaling.py"), "--gather", str(out), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    stem = out / "bench-scaling-cpu{}-fp32-resnet_w4-np1-2".format(os.cpu_count())
    rows = list(csv.DictReader(open(f"{stem}.csv")))
    assert [int(x["np"]) for x in rows] == [1, 2]
    assert float(rows[0]["weak_eff"]) == 1.0 and 0.05 < float(rows[1]["weak_eff"]) < 1.5
    assert float(rows[0]["allreduce_s"]) == 0.0 and float(rows[1]["allreduce_s"]) > 0    # measured at np=2
    assert rows[1]["strong_eff"] == "" and "| 2 |" in Path(f"{stem}.md").read_text()
    # no plain loops on a cluster run: the full model is communication + the wait for the slower rank
    assert float(rows[0]["step_cv"]) > 0 and rows[1]["shared_step_s"] == ""
    assert float(rows[1]["model_eff_full"]) < float(rows[1]["model_eff_no_overlap"])
    assert Path(f"{stem}.png").stat().st_size > 1000
    # a job that produced no result is named, not silently averaged in
    (out / "scaling-resnet_w4-b8-np4.json").write_text("srun: error: task 0 failed\n")
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scaling.py"), "--gather", str(out), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "scaling-resnet_w4-b8-np4.json: no RESULT line" in r.stderr
