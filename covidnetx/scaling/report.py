"""`covidnetx report RESULTS [--out DIR]`: the study's Markdown report, tables and plots.

It leads with the headline comparisons and their 95% CIs (the paired intra- minus inter-domain
difference per regime over independent checkpoints; the exponent per scaling axis with its status and
backtest, or why there is none), then gives every cell under the n-rules of covidnetx.scaling.cells
(n counts independent units), the fits per axis (covidnetx.scaling.groups), few-shot curves, and
whether the alignment and transferability measures predict transfer (Kendall's tau over the distinct
values of each measure, exact permutation p-values).

The report is built section by section (``section_*``: each returns Markdown lines and writes its own
figures), so each rule has its own test.
"""
from __future__ import annotations

import argparse
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from covidnetx.results import result_pairs
from covidnetx.scaling import cells as T
from covidnetx.scaling.groups import backtest_text, describe, exponent_text, fit_table, plot_fits, write_fits
from covidnetx.scaling.plots import plt, save
from covidnetx.scaling.stats import ALPHA, detectable_difference, kendall_exact, t_interval
from covidnetx.utils import UserError, atomic_write_bytes

MEASURES = (("align_ref", "alignment, reference space (Fréchet)", "-"),
            ("align_norm", "alignment, own features (normalised Fréchet)", "-"),
            ("logme", "LogME", "+"))
AXES = ("params", "data", "compute", "params,data")
HOLDOUT = 1               # the report backtests every law on its largest x value


def _md_table(header, lines) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in l) + " |" for l in lines]
    return "\n".join(out)


def _col(r) -> str:
    return r.regime + (f" k={r.shots}" if r.regime == "fewshot" else "")


def _col_order(c: str):
    return ({"pretrain": -1, "full": 0, "linear": 1}.get(c, 2), int(c.split("=")[1]) if "=" in c else 0)


def _size(r) -> str:
    n = r.pretrain_train_size if r.task == "transfer" else r.train_size
    return "-" if n is None else str(int(n))


def _model_order(name: str):
    m = re.search(r"(\d+)", name)
    return (re.sub(r"\d+", "", name), int(m.group(1)) if m else 0)


def _pct(v, signed: bool = False) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "—"
    return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"


# -------------------------------------------------------------------------------------------- cells
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


def section_cells(rows: list, metric: str) -> list:
    """Transfer results in the study's metric and the other headline metrics, under the n-rules."""
    names = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "auc": "Macro AUC"}
    md = []
    for m2 in [metric] + [m for m in names if m != metric]:
        title = f"Transfer results: {names.get(m2, m2).lower()} (%)" if m2 == metric else f"{names[m2]} (%)"
        h, lines = cell_table(rows, m2)
        if lines:
            md += [f"## {title}\n", _md_table(h, lines), ""]
    return md


def section_pretraining(rows: list, metric: str) -> list:
    """Every pre-training cell on its source's val split (n = pre-training seeds) with the 95% interval the
    chance rule reads (balanced accuracy) and chance itself, chance flagged."""
    h, lines = cell_table(rows, metric, task="pretrain")
    if not lines:
        return []
    cells = defaultdict(list)
    for r in rows:
        if r.task == "pretrain":
            cells[(str(r.source), str(r.model), _size(r))].append(r)
    for line in lines:
        f = T.cell_flags(cells[tuple(line[:3])])
        lo, hi = f["interval"]
        line += [f"{100 * lo:.1f}–{100 * hi:.1f}" if math.isfinite(lo) else "—",
                 f"{100 * f['chance_level']:.1f}" if f.get("chance_level") else "—"]
    n_chance = sum("⚠ chance" in " ".join(map(str, line)) for line in lines)
    return [f"## Pre-training: {metric} on the source's val split (%)\n",
            "n = pre-training seeds; the 95% interval of balanced accuracy combines the seeds' spread and the "
            "val set's sampling error (the interval the chance rule reads); **⚠ chance** marks a cell whose "
            f"interval reaches chance (1 / classes): {n_chance} of {len(lines)} cells.\n",
            _md_table(h + ["balanced accuracy 95% interval", "chance"], lines), ""]


# -------------------------------------------------------------------------------------------- domains
def _pretrain_at_chance(rows: list) -> dict:
    """(source, model, train size, seed) of each pre-training run -> whether its source-val balanced
    accuracy is at chance (the run's own test-set interval reaches 1 / classes)."""
    return {(r.source, r.model, r.train_size, r.seed): bool(T.cell_flags([r])["chance"])
            for r in rows if r.task == "pretrain"}


