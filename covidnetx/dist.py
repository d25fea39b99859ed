"""The only module that imports horovod or torch.distributed.

Everything else gets a :class:`Dist` with plain values (rank, local_rank, size, is_primary) and a few
collectives. Backends: ``horovod`` (MPI or Gloo controller, whatever horovodrun/mpirun/srun started),
``torch`` (torch.distributed, gloo on CPU / nccl on GPU, ranks from srun/mpirun/torchrun), ``none``.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import traceback
from typing import Callable, Optional

import numpy as np
import torch

from covidnetx.launch import World, world_from_env
from covidnetx.utils import AgreedError, StopRequested, UserError

_STOPPED = "\x00stop requested"      # a rank's phase outcome: a stop signal, not an error


class Dist:
    backend = "none"

    def __init__(self, world: World, device: torch.device):
        self.rank, self.size, self.local_rank = world.rank, world.size, world.local_rank
        self.device = device

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    # -- collectives on numpy arrays (small: metrics, flags) --
    def allreduce_sum(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def allreduce_sum_async(self, x: np.ndarray) -> Callable[[], np.ndarray]:
        """Start a sum over ranks and return a function that waits for it and gives the result, so that a
        small agreement (the stop flag) overlaps a training step instead of adding a blocking collective
        to it. One at a time: finish the previous one before starting the next."""
        v = np.asarray(x)
        return lambda: v

    def allgather(self, x: np.ndarray) -> np.ndarray:
        """Concatenate along axis 0 in rank order (first dims may differ)."""
        return np.asarray(x)

    def broadcast_object(self, obj, root: int = 0):
        return obj

    def allgather_object(self, obj) -> list:
        """Every rank's ``obj`` (small, picklable: made by covidnetx, never read from a file), in rank order."""
        return [obj]

    def barrier(self) -> None:
        pass

    # -- failure --
    @contextlib.contextmanager
    def phase(self):
        """Error agreement around a block that every rank runs and that holds no collective (checks, file
        reads, rank 0's writes): the block's error on any rank becomes one AgreedError on every rank, which
        names the rank when not all of them failed. Ranks otherwise meet as at a barrier."""
        error = None
        try:
            yield
        except StopRequested:
            error = _STOPPED
        except UserError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - any failure must reach the other ranks, which would wait
            error = f"{type(e).__name__}: {e}"
            print(traceback.format_exc(), file=sys.stderr, flush=True)
        errors = self.allgather_object(error)
        failed = [r for r, e in enumerate(errors) if e and e != _STOPPED]
        if not failed:
            if _STOPPED in errors:          # a signal on any rank: every rank stops, as between runs
                raise StopRequested()
            return
        first = errors[failed[0]]
        if len(failed) == self.size and all(errors[r] == first for r in failed):
            raise AgreedError(first)
        others = f" (and rank(s) {', '.join(map(str, failed[1:]))})" if len(failed) > 1 else ""
        raise AgreedError(f"rank {failed[0]}{others}: {first}")

    def abort(self, code: int) -> None:
        """End every rank of the job now: the last resort after a failure on some ranks only, outside any
        error agreement (the others may wait in a collective forever). MPI_Abort where MPI runs; else this
        process exits at once, without the exit handlers that would wait for the other ranks (mpirun ends
        the rest on a non-zero exit; torch.distributed's peers fail at their next collective)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.size > 1:
            mpi = sys.modules.get("mpi4py.MPI")
            if mpi is None:
                with contextlib.suppress(Exception):
                    import mpi4py  # lazy: optional, MPI, only with several ranks
                    mpi4py.rc.initialize = False
                    from mpi4py import MPI as mpi  # lazy: optional, MPI, only with several ranks
            if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
                mpi.COMM_WORLD.Abort(code)
        os._exit(code)

    # -- training --
    def broadcast_state(self, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> None:
        pass

    def wrap_optimizer(self, optimizer, model, accum_steps: int, fp16_allreduce: bool, process_set=None, prefix=""):
        return optimizer

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics, which each rank otherwise keeps
        from its own batches): before an evaluation, so all ranks evaluate the model that rank 0 saves
        (as DistributedDataParallel does before every forward)."""

    def sync_grads(self, model: torch.nn.Module) -> None:
        """Average gradients across ranks where the optimizer does not (torch backend)."""

    def step(self, model: torch.nn.Module, optimizer, scaler=None, clip: float = 0.0) -> None:
        """One optimizer step on the gradients averaged over ranks: unscaled (fp16 loss scaling) and
        clipped to norm ``clip`` where asked, then zeroed. The backend's order of operations lives here
        (``_wait_for_grads``, ``_stepping``), so the training loop is the same under every launcher."""
        self.sync_grads(model)
        touch = scaler is not None or bool(clip)       # the averaged gradients are read before the step
        if touch:
            self._wait_for_grads(optimizer)
            if scaler is not None:
                scaler.unscale_(optimizer)
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        with self._stepping(optimizer, touch):
            if scaler is not None:
                scaler.step(optimizer)
            else:
                optimizer.step()
        if scaler is not None:
            scaler.update()
        optimizer.zero_grad()

    def _wait_for_grads(self, optimizer) -> None:
        """Before the averaged gradients are read: nothing to wait for here (sync_grads averaged them)."""

    def _stepping(self, optimizer, waited: bool):
        return contextlib.nullcontext()

    def shutdown(self) -> None:
        pass


