"""Shared benchmark helpers: timing statistics, hardware naming, CSV output."""
from __future__ import annotations

import csv
import os
import platform
import statistics
from pathlib import Path


def mean_ci(xs) -> tuple:
    """mean and 1.96 sigma (the spread convention of Horovod's synthetic benchmark)."""
    xs = list(xs)
    m = statistics.fmean(xs)
    return m, (1.96 * statistics.stdev(xs) if len(xs) > 1 else 0.0)


def mean_interval(xs) -> tuple:
    """mean and the half-width of its 95% interval (1.96 standard errors; 0 for a single value)."""
    xs = list(xs)
    m, c = mean_ci(xs)
    return m, c / len(xs) ** 0.5


def pooled_cv(launches: list) -> float:
    """Coefficient of variation of step times within launches (variances pooled over launches of two or
    more steps, divided by the overall mean), so drift between launches does not count."""
    groups = [t for t in launches if len(t) > 1]
    if not groups:
        return 0.0
    var = statistics.fmean(statistics.variance(t) for t in groups)
    return var ** 0.5 / statistics.fmean(x for t in groups for x in t)


def hardware_tag() -> str:
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0).split()[-1].lower().replace(" ", "")
    except Exception:
        pass
    return f"cpu{os.cpu_count()}"


def write_csv(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp." + path.name)
    fields = list(dict.fromkeys(k for r in rows for k in r))      # every row's columns, first seen first
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    return path


def machine_line() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
