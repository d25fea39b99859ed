"""Weak- and strong-scaling efficiency across process counts, with the performance model beside it.

  python benchmarks/scaling.py [--counts 1,2] [--model resnet18] [--size 64] [--batch 16] [--iters 15]
  python benchmarks/scaling.py --gather bench_out     (the outputs of jobscripts/scaling.sbatch jobs)

For each N (local mpirun; on a cluster one jobscripts/scaling.sbatch job per node count, gathered here):
  weak   : fixed batch per process; efficiency = throughput_N / (N x throughput_1)
  strong : fixed global batch (batch split over N processes); efficiency = T_1 / (N x T_N) per global batch
and, for N > 1, the measured allreduce time of the model's fused gradients, with the efficiency that
benchmarks/perfmodel.py predicts from the measured step compute time and that allreduce time (no overlap:
Horovod overlaps little on one CPU core per rank); and the full model, which adds what N ranks on one
machine cost each other without communicating (contention: N plain loops started together, the compute
time at N) and the wait for the slowest of N ranks (stragglers: from the step-time variation measured at
the smallest count, the coefficient of variation within each launch, pooled, so drift between launches
does not count). Writes one CSV per run named by what it measured
(bench-scaling-<hardware>-<precision>-<model>-np<counts>.csv), a PNG plot and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import hardware_tag, machine_line, mean_ci, pooled_cv, write_csv  # noqa: E402
from benchmarks.train import run_worker  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", default="1,2")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--gather", default=None, metavar="DIR",
                    help="instead of running: gather the scaling-*.json outputs of jobscripts/scaling.sbatch in DIR")
    args = ap.parse_args(argv)
    if args.gather:
        return gather(Path(args.gather), Path(args.out))
    args.workers, args.data, args.loader, args.channels = 0, "synthetic", "torch", 1
    counts = [int(c) for c in args.counts.split(",")]
    print(f"# scaling: {args.model} {args.size}px, batch {args.batch}/process (weak) or {args.batch} global (strong), "
          f"{args.iters} timed iterations, {args.threads} thread(s)/process; {machine_line()}")
    got = {n: {"weak": [], "strong": [], "allreduce": [], "launches": [], "shared": []} for n in counts}
    # the counts take turns within each repeat, so a slow or fast spell of the machine hits them alike
    for _ in range(args.repeats):
        for n in counts:
            g = got[n]
            w = run_worker("hvd", n, "synthetic", "torch", args)
            g["weak"] += w["times"]
            g["launches"].append(w["times"])
            g["allreduce"] += w.get("allreduce_times", [])
            sargs = argparse.Namespace(**{**vars(args), "batch": max(1, args.batch // n)})
            g["strong"] += run_worker("hvd", n, "synthetic", "torch", sargs)["times"]
            if n > 1:           # n independent plain loops at once: the compute time per step at n
                g["shared"] += run_worker("plain", n, "synthetic", "torch", args)["times"]
    res = {n: {"weak_step": statistics.fmean(g["weak"]), "weak_ci": mean_ci([args.batch / t for t in g["weak"]])[1],
               "strong_step": statistics.fmean(g["strong"]),
               "allreduce": statistics.fmean(g["allreduce"]) if g["allreduce"] else 0.0,
               "step_cv": pooled_cv(g["launches"]), "shared_step": statistics.fmean(g["shared"]) if g["shared"] else None}
           for n, g in got.items()}
    write_outputs(res, counts, args.batch, Path(args.out),
                  f"bench-scaling-{hardware_tag()}-{args.precision}-{args.model}-np{'-'.join(map(str, counts))}",
                  args.model, args.size)
    return 0



def _sig(v: float) -> float:
    """Times in the CSV keep 6 significant digits (fixed decimals would cut a 10 ms step to 3 digits)."""
    return float(f"{v:.6g}")

def write_outputs(res: dict, counts: list, batch: int, out: Path, stem: str, model: str, size: int) -> list:
    """Efficiencies relative to the smallest count, the model's predictions beside them; CSV, Markdown
    table and PNG plot named ``stem``. ``res[n]``: weak_step, weak_ci, allreduce (s), strong_step or None,
    step_cv (the smallest count's is the straggler model's input), shared_step (N plain loops at once) or None."""
    from benchmarks.perfmodel import efficiency, shared_efficiency, straggler_time
    base = res[counts[0]]
    cv = base.get("step_cv", 0.0)
    rows = []
    lines = [f"| N | img/s per process (weak) | weak eff. | strong eff. | gradient allreduce (ms) | model eff. (no overlap) "
             f"| N plain loops at once | model: + contention + stragglers (step cv {100 * cv:.1f}%) |",
             "|---|---|---|---|---|---|---|---|"]
    for n in counts:
        r = res[n]
        thr = batch / r["weak_step"]
        weak_eff = thr / (batch / base["weak_step"])
        strong_eff = (base["strong_step"] / (n / counts[0] * r["strong_step"])
                      if r.get("strong_step") and base.get("strong_step") else None)
        pred = efficiency(base["weak_step"], r["allreduce"], overlap=0.0) if r["allreduce"] else 1.0
        # the base count's step already holds its own wait for the slowest of counts[0] ranks
        wait = straggler_time(base["weak_step"], cv, n) - straggler_time(base["weak_step"], cv, counts[0])
        # compute time at n: n plain loops at once where measured (contention), else the base step
        t_n = r.get("shared_step") or base["weak_step"]
        contention = base["weak_step"] / t_n
        pred_full = shared_efficiency(base["weak_step"], t_n, r["allreduce"], t_wait=wait)
        lines.append(f"| {n} | {thr:.1f} ± {r['weak_ci']:.1f} | {100 * weak_eff:.0f}% | "
                     f"{'—' if strong_eff is None else f'{100 * strong_eff:.0f}%'} | "
                     f"{1e3 * r['allreduce']:.1f} | {100 * pred:.0f}% | "
                     f"{'—' if not r.get('shared_step') else f'{100 * contention:.0f}%'} | {100 * pred_full:.0f}% |")
        rows.append({"np": n, "model": model, "size": size, "batch": batch,
                     "weak_step_s": _sig(r["weak_step"]), "weak_img_per_s_per_proc": round(thr, 2),
                     "weak_eff": round(weak_eff, 4), "strong_step_s": _sig(r.get("strong_step") or 0.0),
                     "strong_eff": "" if strong_eff is None else round(strong_eff, 4),
                     "allreduce_s": _sig(r["allreduce"]), "model_eff_no_overlap": round(pred, 4),
                     "step_cv": round(r.get("step_cv", 0.0), 4), "straggler_wait_s": _sig(wait),
                     "shared_step_s": "" if not r.get("shared_step") else _sig(r["shared_step"]),
                     "model_eff_full": round(pred_full, 4)})
    print("\n".join(lines))
    write_csv(out / f"{stem}.csv", rows)
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    from covidnetx.scaling.plots import plt, save
    fig, ax = plt().subplots(figsize=(5, 3.5))
    ax.plot(counts, [100 * r["weak_eff"] for r in rows], "o-", label="weak (measured)")
    if all(r["strong_eff"] != "" for r in rows):
        ax.plot(counts, [100 * r["strong_eff"] for r in rows], "s-", label="strong (measured)")
    ax.plot(counts, [100 * r["model_eff_no_overlap"] for r in rows], "k--", label="model (no overlap)")
    if any(r["model_eff_full"] != r["model_eff_no_overlap"] for r in rows):
        ax.plot(counts, [100 * r["model_eff_full"] for r in rows], "k:", label="model + contention + stragglers")
    ax.set_xlabel("processes")
    ax.set_ylabel("efficiency (%)")
    ax.set_ylim(0, 110)
    ax.legend()
    save(fig, out, stem)                         # the one home of figure saving: PNG and PDF
    print(f"wrote {out}/{stem}.csv, .md, .png, .pdf")
    return rows


def gather(folder: Path, out: Path) -> int:
    """Collect the RESULT lines of scaling.sbatch outputs (``scaling-*.json``), one series per (device,
    precision, model, image size, batch), into the same CSV/table/plot as a local run."""
    series: dict = {}
    for f in sorted(folder.glob("scaling-*.json")):
        lines = [l for l in f.read_text(errors="replace").splitlines() if l.startswith("RESULT ")]
        if not lines:
            print(f"{f}: no RESULT line (job failed or still running); skipped", file=sys.stderr)
            continue
        try:
            d = json.loads(lines[-1][7:])
            key = (d["device"], d["precision"], d["model"], d["image_size"], d["batch"])
            series.setdefault(key, {})[int(d["size"])] = {
                "weak_step": statistics.fmean(d["times"]), "weak_ci": mean_ci([d["batch"] / t for t in d["times"]])[1],
                "allreduce": statistics.fmean(d["allreduce_times"]) if d.get("allreduce_times") else 0.0,
                "strong_step": None, "step_cv": pooled_cv([d["times"]])}
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{f}: malformed RESULT line ({type(e).__name__}: {e})")
    if not series:
        raise SystemExit(f"no scaling-*.json with results in {folder}")
    for (device, precision, model, size, batch), res in series.items():
        counts = sorted(res)
        stem = f"bench-scaling-{device}-{precision}-{model}-np{'-'.join(map(str, counts))}"
        print(f"# gathered: {model} {size}px, batch {batch}/process, {precision}, on {device}")
        write_outputs(res, counts, batch, out, stem, model, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
