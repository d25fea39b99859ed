"""Result tables as the analysis reads them, and the rules every printed number follows.

* Tables: covidnetx's results JSONL (``ResultRow``s; finished rows, the latest per ``run_id`` where rows
  carry one), any other JSONL, or any CSV with a header. Rows need only the columns a command names.
* Cells: the runs that share everything but the seed. **n counts independent units**: the runs that
  start from one pre-trained checkpoint (few-shot draws on it) are one unit, averaged first; every other
  run (pre-training, scratch, one transfer per checkpoint) is its own unit. A cell of n >= 2 units is
  shown as "mean ± std (n)", with the number of runs where it differs ("(n=3; 15 runs)"); a cell of one
  unit as its value with its test-set 95% interval, "value [lo–hi] (n=1)". A mean is never shown
  without its n.
* Chance: a cell whose balanced accuracy cannot be told from chance (1 / number of classes) is flagged
  wherever it is shown and left out of fits. Its interval is the run's test-set interval (n = 1), or,
  for n >= 2, mean ± the root-sum-square of the seeds' t-interval half-width and the runs' mean test-set
  half-width (the test set is shared by the seeds, so its noise does not average out), as a normal
  interval (1.96: with 2-3 seeds a t quantile would call nearly every cell "chance"). A run whose
  predictions all fall in one class is ``collapsed`` and is shown as such, never as an accuracy.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from covidnetx.results import ResultRow, read_jsonl
from covidnetx.scaling.stats import t975
from covidnetx.utils import UserError, read_text

# x axes derived from covidnetx result rows (other names are read as columns)
DERIVED = {
    "params": ("params", "params"),
    "data": ("train_size", "pretrain_train_size"),             # (pre-training row, transfer row)
    "compute": ("flops", "pretrain_flops"),
    "epochs": ("epochs", "pretrain_epochs"),
}


def _number(v):
    if v is None or isinstance(v, (int, float)):
        return v
    s = str(v).strip()
    if s == "" or s.lower() in ("none", "null", "na"):
        return None                  # missing; "nan" is a number that is not finite (the checks name it)
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    try:
        f = float(s)
    except ValueError:
        return s
    return int(f) if f.is_integer() and "." not in s and "e" not in s.lower() else f


def load_table(path) -> list:
    """Rows of a results JSONL or a CSV (numbers parsed, empty cells None)."""
    return [r for _, r in table_rows(path)]


def load_checked(path, metric: str, is_error: bool = False, drop_invalid: bool = False, x: tuple = ()) -> tuple:
    """(rows, rows left out) of a table whose ``metric`` values (and the ``x`` columns) are checked
    (``check_metric``)."""
    return check_metric(table_rows(path), metric, is_error, drop_invalid, x)


def table_rows(path) -> list:
    """(where: "file:line", row) of each row of a results JSONL or a CSV (the line where the row starts)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"table {p} not found")
    text = read_text(p, "table")
    if p.suffix.lower() == ".csv" or (p.suffix.lower() not in (".jsonl", ".json") and not text.lstrip().startswith("{")):
        if not text.strip():
            raise UserError(f"{p}: empty table")
        reader = csv.reader(io.StringIO(text, newline=""))
        pairs = []
        try:
            header = next(reader)
            if len(set(header)) != len(header):
                dup = next(h for h in header if header.count(h) > 1)
                raise UserError(f"{p}:1: column {dup!r} appears twice in the header")
            start = reader.line_num + 1
            for fields in reader:
                n, start = start, reader.line_num + 1          # the physical line where the row starts
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise UserError(f"{p}:{n}: {len(fields)} fields, the header has {len(header)}")
                pairs.append((f"{p}:{n}", {h: _number(v) for h, v in zip(header, fields)}))
        except csv.Error as e:
            raise UserError(f"{p}:{reader.line_num}: malformed CSV ({e})") from None
    else:
        # covidnetx's own rows (they carry their schema version) are checked field by field; other JSONL
        # tables are read as plain columns
        pairs = []
        for n, d in read_jsonl(p, "table"):
            if not isinstance(d, dict):
                raise UserError(f"{p}:{n}: a table row is a JSON object, not {type(d).__name__}")
            pairs.append((f"{p}:{n}", ResultRow.from_dict(d, f"{p}:{n}") if "schema" in d else d))
    return pairs


def metric_problem(v, is_error: bool) -> str:
    """Why a metric value cannot enter a table's statistics ("" when it can; a missing value can)."""
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"{v!r} is not a number"
    if not _finite(v):
        return f"{_short(v)} is not finite"
    if is_error and v < 0:
        return f"{v} is below 0 (an error or loss)"
    if not is_error and not 0 <= v <= 1:
        return f"{v} is outside [0, 1] (an accuracy-like metric; --error if it is an error or loss)"
    return ""


def _finite(v) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:                 # an integer beyond a float's range
        return False