def _matched(a: dict, b: dict) -> list:
    """Pairs of checkpoint keys (model, source size, seed) of two arms: the same model and seed, and the
    same source size asked for: sizes within 5% or 10 images of each other (class-stratified subsets
    round per class, so 12 images of 5 classes are 10), each size of arm a with the nearest of arm b."""
    out = []
    for model, size, seed in sorted(a, key=str):
        near = [(abs(s2 - size), (m2, s2, sd2)) for m2, s2, sd2 in b if m2 == model and sd2 == seed]
        if near:
            gap, key = min(near)
            if gap <= max(10, 0.05 * max(size, key[1])):
                out.append(((model, size, seed), key))
    return out


def paired_domain_differences(rows: list, metric: str) -> list:
    """Per regime (few-shot per k) and pair of sources (each X-ray source against each natural one):
    intra- minus inter-domain transfer over independent units. A unit is a pair of checkpoints, one per
    source, with the same model, source size (the same size asked for: within 5% or 10 images) and pre-training
    seed; each checkpoint's value is the mean over its transfer runs (few-shot draws on one checkpoint are
    not independent). Two analyses: all pairs, and the rule fixed before any transfer result is seen, the
    same for both arms: a pair leaves when either checkpoint's pre-training is at chance on its own
    source's val split. Records: {'regime', 'intra_source', 'inter_source', 'all', 'rule' (each a
    t_interval over pair differences), 'left_out', 'sign_change', 'intra', 'inter', 'mde'} in metric units."""
    tr = [r for r in rows if r.task == "transfer" and r.domain_pair in ("intra", "inter")
          and r.source_domain != "mixed" and isinstance(r.get(metric), (int, float))]   # (older rows: mixed = inter)
    chance = _pretrain_at_chance(rows)
    domain = {r.source: r.domain_pair for r in tr}
    out = []
    for col in sorted({_col(r) for r in tr}, key=_col_order):
        ck = defaultdict(list)
        for r in tr:
            if _col(r) == col:
                ck[(r.source, r.model, r.pretrain_train_size or 0, r.pretrain_seed)].append(r[metric])
        arms = defaultdict(dict)         # source -> {(model, size, seed): (checkpoint mean, at chance)}
        for (src, model, size, seed), vals in ck.items():
            arms[src][(model, size, seed)] = (float(np.mean(vals)), chance.get((src, model, size, seed), False))
        for intra in sorted(s for s in arms if domain[s] == "intra"):
            for inter in sorted(s for s in arms if domain[s] == "inter"):
                pairs = [(arms[intra][k], arms[inter][m]) for k, m in _matched(arms[intra], arms[inter])]
                if not pairs:
                    continue
                d_all = [a[0] - b[0] for a, b in pairs]
                d_rule = [a[0] - b[0] for a, b in pairs if not (a[1] or b[1])]
                a, b = t_interval(d_all), t_interval(d_rule)
                out.append({"regime": col, "intra_source": intra, "inter_source": inter, "all": a, "rule": b,
                            "left_out": len(d_all) - len(d_rule), "sign_change": bool(b["n"] and a["mean"] * b["mean"] < 0),
                            "intra": float(np.mean([p[0][0] for p in pairs])),
                            "inter": float(np.mean([p[1][0] for p in pairs])),
                            "mde": detectable_difference(a["std"], a["n"])})
    return out


def _label(d: dict, diffs: list) -> str:
    """The regime, with its sources where the study compares more than one pair of them."""
    several = len({(x["intra_source"], x["inter_source"]) for x in diffs}) > 1
    return d["regime"] + (f" ({d['intra_source']} − {d['inter_source']})" if several else "")


def _diff_text(s: dict) -> str:
    if not s["n"]:
        return "— (no pair)"
    if not math.isfinite(s["lo"]):
        return f"{_pct(s['mean'], True)} (one pair: no interval)"
    return f"{_pct(s['mean'], True)} ({_pct(s['lo'], True)} to {_pct(s['hi'], True)})"


def _verdict(s: dict) -> str:
    if not math.isfinite(s["lo"]):
        return "—"
    return "intra better" if s["lo"] > 0 else "inter better" if s["hi"] < 0 else "no difference shown"


