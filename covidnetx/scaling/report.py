"""`covidnetx report RESULTS [--out DIR]`: the study's Markdown report, tables and plots.

It leads with the headline comparisons and their 95% CIs (the paired intra- minus inter-domain
difference per regime; the exponent per scaling axis, or why there is none), then gives every cell
under the n-rules of covidnetx.scaling.table (mean ± std with n only where n >= 2; one run with its
test-set interval; chance and collapsed cells flagged), the fits per axis (covidnetx.scaling.fitcmd:
statuses ok / no-trend / refused), few-shot curves, and whether the alignment and transferability
measures predict transfer (Kendall's tau across source checkpoints, with CIs).
"""
from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from covidnetx.results import load_results
from covidnetx.scaling import table as T
from covidnetx.scaling.fitcmd import describe, fit_table, plot_fits, write_fits
from covidnetx.utils import UserError, atomic_write_bytes

MEASURES = (("align_ref", "alignment, reference space (Fréchet)", "-"),
            ("align_norm", "alignment, own features (normalised Fréchet)", "-"),
            ("logme", "LogME", "+"))


def _md_table(header, lines) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in l) + " |" for l in lines]
    return "\n".join(out)


def _col(r) -> str:
    return r.regime + (f" k={r.shots}" if r.regime == "fewshot" else "")


def _col_order(c: str):
    return ({"pretrain": -1, "full": 0, "linear": 1}.get(c, 2), int(c.split("=")[1]) if "=" in c else 0)


def _size(r) -> str:
    n = r.pretrain_train_size if r.task == "transfer" else r.train_size
    return "-" if n is None else str(int(n))


def cell_table(rows: list, metric: str, task: str = "transfer") -> tuple:
    """(header, lines): one line per (source, model, source size), one column per regime (few-shot per k)."""
    cells = defaultdict(list)
    cols = []
    for r in rows:
        if r.task != task or not isinstance(r.get(metric), (int, float)):
            continue
        c = _col(r) if task == "transfer" else "source val"
        if c not in cols:
            cols.append(c)
        cells[(str(r.source), str(r.model), _size(r), c)].append(r)
    cols.sort(key=_col_order)

    def key(k):
        return (k[0] == "scratch", k[0], _model_order(k[1]), int(k[2]) if k[2].isdigit() else -1)
    keys = sorted({k[:3] for k in cells}, key=key)
    lines = [[k[0], k[1], k[2]] + [T.format_cell(cells.get(k + (c,), []), metric) for c in cols] for k in keys]
    return ["source", "model", "source images"] + cols, lines


def _model_order(name: str):
    import re
    m = re.search(r"(\d+)", name)
    return (re.sub(r"\d+", "", name), int(m.group(1)) if m else 0)