def _short(v) -> str:
    t = str(v)
    return t if len(t) <= 24 else f"{t[:12]}...({len(t)} digits)"


def x_problem(v) -> str:
    """Why an x value (params, images, FLOPs ...) cannot be one ("" when it can; a missing value can, and
    0, which a covidnetx row uses for "none", e.g. no pre-training, is left out of a log-scale fit)."""
    if v is None or v == "":
        return ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"{v!r} is not a number"
    if not _finite(v):
        return f"{_short(v)} is not finite"
    return f"{v:g} is negative" if v < 0 else ""


def x_columns(row: dict, axis: str) -> tuple:
    """The columns a row's x is read from (as ``x_value`` reads them): for covidnetx result rows and a
    derived axis, the pre-training or transfer column; else the column of that name."""
    if axis in DERIVED and "task" in row:
        pre, tr = DERIVED[axis]
        return (tr if row.get("task") == "transfer" else pre,)
    return (axis,)


def check_metric(pairs: list, metric: str, is_error: bool = False, drop_invalid: bool = False,
                 x: tuple = ()) -> tuple:
    """(rows, rows left out) of (where, row) pairs: a metric value that is not finite or outside its
    range, or an x value (axes ``x``, read as ``x_value`` reads them) that is not a finite number >= 0, is one UserError naming
    file:line and column, or with ``drop_invalid`` the row is left out."""
    rows, dropped = [], 0
    for where, r in pairs:
        col, why = metric, metric_problem(r.get(metric), is_error)
        for c in (c for axis in x for c in x_columns(r, axis)):
            if not why:
                col, why = c, x_problem(r.get(c))
        if why and not drop_invalid:
            raise UserError(f"{where}: column {col!r}: {why} (--drop-invalid leaves such rows out, counted)")
        dropped += bool(why)
        if not why:
            rows.append(r)
    return rows, dropped


def final_rows(rows: list) -> list:
    """Rows that end a run (``final`` true where the column exists), the latest per ``run_id`` where
    rows carry one (a rerun's row replaces the earlier)."""
    rows = [r for r in rows if r.get("final", True) not in (False, 0, "false", "False")]
    if not any("run_id" in r for r in rows):
        return rows
    latest, order = {}, []
    for r in rows:
        rid = r.get("run_id")
        if rid not in latest:
            order.append(rid)
            latest[rid] = r
        elif (r.get("time") or 0) >= (latest[rid].get("time") or 0):
            latest[rid] = r
    return [latest[k] for k in order]


def x_value(row: dict, axis: str):
    """The x of a row: a column of that name, or for covidnetx result rows the derived axes (params,
    data = pre-training set size, compute = pre-training FLOPs; transfer rows use their checkpoint's)."""
    v = row.get(x_columns(row, axis)[0])
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not _finite(v):
        return None                       # (an integer beyond a float's range is not a usable x)
    return float(v)


def error_of(row: dict, metric: str, is_error: bool) -> tuple:
    """(error, its test-set standard error in log units or nan) for one row; (None, nan) when absent."""
    v = row.get(metric)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return None, float("nan")
    err = float(v) if is_error else 1.0 - float(v)
    lo, hi = row.get(f"{metric}_ci_lo"), row.get(f"{metric}_ci_hi")
    sd = float("nan")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and err > 0:
        sd = (float(hi) - float(lo)) / 3.92 / err
    return err, sd


def n_classes(row: dict):
    if isinstance(row.get("n_classes"), int):
        return row["n_classes"]
    k = sum(1 for key in row if key.startswith("sensitivity/"))
    return k or None


def collapsed(row: dict) -> bool:
    """All predictions in one class (only rows that record predicted classes can say)."""
    if "collapsed" in row:
        return bool(row["collapsed"])
    ppv = [v for k, v in row.items() if k.startswith("ppv/")]
    k = n_classes(row)
    # PPV is undefined (None) for a class that is never predicted
    return bool(k and k > 1 and len(ppv) == k and sum(v is not None for v in ppv) == 1)