def plot_domains(diffs: list, out: Path, metric: str) -> list:
    diffs = [d for d in diffs if d["all"]["n"]]
    if not diffs:
        return []
    fig, ax = plt().subplots(figsize=(6.5, 3.6))
    y = np.arange(len(diffs))
    m = np.array([100 * d["all"]["mean"] for d in diffs])
    lo = np.array([100 * d["all"]["lo"] if math.isfinite(d["all"]["lo"]) else 100 * d["all"]["mean"] for d in diffs])
    hi = np.array([100 * d["all"]["hi"] if math.isfinite(d["all"]["hi"]) else 100 * d["all"]["mean"] for d in diffs])
    ax.errorbar(m, y, xerr=[m - lo, hi - m], fmt="o", capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, [f"{_label(d, diffs)} (n={d['all']['n']})" for d in diffs])
    ax.set_xlabel(f"intra − inter domain, {metric} points (95% CI, n = checkpoint pairs)")
    ax.set_title("paired difference: X-ray source minus natural source", fontsize=9)
    return save(fig, out, "domains")


def section_domains(rows: list, metric: str, out: Path) -> tuple:
    """The paired intra − inter table (all pairs and the pre-registered rule side by side, the power)
    and its figure: (Markdown lines, figure paths)."""
    diffs = paired_domain_differences(rows, metric)
    if not diffs:
        return [], []
    lines = []
    for d in diffs:
        a, b = d["all"], d["rule"]
        lines.append([_label(d, diffs), a["n"], _diff_text(a), _pct(d["intra"]), _pct(d["inter"]), _verdict(a),
                      f"{b['n']} ({d['left_out']} left out): {_diff_text(b)}" + (" ⚠ sign differs" if d["sign_change"] else ""),
                      _pct(d["mde"])])
    md = ["### Intra- minus inter-domain transfer (paired over checkpoints)\n",
          "A unit is a pair of pre-trained checkpoints, one per source (X-ray = intra, natural = inter), with the "
          "same model, source size (the same size asked for: within 5% or 10 images) and pre-training seed; each "
          "checkpoint's value is the mean over its transfer runs (few-shot draws on one checkpoint are not "
          "independent units). n = pairs; 95% CI: t-interval over pairs. **All pairs** is the primary analysis. "
          "The rule fixed before any transfer result, applied to both arms alike: a pair leaves when either "
          "checkpoint's pre-training is at chance on its own source (shown beside; ⚠ where the sign differs). "
          "*Detectable*: the smallest true difference a paired t test over these n pairs finds with 80% power "
          "at the 5% level, from the observed spread between pairs.\n",
          _md_table(["regime", "pairs (n)", f"intra − inter ({metric} points, 95% CI)", "intra mean", "inter mean",
                     "verdict", "rule: pairs whose pre-training learned", "detectable at 80% power"], lines), "",
          "![intra vs inter](domains.png)", ""]
    return md, plot_domains(diffs, out, metric)


# -------------------------------------------------------------------------------------------- fits
def fit_axis(rows: list, axis: str, metric: str, n_boot: int) -> list:
    """The report's fits along one axis, holding the other axes fixed, each backtested on its largest x;
    groups with one x value are not axes and are left out."""
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
    fits = fit_table(sel, axis, metric, by, n_boot=n_boot, n_perm=199, holdout=HOLDOUT)
    keep = []
    for f in fits:
        xs = {tuple(p[0]) if isinstance(p[0], list) else p[0] for p in f.get("points", []) + f.get("chance_points", [])}
        if len(xs) > 1 or f.get("status") == "ok":
            keep.append(f)
    return keep


def _group(f: dict) -> str:
    return " / ".join(str(f.get(k)) for k in ("task", "source", "regime", "model") if k in f)


def backtest_summary(axis_fits: dict) -> tuple:
    """(passed, ok laws) over every axis."""
    ok = [f for fits in axis_fits.values() for f in fits if f["status"] == "ok"]
    return sum((f.get("backtest") or {}).get("status") == "passed" for f in ok), len(ok)