def end_on_error(dist, label: str, e: Exception, code: Optional[int] = None) -> int:
    """The one message and the exit code (``code``; else 2 for a UserError, 1 for anything else) for an
    error that ended ``covidnetx LABEL``. An AgreedError, raised by every rank together, is printed by
    rank 0 and returned. Any other error may be this rank's alone (a training step, a loader, a
    collective): it is printed with the rank and the whole job ends, since the other ranks may be
    waiting in a collective for this one. A single process returns the code; an unexpected exception
    there keeps its traceback (re-raised)."""
    code = code if code is not None else (2 if isinstance(e, UserError) else 1)
    alone = dist is None or dist.size == 1
    if isinstance(e, AgreedError):
        if dist is None or dist.is_primary:
            print(f"covidnetx {label}: error: {e}", file=sys.stderr)
        return code
    if isinstance(e, (UserError, FloatingPointError)):
        message = str(e)
    elif alone:
        raise e
    else:
        message = f"{type(e).__name__}: {e}\n{''.join(traceback.format_exception(e))}"
    if alone:
        print(f"covidnetx {label}: error: {message}", file=sys.stderr)
        return code
    print(f"covidnetx {label}: error: rank {dist.rank}: {message}", file=sys.stderr, flush=True)
    dist.abort(code)
    return code


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without stalling the host: to a GPU through pinned memory and an
    asynchronous copy (a copy from pageable memory waits for the device's queue to drain first)."""
    if device.type != "cuda" or t.device.type == "cuda":
        return t.to(device)
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


def _pick_device(local_rank: int, want: str) -> torch.device:
    if want == "cpu" or not torch.cuda.is_available():
        if want == "cuda":
            raise UserError("device 'cuda' requested but no GPU is visible")
        return torch.device("cpu")
    # Horovod/torch: pin the device by local rank
    n = torch.cuda.device_count()
    torch.cuda.set_device(local_rank % n)
    # batches have fixed shapes (training steps, and evaluation blocks padded to whole batches): let cuDNN
    # time its algorithms once per shape and keep the fastest
    torch.backends.cudnn.benchmark = True
    return torch.device("cuda", local_rank % n)


def _check_gloo_env(env) -> None:
    """Horovod's Gloo controller and Gloo CPU operations need the rendezvous that ``horovodrun --gloo``
    starts; asked for under mpirun or srun, Horovod hangs (controller) or segfaults in its first allreduce
    (operations), so refuse with a message instead."""
    asked = [k for k in ("HOROVOD_CONTROLLER", "HOROVOD_CPU_OPERATIONS") if env.get(k, "").strip().lower() == "gloo"]
    if asked and not env.get("HOROVOD_GLOO_RENDEZVOUS_ADDR"):
        raise UserError(f"{' and '.join(k + '=gloo' for k in asked)} but no Gloo rendezvous "
                        f"(HOROVOD_GLOO_RENDEZVOUS_ADDR unset): Gloo needs horovodrun --gloo; under mpirun or srun "
                        f"unset {' and '.join(asked)} (or set them to mpi)")


class HorovodDist(Dist):
    backend = "horovod"

    def __init__(self, want_device: str, process_sets=()):
        try:
            import horovod.torch as hvd  # lazy: optional, the Horovod backend
        except ImportError as e:
            raise UserError(f"backend 'horovod' needs horovod built against torch ({e}); run make setup "
                            f"or use backend=torch/none") from None
        self.hvd = hvd
        _check_gloo_env(os.environ)
        hvd.init(process_sets=list(process_sets) or None)           # Horovod: initialize
        world = World(hvd.rank(), hvd.size(), hvd.local_rank())
        super().__init__(world, _pick_device(hvd.local_rank(), want_device))  # Horovod: pin device by local rank

    # fixed tensor names: Horovod matches collectives across ranks by name, and auto-generated or
    # type-derived names (broadcast_object's default) differ between ranks or flood its response cache
    def allreduce_sum(self, x):
        t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        return self.hvd.allreduce(t, op=self.hvd.Sum, name="covidnetx.allreduce_sum").numpy()

    def allreduce_sum_async(self, x):
        t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        # a fixed name keeps Horovod's response cache hit; the engine keeps one of these in flight at a time
        h = self.hvd.allreduce_async(t, op=self.hvd.Sum, name="covidnetx.allreduce_sum_async")
        return lambda: self.hvd.synchronize(h).numpy()

    def allgather(self, x):
        t = torch.as_tensor(np.ascontiguousarray(x))
        return self.hvd.allgather(t, name="covidnetx.allgather").numpy()

    def broadcast_object(self, obj, root=0):
        return self.hvd.broadcast_object(obj, root_rank=root, name="covidnetx.broadcast_object")

    def allgather_object(self, obj):
        return self.hvd.allgather_object(obj, name="covidnetx.allgather_object")

    def barrier(self):
        self.hvd.allreduce(torch.zeros(1), name="covidnetx.barrier")

    def broadcast_state(self, model, optimizer):
        # Horovod: broadcast optimizer state & parameters from rank 0. The optimizer state only when rank 0
        # has one (a resumed run): on an empty state broadcast_optimizer_state first takes a zero-gradient
        # step to create it, which with weight decay moves the weights (and they would then differ from a
        # single-process run). Parameters last, so they are rank 0's whatever happened before.
        if optimizer is not None and self.hvd.broadcast_object(bool(optimizer.state_dict()["state"]), root_rank=0,
                                                               name="covidnetx.has_optimizer_state"):
            self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    def broadcast_buffers(self, model):
        buffers = [(f"buffer.{n}", b) for n, b in model.named_buffers()]
        if buffers:
            self.hvd.broadcast_parameters(buffers, root_rank=0)

    def wrap_optimizer(self, optimizer, model, accum_steps, fp16_allreduce, process_set=None, prefix=""):
        # Horovod: wrap the optimizer (allreduce of gradients, optional fp16 compression, accumulation);
        # ``process_set`` and a name ``prefix`` let several models reduce over different sets of ranks
        # (the step benchmark's interleaved phases)
        compression = self.hvd.Compression.fp16 if fp16_allreduce else self.hvd.Compression.none
        params = [(prefix + n, p) for n, p in model.named_parameters() if p.requires_grad]
        state = optimizer.state_dict()
        wrapped = self.hvd.DistributedOptimizer(optimizer, named_parameters=params, compression=compression,
                                                backward_passes_per_step=accum_steps, op=self.hvd.Average,
                                                process_set=process_set or self.hvd.global_process_set)
        # the wrapper is a new optimizer built from the param groups alone: carry a resumed state over
        # (momentum buffers, Adam moments), or a resumed run would restart them from zero
        if state["state"]:
            wrapped.load_state_dict(state)
        return wrapped

    # Horovod: the DistributedOptimizer's allreduces start in backward and step() waits for them. To read
    # the averaged gradients first (unscale, clip), wait explicitly, then step without a second wait
    # (Horovod's synchronize / skip_synchronize pattern for AMP and gradient clipping)
    def _wait_for_grads(self, optimizer):
        optimizer.synchronize()

    def _stepping(self, optimizer, waited):
        return optimizer.skip_synchronize() if waited else contextlib.nullcontext()

    def shutdown(self):
        self.hvd.shutdown()


class TorchDist(Dist):
    backend = "torch"

    def __init__(self, want_device: str):
        import torch.distributed as td  # lazy: the torch backend only
        self.td = td
        world = world_from_env()
        os.environ.setdefault("RANK", str(world.rank))
        os.environ.setdefault("WORLD_SIZE", str(world.size))
        if "MASTER_ADDR" not in os.environ:
            addr, port = _rendezvous(world)
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
        device = _pick_device(world.local_rank, want_device)
        td.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank,
                              world_size=world.size)
        super().__init__(world, device)

    def _t(self, x):
        return to_device(torch.as_tensor(x), self.device)

    def allreduce_sum(self, x):
        t = self._t(np.asarray(x, dtype=np.float64))
        self.td.all_reduce(t)
        return t.cpu().numpy()

    def allreduce_sum_async(self, x):
        t = self._t(np.asarray(x, dtype=np.float64))
        work = self.td.all_reduce(t, async_op=True)
        if t.is_cuda:
            # NCCL: the current stream (not the host) waits for the sum, which is copied back to pinned
            # memory at once; reading it later waits for that copy alone, not for the step queued after it
            work.wait()
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()

            def finish_cuda():
                copied.synchronize()
                return host.numpy()
            return finish_cuda

        def finish():
            work.wait()
            return t.numpy()
        return finish

    def allgather(self, x):
        objs = [None] * self.size
        self.td.all_gather_object(objs, np.asarray(x))
        return np.concatenate(objs)

    def broadcast_object(self, obj, root=0):
        box = [obj]
        self.td.broadcast_object_list(box, src=root)
        return box[0]

    def allgather_object(self, obj):
        objs = [None] * self.size
        self.td.all_gather_object(objs, obj)
        return objs

    def barrier(self):
        self.td.barrier()

    def broadcast_state(self, model, optimizer):
        for t in model.state_dict().values():
            self.td.broadcast(t, src=0)
        if optimizer is not None:
            state = self.broadcast_object(optimizer.state_dict() if self.rank == 0 else None)
            optimizer.load_state_dict(state)

    def broadcast_buffers(self, model):
        for b in model.buffers():
            self.td.broadcast(b, src=0)

    def sync_grads(self, model):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.td.all_reduce(flat)
        flat /= self.size
        o = 0
        for g in grads:
            g.copy_(flat[o:o + g.numel()].view_as(g))
            o += g.numel()

    def shutdown(self):
        # every rank reaches shutdown on an agreed path (a finished or interrupted run, an agreed error; any
        # other failure ends the job from its rank first): meet before tearing the group down, so that no
        # rank destroys it while gloo's threads still serve the other's last collective (which aborted the
        # process at exit, after an interrupted run had saved its checkpoint)
        try:
            self.td.barrier()
        finally:
            self.td.destroy_process_group()


