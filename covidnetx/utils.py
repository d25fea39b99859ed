"""Small shared helpers: atomic writes, hashing, user-facing errors."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

# the real datasets (../shared/data beside the checkout; COVIDNETX_SHARED_DATA elsewhere)
SHARED = Path(os.environ.get("COVIDNETX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


class UserError(Exception):
    """A problem with the user's input (file, row, key, option). The CLI prints it once and exits 2."""


class AgreedError(UserError):
    """A UserError that every rank of a job raises together (after an error agreement, see
    ``Dist.phase``): rank 0 prints it once and every rank exits 2 normally. Any other failure under a
    multi-rank launcher ends the whole job from the rank that met it."""


def machine_summary() -> str:
    """What this process runs on, measured (for reports): "2 CPU cores, no GPU", "16 CPU cores, 4 x NVIDIA
    A100-SXM4-40GB" (the cores this process may use; GPUs that torch sees)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = "no GPU"
    try:
        import torch  # lazy: heavy, packing and sweep --status never import torch
        if torch.cuda.is_available() and torch.cuda.device_count():
            gpus = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - a broken CUDA install still gets a report
        pass
    return f"{cores} CPU core{'s' if cores != 1 else ''}, {gpus}"


class StopRequested(Exception):
    """A stop signal (SIGUSR1/SIGTERM, see launch.StopSignals) seen inside a long start-up step (a
    shard's checksum, ...): the run ends within seconds, as a signal between runs does."""


_STOP_CHECK = [lambda: False]          # set by launch.StopSignals while its handlers are installed


def set_stop_check(fn) -> None:
    _STOP_CHECK[0] = fn


def check_stop() -> None:
    """In long loops outside the training step: raise StopRequested once a stop signal has arrived."""
    if _STOP_CHECK[0]():
        raise StopRequested()


class _StrictLoader:
    """Built once, on first use: a SafeLoader that refuses aliases (no expansion bombs; covidnetx writes
    none) and duplicate keys (the last would win without a word)."""
    cls = None

    @classmethod
    def get(cls):
        if cls.cls is None:
            class Loader(yaml.SafeLoader):
                def compose_node(self, parent, index):
                    if self.check_event(yaml.AliasEvent):
                        ev = self.peek_event()
                        raise _YamlRefused(f"aliases (*{ev.anchor}) are not accepted; write the value out",
                                           ev.start_mark)
                    return super().compose_node(parent, index)

                def construct_mapping(self, node, deep=False):
                    seen = {}
                    for key_node, _ in node.value:
                        if key_node.tag == "tag:yaml.org,2002:merge":
                            raise _YamlRefused("merge keys (<<) are not accepted; write the keys out",
                                               key_node.start_mark)
                        try:
                            key = self.construct_object(key_node, deep=True)
                            hash(key)
                        except (TypeError, yaml.YAMLError):
                            continue          # the base class names an unhashable key
                        if key in seen:
                            raise _YamlRefused(f"duplicate key {key!r} (first on line {seen[key] + 1})",
                                               key_node.start_mark)
                        seen[key] = key_node.start_mark.line
                    return super().construct_mapping(node, deep)

            cls.cls = Loader
        return cls.cls


class _YamlRefused(Exception):
    def __init__(self, msg, mark):
        super().__init__(msg)
        self.mark = mark


def read_text(path, what: str = "file") -> str:
    """A user's text file as UTF-8 (a BOM dropped): one UserError naming the file, line and column of the
    first byte that is not UTF-8, or what the path is when it is not a regular file."""
    require_file(path, what)
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        line, col, byte = first_bad_utf8(data.splitlines(keepends=True))
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{byte:02x} at column {col})") from None
    return text.removeprefix("\ufeff")