def section_exponents(axis_fits: dict) -> list:
    """The headline table of laws: status, exponent with its interval (one-sided where not identified,
    conditional on c = 0 where the floor is 0), units, backtest; and 'N of M laws passed their backtest'."""
    head = []
    for axis, fits in axis_fits.items():
        for f in fits:
            val = exponent_text(f) if f["status"] in ("ok", "not-identified") else "—"
            bt = (f.get("backtest") or {}).get("status", "—")
            note = "; ".join(x for x in (f["reason"] if f["status"] != "ok" else "", f"at bound: {f['at_bound']}"
                                         if f.get("at_bound") else "") if x)
            head.append([axis.replace(",", " × "), _group(f), f["status"], val, f"{f['n_points']} / {f['n_x']}",
                         bt, note])
    passed, n_ok = backtest_summary(axis_fits)
    return ["### Scaling exponents\n",
            "err = a·x^(−b) + c along one axis, the others held (params: at each source's largest size; data: per "
            "model), and err = E + A·N^(−α) + B·D^(−β) where both vary; one point per independent unit. "
            "Statuses: **ok** (trend against a constant: permutation p < 0.05; shape not rejected: lack-of-fit F "
            "test p ≥ 0.05 where x values have replicates; every exponent identified: under 2.5% of its bootstrap "
            "draws at a bound and its 95% interval inside (0, 5)), **lack-of-fit**, **no-trend**, **not-identified** "
            "(a one-sided bound is given), **refused** (under 5 x values or one decade). Where the fitted floor "
            "is 0 the law is a pure power law and its exponents are **conditional on c = 0** (with the largest "
            "floor the data allow and the exponents' range over those floors). Backtest: the law refitted "
            "without its largest x predicts the units measured there (95% prediction interval).\n",
            _md_table(["axis", "group", "status", "exponent (95% CI)", "units / x values", "backtest", "note"], head)
            if head else "(no axis with more than one value)", "",
            f"**{passed} of {n_ok} laws passed their backtest.**" if n_ok else "No law has status ok.", ""]


def section_fits(axis_fits: dict, out: Path) -> tuple:
    """Per axis: every group's one-line description and backtest, the fits tables and the figure."""
    md, plots = ["## Scaling-law fits\n"], []
    for axis, fits in axis_fits.items():
        if not fits:
            continue
        stem = axis.replace(",", "+")
        write_fits(fits, out, f"fits-{stem}")
        plots += plot_fits(fits, out, f"error-vs-{stem}", f"error vs {axis.replace(',', ' × ')}",
                           label_keys=["task", "source", "regime"] + (["model"] if axis == "data" else []))
        md += [f"### x = {axis.replace(',', ' × ')}\n"]
        for f in fits:
            md.append(f"- **{_group(f)}**: {describe(f)}")
            if f.get("backtest") and f["status"] != "refused":
                md.append(f"  - {backtest_text(f['backtest'])}")
        md += ["", f"![error vs {axis}](error-vs-{stem}.png)", ""]
    return md, plots


# -------------------------------------------------------------------------------------------- few-shot
def plot_fewshot(rows, metric, out: Path) -> list:
    """Few-shot curves: mean ± std over checkpoints where n >= 2 (n written beside each point), a single
    checkpoint with its test-set interval; chance cells hollow."""
    fs = [r for r in rows if r.regime == "fewshot" and isinstance(r.get(metric), (int, float))]
    if not fs:
        return []
    fig, ax = plt().subplots(figsize=(6.5, 4.2))
    by = defaultdict(lambda: defaultdict(list))
    for r in fs:
        by[(r.source, r.model)][r.shots].append(r)
    for i, ((src, model), d) in enumerate(sorted(by.items(), key=lambda kv: str(kv[0]))):
        ks = sorted(d)
        color = f"C{i % 10}"
        means, errs, hollow = [], [[], []], []
        for k in ks:
            s = T.summarise_units(d[k], metric)
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
    ax.set_title("few-shot transfer: mean ± std over checkpoints (n ≥ 2); hollow = at chance", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, out, "fewshot")


def section_fewshot(rows: list, metric: str, out: Path) -> tuple:
    paths = plot_fewshot(rows, metric, out)
    return (["## Few-shot\n", "![few-shot](fewshot.png)", ""] if paths else []), paths