def _rendezvous(world: World):
    """MASTER_ADDR/PORT when the launcher did not set them: rank 0 picks a free port, MPI broadcasts it."""
    if world.size == 1:
        return "127.0.0.1", _free_port()
    from mpi4py import MPI  # lazy: optional, MPI, only with several ranks
    comm = MPI.COMM_WORLD
    info = (socket.gethostname(), _free_port()) if comm.Get_rank() == 0 else None
    host, port = comm.bcast(info, root=0)
    return ("127.0.0.1" if host == socket.gethostname() else host), port


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def init(backend: str = "horovod", device: str = "auto") -> Dist:
    if backend == "horovod":
        return HorovodDist(device)
    if backend == "torch":
        return TorchDist(device)
    if backend == "none":
        w = world_from_env()
        if w.size > 1:
            raise UserError(f"backend 'none' but the launcher started {w.size} ranks; use horovod or torch")
        return Dist(w, _pick_device(0, device))
    raise UserError(f"unknown backend {backend!r} (horovod | torch | none)")


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def default_threads() -> int:
    """Intra-op threads per process when the config leaves ``threads`` at 0: the CPUs this process may
    run on. When a launcher bound it (srun --cpus-per-task, mpirun --bind-to ...), its affinity set is
    its share already; when unbound (the whole machine), the machine is split among the ranks on this
    node. os.cpu_count() alone would give every rank of a 4-GPU node all 128 cores of the node."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if allowed < (os.cpu_count() or allowed):
        return max(1, allowed)
    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", "0") or 0)
                or world_from_env().size)
    return max(1, allowed // max(1, local))


def set_threads(cfg) -> None:
    torch.set_num_threads(cfg.threads or default_threads())
