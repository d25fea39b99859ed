"""Render a sweep as a chain of Slurm jobs and submit it.

[pack] -> pretrain (array: one task per pre-training run) -> transfer (array) -> report, linked by
``--dependency=afterok``. Every stage's script comes from a template in jobscripts/ (JUWELS Booster or
generic) and sources jobscripts/common.sh, which forwards Slurm's early-warning signal
(``--signal=B:USR1@LEAD``) to the step and requeues the job when the step saved a checkpoint (exit 75).
"""
from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path

from covidnetx.utils import UserError, atomic_write_bytes


def _jobscripts() -> Path:
    """The job-script templates: installed as package data (covidnetx/jobscripts/), or in a source checkout
    at the top of the tree (jobscripts/)."""
    here = Path(__file__).resolve().parent
    for d in (here / "jobscripts", here.parent / "jobscripts"):
        if (d / "common.sh").is_file():
            return d
    return here / "jobscripts"


JOBSCRIPTS = _jobscripts()
TEMPLATES = {"generic": "generic.sbatch.tmpl", "juwels": "juwels_booster.sbatch.tmpl"}


def settings(sw) -> dict:
    """The sweep's ``slurm`` section with every value resolved: the template's defaults where left at 0
    (generic: 1 task and 1 CPU per node, no GPU; juwels: 4 tasks, 4 GPUs and 12 CPUs per task), this
    Python and this folder where left empty."""
    s = dataclasses.asdict(sw.slurm)            # the template name was checked with the sweep file
    juwels = s["template"] == "juwels"
    for key, generic, booster in (("tasks_per_node", 1, 4), ("gpus_per_node", 0, 4), ("cpus_per_task", 1, 12)):
        s[key] = s[key] or (booster if juwels else generic)
    if juwels:
        for key in ("account", "partition"):
            if not s[key]:
                raise UserError(f"slurm.{key} is required for the juwels template")
        if s["tasks_per_node"] != s["gpus_per_node"]:
            raise UserError(f"slurm: the juwels template runs one task per GPU (srun --gpus-per-task=1); "
                            f"tasks_per_node {s['tasks_per_node']} differs from gpus_per_node {s['gpus_per_node']}")
    s["python"] = s["python"] or sys.executable
    s["workdir"] = s["workdir"] or str(Path.cwd())
    return s


# values that a job script holds as words: a path, a name, an account (sbatch reads #SBATCH lines without
# a shell, so no quoting can protect them); the others (modules, srun_args, command) are shell by design
WORDS = ("log_dir", "workdir", "python", "jobscripts", "job_name", "account", "partition", "time", "stage")
UNSAFE = re.compile(r"[\s'\"$`;&|<>()\\*?!{}\[\]#~]")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_script_value(key: str, value) -> None:
    """One UserError for a value that would change a job script's meaning: a control character (a
    newline would start a new command or #SBATCH line) anywhere, shell or sbatch syntax in a word."""
    v = str(value)
    if CONTROL.search(v):
        raise UserError(f"slurm job script: {key} {v!r} contains a control character (a newline?)")
    if key in WORDS and UNSAFE.search(v):
        raise UserError(f"slurm job script: {key} {v!r} contains {UNSAFE.search(v).group()!r}; paths and names in "
                        "a job script may not hold spaces, quotes or shell syntax (sbatch reads #SBATCH lines "
                        "without a shell)")


def render(template: str, values: dict) -> str:
    for key, value in values.items():
        check_script_value(key, value)
    text = (JOBSCRIPTS / TEMPLATES[template]).read_text()
    def sub(m):
        key = m.group(1)
        if key not in values:
            raise UserError(f"template {TEMPLATES[template]}: no value for {{{{{key}}}}}")
        return str(values[key])
    out = re.sub(r"\{\{(\w+)\}\}", sub, text)
    return "\n".join(l for l in out.splitlines() if l.strip() != "") + "\n"


def render_chain(sw, pre: list, tr: list, paths: dict, write: bool = True) -> list:
    """[(stage, script path, script text)] in dependency order; writes the scripts and the list files
    (``write=False``: only says what it would write)."""
    s = settings(sw)
    out = Path(sw.out_dir).resolve()
    check_script_value("workdir", out)             # out_dir: every list, log and report path lives under it
    jobs = out / "jobs"
    logs = out / "logs"
    base = {"account": s["account"], "partition": s["partition"], "gpus_per_node": s["gpus_per_node"],
            "cpus_per_task": s["cpus_per_task"], "signal_lead": s["signal_lead"], "log_dir": logs,
            "modules": s["modules"], "jobscripts": JOBSCRIPTS, "workdir": s["workdir"], "python": s["python"],
            "srun_args": s["srun_args"]}
    stages = []
    if sw.pack:
        cmds = []
        for p in sw.pack:
            args = [p.kind, p.raw, p.out] + [str(a) for a in p.args]
            cmds.append("pack " + " ".join(shlex.quote(str(a)) for a in args))
        stages.append(("pack", {"nodes": 1, "tasks_per_node": s["tasks_per_node"], "time": s["time"],
                                "array_line": "", "command": " && ".join(cmds)}))
    for stage, items, nodes, time in (("pretrain", pre, s["nodes"], s["time"]),
                                      ("transfer", tr, s["transfer_nodes"], s["transfer_time"] or s["time"])):
        if not items:
            continue
        lst = jobs / f"{stage}.list"
        if write:
            atomic_write_bytes(lst, ("\n".join(str(Path(paths[i[0]]).resolve()) for i in items) + "\n").encode())
        stages.append((stage, {"nodes": nodes, "tasks_per_node": s["tasks_per_node"], "time": time,
                               "array_line": f"#SBATCH --array=0-{len(items) - 1}",
                               "command": f"runs --list {lst} --index $SLURM_ARRAY_TASK_ID"}))
    stages.append(("report", {"nodes": 1, "tasks_per_node": 1, "time": s["report_time"], "array_line": "",
                              "command": f"report {out / 'results.jsonl'} --out {out / 'report'}"}))
    rendered = []
    for stage, v in stages:
        values = {**base, **v, "stage": stage, "job_name": f"{sw.name}-{stage}"}
        text = render(s["template"], values)
        path = jobs / f"{stage}.sbatch"
        if write:
            atomic_write_bytes(path, text.encode())
        rendered.append((stage, path, text))
    if write:
        logs.mkdir(parents=True, exist_ok=True)
    return rendered


def submit_chain(sw, pre: list, tr: list, paths: dict, sweep_path: str, dry_run: bool = False) -> int:
    chain = render_chain(sw, pre, tr, paths, write=not dry_run)
    if dry_run:
        for stage, path, text in chain:
            print(f"# ---- {path} (not written: --dry-run) ----")
            print(text)
        return 0
    s = settings(sw)
    prev = None
    ids = []
    for stage, path, _ in chain:
        cmd = [s["sbatch"], "--parsable"]
        if prev:
            cmd.append(f"--dependency=afterok:{prev}")
        cmd.append(str(path))
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise UserError(f"sbatch {path} failed: {r.stderr.strip()}")
        prev = r.stdout.strip().split(";")[0]
        ids.append((stage, prev))
        print(f"submitted {stage}: job {prev}" + (f" (after {ids[-2][1]})" if len(ids) > 1 else ""), flush=True)
    return 0