def first_bad_utf8(lines) -> tuple:
    """(line, column, byte) of the first byte sequence that is not UTF-8 in ``lines`` (bytes, each with
    its newline); (0, 0, 0) when there is none."""
    for n, raw in enumerate(lines, 1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return n, e.start + 1, raw[e.start]
    return 0, 0, 0


def read_json(text: str, where: str):
    """JSON a user handed us: one UserError for anything unreadable (syntax, nesting too deep, a number
    too long to convert)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: unreadable JSON ({e})") from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply") from None
    except ValueError as e:             # e.g. an integer of more digits than Python converts
        raise UserError(f"{where}: unreadable JSON ({e})") from None


def read_yaml(text: str, where: str):
    """YAML from a file or option the user hands us: safe types only, no aliases, no duplicate keys;
    anything else is one UserError naming ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader.get())
    except _YamlRefused as e:
        raise UserError(f"{where}:{e.mark.line + 1}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        why = " ".join(str(getattr(e, "problem", None) or e).split())
        raise UserError(f"{where}{line}: not valid YAML ({why})") from None
    except RecursionError:
        raise UserError(f"{where}: YAML nested too deeply") from None
    except ValueError as e:             # e.g. an integer of more digits than Python converts
        raise UserError(f"{where}: unreadable value ({str(e).splitlines()[0]})") from None


def dump_yaml(obj, **kw) -> str:
    """YAML text without anchors or aliases (a value used twice is written twice), so that covidnetx's
    own files always pass ``read_yaml``."""
    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True
    return yaml.dump(obj, Dumper=Dumper, **kw)


def require_file(path, what: str) -> None:
    """One UserError unless ``path`` is a regular file: "not found" only where nothing exists; a folder, a
    FIFO, a device or a socket is named as such (and never opened: reading one could block forever)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{what} {str(path)!r} not found") from None
    except OSError as e:
        raise UserError(f"{what} {str(path)!r} cannot be read ({e.strerror})") from None
    if stat.S_ISREG(mode):
        return
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "not a regular file")
    raise UserError(f"{what} {str(path)!r} is {kind}, not a file")


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20, stoppable: bool = False) -> str:
    """SHA-256 of a file, read in ``bufsize`` blocks. ``stoppable``: a stop signal ends the read between
    blocks (StopRequested) — only where every rank meets the outcome (inside ``Dist.phase``)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            if stoppable:
                check_stop()
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only be read by
    setting it, which would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def ensure_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Make ``path`` a folder this process can write in, or raise one UserError that says why not
    (``what`` names it for the user: a config key, "output folder")."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what}: {p} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test.{os.uname().nodename}.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except (NotADirectoryError, FileExistsError):
        raise UserError(f"{what}: a part of {p} is a file, not a folder") from None
    except OSError as e:
        raise UserError(f"{what}: cannot write in {p} ({e.strerror or e})") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write through a temporary sibling and rename: readers see the old file or the new one, never a part.
    The file gets the permissions any new file gets under the umask (mkstemp alone would make it 0600).
    A failed write (disk full, quota, file-size limit, read-only or unwritable folder) is one UserError
    naming the file; the temporary file is removed and an earlier version stays as it was."""
    p = Path(path)
    tmp = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp.{p.name}.", dir=p.parent)
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise UserError(write_failure(p, e)) from None
        raise


def write_failure(path: str | os.PathLike, e: OSError) -> str:
    """The message for a file that could not be written."""
    return (f"{path}: cannot write ({e.strerror or e}); nothing was replaced (is the disk full, the quota "
            f"reached or the folder read-only?)")


def dumps_json(obj) -> str:
    """Deterministic JSON (sorted keys, fixed separators) so identical content gives identical bytes."""
    return json.dumps(obj, sort_keys=True, indent=1, separators=(",", ": "), allow_nan=True) + "\n"


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, dumps_json(obj).encode())


def stable_hash(obj, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:n]


class Progress:
    """The console line of a long phase, on rank 0 (the caller's test): step / total, loss, images/s over
    the run so far and the ETA, at most every ``every_s`` seconds (0: at each call); plain lines (no carriage returns), so a Slurm output file shows a slow job from a hung one."""

    def __init__(self, name: str, total: int, batch: int, every_s: float, start: int = 0, unit: str = "step"):
        self.name, self.total, self.batch, self.every_s, self.unit = name, total, batch, every_s, unit
        self.t0 = self.t_last = time.perf_counter()
        self.start = self.last_step = start

    def line(self, step: int, loss, now: float) -> str:
        ips = (step - self.start) * self.batch / max(1e-9, now - self.t0)
        eta = (self.total - step) * self.batch / ips if ips > 0 else float("nan")
        eta_s = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "?"
        return (f"[{self.name}] {self.unit} {step}/{self.total} ({100 * step / max(1, self.total):.0f}%)"
                + (f" loss {loss:.4f}," if loss is not None else ",") + f" {ips:,.0f} img/s, ETA {eta_s}")

    def step(self, step: int, loss=None) -> None:
        now = time.perf_counter()
        if now - self.t_last >= self.every_s:
            print(self.line(step, loss, now), flush=True)
            self.t_last, self.last_step = now, step


def run_step(cmd: list) -> None:
    """Run one step of a pipeline (pack, verify, ...) as a subprocess, printed first; a failure is one
    UserError naming the command."""
    print("$ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    r = subprocess.run([str(c) for c in cmd])
    if r.returncode != 0:
        raise UserError(f"step failed with exit code {r.returncode}: {' '.join(str(c) for c in cmd)}")