# -------------------------------------------------------------------------------------------- measures
def measure_correlations(rows: list, metric: str) -> list:
    """Kendall's tau of each measure with measured transfer (per regime; few-shot per k), over the
    distinct values of the measure: each checkpoint's transfer is its mean over its runs, and checkpoints
    that share a value of the measure (align_ref is one value per source) are averaged into one point.
    p: exact permutation p-value (all orderings up to 8 points); p_min: the smallest p this n allows."""
    tr = [r for r in rows if r.task == "transfer" and isinstance(r.get(metric), (int, float))]
    out = []
    for col in sorted({_col(r) for r in tr}, key=_col_order):
        per_ck = defaultdict(list)
        for r in tr:
            if _col(r) == col and r.source != "scratch":
                per_ck[(r.source, r.model, r.pretrain_train_size, r.pretrain_seed)].append(r)
        for m, label, sign in MEASURES:
            groups = defaultdict(list)
            for rs in per_ck.values():
                v = [r.get(m) for r in rs if isinstance(r.get(m), (int, float))]
                if v:
                    groups[float(f"{np.mean(v):.10g}")].append(float(np.mean([r[metric] for r in rs])))
            if len(per_ck) >= 3 and groups:
                xs = sorted(groups)
                res = kendall_exact(xs, [float(np.mean(groups[x])) for x in xs])
                out.append({"regime": col, "measure": m, "label": label, "expect": sign,
                            "n_checkpoints": sum(len(g) for g in groups.values()), **res})
    return out


def tau_verdict(c: dict) -> str:
    """'yes' / 'opposite' only where the exact p < 0.05; 'cannot show' where this n makes p < 0.05
    impossible; else 'not shown'."""
    if c["n"] < 2 or not math.isfinite(c["tau"]):
        return f"cannot show (n = {c['n']} distinct value{'s' if c['n'] != 1 else ''})"
    if c["p_min"] >= ALPHA:
        return f"cannot show (n = {c['n']}: smallest possible p = {c['p_min']:.3f})"
    if c["p"] >= ALPHA:
        return "not shown"
    return "yes" if (c["tau"] > 0) == (c["expect"] == "+") else "opposite"


def section_measures(rows: list, metric: str) -> list:
    """Per-checkpoint alignment and LogME (n = pre-training seeds) and whether each predicts transfer."""
    ck_rows = defaultdict(list)
    for r in rows:
        if r.task == "transfer" and any(isinstance(r.get(m), (int, float)) for m, _, _ in MEASURES):
            ck_rows[(str(r.source), str(r.model), _size(r))].append(r)
    if not ck_rows:
        return []
    lines = []
    for k in sorted(ck_rows, key=lambda k: (k[0], _model_order(k[1]), int(k[2]) if k[2].isdigit() else -1)):
        per_seed = {r.pretrain_seed: r for r in ck_rows[k]}
        cells = []
        for m, _, _ in MEASURES:
            v = [r.get(m) for r in per_seed.values() if isinstance(r.get(m), (int, float))]
            cells.append("" if not v else (f"{np.mean(v):.3g} ± {np.std(v, ddof=1):.2g} (n={len(v)})"
                                           if len(v) > 1 else f"{v[0]:.3g} (n=1)"))
        lines.append(list(k) + cells)
    md = ["## Alignment and transferability\n",
          "Per source checkpoint (n = pre-training seeds): **align_ref**, the Fréchet distance between source "
          "and target features in one fixed reference feature space (comparable across all sources; one value "
          "per source data); **align_norm**, the Fréchet distance under the checkpoint's own features divided by "
          "their total variance (comparable across widths); **LogME** (You et al. 2021) of the checkpoint's "
          "features for the target labels. All on fixed samples: the source's val images and the target's train "
          "split.\n",
          _md_table(["source", "model", "source images", "align_ref (lower = closer)",
                     "align_norm (lower = closer)", "LogME (higher = better)"], lines), ""]
    cors = measure_correlations(rows, metric)
    if cors:
        md += ["Does a measure predict transfer? Kendall's τ between the measure and measured transfer. n counts "
               "the distinct values of the measure (checkpoints sharing one are averaged into one point); p is the "
               "exact permutation p-value (all orderings up to 8 points, else 19,999 random ones). A useful distance "
               "has τ < 0, a useful LogME τ > 0; **yes** only where p < 0.05 in that direction, and **cannot show** "
               "where n is too small for any ordering to reach p < 0.05.\n",
               _md_table(["regime", "measure", "τ", "n distinct (checkpoints)", "p (exact)", "as expected?"],
                         [[c["regime"], c["label"], f"{c['tau']:+.2f}" if math.isfinite(c["tau"]) else "—",
                           f"{c['n']} ({c['n_checkpoints']})", f"{c['p']:.3g}" if math.isfinite(c["p"]) else "—",
                           tau_verdict(c)] for c in cors]), ""]
    return md