def summarise(values, los=None, his=None, normal: bool = False) -> dict:
    """n, mean, std (ddof 1), and the cell's 95% interval: the run's own test interval for n = 1, else
    mean ± sqrt(seed half-width^2 + mean test half-width^2), the seed half-width t-based (or normal)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    out = {"n": int(len(v)), "mean": float(v.mean()) if len(v) else float("nan"),
           "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"), "lo": float("nan"), "hi": float("nan")}
    halves = []
    if los is not None and his is not None:
        halves = [(h - l) / 2 for l, h in zip(los, his) if isinstance(l, (int, float)) and isinstance(h, (int, float))]
    if len(v) == 1:
        if los is not None and isinstance(los[0], (int, float)) and isinstance(his[0], (int, float)):
            out["lo"], out["hi"] = float(los[0]), float(his[0])
    elif len(v) > 1:
        h_seed = (1.959964 if normal else t975(len(v) - 1)) * out["std"] / math.sqrt(len(v))
        h_test = float(np.mean(halves)) if halves else 0.0
        h = math.hypot(h_seed, h_test)
        out["lo"], out["hi"] = out["mean"] - h, out["mean"] + h
    return out


def unit_key(row, unit: str | None = None):
    """The independent unit a row belongs to: the value of column ``unit`` when given; else, for
    covidnetx rows, the pre-trained checkpoint it starts from (``pretrain_seed``; rows of one cell share
    everything else) or, without one, its own seed; rows of other tables are each their own unit."""
    if unit:
        return ("unit", json.dumps(row.get(unit), sort_keys=True, default=str))
    if row.get("pretrain_seed") is not None:
        return ("checkpoint", row.get("pretrain_seed"))
    if row.get("seed") is not None and "task" in row:
        return ("seed", row.get("seed"))
    return ("row", id(row))


def units(rows: list, metric: str, unit: str | None = None) -> list:
    """The cell's independent units, each the mean over its runs: [{'value', 'lo', 'hi', 'runs'}] with
    the runs' mean test-set interval (rows without the metric are skipped)."""
    groups = {}
    for r in rows:
        if isinstance(r.get(metric), (int, float)) and not isinstance(r.get(metric), bool):
            groups.setdefault(unit_key(r, unit), []).append(r)
    out = []
    for rs in groups.values():
        los = [r.get(f"{metric}_ci_lo") for r in rs]
        his = [r.get(f"{metric}_ci_hi") for r in rs]
        ok = all(isinstance(v, (int, float)) for v in los + his)
        out.append({"value": float(np.mean([r[metric] for r in rs])), "runs": len(rs),
                    "lo": float(np.mean(los)) if ok else None, "hi": float(np.mean(his)) if ok else None})
    return out


def summarise_units(rows: list, metric: str, normal: bool = False) -> dict:
    """``summarise`` over the cell's independent units, plus 'runs' (the rows behind them)."""
    us = units(rows, metric)
    out = summarise([u["value"] for u in us], [u["lo"] for u in us], [u["hi"] for u in us], normal=normal)
    out["runs"] = sum(u["runs"] for u in us)
    return out


def cell_flags(rows: list) -> dict:
    """Chance and collapse flags of one cell (rows = its runs): {'chance': bool|None, 'collapsed': k,
    'interval': (lo, hi) of balanced accuracy}. ``chance`` is None where the rows cannot tell."""
    k = next((n_classes(r) for r in rows if n_classes(r)), None)
    ba = [r.get("balanced_accuracy") for r in rows]
    n_coll = sum(collapsed(r) for r in rows)
    if not k or any(not isinstance(b, (int, float)) for b in ba):
        return {"chance": None, "collapsed": n_coll, "interval": (float("nan"), float("nan"))}
    s = summarise_units(rows, "balanced_accuracy", normal=True)
    lo = s["lo"]
    at_chance = (n_coll == len(rows)) or (math.isfinite(lo) and lo <= 1.0 / k) or (
        not math.isfinite(lo) and s["mean"] <= 1.0 / k)
    return {"chance": bool(at_chance), "collapsed": n_coll, "interval": (s["lo"], s["hi"]), "chance_level": 1.0 / k}


def format_cell(rows: list, metric: str, scale: float = 100.0, digits: int = 1) -> str:
    """One table cell under the n-rules, with the chance / collapse flags."""
    vals = [r.get(metric) for r in rows if isinstance(r.get(metric), (int, float))]
    if not vals:
        return ""
    flags = cell_flags(rows)
    if flags["collapsed"] == len(rows):
        return f"collapsed (n={len(rows)})"
    s = summarise_units(rows, metric)
    f = f"{{:.{digits}f}}"
    n = f"n={s['n']}" + (f"; {s['runs']} runs" if s["runs"] > s["n"] else "")
    if s["n"] == 1:
        txt = f.format(scale * s["mean"])
        if math.isfinite(s["lo"]):
            txt += f" [{f.format(scale * s['lo'])}–{f.format(scale * s['hi'])}]"
        txt += f" ({n})"
    else:
        txt = f"{f.format(scale * s['mean'])} ± {f.format(scale * s['std'])} ({n})"
    if flags["collapsed"]:
        txt += f", {flags['collapsed']} collapsed"
    if flags["chance"]:
        txt += " ⚠ chance"
    return txt


def cell_key(row: dict, exclude=("seed", "run_id", "time", "fewshot_seed", "pretrain_seed")) -> tuple:
    """Runs that differ only in seeds share a cell: the identity is the run's configuration."""
    keys = ("task", "source", "model", "source_fraction", "regime", "shots", "target", "pretrain_steps",
            "pretrain_epochs", "params", "pretrain_train_size", "train_size")
    return tuple((k, json.dumps(row.get(k), sort_keys=True)) for k in keys if k not in exclude)
