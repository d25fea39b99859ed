"""Fits and the report over a results table.

    covidnetx fit RESULTS [--x params|data|compute] [--metric accuracy] [--by source,regime,shots] [--out DIR]
    covidnetx report RESULTS [--out DIR] [--metric accuracy]

Error is 1 - metric. The x axes: params (model parameters), data (pre-training set size: source samples
after the fraction), compute (pre-training FLOPs: 3 x forward FLOPs x samples seen; fitted on the
compute-optimal frontier). Pre-training rows use their own size/FLOPs; transfer rows those of the
checkpoint they started from. Points are averaged over seeds before fitting.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from covidnetx.results import load_results
from covidnetx.scaling.fit import compute_frontier, fit_law
from covidnetx.utils import UserError, atomic_write_bytes, atomic_write_json

AXES = ("params", "data", "compute")


def final_rows(path) -> list:
    rows = [r for r in load_results(path) if r.get("final")]
    latest = {}
    for r in rows:
        if r["run_id"] not in latest or r.get("time", 0) >= latest[r["run_id"]].get("time", 0):
            latest[r["run_id"]] = r
    return list(latest.values())


def x_value(row: dict, axis: str):
    transfer = row.get("task") == "transfer"
    if axis == "params":
        return row.get("params")
    if axis == "data":
        return row.get("pretrain_train_size") if transfer else row.get("train_size")
    if axis == "compute":
        return row.get("pretrain_flops") if transfer else row.get("flops")
    raise UserError(f"unknown x axis {axis!r} (params | data | compute)")


def _key(row, by):
    return tuple(row.get(k) for k in by)


def fit_groups(rows: list, axis: str, metric: str, by: list, n_boot: int = 200,
               laws=("saturating", "power")) -> list:
    groups = defaultdict(list)
    for r in rows:
        if r.get(metric) is None or x_value(r, axis) is None:
            continue
        groups[_key(r, by)].append(r)
    out = []
    for key, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        per_x = defaultdict(list)
        for r in rs:
            per_x[float(x_value(r, axis))].append(1.0 - float(r[metric]))
        xs = np.array(sorted(per_x))
        ys = np.array([np.mean(per_x[x]) for x in xs])
        if axis == "compute":
            xs, ys = compute_frontier(xs, ys)
        rec = {**dict(zip(by, key)), "x": axis, "metric": metric, "n_points": int(len(xs)),
               "points": [[float(a), float(b)] for a, b in zip(xs, ys)]}
        for kind in laws:
            try:
                f = fit_law(xs, ys, kind, n_boot=n_boot)
            except UserError as e:
                rec.update(status="skipped", reason=str(e))
                continue
            rec.update(status="ok", law=kind, rmse_log=f.rmse_log, reason="")
            for p, v in f.params.items():
                rec[p] = v
                lo, hi = f.ci.get(p, (float("nan"), float("nan")))
                rec[f"{p}_ci_lo"], rec[f"{p}_ci_hi"] = lo, hi
            break
        out.append(rec)
    return out


def _write_fits(fits: list, out: Path, stem: str) -> None:
    atomic_write_json(out / f"{stem}.json", fits)
    cols = []
    for f in fits:
        cols += [k for k in f if k not in cols and k != "points"]
    lines = [",".join(cols)] + [",".join("" if f.get(c) is None else str(f.get(c)) for c in cols) for f in fits]
    atomic_write_bytes(out / f"{stem}.csv", ("\n".join(lines) + "\n").encode())


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: Path, stem: str) -> list:
    paths = []
    for ext in ("png", "pdf"):
        p = out / f"{stem}.{ext}"
        fig.savefig(p, dpi=120, bbox_inches="tight")
        paths.append(p)
    _plt().close(fig)
    return paths


def plot_fits(fits: list, out: Path, stem: str, title: str) -> list:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for f in fits:
        pts = np.array(f["points"]) if f["points"] else np.zeros((0, 2))
        label = " / ".join(str(f[k]) for k in f if k not in ("x", "metric", "n_points", "points", "status", "reason",
                                                               "law", "rmse_log") and not k.startswith(("a", "b", "c"))
                           ) or "all"
        if len(pts):
            line = ax.plot(pts[:, 0], pts[:, 1], "o", label=label)[0]
            if f.get("status") == "ok":
                xx = np.logspace(np.log10(pts[:, 0].min()), np.log10(pts[:, 0].max()), 50)
                yy = f["a"] * xx ** (-f["b"]) + (f.get("c", 0.0) if f["law"] == "saturating" else 0.0)
                ax.plot(xx, yy, "-", color=line.get_color(), alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(fits[0]["x"] if fits else "x")
    ax.set_ylabel(f"error (1 - {fits[0]['metric'] if fits else 'metric'})")
    ax.set_title(title)
    if fits:
        ax.legend(fontsize=7)
    return _save(fig, out, stem)


def mean_std_table(rows: list, metric: str) -> tuple:
    """(header, lines): rows = source x model x fraction, columns = regime (few-shot per k), mean ± std over seeds."""
    cells = defaultdict(list)
    cols = []
    for r in rows:
        if r.get("task") != "transfer" or r.get(metric) is None:
            continue
        col = f"{r['regime']}" + (f" k={r['shots']}" if r["regime"] == "fewshot" else "")
        if col not in cols:
            cols.append(col)
        cells[(r.get("source"), r.get("model"), r.get("source_fraction"), col)].append(100 * r[metric])
    order = {"full": 0, "linear": 1}
    cols.sort(key=lambda c: (order.get(c, 2), int(c.split("=")[1]) if "=" in c else 0))
    keys = sorted({k[:3] for k in cells}, key=lambda k: (str(k[0]), str(k[1]), k[2] or 0))
    header = ["source", "model", "fraction"] + cols
    lines = []
    for k in keys:
        row = [str(k[0]), str(k[1]), f"{k[2]:g}" if k[2] is not None else "-"]
        for c in cols:
            v = cells.get(k + (c,))
            row.append("" if not v else (f"{np.mean(v):.1f} ± {np.std(v):.1f} (n={len(v)})" if len(v) > 1
                                         else f"{v[0]:.1f}"))
        lines.append(row)
    return header, lines


def _md_table(header, lines) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(l) + " |" for l in lines]
    return "\n".join(out)


def plot_fewshot(rows, metric, out: Path) -> list:
    fs = [r for r in rows if r.get("regime") == "fewshot" and r.get(metric) is not None]
    if not fs:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    by = defaultdict(lambda: defaultdict(list))
    for r in fs:
        by[(r["source"], r["model"])][r["shots"]].append(100 * r[metric])
    for (src, model), d in sorted(by.items(), key=lambda kv: str(kv[0])):
        ks = sorted(d)
        ax.errorbar(ks, [np.mean(d[k]) for k in ks], yerr=[np.std(d[k]) for k in ks], marker="o", capsize=3,
                    label=f"{src} / {model}")
    ax.set_xscale("log")
    ax.set_xlabel("examples per class (k)")
    ax.set_ylabel(f"{metric} (%) mean ± std over seeds")
    ax.set_title("few-shot transfer")
    ax.legend(fontsize=7)
    return _save(fig, out, "fewshot")


def plot_domains(rows, metric, out: Path) -> list:
    tr = [r for r in rows if r.get("task") == "transfer" and r.get("domain_pair") and r.get(metric) is not None]
    if not tr:
        return []
    plt = _plt()
    regimes = sorted({r["regime"] for r in tr})
    pairs = sorted({r["domain_pair"] for r in tr})
    fig, ax = plt.subplots(figsize=(6, 4))
    w = 0.8 / max(1, len(pairs))
    for j, pair in enumerate(pairs):
        vals = [[100 * r[metric] for r in tr if r["regime"] == g and r["domain_pair"] == pair] for g in regimes]
        ax.bar(np.arange(len(regimes)) + j * w, [np.mean(v) if v else 0 for v in vals], w,
               yerr=[np.std(v) if v else 0 for v in vals], capsize=3, label=f"{pair}-domain")
    ax.set_xticks(np.arange(len(regimes)) + w * (len(pairs) - 1) / 2, regimes)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title("intra- vs inter-domain transfer")
    ax.legend()
    return _save(fig, out, "domains")


def write_report(results, out: Path, metric: str = "accuracy", n_boot: int = 200) -> Path:
    rows = final_rows(results)
    if not rows:
        raise UserError(f"{results}: no final result rows")
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# Transfer scaling report\n", f"Results: `{results}` ({len(rows)} finished runs). Metric: {metric}; "
          f"error = 1 - {metric}. Values in %.\n"]
    header, lines = mean_std_table(rows, metric)
    md += ["## Transfer results (mean ± std over seeds)\n", _md_table(header, lines) if lines else "(no transfer rows)", ""]
    for m2 in ("auc",):
        if m2 != metric:
            h2, l2 = mean_std_table(rows, m2)
            if l2:
                md += [f"### {m2}\n", _md_table(h2, l2), ""]
    md += ["## Scaling-law fits\n", "err(x) = a·x^(-b) + c (saturating; plain power law a·x^(-b) where too few points "
           "for three parameters), 95% bootstrap CIs. Transfer rows grouped by source, regime and shots; "
           "pre-training rows by source.\n"]
    plots = []
    # what is held fixed along each axis: the size axis at the full source, the data axis per model
    hold = {"params": ["source_fraction"], "data": ["model"], "compute": []}
    for axis in AXES:
        tr_rows = [r for r in rows if r.get("task") == "transfer" and r.get("regime") != "fewshot"]
        pt_rows = [r for r in rows if r.get("task") == "pretrain"]
        if axis == "params":
            top = max((r.get("source_fraction") or 0 for r in tr_rows + pt_rows), default=0)
            tr_rows = [r for r in tr_rows if (r.get("source_fraction") or 0) == top]
            pt_rows = [r for r in pt_rows if (r.get("source_fraction") or 0) == top]
        fits = fit_groups(tr_rows, axis, metric, ["source", "regime"] + hold[axis], n_boot)
        fits += fit_groups(pt_rows, axis, metric, ["task", "source"] + hold[axis], n_boot)
        _write_fits(fits, out, f"fits-{axis}")
        plots += plot_fits(fits, out, f"error-vs-{axis}", f"error vs {axis}")
        md += [f"### x = {axis}\n", "| group | points | law | b (95% CI) | c (95% CI) | note |", "|---|---|---|---|---|---|"]
        for f in fits:
            group = " / ".join(f"{k}={f[k]}" if k in ("model", "source_fraction") else str(f[k])
                               for k in ("task", "source", "regime", "model", "source_fraction") if k in f)
            if f["status"] == "ok":
                b = f"{f['b']:.3f} ({f['b_ci_lo']:.3f}–{f['b_ci_hi']:.3f})"
                c = f"{f['c']:.3f} ({f['c_ci_lo']:.3f}–{f['c_ci_hi']:.3f})" if f["law"] == "saturating" else "-"
                md.append(f"| {group} | {f['n_points']} | {f['law']} | {b} | {c} | rmse(log) {f['rmse_log']:.3f} |")
            else:
                md.append(f"| {group} | {f['n_points']} | - | - | - | {f['reason']} |")
        md += ["", f"![error vs {axis}](error-vs-{axis}.png)", ""]
    fsp = plot_fewshot(rows, metric, out)
    plots += fsp
    if fsp:
        md += ["## Few-shot\n", "![few-shot](fewshot.png)", ""]
    dp = plot_domains(rows, metric, out)
    plots += dp
    align = sorted({(r.get("source"), r.get("domain_pair"), r.get("alignment")) for r in rows
                    if r.get("task") == "transfer" and r.get("alignment") is not None}, key=str)
    if dp or align:
        md += ["## Source-target alignment\n",
               "Alignment = Fréchet distance between feature statistics of source and target under the "
               "pre-trained network (smaller = closer).\n", "| source | domain pair | alignment |", "|---|---|---|"]
        seen = set()
        for s, p, a in align:
            if (s, p) not in seen:
                seen.add((s, p))
                vals = [r["alignment"] for r in rows if r.get("source") == s and r.get("alignment") is not None]
                md.append(f"| {s} | {p} | {np.mean(vals):.3g} |")
        md += ["", "![domains](domains.png)" if dp else "", ""]
    path = out / "report.md"
    atomic_write_bytes(path, "\n".join(md).encode())
    return path


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx report", description="write the Markdown report")
    p.add_argument("results", help="results table (JSONL)")
    p.add_argument("--out", default=None, help="report folder (default: beside the results, report/)")
    p.add_argument("--metric", default="accuracy")
    p.add_argument("--bootstrap", type=int, default=200)
    return p


def run(args) -> int:
    out = Path(args.out) if args.out else Path(args.results).parent / "report"
    path = write_report(args.results, out, args.metric, args.bootstrap)
    print(f"report: {path}")
    return 0


def main(argv=None) -> int:
    from covidnetx.utils import run_main
    return run_main("covidnetx report", build_parser, run, argv)
