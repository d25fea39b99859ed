"""The results table: one JSON object per line, append-only.

Appends from many concurrent jobs (array tasks on a shared file system) never lose or tear a row: each
row is one ``write`` of one line on an ``O_APPEND`` descriptor, under an exclusive ``flock`` on a lock
file beside the table, followed by ``fsync``.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
from pathlib import Path

from covidnetx.utils import UserError, write_failure

REQUIRED_FIELDS = (
    "run_id", "task", "model", "params", "source", "source_fraction", "target", "regime", "shots", "seed",
    "world_size", "global_batch", "steps", "samples_seen", "flops", "img_per_s", "git_sha", "config_hash",
    "accuracy", "balanced_accuracy", "auc", "ap",
)


def json_safe(v):
    """NaN and infinities become null (strict JSON), numpy and torch scalars plain numbers."""
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if hasattr(v, "item"):
        return json_safe(v.item())
    return v


def append_row(path: str | os.PathLike, row: dict) -> None:
    missing = [k for k in REQUIRED_FIELDS if k not in row]
    if missing:
        raise ValueError(f"result row lacks fields {missing}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(json_safe(row), sort_keys=True, allow_nan=False) + "\n").encode()
    try:
        with open(p.with_name(p.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
                try:
                    size = os.fstat(fd).st_size
                    try:
                        n = os.write(fd, line)
                        if n != len(line):
                            raise OSError(errno.ENOSPC, f"short write ({n} of {len(line)} bytes)")
                        os.fsync(fd)
                    except OSError:
                        os.ftruncate(fd, size)     # a torn row would make the table unreadable: remove it
                        raise
                finally:
                    os.close(fd)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    except OSError as e:
        raise UserError(write_failure(p, e)) from None


def load_results(path: str | os.PathLike) -> list:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"results table {p} not found")
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{p}:{n}: unreadable result row ({e})") from None
    return rows
