"""The run directory: the one module that knows a run's files, the checkpoint format, where the row goes.

A run directory ``OUT/RUN_NAME/`` holds::

    config.yaml     the resolved config (a rerun under the same name must match it)
    last.ckpt       the latest checkpoint (model, optimizer, step, samples seen, classes, config, metadata)
    progress.json   a few bytes beside it: step, total steps, samples seen, time (read without unpickling)
    done.json       the run's result row (``ResultRow``), written last: a run is finished exactly when this exists
    tb/             TensorBoard events
    head.npz, probe.json   a linear probe's head and its trials (probe runs)

Every file is written atomically (temporary sibling, then rename): a killed job leaves the previous
version or the new one. Checkpoints are built (``checkpoint``) and read (``read_checkpoint``, one rule
for what a covidnetx checkpoint is) here and nowhere else, with ``torch.load(weights_only=True)``: a
pickle that would build any other object or call a function is refused before it runs. A run's row
goes to the results table first, then to ``done.json`` (``RunDir.publish``): a killed job leaves a run
that reruns, never one marked done without its row.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Optional

from covidnetx import config as C
from covidnetx.results import ResultRow, append_row, json_safe
from covidnetx.utils import UserError, atomic_write_bytes, atomic_write_json, require_file

CONFIG = "config.yaml"
CKPT = "last.ckpt"
PROGRESS = "progress.json"
DONE = "done.json"
TB = "tb"
PROBE_HEAD = "head.npz"
PROBE_TRIALS = "probe.json"
CHECKPOINT_KEYS = ("model", "step", "class_names", "config")       # what makes a file a covidnetx checkpoint
RESULTS = "results.jsonl"


def results_path(cfg) -> str:
    """The results table a run appends to: ``results``, or OUT_DIR/results.jsonl."""
    return cfg.results or str(Path(cfg.out_dir) / RESULTS)


def checkpoint(*, model: dict, class_names, config: str, meta: dict, step: int = 0, samples_seen: int = 0,
               optimizer: Optional[dict] = None, scaler: Optional[dict] = None) -> dict:
    """A covidnetx checkpoint: the model's state dict, the classes of its head, its resolved config (YAML
    text), the step and samples seen, the optimizer (and fp16 scaler) state a resume needs, and what it
    says of its run (``meta``: read by transfer runs initialised from it and by reports)."""
    return {"model": model, "optimizer": optimizer, "step": int(step), "samples_seen": int(samples_seen),
            "class_names": list(class_names), "config": config, "scaler": scaler, "meta": dict(meta)}


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` to memory, then one atomic write (a full disk is one UserError naming the file)."""
    import torch  # lazy: heavy, packing and sweep --status never import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint"):
    """The one place covidnetx reads a checkpoint file: ``torch.load`` with ``weights_only=True`` (tensors,
    numbers, strings and containers). A missing or unreadable file is a UserError naming it."""
    import torch  # lazy: heavy, packing and sweep --status never import torch
    require_file(path, what)
    try:
        with warnings.catch_warnings():      # the one error below says it all (torch warns about pickles first)
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is the same user-facing error
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{what} {str(path)!r} is not readable as a weights-only checkpoint "
                        f"({type(e).__name__}: {first})") from None


def is_checkpoint(state) -> bool:
    """The one rule: a dict with every key of ``CHECKPOINT_KEYS`` and a state dict as its model."""
    return isinstance(state, dict) and all(k in state for k in CHECKPOINT_KEYS) and isinstance(state["model"], dict)


def read_checkpoint(path: str | os.PathLike, what: str = "checkpoint", hint: str = "") -> dict:
    """A covidnetx checkpoint read from ``path`` (weights-only), else one UserError naming the file and
    what it lacks (``hint`` is added to that message)."""
    state = load_checkpoint(path, what)
    if not is_checkpoint(state):
        lacks = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state] or ["a state dict"]
        raise UserError(f"{path}: not a covidnetx checkpoint (lacks {', '.join(lacks)})" + (f"; {hint}" if hint else ""))
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
        hint = "model.init_from takes plain weights"
        if self.ckpt.is_file():
            return read_checkpoint(self.ckpt, "the run's own checkpoint", hint), f"resumed from {self.ckpt}"
        if resume:
            return read_checkpoint(resume, "config key 'resume': checkpoint", hint), f"resumed from {resume}"
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

    def claim(self, cfg, dist, force: bool = False) -> None:
        """Before a run starts here: a run directory belongs to one config. Reusing its name with another
        config is an error naming the keys that differ; ``force`` (``--force``) deletes the existing run
        directory (rank 0; call it inside ``dist.phase()``, whose agreement is the barrier after it), so the
        run starts over."""
        if not self.config.is_file():
            return
        if force:
            if dist.is_primary:
                shutil.rmtree(self.path)
                print(f"[{cfg.run_name}] --force: removed the earlier run in {self.path}", flush=True)
            return
        try:
            old = C.load_config(str(self.config))
        except UserError as e:
            raise UserError(f"run directory {self.path}: its config.yaml is not readable ({e}); pass --force to "
                            "start the run over") from None
        # keys this config leaves to the run's start match whatever the run resolved them to (the trainer
        # compares the resolved values before it resumes: check_resolved)
        diff = C.differences(old, cfg, ignore=C.RUN_KEYS_FREE + C.unresolved_keys(cfg))
        if diff:
            shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise UserError(f"run directory {self.path} holds a run of another config ({shown}); choose another "
                            "run_name, or pass --force to delete that run and start over")

    def check_resolved(self, cfg) -> None:
        """Before a run resumes here: the config resolved for this start (schedule from the training-set
        size and the ranks) is the one the run was started with; else one UserError naming the keys."""
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

    def publish(self, row: ResultRow, results: str) -> None:
        """Append ``row`` to the results table ``results``; a final row then marks the run finished
        (``done.json``), so a run is done only once its row is in the table."""
        append_row(results, row)
        if row.final:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path / DONE, json_safe(row.as_dict()))
