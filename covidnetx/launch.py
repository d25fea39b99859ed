"""What launched us: rank / size / local rank from mpirun, horovodrun, srun or torchrun environments,
and a minimal MPI communicator for the data tools (mpi4py only when there is more than one rank)."""
from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass

from covidnetx.utils import set_stop_check

_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "HOROVOD_RANK", "SLURM_PROCID", "RANK")
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "HOROVOD_SIZE", "SLURM_NTASKS", "WORLD_SIZE")
_LOCAL_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "HOROVOD_LOCAL_RANK", "SLURM_LOCALID",
               "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_primary(self) -> bool:
        return self.rank == 0


def _first_int(names, default):
    for n in names:
        v = os.environ.get(n)
        if v not in (None, ""):
            try:
                return int(v)
            except ValueError:
                continue
    return default


def world_from_env() -> World:
    """Rank layout from the launcher's environment (no MPI initialisation)."""
    size = _first_int(_SIZE_VARS, 1)
    # srun without tasks (SLURM_NTASKS unset) or a batch shell: stay single-process
    if size > 1 and "SLURM_NTASKS" in os.environ and "SLURM_STEP_ID" not in os.environ \
            and not any(v in os.environ for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "HOROVOD_SIZE")):
        size = 1
    rank = _first_int(_RANK_VARS, 0) if size > 1 else 0
    local = _first_int(_LOCAL_VARS, 0) if size > 1 else 0
    return World(rank=rank, size=size, local_rank=local)


class SingleComm:
    """The subset of the mpi4py communicator API the data tools use, for one process."""

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def allgather(self, obj):
        return [obj]

    def bcast(self, obj, root=0):
        return obj

    def Barrier(self):
        pass

    def Abort(self, code=1):
        os._exit(code)


def get_comm():
    """mpi4py's COMM_WORLD when launched with several ranks, else a SingleComm."""
    if world_from_env().size > 1:
        from mpi4py import MPI  # lazy: optional, MPI, only with several ranks
        return MPI.COMM_WORLD
    return SingleComm()


def quiet_barrier(comm, poll_s: float = 0.005) -> None:
    """A barrier that sleeps while it waits: a rank that finished early does not busy-poll the core
    that a slower rank on the same node still needs (Open MPI busy-polls by default)."""
    if comm.Get_size() == 1:
        return
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(poll_s)


def mpirun_cmd(np_: int, extra: tuple = ()) -> list:
    """An ``mpirun`` prefix that works on a laptop, a CI box and an allocation: root allowed, more ranks
    than cores allowed, waiting ranks yield their core (mpi_yield_when_idle)."""
    exe = shutil.which("mpirun")
    if exe is None:
        raise RuntimeError("mpirun not found: install Open MPI (make setup does) or run with --np 1")
    cmd = [exe, "-np", str(np_), "--oversubscribe", "--bind-to", "none",
           "--mca", "mpi_yield_when_idle", "1"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd + list(extra)


EXIT_REQUEUE = 75           # EX_TEMPFAIL: "saved, run me again"


class Interrupted(Exception):
    """Raised after the checkpoint of a signalled run is safely on disk (args: step, or None when the
    signal came between runs and nothing needed saving)."""


class StopSignals:
    """SIGUSR1 and SIGTERM (Slurm's warning before the time limit, scancel, a requeue) set a flag instead
    of killing the process; training acts on it at the next step, the run loop between runs. Installed
    for a whole launcher invocation (``with STOP:``; re-entrant), so a signal during start-up, evaluation
    or between the runs of a sweep stage still ends in a checkpoint and exit EXIT_REQUEUE."""

    def __init__(self):
        self.requested = False
        self._depth = 0
        self._old: dict = {}

    def _handler(self, signum, frame):
        self.requested = True

    def __enter__(self):
        if self._depth == 0:
            self.requested = False
            self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGUSR1, signal.SIGTERM)}
            set_stop_check(lambda: self.requested)       # long start-up loops (checksums) look too
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            for s, h in self._old.items():
                signal.signal(s, h)
            set_stop_check(lambda: False)


STOP = StopSignals()
