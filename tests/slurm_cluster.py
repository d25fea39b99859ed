"""A real Slurm cluster (munged + slurmctld + one slurmd per node, from Debian's packages) in a temp folder,
started and stopped by the tests: by default two nodes on this host (n1, n2: ``slurmd -N``, own ports,
spool and TmpFS) with two fake GPUs each (character devices listed in gres.conf: Slurm sets
CUDA_VISIBLE_DEVICES, no GPU is behind them). MPI between the fake nodes goes over TCP (their shared
memory segments would collide). Configuration as recorded in ../shared/INSTALL-NOTES.md."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "squeue")


def available() -> str | None:
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]
    if missing:
        return f"Slurm/munge binaries missing: {', '.join(missing)} (make setup installs them)"
    if os.geteuid() != 0:
        return "the local Slurm test cluster runs its daemons as root"
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 6817)) == 0:
            return "port 6817 is taken (another slurmctld is running)"
    return None


def _exe(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


class LocalSlurm:
    def __init__(self, root: Path, nodes: int = 2, gpus_per_node: int = 2):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.nodes = [f"n{i}" for i in range(1, nodes + 1)]
        self.gpus = gpus_per_node
        # TCP between the fake nodes; Open MPI as root
        self.env = {**os.environ, "OMPI_MCA_btl": "self,tcp", "OMPI_MCA_btl_tcp_if_include": "lo",
                    "OMPI_MCA_oob_tcp_if_include": "lo"}

    def _node_line(self) -> str:
        out = subprocess.run([_exe("slurmd"), "-C"], capture_output=True, text=True).stdout.splitlines()[0]
        fields = dict(f.split("=", 1) for f in out.split())
        mem = int(int(fields.get("RealMemory", "2048")) * 0.9) // len(self.nodes)
        last = 17000 + len(self.nodes)
        return (f"NodeName=n[1-{len(self.nodes)}] NodeHostname={self.host} NodeAddr=127.0.0.1 Port=[17001-{last}] "
                f"CPUs={fields.get('CPUs', '2')} RealMemory={mem}"
                + (f" Gres=gpu:{self.gpus}" if self.gpus else "") + " State=UNKNOWN")

    def _fake_gpus(self) -> list:
        """gres.conf lines: per node, GPU 'devices' that are /dev/null's character device (1, 3)."""
        lines = []
        for n in self.nodes:
            for g in range(self.gpus):
                dev = self.root / "dev" / f"{n}-gpu{g}"
                if not dev.exists():
                    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
                lines.append(f"NodeName={n} Name=gpu File={dev}")
        return lines

    def start(self) -> "LocalSlurm":
        r = self.root
        for d in ("munge", "state", "log", "run", "dev") + tuple(f"{k}/{n}" for k in ("spool", "tmp") for n in self.nodes):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        subprocess.run([_exe("mungekey"), "-c", "-k", str(key)], check=True, capture_output=True)
        os.chmod(key, 0o400)
        self.sock = r / "munge" / "munge.sock"
        subprocess.run([_exe("munged"), f"--socket={self.sock}", f"--key-file={key}", f"--pid-file={r / 'run/munged.pid'}",
                        f"--log-file={r / 'log/munged.log'}", f"--seed-file={r / 'munge/seed'}", "--force"],
                       check=True, capture_output=True)
        conf = r / "slurm.conf"
        conf.write_text("\n".join([
            "ClusterName=covidnetx-test", f"SlurmctldHost={self.host}", "SlurmUser=root",
            "AuthType=auth/munge", f"AuthInfo=socket={self.sock}", "CredType=cred/munge",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "SchedulerParameters=bf_interval=1,sched_interval=1",
            "DependencyParameters=kill_invalid_depend", "MpiDefault=pmix", "ReturnToService=2",
            "SlurmdParameters=config_overrides", "EnforcePartLimits=ALL", "MinJobAge=60", "KillWait=5",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / 'spool'}/%n",
            f"SlurmctldPidFile={r / 'run/slurmctld.pid'}", f"SlurmdPidFile={r / 'run'}/slurmd-%n.pid",
            f"SlurmctldLogFile={r / 'log/slurmctld.log'}", f"SlurmdLogFile={r / 'log'}/slurmd-%n.log",
            f"TmpFS={r / 'tmp'}/%n", "SlurmctldPort=6817"] + (["GresTypes=gpu"] if self.gpus else []) + [
            self._node_line(), "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
        if self.gpus:
            (r / "gres.conf").write_text("\n".join(self._fake_gpus()) + "\n")
        self.env["SLURM_CONF"] = str(conf)
        os.environ["SLURM_CONF"] = str(conf)
        subprocess.run([_exe("slurmctld")], check=True, env=self.env, capture_output=True)
        for n in self.nodes:
            subprocess.run([_exe("slurmd"), "-N", n], check=True, env=self.env, capture_output=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True,
                                 env=self.env).stdout.split()
            states = dict(zip(out[::2], out[1::2]))
            if len(states) == len(self.nodes) and all(v.startswith("idle") for v in states.values()):
                return self
            for n, v in states.items():
                if v.startswith(("down", "drain")):
                    subprocess.run(["scontrol", "update", f"NodeName={n}", "State=RESUME"], env=self.env,
                                   capture_output=True)
            time.sleep(0.5)
        raise RuntimeError(f"slurm node never became idle; logs in {r / 'log'}")

    def run(self, *cmd, timeout=60, check=True) -> subprocess.CompletedProcess:
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=self.env, timeout=timeout,
                              check=check)

    def job_state(self, job: str) -> str:
        out = self.run("scontrol", "show", "job", job, check=False).stdout
        for tok in out.split():
            if tok.startswith("JobState="):
                return tok.split("=", 1)[1]
        return "GONE"

    def wait_all(self, timeout=600) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.run("squeue", "-h", check=False).stdout.strip():
                return
            time.sleep(1)
        raise TimeoutError("jobs still queued: " + self.run("squeue", check=False).stdout)

    def stop(self) -> None:
        subprocess.run(["scancel", "--user=root"], env=self.env, capture_output=True)
        for pidfile in [f"slurmd-{n}.pid" for n in self.nodes] + ["slurmctld.pid", "munged.pid"]:
            p = self.root / "run" / pidfile
            if p.is_file():
                try:
                    os.kill(int(p.read_text().strip()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)
        os.environ.pop("SLURM_CONF", None)