# -------------------------------------------------------------------------------------------- report
def section_intro(results, rows: list, other: int, metric: str, title: str, preamble: str) -> list:
    n_pre = sum(r.task == "pretrain" for r in rows)
    md = [f"# {title or 'Transfer scaling report'}\n"]
    if preamble:
        md += [preamble, ""]
    md += [f"Results: `{results}`: {len(rows)} finished runs ({n_pre} pre-training, {len(rows) - n_pre} transfer)"
           + (f"; {other} row(s) of runs outside this study's plan (an earlier version of it) left out" if other
              else "") + f". Metric: {metric}; error = 1 − {metric}; values in %.\n",
           "How to read the numbers: **n counts independent units** — pre-training seeds, and for transfer the "
           "pre-trained checkpoints (few-shot draws on one checkpoint are averaged into one unit; the number of "
           "runs is given where it differs). **mean ± std (n=…)** over units, shown only where n ≥ 2; "
           "**value [lo–hi] (n=1)** is one unit with its test-set 95% bootstrap interval; **⚠ chance**: the "
           "cell's balanced accuracy cannot be told from chance (1 / classes) — such cells are left out of every "
           "fit; **collapsed**: every prediction fell in one class. Choices (the linear probe's L2 strength) are "
           "made on the val split; each run reads the test split once, at the end.\n"]
    return md


def write_report(results, out: Path, metric: str = "accuracy", n_boot: int = 200, title: str = "",
                 preamble: str = "", run_ids=None, extra: str = "", drop_invalid: bool = False) -> Path:
    """The report of a results table (``extra``: a Markdown section placed after the headline); with
    ``run_ids`` (a study's plan) only those runs, so rows of runs the plan no longer has (an earlier version
    of the study in the same table) never add to a cell's n. A metric value that is not finite or outside
    [0, 1] is an error naming its line (``drop_invalid``: such rows are left out and counted)."""
    pairs = result_pairs(results)
    if pairs and not any(isinstance(r.get(metric), (int, float)) for _, r in pairs):
        raise UserError(f"{results}: no row has a number in column {metric!r} (--metric)")
    rows, dropped = T.check_metric(pairs, metric, False, drop_invalid)   # covidnetx's own rows, checked
    rows = T.final_rows(rows)
    other = 0
    if run_ids is not None:
        keep = set(run_ids)
        other = sum(r.run_id not in keep for r in rows)
        rows = [r for r in rows if r.run_id in keep]
    if not rows:
        raise UserError(f"{results}: no final result rows" + (" of this study's runs" if run_ids is not None else ""))
    out.mkdir(parents=True, exist_ok=True)
    axis_fits = {axis: fit_axis(rows, axis, metric, n_boot) for axis in AXES}
    domains, _ = section_domains(rows, metric, out)
    fits_md, _ = section_fits(axis_fits, out)
    fewshot_md, _ = section_fewshot(rows, metric, out)
    if dropped:
        preamble = (preamble + "\n\n" if preamble else "") + (f"{dropped} row(s) with a {metric} that is not finite "
                                                                f"or outside [0, 1] left out (--drop-invalid).")
    md = (section_intro(results, rows, other, metric, title, preamble) + ["## Headline\n"] + domains
          + section_exponents(axis_fits) + ([extra, ""] if extra else []) + section_cells(rows, metric) + section_pretraining(rows, metric)
          + fits_md + fewshot_md + section_measures(rows, metric))
    path = out / "report.md"
    atomic_write_bytes(path, "\n".join(md).encode())
    return path


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx report", description="write the Markdown report")
    p.add_argument("results", help="results table (JSONL)")
    p.add_argument("--out", default=None, help="report folder (default: beside the results, report/)")
    p.add_argument("--metric", default="accuracy")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--drop-invalid", action="store_true", help="leave out (and count) rows whose metric is not "
                   "finite or outside [0, 1]; default: an error naming them")
    return p


def run(args) -> int:
    out = Path(args.out) if args.out else Path(args.results).parent / "report"
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap {args.bootstrap}: give a count >= 0")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    path = write_report(args.results, out, args.metric, args.bootstrap, drop_invalid=args.drop_invalid)
    print(f"report: {path}")
    return 0
