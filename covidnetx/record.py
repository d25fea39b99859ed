"""The run record: the one module that knows a run directory's files and the checkpoint format.

A run directory ``OUT/RUN_NAME/`` holds::

    config.yaml     the resolved config (a rerun under the same name must match it)
    last.ckpt       the latest checkpoint (model, optimizer, step, samples seen, classes, config, metadata)
    progress.json   a few bytes beside it: step, total steps, samples seen, time (read without unpickling)
    done.json       the run's result row (``ResultRow``), written last: a run is finished exactly when this exists
    tb/             TensorBoard events
    head.npz, probe.json   a linear probe's head and its trials (probe runs)

Every file is written atomically (temporary sibling, then rename): a killed job leaves the previous
version or the new one. Checkpoints are read with ``torch.load(weights_only=True)`` here and nowhere
else: a pickle that would build any other object or call a function is refused before it runs.
"""
from __future__ import annotations

import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import Optional

from covidnetx.results import ResultRow, json_safe
from covidnetx.utils import UserError, atomic_write_bytes, atomic_write_json, require_file

CONFIG = "config.yaml"
CKPT = "last.ckpt"
PROGRESS = "progress.json"
DONE = "done.json"
TB = "tb"
PROBE_HEAD = "head.npz"
PROBE_TRIALS = "probe.json"
CHECKPOINT_KEYS = ("model", "step", "class_names")       # what makes a file a covidnetx training checkpoint


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` to memory, then one atomic write (a full disk is one UserError naming the file)."""
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint"):
    """The one place covidnetx reads a checkpoint file: ``torch.load`` with ``weights_only=True`` (tensors,
    numbers, strings and containers). A missing or unreadable file is a UserError naming it."""
    import torch
    require_file(path, what)
    try:
        with warnings.catch_warnings():      # the one error below says it all (torch warns about pickles first)
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is the same user-facing error
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{what} {str(path)!r} is not readable as a weights-only checkpoint "
                        f"({type(e).__name__}: {first})") from None


def check_training_checkpoint(state, where: str) -> dict:
    """``state`` if it is a covidnetx training checkpoint (what resume needs), else one UserError."""
    lacks = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if lacks:
        raise UserError(f"{where}: not a covidnetx training checkpoint (lacks {', '.join(lacks)}); "
                        "model.init_from takes plain weights")
    return state


class RunDir:
    """One run directory and its files. Writers are called on rank 0 only (inside ``Dist.phase`` so a
    failed write ends every rank); readers work on any rank."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ckpt(self) -> Path:
        return self.path / CKPT

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def tb(self) -> Path:
        return self.path / TB

    # -- reading --
    def is_done(self) -> bool:
        return (self.path / DONE).is_file()

    def result(self) -> Optional[ResultRow]:
        """The finished run's result row, or None while it is not finished."""
        p = self.path / DONE
        if not p.is_file():
            return None
        try:
            d = json.loads(p.read_text())
        except ValueError as e:
            raise UserError(f"{p}: unreadable ({e}); delete it to run again") from None
        return ResultRow.from_dict(d, str(p))

    def progress(self) -> Optional[dict]:
        try:
            return json.loads((self.path / PROGRESS).read_text())
        except (OSError, ValueError):
            return None

    def resume_from(self, resume: str = "") -> tuple:
        """(checkpoint state or None, how): the resume order's first two steps, this run's own
        ``last.ckpt``, then an explicit ``resume`` checkpoint (``init_from`` weights come after, from
        the model; scratch last)."""
        if self.ckpt.is_file():
            state = load_checkpoint(self.ckpt, "the run's own checkpoint")
            return check_training_checkpoint(state, str(self.ckpt)), f"resumed from {self.ckpt}"
        if resume:
            state = load_checkpoint(resume, "config key 'resume': checkpoint")
            return check_training_checkpoint(state, str(resume)), f"resumed from {resume}"
        return None, "scratch"

    def state(self, now: Optional[float] = None) -> tuple:
        """(state, detail): done | checkpointed | started | not started, for ``sweep --status``."""
        now = time.time() if now is None else now
        if self.is_done():
            return "done", ""
        if not self.path.is_dir():
            return "not started", ""
        files = [f for f in self.path.rglob("*") if f.is_file()]
        last = max((f.stat().st_mtime for f in files), default=self.path.stat().st_mtime)
        ago = now - last
        activity = f"last write {ago / 3600:.1f} h ago" if ago >= 3600 else f"last write {ago / 60:.0f} min ago"
        prog = self.progress()
        if prog is not None and "step" in prog and "total_steps" in prog:
            return "checkpointed", f"step {prog['step']} of {prog['total_steps']}, {activity}"
        if self.ckpt.is_file():
            return "checkpointed", f"step unknown, {activity}"
        return "started", f"no checkpoint yet, {activity}"

    def check_resolved(self, cfg) -> None:
        """Before a run resumes here: the config resolved for this start (schedule from the training-set
        size and the ranks) is the one the run was started with; else one UserError naming the keys."""
        from covidnetx import config as C
        if not self.config.is_file():
            return
        saved = C.load_config(str(self.config))
        diff = C.differences(saved, cfg, ignore=C.RUN_KEYS_FREE + C.unresolved_keys(saved))
        if diff:
            raise UserError(f"run directory {self.path} was started with another resolved schedule ("
                            f"{'; '.join(diff[:6])}): the training set or the number of ranks changed; choose "
                            "another run_name, or pass --force to start over")

    # -- writing (rank 0) --
    def write_config(self, text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.config, text.encode())

    def save(self, state: dict, *, step: int, total_steps: int, samples_seen: int) -> None:
        """The checkpoint, then ``progress.json`` beside it."""
        save_checkpoint(state, self.ckpt)
        atomic_write_json(self.path / PROGRESS, {"step": step, "total_steps": total_steps,
                                                 "samples_seen": samples_seen, "time": time.time()})

    def finish(self, row: ResultRow) -> None:
        """Mark the run finished with its result row (after the row is in the results table)."""
        atomic_write_json(self.path / DONE, json_safe(row.as_dict()))
