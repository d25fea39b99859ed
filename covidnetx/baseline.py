"""`covidnetx baseline`: a published baseline reproduced: ResNet-18 from scratch on PneumoniaMNIST's task.

MedMNIST v2 (Yang et al., Scientific Data 10:41, 2023) reports on PneumoniaMNIST, which is Kermany et
al.'s official 624 test images at 28 px, binary normal / pneumonia: ResNet-18 (28) AUC 0.944, ACC 0.854;
ResNet-50 (28) 0.948 / 0.854; auto-sklearn 0.942 / 0.855; Google AutoML Vision 0.991 / 0.946. This command
packs ../shared/data/kermany-small (the same official split; val carved from train by patient), merges
bacterial and viral into pneumonia, trains MedMNIST's 28-px ResNet-18 (``resnet_w64``: a 3x3 stride-1
stem without max-pooling, four stages of two BasicBlocks, widths 64-512, 11.2 M parameters) from scratch
under covidnetx's fine-tuning protocol (SGD, cosine schedule, mild crops; the model of the last step, no
early stopping; the test split read once, at the end), one run per seed, and prints AUC and accuracy with their 95% intervals beside the published rows.
MedMNIST trained 100 epochs with Adam; this runs --epochs (default 10) with SGD, so it checks that the
pipeline lands in the published range, not a tuned result.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

from covidnetx.launch import mpirun_cmd
from covidnetx.results import load_results
from covidnetx.rundir import RunDir
from covidnetx.scaling.cells import final_rows
from covidnetx.utils import SHARED, UserError, atomic_write_bytes, machine_summary, run_step

PUBLISHED = [  # MedMNIST v2, Table (PneumoniaMNIST): name, input, test AUC, test ACC
    ("MedMNIST v2: ResNet-18 (28)", "28 px", 0.944, 0.854),
    ("MedMNIST v2: ResNet-50 (28)", "28 px", 0.948, 0.854),
    ("MedMNIST v2: auto-sklearn", "28 px", 0.942, 0.855),
    ("MedMNIST v2: Google AutoML Vision", "28 px", 0.991, 0.946),
]
CREDITS = ("Data: kermany-small, 5,840 pediatric chest X-rays from Kermany, Zhang, Goldbaum, \"Labeled Optical "
           "Coherence Tomography (OCT) and Chest X-Ray Images for Classification\", Mendeley Data v2, "
           "doi:10.17632/rscbjbr9sj.2 (2018), CC BY 4.0; Kermany et al., Cell 172(5), 2018. Published rows: Yang et "
           "al., \"MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image "
           "classification\", Scientific Data 10:41 (2023). Not for clinical use or diagnostic claims.")


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx baseline")
    p.description = __doc__.split("\n\n")[0]
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--data", default=str(SHARED / "kermany-small"), help="the raw Kermany folder (csv layout)")
    p.add_argument("--out", default="baseline_out", help="working folder")
    p.add_argument("--model", default="resnet_w64", help="model (resnet_w64: MedMNIST's 28-px ResNet-18)")
    p.add_argument("--size", type=int, default=28, help="image size in pixels (28 as published, or 32)")
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one run each")
    p.add_argument("--np", dest="nprocs", type=int, default=2, help="MPI ranks per run")
    p.add_argument("--report-to", default=None, help="also write the table (Markdown) to this file")
    return p


def _cell(vals: list, los: list, his: list, digits: int = 3) -> str:
    """One run: value [its test-set 95% interval]; several: mean ± std (n) and the runs' intervals."""
    f = f"{{:.{digits}f}}"
    if len(vals) == 1:
        return f"{f.format(vals[0])} [{f.format(los[0])}–{f.format(his[0])}] (n=1)"
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return (f"{f.format(m)} ± {f.format(sd)} (n={len(vals)} seeds; test-set intervals "
            + ", ".join(f"{f.format(lo)}–{f.format(hi)}" for lo, hi in zip(los, his)) + ")")


