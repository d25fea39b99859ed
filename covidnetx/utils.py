"""Small shared helpers: atomic writes, hashing, user-facing errors."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input (file, row, key, option). The CLI prints it once and exits 2."""


class AgreedError(UserError):
    """A UserError that every rank of a job raises together (after an error agreement, see
    ``Dist.phase``): rank 0 prints it once and every rank exits 2 normally. Any other failure under a
    multi-rank launcher ends the whole job from the rank that met it."""


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
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


def run_main(prog: str, build_parser, run, argv=None) -> int:
    """Entry point body shared by the subcommand modules: parse, run, turn a UserError into one message
    and exit code 2."""
    import sys
    try:
        return int(run(build_parser().parse_args(argv)) or 0)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
