"""The results table: one JSON object per line, append-only, each line one ``ResultRow``.

Appends from many concurrent jobs (array tasks on a shared file system) never lose or tear a row: each
row is one ``write`` of one line on an ``O_APPEND`` descriptor, under an exclusive ``flock`` on a lock
file beside the table, followed by ``fsync``.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from covidnetx.utils import UserError, read_json, read_text, write_failure

SCHEMA_VERSION = 2      # raise when a field is renamed, removed or changes meaning (adding one does not)
# 2: probe rows (linear, few-shot linear) say steps 0 and global_batch null (no SGD) and carry their L-BFGS
#    iterations in probe_iterations (schema 1 wrote the iterations into steps and total_steps and the
#    training-set size into global_batch); schema-1 tables are read and converted (``from_dict``)


@dataclass(frozen=True)
class ResultRow(Mapping):
    """One finished (or intermediate) evaluation of a run: what ran, on what, at what cost, and how it
    scored. The engine and the linear probe write it; ``report``, ``fit`` and ``sweep --status`` read it.
    On disk it is one flat JSON object: these fields, ``schema``, and the evaluation's further metrics
    (95% intervals ``*_ci_lo/hi``, ``n``, ``n_classes``, per-class ``sensitivity/C`` and ``ppv/C``,
    ``collapsed``, probe details) from ``extra``. Fields read as a mapping too (``row["accuracy"]``,
    ``row.get("auc_ci_lo")``), so the analysis reads covidnetx rows and any other table alike."""
    run_id: str
    task: str                          # pretrain | transfer
    model: str
    params: int
    trainable_params: int
    source: Optional[str]              # source composition label (transfer: of the checkpoint; None = scratch)
    source_fraction: Optional[float]
    target: Optional[str]
    regime: str                        # pretrain | full | linear | fewshot
    shots: Optional[int]               # few-shot: examples per class
    seed: int
    pretrain_seed: Optional[int]
    world_size: int
    global_batch: Optional[int]        # None: no SGD (a linear probe)
    steps: int                         # optimizer steps done when this row was written (0 for a probe)
    total_steps: int
    samples_seen: int
    train_size: int
    epochs: Optional[float]
    flops: float                       # training FLOPs of this run (3 x forward x samples seen)
    flops_per_sample_fwd: int
    pretrain_flops: Optional[float]    # transfer rows: of the checkpoint they start from
    pretrain_steps: Optional[int]
    pretrain_train_size: Optional[int]
    pretrain_epochs: Optional[float]
    source_domain: Optional[str]
    target_domain: Optional[str]
    domain_pair: Optional[str]         # intra | inter | mixed (a mixture of domains) | None
    img_per_s: float
    precision: str
    mixup: float
    loader: str
    backend: str
    eval_split: str
    git_sha: Optional[str]
    config_hash: str
    final: bool                        # the run's last row (False: an evaluation during the run)
    time: float
    align_ref: Optional[float]
    align_norm: Optional[float]
    logme: Optional[float]
    n: Optional[int]                   # evaluated samples (None: no evaluation split)
    n_classes: Optional[int]
    accuracy: Optional[float]
    balanced_accuracy: Optional[float]
    auc: Optional[float]
    ap: Optional[float]
    probe_iterations: Optional[int] = None     # a probe's L-BFGS iterations (None: a run trained by SGD)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        flat = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        clash = sorted(set(flat) & set(self.extra) | ({"schema"} & set(self.extra)))
        if clash:
            raise ValueError(f"result row: extra metrics reuse field names {clash}")
        object.__setattr__(self, "_flat", {"schema": SCHEMA_VERSION, **flat, **self.extra})

    @classmethod
    def build(cls, **values) -> "ResultRow":
        """A row from keyword values: the fields by name, anything else into ``extra``."""
        return cls(**{k: v for k, v in values.items() if k in FIELD_NAMES},
                   extra={k: v for k, v in values.items() if k not in FIELD_NAMES})

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "ResultRow":
        """A row read back from the table (``where`` names file and line in errors): the schema version,
        every field present with its type."""
        if not isinstance(d, dict):
            raise UserError(f"{where}: a result row is a JSON object, not {type(d).__name__}")
        version = d.get("schema", 1)       # rows of the first layout carried no version
        if version == 1:
            d = _from_schema_1(d)
        elif version != SCHEMA_VERSION:
            raise UserError(f"{where}: result row schema {version!r}; this covidnetx reads schemas 1 and "
                            f"{SCHEMA_VERSION}")
        missing = [k for k in FIELD_NAMES if k not in d]
        if missing:
            raise UserError(f"{where}: result row lacks {', '.join(missing)}")
        for k in FIELD_NAMES:
            if not _has_type(d[k], FIELD_TYPES[k]):
                raise UserError(f"{where}: result row key {k!r} is {d[k]!r}, expected {_type_name(FIELD_TYPES[k])}")
        return cls.build(**{k: v for k, v in d.items() if k != "schema"})

    def as_dict(self) -> dict:
        return dict(self._flat)

    def __getitem__(self, key):
        return self._flat[key]

    def __iter__(self):
        return iter(self._flat)

    def __len__(self):
        return len(self._flat)


def _from_schema_1(d: dict) -> dict:
    """A schema-1 row in schema 2's meaning: a probe row (it has ``probe_iterations``, then an extra
    metric) gets steps 0 and no global batch; every row gets the probe_iterations field."""
    d = {k: v for k, v in d.items() if k != "schema"}
    if "probe_iterations" in d:
        d.update(steps=0, total_steps=0, global_batch=None)
    else:
        d["probe_iterations"] = None
    return d


FIELD_TYPES = {k: v for k, v in typing.get_type_hints(ResultRow).items() if k != "extra"}
FIELD_NAMES = tuple(FIELD_TYPES)


def _has_type(v, t) -> bool:
    if typing.get_origin(t) is typing.Union:
        return any(_has_type(v, a) for a in typing.get_args(t))
    if t is type(None):
        return v is None
    if t is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, t)


def _type_name(t) -> str:
    if typing.get_origin(t) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(t))
    return "null" if t is type(None) else t.__name__


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


def append_row(path: str | os.PathLike, row: ResultRow) -> None:
    """Append one row (one locked ``O_APPEND`` write of one line, then ``fsync``)."""
    if not isinstance(row, ResultRow):
        raise TypeError(f"append_row takes a ResultRow, not {type(row).__name__}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    flat = json_safe(row.as_dict())
    ResultRow.from_dict(flat, f"result row of {row.run_id!r}")    # what a reader will check, checked now
    line = (json.dumps(flat, sort_keys=True, allow_nan=False) + "\n").encode()
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


def read_jsonl(path: str | os.PathLike, what: str = "results table") -> list:
    """(line number, object) of each non-empty line; an unreadable line is one UserError naming it."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} {p} not found")
    out = []
    # lines end at \n only (JSON strings may hold U+2028 and other characters str.splitlines splits at)
    for n, line in enumerate(read_text(p, what).split("\n"), 1):
        if line.strip():
            out.append((n, read_json(line, f"{p}:{n}")))
    return out


def load_results(path: str | os.PathLike) -> list:
    """Every row of a covidnetx results table as a checked ``ResultRow``."""
    return [r for _, r in result_pairs(path)]


def result_pairs(path: str | os.PathLike) -> list:
    """(where: "file:line", checked ``ResultRow``) of every row of a covidnetx results table."""
    return [(f"{path}:{n}", ResultRow.from_dict(d, f"{path}:{n}")) for n, d in read_jsonl(path)]