def table(rows: list, model: str, size: int, epochs: float) -> str:
    """The Markdown table: covidnetx's runs beside the published rows."""
    ours = [f"covidnetx: {model} from scratch, {epochs:g} epochs", f"{size} px",
            _cell([r["auc"] for r in rows], [r["auc_ci_lo"] for r in rows], [r["auc_ci_hi"] for r in rows]),
            _cell([r["accuracy"] for r in rows], [r["accuracy_ci_lo"] for r in rows], [r["accuracy_ci_hi"] for r in rows])]
    lines = ["| model | input | test AUC (95% CI) | test ACC (95% CI) |", "|---|---|---|---|",
             "| " + " | ".join(ours) + " |"]
    lines += [f"| {name} | {inp} | {auc:.3f} | {acc:.3f} |" for name, inp, auc, acc in PUBLISHED]
    n = {r.get("n") for r in rows}
    lo, hi = min(p[2] for p in PUBLISHED), max(p[2] for p in PUBLISHED)
    auc = sum(r["auc"] for r in rows) / len(rows)
    where = ("inside" if lo <= auc <= hi else "above" if auc > hi else "below")
    verdict = (f"\n\ncovidnetx's test AUC {auc:.3f} is {where} the published range ({lo:.3f}–{hi:.3f}); "
               + ("it reproduces the published baseline." if auc >= 0.92 else
                  "it falls short of the published baseline (AUC < 0.92): check the protocol and preprocessing."))
    return "\n".join(lines) + verdict + (f"\n\nTest images: {', '.join(str(x) for x in sorted(n))} (the official Kermany test "
                               "split, as PneumoniaMNIST's); binary normal vs pneumonia (bacterial + viral).")


def run_baseline(raw: Path, out: Path, model: str, size: int, epochs: float, seeds: list, nprocs: int) -> tuple:
    """Pack, train (finished seeds are not rerun), and return (the Markdown table, its rows)."""
    if not (raw / "labels.csv").is_file():
        raise UserError(f"{raw}: no labels.csv (the baseline needs ../shared/data/kermany-small or --data)")
    packed = out / "packed" / f"kermany-{size}"
    prefix = mpirun_cmd(nprocs) if nprocs > 1 else []
    run_step(prefix + [sys.executable, "-m", "covidnetx.cli", "pack", "csv", raw, packed, "--size", size,
                   "--val-fraction", "0.1", "--seed", "0", "--no-progress"])
    cmd = prefix + [sys.executable, "-m", "covidnetx.cli", "transfer", "--config", "transfer_cpu",
                    f"data.sources=[{packed}]", "data.rename={bacterial: pneumonia, viral: pneumonia}",
                    f"data.image_size={size}", "data.eval_split=test", "data.val_split=val", "regime=full",
                    f"model.name={model}", "model.init_from=", "hyperrule=false", f"optim.epochs={epochs}",
                    "optim.lr=0.1", "optim.base_batch=128", "optim.batch_size=64", "optim.schedule=cosine",
                    "optim.weight_decay=5e-4", "optim.warmup_steps=50", "optim.mixup=0", f"out_dir={out / 'runs'}",
                    f"run_name=medmnist-{model}-{size}px", f"seeds=[{','.join(map(str, seeds))}]",
                    "target_name=kermany-binary", "target_domain=xray", "alignment_samples=0"]
    run_step(cmd)
    rows = [r for r in final_rows(load_results(out / "runs" / "results.jsonl"))
            if r.model == model and r.seed in seeds and r.target == "kermany-binary"]
    if not rows:
        raise UserError(f"{out / 'runs' / 'results.jsonl'}: no result rows of the baseline runs")
    return table(rows, model, size, epochs), rows


def run(args) -> int:
    t0 = time.time()
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    done_before = sum(RunDir(Path(args.out) / "runs" / f"medmnist-{args.model}-{args.size}px-s{s}").is_done()
                      for s in seeds)
    md, rows = run_baseline(Path(args.data), Path(args.out), args.model, args.size, args.epochs, seeds, args.nprocs)
    took = time.time() - t0
    command = "covidnetx baseline " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["baseline"] \
        else "covidnetx baseline"
    print(md)
    print(f"\nbaseline finished in {took / 60:.1f} min")
    if args.report_to:
        doc = (f"# A published baseline reproduced: PneumoniaMNIST (MedMNIST v2)\n\nCommand: `{command}`; "
               f"{len(rows)} run(s), "
               + (f"{took / 60:.0f} min from raw data to this table" if not done_before else
                  f"{done_before} of them finished by an earlier invocation (this one: {took / 60:.0f} min)")
               + f" ({machine_summary()}).\n\n{__doc__.split(chr(10) * 2)[1]}"
               f"\n\n{md}\n\n{CREDITS}\n")
        atomic_write_bytes(Path(args.report_to), doc.encode())
        print(f"written to {args.report_to}")
    return 0
