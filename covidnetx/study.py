"""`covidnetx study [--preset synthetic|real|demo]`: a transfer-scaling study from one command.

A study is a preset of the sweep machinery (covidnetx.sweep), not training code of its own: it
prepares the raw data (generated, or the folders given), packs and verifies it under ``mpirun``, writes
OUT/sweep.yaml and runs it (pre-training, then transfer), then writes the report with the exact command
and the time taken. Rerunning resumes: finished runs are skipped.

Presets (sizes in images of each source's train split, fixed pre-training epochs):

  synthetic  generated natural-like and X-ray-like sources -> a generated X-ray-like target (1,200
             images, 480 test); 5 widths (resnet_w4 ... w23, 1.5 decades of params); 5 source sizes
             (25 ... 800 images, 1.5 decades) on resnet_w11; 3 seeds for every pre-training and transfer
             cell; full fine-tuning, linear probe, few-shot k in {1, 5, 10, 25} x 5 seeds from the
             largest model; a from-scratch baseline. 58 minutes on 2 cores (measured).
  real       real images (../shared/data): target kermany-small, three classes (normal / bacterial /
             viral), val carved from train by patient, the official 624-image test split read once per
             run. Inter-domain source: all of CIFAR-10 (natural-cifar10) at 8 sizes (80 ... 40,000 images,
             2.7 decades); intra-domain source: both NIH ChestX-ray14 sets merged (normal / abnormal /
             pneumonia) at the 5 matched sizes (80 ... 1,600, 1.3 decades); composition cells at matched
             sizes (each NIH set alone at 760, CIFAR-10 + NIH mixed at 1,600); 5 widths (resnet_w3 ... w12,
             1.2 decades of params) at 1,600 images of each source; 3 seeds per cell; 2 epochs of
             pre-training with at least 250 steps (400, with flips, small rotations and class-balanced
             loss weights, on X-rays); full
             fine-tuning, linear probe, few-shot k in {1, 5, 10, 25, 100} x 5 draws from the largest model;
             a from-scratch baseline; and `covidnetx baseline` (MedMNIST's ResNet-18 on the binary task)
             beside the published PneumoniaMNIST rows.
  demo       a generated study with a planted answer (the X-ray-like source's classes are built from the
             target's discriminative primitives): 1 width, 5 sizes (12 ... 800), 3 seeds, linear probe
             and few-shot; the main job of `make demo`, about 5 minutes.

--source NAME=DIR (repeatable, with --domain NAME=natural|xray) and --target DIR replace the data.
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

from covidnetx import config as C
from covidnetx import sweep as S
from covidnetx.baseline import run_baseline
from covidnetx.data.hdf5 import load_index
from covidnetx.launch import mpirun_cmd
from covidnetx.rundir import RunDir
from covidnetx.slurm import submit_chain
from covidnetx.utils import (SHARED, UserError, atomic_write_bytes, atomic_write_json, dump_yaml, machine_summary,
                             run_step)
from data_tools.synth import generate

_PRE = {"data": {"eval_split": "val"},
        "optim": {"lr": 0.1, "base_batch": 64, "batch_size": 32, "schedule": "cosine", "weight_decay": 5e-4}}
_TR = {"data": {"eval_split": "test", "val_split": "val"}, "hyperrule": False,
       "optim": {"steps": 250, "lr": 0.1, "base_batch": 64, "batch_size": 32, "schedule": "cosine",
                 "warmup_steps": 10, "weight_decay": 0.0, "mixup": 0.0}}
_BASE = {"threads": 1, "bootstrap": 200, "log_every": 10, "alignment_samples": 256,
         "data": {"image_size": 32, "workers": 0}}
_NATURAL_AUG = {"data": {"hflip": True, "crop_scale": 0.6}}     # photos: flips and stronger crops are safe
_PRE_BY_DOMAIN = {"natural": _NATURAL_AUG}      # a preset's ``xray_config`` adds the X-ray sources' own

PRESETS = {
    "synthetic": {
        "data": "generated", "generate": {"per_class": 200, "xray_per_class": 250, "target_per_class": 400,
                                        "target_severity": (0.0, 1.0), "xray_alignment": None},
        "models": ["resnet_w4", "resnet_w6", "resnet_w11", "resnet_w16", "resnet_w23"],
        "data_models": ["resnet_w11"], "sizes": [25, 60, 140, 330, 800], "seeds": [0, 1, 2],
        "epochs": 10, "shots": [1, 5, 10, 25], "fewshot_seeds": [0, 1, 2, 3, 4],
        "scratch": ["resnet_w4", "resnet_w6", "resnet_w11", "resnet_w16", "resnet_w23"],
    },
    "demo": {
        "data": "generated", "generate": {"per_class": 200, "xray_per_class": 250, "target_per_class": 400,
                                        "target_severity": (0.0, 1.0), "xray_alignment": 1.0,
                                        "source_severity": (0.3, 1.0)},
        "models": ["resnet_w8"], "data_models": ["resnet_w8"],
        "sizes": [12, 30, 80, 200, 800], "seeds": [0, 1, 2], "steps": 100, "shots": [1, 5, 25],
        "fewshot_seeds": [0, 1], "scratch": ["resnet_w8"], "transfer_steps": 60,
        "regimes": ["linear", "fewshot"], "scratch_regimes": ["linear"],
    },
}
# The real study (../shared/data): target kermany-small, three classes (normal / bacterial / viral), its
# official test split read once per run; inter-domain source all of CIFAR-10, intra-domain source both NIH
# sets merged with their labels kept (normal / abnormal / pneumonia: "abnormal" alone, normal vs any of 14
# findings, is at chance in 80 images), at matched sizes; composition cells.
PRESETS["real"] = {
    "data": "shared", "target": "kermany-small",
    "packs": {"cifar10": ("natural-cifar10", "0.15"), "natural-small": ("natural-small", "0.15"),
              "nih-small": ("nih-small", "0.85,0.15,0"), "nih-pneumonia": ("nih-pneumonia", "0.85,0.15,0")},
    "sources": {
        "natural": {"packs": ["cifar10"], "domain": "natural", "model_size": 1600,
                    "sizes": [80, 170, 360, 760, 1600, 5000, 15000, 40000]},
        "nih": {"packs": ["nih-small", "nih-pneumonia"], "domain": "xray"},
        "nih-small": {"packs": ["nih-small"], "domain": "xray", "sizes": [760], "models": ["resnet_w8"]},
        "nih-pneumonia": {"packs": ["nih-pneumonia"], "domain": "xray", "sizes": [760], "models": ["resnet_w8"]},
        "natural+nih": {"packs": ["natural-small", "nih-small", "nih-pneumonia"], "domain": "mixed",
                        "sizes": [1600], "models": ["resnet_w8"]},
    },
    "models": ["resnet_w3", "resnet_w4", "resnet_w6", "resnet_w8", "resnet_w12"], "data_models": ["resnet_w8"],
    "sizes": [80, 170, 360, 760, 1600], "seeds": [0, 1, 2], "epochs": 2, "min_steps": 250,
    # X-ray sources: a weak signal in few images (NIH normal vs abnormal), so more steps and mild flips and
    # rotations; half of the merged NIH set is normal, so each class weighs alike in the loss, as in the
    # balanced accuracy the pre-training table reads (unweighted, the merged cells predicted "normal" for
    # 49-85% of val images, median 75% over 27 runs, and one of them could not be told from chance)
    "xray_config": {"data": {"hflip": True, "rotate_deg": 10.0}, "optim": {"min_steps": 400},
                    "class_weights": "balanced"},
    "transfer_steps": 150, "shots": [1, 5, 10, 25, 100], "fewshot_seeds": [0, 1, 2, 3, 4],
    "scratch": ["resnet_w8"], "baseline": {"model": "resnet_w64", "size": 28, "epochs": 10, "seeds": "0"},
    "credits": (
        "Data: kermany-small, 5,840 pediatric chest X-rays (Kermany, Zhang, Goldbaum, Mendeley Data v2, "
        "doi:10.17632/rscbjbr9sj.2, 2018, CC BY 4.0; Kermany et al., Cell 172(5), 2018); natural-cifar10 and "
        "natural-small, CIFAR-10 photographs (Krizhevsky 2009); nih-small and nih-pneumonia, NIH ChestX-ray14 "
        "radiographs, courtesy of the NIH Clinical Center (Wang et al., \"ChestX-ray8: Hospital-scale Chest X-ray "
        "Database and Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax Diseases\", "
        "CVPR 2017; original download site https://nihcc.app.box.com/v/ChestXray-NIHCC). Not for clinical use "
        "or diagnostic claims."),
    "caveats": (
        "Caveats: the NIH labels overlap: pneumonia is one of the 14 findings behind nih-small's \"abnormal\", "
        "so the merged set's three classes are not exclusive and pneumonia is mostly confused with abnormal "
        "there (per-class sensitivities in the results table), while nih-pneumonia alone separates it from "
        "normal well. The two NIH sets come from different upstream conversions (each folder's README), so which "
        "set an image came from may be learnable: a confound for the composition cells. X-ray pre-training "
        "weighs each class by 1 / its training count (`class_weights: balanced`)."),
}


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx study")
    p.description = __doc__.split("\n\n")[0]
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--preset", choices=sorted(PRESETS), default="synthetic")
    p.add_argument("--out", default=None, help="working folder (default: study_out/PRESET)")
    p.add_argument("--np", dest="nprocs", type=int, default=2, help="MPI ranks per run and for packing")
    p.add_argument("--source", action="append", default=[], metavar="NAME=DIR",
                   help="raw source folder (csv with labels.csv, or imagefolder); repeatable")
    p.add_argument("--domain", action="append", default=[], metavar="NAME=natural|xray")
    p.add_argument("--target", default=None, help="raw target folder (csv with labels.csv)")
    p.add_argument("--models", default=None, help="comma-separated widths (overrides the preset)")
    p.add_argument("--sizes", default=None, help="comma-separated source sizes in images")
    p.add_argument("--seeds", default=None, help="comma-separated seeds of every cell")
    p.add_argument("--shots", default=None, help="comma-separated few-shot k")
    p.add_argument("--epochs", type=float, default=None, help="pre-training epochs (fixed across sizes)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--pack-only", action="store_true", help="stop after packing and verifying")
    p.add_argument("--report-to", default=None, help="also copy the report (Markdown + PNG) to this folder")
    return p


def _kind(raw: Path) -> str:
    return "csv" if (raw / "labels.csv").is_file() else "imagefolder"


def _has_split_column(raw: Path) -> bool:
    f = raw / "labels.csv"
    return f.is_file() and "split" in f.read_text().splitlines()[0].split(",")


def _ints(s):
    return [int(x) for x in str(s).split(",") if x.strip()]


def raw_data(preset: dict, args, out: Path) -> tuple:
    """({pack name: (raw dir, splits)}, {source name: {"packs": [pack names], "domain": ..., more source
    keys}}, target raw dir). ``splits`` is the --val-fraction of a raw folder with a split column, else
    the --splits fractions; None: the default."""
    doms = dict(d.split("=", 1) for d in args.domain)
    if args.source or args.target:
        if not (args.source and args.target):
            raise UserError("--source and --target go together")
        raws, srcs = {}, {}
        for item in args.source:
            name, _, path = item.partition("=")
            if not path:
                name, path = Path(item).name, item
            raws[name] = (Path(path), None)
            srcs[name] = {"packs": [name], "domain": doms.get(name, "natural" if "natural" in name or "cifar" in name
                                                            else "xray")}
        return raws, srcs, Path(args.target)
    if preset["data"] == "shared":
        names = sorted({d for d, _ in preset["packs"].values()} | {preset["target"]})
        missing = [str(SHARED / n) for n in names if not (SHARED / n / "labels.csv").is_file()]
        if missing:
            raise UserError(f"the real-image study needs {', '.join(missing)}")
        raws = {k: (SHARED / d, splits) for k, (d, splits) in preset["packs"].items()}
        return raws, copy.deepcopy(preset["sources"]), SHARED / preset["target"]
    paths = generate(out / "raw", **preset["generate"])
    print(f"generated raw data under {out / 'raw'}", flush=True)
    return ({"natural": (Path(paths["natural"]), None), "xray": (Path(paths["xray-source"]), None)},
            {"natural": {"packs": ["natural"], "domain": "natural"}, "xray": {"packs": ["xray"], "domain": "xray"}},
            Path(paths["xray-target"]))


def pack_all(raws: dict, target: Path, out: Path, nprocs: int, size: int) -> tuple:
    """Pack and verify every raw folder: ({pack name: packed dir}, packed target)."""
    prefix = mpirun_cmd(nprocs) if nprocs > 1 else []
    packed = {}
    todo = [(name, raw, splits) for name, (raw, splits) in raws.items()] + [("target", target, None)]
    for name, raw, splits in todo:
        dst = out / "packed" / name
        cmd = prefix + [sys.executable, "-m", "covidnetx.cli", "pack", _kind(raw), raw, dst, "--seed", "0",
                        "--no-progress", "--size", size]
        if _has_split_column(raw):
            cmd += ["--val-fraction", splits or "0.15"]
        else:
            cmd += ["--splits", splits or ("0.45,0.15,0.4" if name == "target" else "0.85,0.15,0")]
        run_step(cmd)
        run_step([sys.executable, "-m", "covidnetx.cli", "verify", dst])
        packed[name] = dst
    return {n: packed[n] for n in raws}, packed["target"]


def feasible_shots(target: Path, shots: list) -> tuple:
    """Few-shot k values the target's train split can serve (k <= its smallest class), and a note."""
    idx = load_index(target)
    counts = {cls: sum(int(n) for n in by_source.values())
              for cls, by_source in (idx.get("counts", {}).get("train") or {}).items()}
    if not counts:
        return shots, ""
    low_cls, low = min(counts.items(), key=lambda kv: kv[1])
    keep = [k for k in shots if k <= low]
    note = "" if keep == shots else (f"few-shot k = {', '.join(str(k) for k in shots if k > low)} left out: class "
                                     f"{low_cls!r} has {low} train image(s)")
    return keep, note