def paired_domain_differences(rows: list, metric: str) -> list:
    """Per regime (few-shot per k): intra- minus inter-domain transfer, paired on everything else (model,
    source size, seeds). [{'regime', 'n', 'mean', 'lo', 'hi', 'intra', 'inter'}] in metric units."""
    tr = [r for r in rows if r.task == "transfer" and r.domain_pair in ("intra", "inter")
          and isinstance(r.get(metric), (int, float))]
    # sources meet at the same asked-for sizes, but class-stratified rounding makes them differ by an image
    # or two (24 vs 25): pairs are matched on the size's rank within (source, model)
    sizes = defaultdict(set)
    for r in tr:
        sizes[(r.source, r.model)].add(r.pretrain_train_size or 0)
    size_rank = {(s, m, n): sorted(v).index(n or 0) for (s, m), v in sizes.items() for n in v}
    size_rank.update({(s, m, None): size_rank.get((s, m, 0), 0) for (s, m) in sizes})
    # cells at chance are no result: their pairs are left out (and counted)
    cells = defaultdict(list)
    for r in tr:
        cells[(r.source, r.model, r.pretrain_train_size, _col(r))].append(r)
    at_chance = {k for k, rs in cells.items() if T.cell_flags(rs)["chance"]}
    out = []
    for col in sorted({_col(r) for r in tr}, key=_col_order):
        sub = [r for r in tr if _col(r) == col]
        by = defaultdict(lambda: {"intra": [], "inter": [], "chance": False})
        for r in sub:
            k = (r.model, size_rank[(r.source, r.model, r.pretrain_train_size)],
                 r.shots, r.seed, r.pretrain_seed)
            by[k][r.domain_pair].append(r[metric])
            if (r.source, r.model, r.pretrain_train_size, col) in at_chance:
                by[k]["chance"] = True
        paired = [v for v in by.values() if v["intra"] and v["inter"]]
        diffs = [(np.mean(v["intra"]), np.mean(v["inter"])) for v in paired if not v["chance"]]
        rec = {"regime": col, "n": len(diffs), "left_out": len(paired) - len(diffs), "mean": float("nan"),
               "lo": float("nan"), "hi": float("nan"), "intra": float("nan"), "inter": float("nan")}
        if not paired:
            continue
        if diffs:
            d = np.array([a - b for a, b in diffs])
            rec.update(mean=float(d.mean()), intra=float(np.mean([a for a, _ in diffs])),
                       inter=float(np.mean([b for _, b in diffs])))
            if len(d) > 1:
                h = T.t975(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
                rec["lo"], rec["hi"] = rec["mean"] - h, rec["mean"] + h
        out.append(rec)
    return out


def _diff_text(d: dict) -> str:
    if not d["n"]:
        return "— (every pair has a cell at chance)"
    if not math.isfinite(d["lo"]):
        return f"{100 * d['mean']:+.1f} (one pair: no interval)"
    return f"{100 * d['mean']:+.1f} ({100 * d['lo']:+.1f} to {100 * d['hi']:+.1f})"


def _verdict(d: dict) -> str:
    if not math.isfinite(d["lo"]):
        return "—"
    return "intra better" if d["lo"] > 0 else "inter better" if d["hi"] < 0 else "no difference shown"


def _fit_axis(rows: list, axis: str, metric: str, n_boot: int) -> list:
    """The report's fits along one axis, holding the other axes fixed; groups with one x value are not
    axes and are left out."""
    pt = [r for r in rows if r.task == "pretrain"]
    tr = [r for r in rows if r.task == "transfer" and r.regime in ("full", "linear")]
    sel = pt + tr
    by = ["task", "source", "regime"]
    if axis == "params":           # model size at each source's largest size
        top = defaultdict(float)
        for r in sel:
            top[r.source] = max(top[r.source], T.x_value(r, "data") or 0.0)
        sel = [r for r in sel if (T.x_value(r, "data") or 0.0) == top[r.source] or r.source == "scratch"]
    elif axis == "data":           # source size, per model
        by = by + ["model"]
    fits = fit_table(sel, axis, metric, by, n_boot=n_boot, n_perm=199)
    keep = []
    for f in fits:
        xs = {tuple(p[0]) if isinstance(p[0], list) else p[0] for p in f.get("points", []) + f.get("chance_points", [])}
        if len(xs) > 1 or f.get("status") == "ok":
            keep.append(f)
    return keep


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


def plot_fewshot(rows, metric, out: Path) -> list:
    """Few-shot curves: mean with ± std bars where n >= 2 (n written beside each point), a single run
    with its test-set interval; chance cells hollow."""
    fs = [r for r in rows if r.regime == "fewshot" and isinstance(r.get(metric), (int, float))]
    if not fs:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    by = defaultdict(lambda: defaultdict(list))
    for r in fs:
        by[(r.source, r.model)][r.shots].append(r)
    for i, ((src, model), d) in enumerate(sorted(by.items(), key=lambda kv: str(kv[0]))):
        ks = sorted(d)
        color = f"C{i % 10}"
        means, errs, hollow = [], [[], []], []
        for k in ks:
            s = T.summarise([r[metric] for r in d[k]], [r.get(f"{metric}_ci_lo") for r in d[k]],
                            [r.get(f"{metric}_ci_hi") for r in d[k]])
            means.append(100 * s["mean"])
            if s["n"] > 1:
                errs[0].append(100 * s["std"])
                errs[1].append(100 * s["std"])
            else:
                errs[0].append(100 * (s["mean"] - s["lo"]) if math.isfinite(s["lo"]) else 0)
                errs[1].append(100 * (s["hi"] - s["mean"]) if math.isfinite(s["hi"]) else 0)
            hollow.append(bool(T.cell_flags(d[k])["chance"]))
            ax.annotate(f"n={s['n']}", (k, means[-1]), fontsize=6, textcoords="offset points", xytext=(3, 3))
        ax.errorbar(ks, means, yerr=errs, color=color, capsize=3, label=f"{src} / {model}", lw=1)
        ax.scatter(ks, means, color=color, facecolors=["none" if h else color for h in hollow], zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("labelled examples per class (k)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title("few-shot transfer: mean ± std over runs (n ≥ 2); hollow = at chance", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out, "fewshot")


def plot_domains(diffs: list, out: Path, metric: str) -> list:
    diffs = [d for d in diffs if d["n"]]
    if not diffs:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    y = np.arange(len(diffs))
    m = np.array([100 * d["mean"] for d in diffs])
    lo = np.array([100 * d["lo"] if math.isfinite(d["lo"]) else 100 * d["mean"] for d in diffs])
    hi = np.array([100 * d["hi"] if math.isfinite(d["hi"]) else 100 * d["mean"] for d in diffs])
    ax.errorbar(m, y, xerr=[m - lo, hi - m], fmt="o", capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, [f"{d['regime']} (n={d['n']})" for d in diffs])
    ax.set_xlabel(f"intra − inter domain, {metric} points (95% CI)")
    ax.set_title("paired difference: X-ray source minus natural source", fontsize=9)
    return _save(fig, out, "domains")


def measure_correlations(rows: list, metric: str) -> list:
    """Kendall's tau of each measure with measured transfer (per regime; few-shot per k, averaged over
    the few-shot seeds of a checkpoint), across source checkpoints."""
    from covidnetx.scaling.alignment import kendall_with_ci
    tr = [r for r in rows if r.task == "transfer" and isinstance(r.get(metric), (int, float))]
    out = []
    for col in sorted({_col(r) for r in tr}, key=_col_order):
        per_ck = defaultdict(list)
        for r in tr:
            if _col(r) == col and r.source != "scratch":
                per_ck[(r.source, r.model, r.pretrain_train_size, r.pretrain_seed)].append(r)
        for m, label, sign in MEASURES:
            xs, ys = [], []
            for rs in per_ck.values():
                v = [r.get(m) for r in rs if isinstance(r.get(m), (int, float))]
                if v:
                    xs.append(float(np.mean(v)))
                    ys.append(float(np.mean([r[metric] for r in rs])))
            if len(xs) >= 3:
                out.append({"regime": col, "measure": m, "label": label, "expect": sign,
                            **kendall_with_ci(xs, ys)})
    return out


def write_report(results, out: Path, metric: str = "accuracy", n_boot: int = 200, title: str = "",
                 preamble: str = "", run_ids=None) -> Path:
    """The report of a results table; with ``run_ids`` (a study's plan) only those runs, so rows of runs
    the plan no longer has (an earlier version of the study in the same table) never add to a cell's n."""
    rows = T.final_rows(load_results(results))     # covidnetx's own rows, checked
    other = 0
    if run_ids is not None:
        keep = set(run_ids)
        other = sum(r.run_id not in keep for r in rows)
        rows = [r for r in rows if r.run_id in keep]
    if not rows:
        raise UserError(f"{results}: no final result rows" + (" of this study's runs" if run_ids is not None else ""))
    out.mkdir(parents=True, exist_ok=True)
    n_pre = sum(r.task == "pretrain" for r in rows)
    md = [f"# {title or 'Transfer scaling report'}\n"]
    if preamble:
        md += [preamble, ""]
    md += [f"Results: `{results}`: {len(rows)} finished runs ({n_pre} pre-training, {len(rows) - n_pre} transfer)"
           + (f"; {other} row(s) of runs outside this study's plan (an earlier version of it) left out" if other
              else "") + f". Metric: {metric}; error = 1 − {metric}; values in %.\n",
           "How to read the numbers: **mean ± std (n=…)** over runs that differ only in their seeds, shown only "
           "where n ≥ 2; **value [lo–hi] (n=1)** is one run with its test-set 95% bootstrap interval; "
           "**⚠ chance**: the cell's balanced accuracy cannot be told from chance (1 / classes) — such cells "
           "are left out of every fit; **collapsed**: every prediction fell in one class. Choices (the linear "
           "probe's L2 strength) are made on the val split; each run reads the test split once, at the end.\n"]
    # ---------------------------------------------------------------------------------------- headline
    md += ["## Headline\n"]
    diffs = paired_domain_differences(rows, metric)
    if diffs:
        md += ["### Intra- minus inter-domain transfer (paired)\n",
               "Each pair: the same model, source size (matched by rank among the sizes asked for), regime and "
               "seeds, pre-trained on the X-ray (intra) or the natural (inter) source. 95% CI: t-interval over "
               "pairs (the difference averaged over the design's models and sizes).\n",
               _md_table(["regime", "pairs (n)", "pairs left out (a cell at chance)",
                          f"intra − inter ({metric} points, 95% CI)", "intra mean", "inter mean", "verdict"],
                         [[d["regime"], d["n"], d["left_out"], _diff_text(d),
                           f"{100 * d['intra']:.1f}" if d["n"] else "—", f"{100 * d['inter']:.1f}" if d["n"] else "—",
                           _verdict(d)] for d in diffs]), "",
               "![intra vs inter](domains.png)", ""]
    plots = plot_domains(diffs, out, metric)
    axis_fits = {}
    for axis in ("params", "data", "compute", "params,data"):
        axis_fits[axis] = _fit_axis(rows, axis, metric, n_boot)
    head = []
    for axis, fits in axis_fits.items():
        for f in fits:
            group = " / ".join(str(f.get(k)) for k in ("task", "source", "regime", "model") if k in f)
            if f["status"] == "ok":
                if f["law"] == "joint":
                    val = (f"α = {f['alpha']:.3f} ({f['alpha_ci_lo']:.3f}–{f['alpha_ci_hi']:.3f}), "
                           f"β = {f['beta']:.3f} ({f['beta_ci_lo']:.3f}–{f['beta_ci_hi']:.3f})")
                else:
                    val = f"b = {f['b']:.3f} ({f['b_ci_lo']:.3f}–{f['b_ci_hi']:.3f})"
            else:
                val = "—"
            note = "; ".join(x for x in (f["reason"], f"at bound: {f['at_bound']}" if f.get("at_bound") else "") if x)
            head.append([axis.replace(",", " × "), group, f["status"], val, f"{f['n_points']} / {f['n_x']}",
                         note.replace("|", "/")])
    md += ["### Scaling exponents\n",
           "err = a·x^(−b) + c along one axis, the others held (params: at each source's largest size; data: "
           "per model), and err = E + A·N^(−α) + B·D^(−β) where both vary. *ok* needs a permutation test against "
           "a constant (p < 0.05); 95% CIs from a bootstrap over runs within each x.\n",
           _md_table(["axis", "group", "status", "exponent (95% CI)", "runs / x values", "note"], head)
           if head else "(no axis with more than one value)", ""]
    # ---------------------------------------------------------------------------------------- cells
    names = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "auc": "Macro AUC"}
    for m2 in [metric] + [m for m in names if m != metric]:
        title2 = f"Transfer results: {names.get(m2, m2).lower()} (%)" if m2 == metric else f"{names[m2]} (%)"
        h, lines = cell_table(rows, m2)
        if lines:
            md += [f"## {title2}\n", _md_table(h, lines), ""]
    h, lines = cell_table(rows, metric, task="pretrain")
    if lines:
        md += [f"## Pre-training: {metric} on the source's val split (%)\n", _md_table(h, lines), ""]
    # ---------------------------------------------------------------------------------------- fits
    md += ["## Scaling-law fits\n"]
    for axis, fits in axis_fits.items():
        stem = axis.replace(",", "+")
        if not fits:
            continue
        write_fits(fits, out, f"fits-{stem}")
        plots += plot_fits(fits, out, f"error-vs-{stem}", f"error vs {axis.replace(',', ' × ')}",
                           label_keys=["task", "source", "regime"] + (["model"] if axis == "data" else []))
        md += [f"### x = {axis.replace(',', ' × ')}\n"]
        for f in fits:
            group = " / ".join(str(f.get(k)) for k in ("task", "source", "regime", "model") if k in f)
            md.append(f"- **{group}**: {describe(f)}")
        md += ["", f"![error vs {axis}](error-vs-{stem}.png)", ""]
    fsp = plot_fewshot(rows, metric, out)
    plots += fsp
    if fsp:
        md += ["## Few-shot\n", "![few-shot](fewshot.png)", ""]
    # ---------------------------------------------------------------------------------------- measures
    ck_rows = defaultdict(list)
    for r in rows:
        if r.task == "transfer" and any(isinstance(r.get(m), (int, float)) for m, _, _ in MEASURES):
            ck_rows[(str(r.source), str(r.model), _size(r))].append(r)
    if ck_rows:
        lines = []
        for k in sorted(ck_rows, key=lambda k: (k[0], _model_order(k[1]), int(k[2]) if k[2].isdigit() else -1)):
            per_seed = {}
            for r in ck_rows[k]:
                per_seed[r.pretrain_seed] = r
            cells = []
            for m, _, _ in MEASURES:
                v = [r.get(m) for r in per_seed.values() if isinstance(r.get(m), (int, float))]
                cells.append("" if not v else (f"{np.mean(v):.3g} ± {np.std(v, ddof=1):.2g} (n={len(v)})"
                                               if len(v) > 1 else f"{v[0]:.3g} (n=1)"))
            lines.append(list(k) + cells)
        md += ["## Alignment and transferability\n",
               "Per source checkpoint (n = pre-training seeds): **align_ref**, the Fréchet distance between source "
               "and target features in one fixed reference feature space (comparable across all sources); "
               "**align_norm**, the Fréchet distance under the checkpoint's own features divided by their total "
               "variance (comparable across widths); **LogME** (You et al. 2021) of the checkpoint's features for "
               "the target labels. All on fixed samples: the source's val images and the target's train split.\n",
               _md_table(["source", "model", "source images", "align_ref (lower = closer)",
                          "align_norm (lower = closer)", "LogME (higher = better)"], lines), ""]
        cors = measure_correlations(rows, metric)
        if cors:
            md += ["Does a measure predict transfer? Kendall's τ with measured transfer across source checkpoints "
                   "(bootstrap 95% CI). A useful distance has τ < 0, a useful LogME τ > 0; a CI that spans 0 "
                   "shows no predictive power here.\n",
                   _md_table(["regime", "measure", "τ (95% CI)", "n checkpoints", "p", "as expected?"],
                             [[c["regime"], c["label"], f"{c['tau']:+.2f} ({c['lo']:+.2f} to {c['hi']:+.2f})"
                               if math.isfinite(c["tau"]) else "—", c["n"],
                               f"{c['p']:.3f}" if math.isfinite(c["p"]) else "—",
                               ("yes" if (c["lo"] > 0 if c["expect"] == "+" else c["hi"] < 0) else
                                "opposite" if (c["hi"] < 0 if c["expect"] == "+" else c["lo"] > 0) else
                                "not shown") if math.isfinite(c["lo"]) else "—"] for c in cors]), ""]
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