def write_sweep(out: Path, preset: dict, sources: dict, packed: dict, target: Path, args) -> Path:
    models = args.models.split(",") if args.models else preset["models"]
    data_models = [m for m in preset["data_models"] if m in models] or models[len(models) // 2:len(models) // 2 + 1]
    epochs = args.epochs or preset.get("epochs")
    budget = {"epochs": [epochs]} if epochs else {"steps": [preset["steps"]]}
    pre_cfg = C.merge(_PRE, {"optim": {"min_steps": preset["min_steps"]}}) if preset.get("min_steps") else _PRE
    by_domain = {**_PRE_BY_DOMAIN, **({"xray": preset["xray_config"]} if preset.get("xray_config") else {})}
    tr = copy.deepcopy(_TR)
    tr["optim"]["steps"] = preset.get("transfer_steps", tr["optim"]["steps"])
    sw = {
        "name": out.name, "out_dir": str(out / "study"), "np": args.nprocs, "base": copy.deepcopy(_BASE),
        "sources": {n: {"data": [str(packed[k]) for k in spec["packs"]], "domain": spec["domain"],
                        **{k: v for k, v in spec.items() if k not in ("packs", "domain")},
                        **({"config": by_domain[spec["domain"]]} if spec["domain"] in by_domain else {})}
                    for n, spec in sources.items()},
        "target": {"data": [str(target)], "domain": "xray", "name": "target"},
        "models": models, "data_models": data_models,
        "sizes": _ints(args.sizes) if args.sizes else preset["sizes"],
        "seeds": _ints(args.seeds) if args.seeds else preset["seeds"],
        "pretrain": {**budget, "config": copy.deepcopy(pre_cfg)},
        "transfer": {"regimes": preset.get("regimes", ["full", "linear", "fewshot"]), "shots": preset["shots"],
                     "seeds": preset["fewshot_seeds"], "fewshot_from": "largest", "config": tr,
                     "scratch": {"models": [m for m in preset.get("scratch", []) if m in models],
                                 "regimes": preset.get("scratch_regimes", ["full", "linear"])}},
        "fit": {"metric": "balanced_accuracy"},
    }
    path = out / "sweep.yaml"
    atomic_write_bytes(path, dump_yaml(sw, sort_keys=False).encode())
    return path


def study_command(argv: list, preset: str) -> str:
    """The command line the report prints: the study's own arguments, or the preset when called as a
    library."""
    if argv[1:2] == ["study"]:
        return "covidnetx study " + " ".join(shlex.quote(a) for a in argv[2:])
    return f"covidnetx study --preset {preset}"


def prepare(args, preset: dict, out: Path) -> Optional[tuple]:
    """Raw data -> packed and verified -> OUT/sweep.yaml and its run configs: (sweep, its runs
    (pre-training, transfer), config paths, a note on the few-shot k kept); None after --pack-only."""
    raws, sources, target_raw = raw_data(preset, args, out)
    packed, target = pack_all(raws, target_raw, out, args.nprocs, 32)
    if args.pack_only:
        return None
    shots, note = feasible_shots(target, _ints(args.shots) if args.shots else preset["shots"])
    if note:
        print(f"covidnetx study: {note}", flush=True)
    preset["shots"] = shots
    sw = S.load_sweep(str(write_sweep(out, preset, sources, packed, target, args)))
    pre, tr = S.expand(sw)
    return sw, pre, tr, S.write_configs(sw, pre, tr), note


def run_ids(pre: list, tr: list) -> list:
    """Every run of the plan: pre-training runs, then each transfer stage's runs."""
    return [n for n, _ in pre] + [x for *_, subs in tr for x in subs]


def execute(sw, pre: list, tr: list, paths, nprocs: int) -> int:
    """Run the plan here (pre-training, then transfer; finished runs are skipped); returns how many runs
    were done before this invocation."""
    done_before = sum(RunDir(Path(sw.out_dir) / "runs" / n).is_done() for n in run_ids(pre, tr))
    for stage in ("pretrain", "transfer"):
        code = S.run_local(sw, pre, tr, paths, nprocs, stage, False)
        if code:
            raise UserError(f"the study's {stage} stage failed (exit {code}); rerun the same command to resume")
    return done_before


def study_info(stamp: Path, fresh: dict) -> dict:
    """What the report says of the study: ``fresh`` (this invocation), except where nothing ran (every run
    was done before) and an earlier record exists: then the record of the invocation that did the work,
    with this invocation's note, credits, caveats and baseline."""
    total = fresh["runs"]["pretrain"] + fresh["runs"]["transfer"]
    if fresh["done_before"] == total and stamp.is_file():
        keep = ("note", "credits", "caveats", "baseline")
        return {**json.loads(stamp.read_text()), **{k: fresh.get(k, "") for k in keep}}
    return fresh


def copy_report(report_dir: Path, dst: Path) -> list:
    """The report's files (Markdown, figures as PNG, fit tables, JSON) copied to ``dst``; returns them."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in sorted(report_dir.iterdir()):
        if f.suffix in (".md", ".png", ".csv", ".json"):
            shutil.copy2(f, dst / f.name)
            copied.append(dst / f.name)
    return copied


def run(args) -> int:
    t0 = time.time()
    preset = copy.deepcopy(PRESETS[args.preset])
    out = Path(args.out or Path("study_out") / args.preset)
    out.mkdir(parents=True, exist_ok=True)
    command = study_command(sys.argv, args.preset)
    planned = prepare(args, preset, out)
    if planned is None:
        print(f"study (pack only) finished in {time.time() - t0:.0f} s; packed data under {out / 'packed'}")
        return 0
    sw, pre, tr, paths, note = planned
    if args.executor == "slurm":
        return submit_chain(sw, pre, tr, paths, str(out / "sweep.yaml"))
    done_before = execute(sw, pre, tr, paths, args.nprocs)
    baseline = ""
    if preset.get("baseline") and preset["data"] == "shared":
        b = preset["baseline"]
        baseline, _ = run_baseline(SHARED / preset["target"], out / "baseline", b["model"], b["size"], b["epochs"],
                                   _ints(b["seeds"]), args.nprocs)
    elapsed = time.time() - t0
    stamp = out / "study.json"
    info = study_info(stamp, {"command": command, "preset": args.preset, "seconds": round(elapsed),
                              "done_before": done_before, "note": note, "baseline": baseline,
                              "runs": {"pretrain": len(pre), "transfer": sum(len(s) for *_, s in tr)},
                              "credits": preset.get("credits", ""), "caveats": preset.get("caveats", "")})
    atomic_write_json(stamp, info)
    report = write_study_report(sw, info, run_ids(pre, tr))
    if args.report_to:
        copy_report(report.parent, Path(args.report_to))
        print(f"report copied to {args.report_to}")
    print(f"study finished in {elapsed:.0f} s; report: {report}")
    return 0


def write_study_report(sw, info: dict, run_ids=None) -> Path:
    total = info["runs"]["pretrain"] + info["runs"]["transfer"]
    took = (f"it took {info['seconds'] / 60:.0f} min from raw data to this report" if not info["done_before"] else
            f"this invocation took {info['seconds'] / 60:.0f} min, resuming a study with {info['done_before']} of "
            f"{total} runs already done")
    pre = (f"Command: `{info['command']}` (preset `{info['preset']}`): {info['runs']['pretrain']} pre-training and "
           f"{info['runs']['transfer']} transfer runs; {took} ({machine_summary()}).")
    if info.get("note"):
        pre += f" Note: {info['note']}."
    if info.get("credits"):
        pre += "\n\n" + info["credits"]
    if info.get("caveats"):
        pre += "\n\n" + info["caveats"]
    extra = ""
    if info.get("baseline"):
        extra = ("## A published baseline beside covidnetx's\n\nThe target's binary task (bacterial + viral = "
                "pneumonia) is MedMNIST v2's PneumoniaMNIST (the same 624 official test images). `covidnetx "
                "baseline` trains MedMNIST's 28-px ResNet-18 from scratch under this study's protocol (the model "
                "of the last step, no early stopping; the test split read once):\n\n" + info["baseline"])
    res = Path(sw.out_dir) / "results.jsonl"
    pre += ("\n\nThe study's metric is balanced accuracy (the mean of the per-class sensitivities; chance = 1 / "
            "classes), which a model that favours the largest class cannot inflate.")
    from covidnetx.scaling.report import write_report  # lazy: heavy, scipy and matplotlib, only to write the report
    return write_report(res, Path(sw.out_dir) / "report", metric=sw.fit.metric,
                        title=f"Transfer scaling study: {info['preset']}", preamble=pre, run_ids=run_ids, extra=extra)
