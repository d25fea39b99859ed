"""`covidnetx sweep SWEEP.yaml [--executor local|slurm] [--dry-run]`: describe a study once, run it.

A sweep is a grid over pre-training (source composition x model x source fraction x steps) and transfer
(regime x shots x seeds) on one target. Every run gets a stable id from its resolved config, written to
OUT/configs/RUN.yaml; re-running a sweep skips finished runs (done.json) and resumes unfinished ones from
their own checkpoints. Pre-training runs are shared by all transfer runs that start from them.

local executor: one launcher invocation per stage (``mpirun -np NP covidnetx runs ...``), then fit and
report in-process. slurm executor: renders a job chain into OUT/jobs/ -- [pack] -> pretrain (array, one
task per pre-training run, NODES nodes each) -> transfer (array) -> report -- linked by afterok
dependencies, and submits it with sbatch (--dry-run prints the scripts instead). --status shows how far
the runs are (done / checkpointed / started / not started) and exits 0 only when all are done.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from covidnetx import config as C
from covidnetx.data.hdf5 import load_index
from covidnetx.launch import mpirun_cmd
from covidnetx.results import load_results
from covidnetx.rundir import RunDir
from covidnetx.slurm import submit_chain
from covidnetx.utils import UserError, atomic_write_bytes, read_text, read_yaml


@dataclass
class SourceSpec:
    data: List[str] = field(default_factory=list)        # packed dataset folders, mixed into one source
    domain: str = ""                                     # e.g. natural | xray | mixed (intra/inter pairs with the target's)
    label_space: str = "union"                           # union | intersection of the folders' classes
    rename: dict = field(default_factory=dict)           # class name -> name in the mixture's label space
    config: dict = field(default_factory=dict)           # run config keys for this source's pre-training runs
    sizes: List[int] = field(default_factory=list)       # this source's data axis in images ([] = the sweep's)
    models: List[str] = field(default_factory=list)      # this source's models ([] = the sweep's)
    model_size: int = 0                                  # images for models off the data axis (0 = its largest)


@dataclass
class TargetSpec:
    data: List[str] = field(default_factory=list)        # packed target folder(s)
    domain: str = ""                                     # the target's domain (intra when a source's is the same)
    name: str = ""                                       # the target's name in tables


@dataclass
class PretrainSpec:
    steps: List[int] = field(default_factory=list)       # step budgets ([] and no epochs: the config's optim.steps)
    epochs: List[float] = field(default_factory=list)    # or epoch budgets over each run's data (not both)
    config: dict = field(default_factory=dict)           # run config keys for every pre-training run


@dataclass
class ScratchSpec:
    models: List[str] = field(default_factory=list)      # from-scratch baselines: models (with the sweep's seeds)
    regimes: List[str] = field(default_factory=lambda: ["full"])   # full and/or linear


@dataclass
class TransferSpec:
    regimes: List[str] = field(default_factory=lambda: ["full"])   # full | linear | fewshot
    shots: List[int] = field(default_factory=lambda: [1, 5, 10])   # few-shot: labelled images per class
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # few-shot draws per checkpoint
    fewshot_from: str = "largest"                        # largest (model and data per source) | all checkpoints
    config: dict = field(default_factory=dict)           # run config keys for every transfer run
    scratch: ScratchSpec = field(default_factory=ScratchSpec)


@dataclass
class FitSpec:
    metric: str = "accuracy"                             # the report's metric


@dataclass
class PackSpec:
    kind: str = ""                                       # a covidnetx pack layout (csv, imagefolder, nih, ...)
    raw: str = ""                                        # raw data folder
    out: str = ""                                        # packed output folder
    args: List[str] = field(default_factory=list)        # more pack options


@dataclass
class SlurmSpec:
    template: str = "generic"                            # generic | juwels (JUWELS Booster: 4 GPUs per node)
    account: str = ""                                    # --account (required for juwels)
    partition: str = ""                                  # --partition (required for juwels)
    nodes: int = 1                                       # nodes per pre-training run
    transfer_nodes: int = 1                              # nodes per transfer run
    tasks_per_node: int = 0                              # ranks per node (0: 1, juwels 4)
    gpus_per_node: int = 0                               # --gres=gpu:N (0: none, juwels 4)
    cpus_per_task: int = 0                               # (0: 1, juwels 12)
    time: str = "01:00:00"                               # time limit of a pre-training job
    transfer_time: str = ""                              # of a transfer job ("" = time)
    report_time: str = "00:30:00"                        # of the report job
    signal_lead: int = 120                               # seconds of warning (USR1) before the limit
    modules: str = ""                                    # site modules to load
    srun_args: str = ""                                  # more srun options (e.g. --mpi=pmix)
    python: str = ""                                     # the Python that runs covidnetx ("" = this one)
    workdir: str = ""                                    # the jobs' working folder ("" = here)
    sbatch: str = "sbatch"                               # the sbatch command


@dataclass
class Sweep:
    name: str = ""                                       # "" = the file's name
    out_dir: str = ""                                    # "" = runs/NAME
    np: int = 1                                          # processes per run (local executor)
    base: dict = field(default_factory=dict)             # run config keys for every run
    sources: Dict[str, SourceSpec] = field(default_factory=dict)   # pre-training sources by name
    target: TargetSpec = field(default_factory=TargetSpec)
    models: List[str] = field(default_factory=list)      # model names (covidnetx pretrain --keys: model.name)
    fractions: List[float] = field(default_factory=list)  # data axis as fractions of each source ([] = [1.0])
    sizes: List[int] = field(default_factory=list)       # or as train images per source (not both)
    data_models: List[str] = field(default_factory=list)  # models on the data axis ([] = all; others: largest only)
    seeds: List[int] = field(default_factory=lambda: [0])  # pre-training seeds (transfer inherits each run's)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    transfer: TransferSpec = field(default_factory=TransferSpec)
    fit: FitSpec = field(default_factory=FitSpec)
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    pack: List[PackSpec] = field(default_factory=list)   # datasets to pack in a first Slurm job


SWEEP_SCHEMA = C.Schema(Sweep, what="sweep key", keys_cmd="covidnetx sweep --keys")


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx sweep", description=__doc__.split("\n")[0])
    p.add_argument("sweep", nargs="?", help="sweep YAML file")
    p.add_argument("--keys", action="store_true", help="list every sweep key with its type, default and meaning")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--dry-run", action="store_true", help="print what would run (local) or the job scripts (slurm)")
    p.add_argument("--np", dest="nprocs", type=int, default=None, help="processes per run (local; overrides np)")
    p.add_argument("--stage", choices=("all", "pretrain", "transfer", "report"), default="all")
    p.add_argument("--status", action="store_true",
                   help="show which runs are done, checkpointed, started or not started (from the run "
                        "directories, under either executor); exit 0 when every run is done, else 1")
    return p


def load_sweep(path: str) -> Sweep:
    """A sweep file, typed and checked: one error naming the key (and the nearest known key for a typo)."""
    p = Path(path)
    raw = read_yaml(read_text(p, "sweep file"), str(p)) or {}
    try:
        sw = C.build(SWEEP_SCHEMA, raw)
        check_sweep(sw)
    except UserError as e:
        raise UserError(f"{p}: {e}") from None
    sw.name = sw.name or p.stem
    sw.out_dir = sw.out_dir or str(Path("runs") / sw.name)
    if not sw.sizes and not sw.fractions:
        sw.fractions = [1.0]
    return sw


def check_sweep(sw: Sweep) -> None:
    for key, value in (("sources", sw.sources), ("target.data", sw.target.data), ("models", sw.models)):
        if not value:
            raise UserError(f"sweep key {key!r} is required")
    for name, src in sw.sources.items():
        if not src.data:
            raise UserError(f"sweep key 'sources.{name}.data': needs [packed folder, ...]")
    if sw.sizes and sw.fractions:
        raise UserError("sweep keys 'fractions' and 'sizes': give one (source sizes in images), not both")
    if sw.pretrain.steps and sw.pretrain.epochs:
        raise UserError("sweep keys 'pretrain.steps' and 'pretrain.epochs': give one, not both")
    for key, values, allowed in (("transfer.regimes", sw.transfer.regimes, ("full", "linear", "fewshot")),
                                 ("transfer.scratch.regimes", sw.transfer.scratch.regimes, ("full", "linear")),
                                 ("transfer.fewshot_from", [sw.transfer.fewshot_from], ("largest", "all")),
                                 ("slurm.template", [sw.slurm.template], ("generic", "juwels"))):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise UserError(f"sweep key {key!r}: {bad[0]!r} is not one of {', '.join(allowed)}"
                            + (" (few-shot needs a checkpoint)" if key == "transfer.scratch.regimes" else ""))
    for key, value in (("np", sw.np), ("slurm.nodes", sw.slurm.nodes), ("slurm.transfer_nodes", sw.slurm.transfer_nodes)):
        if not 1 <= value <= 100_000:
            raise UserError(f"sweep key {key!r}: {value} is not valid (must be 1 ... 100000)")
    for key, values in (("seeds", sw.seeds), ("models", sw.models), ("sizes", sw.sizes), ("fractions", sw.fractions),
                        ("transfer.shots", sw.transfer.shots), ("transfer.seeds", sw.transfer.seeds)):
        if len(set(map(str, values))) != len(values):
            raise UserError(f"sweep key {key!r}: {values} repeats a value (each would be the same run twice)")
    for i, pk in enumerate(sw.pack):
        if not (pk.kind and pk.raw and pk.out):
            raise UserError(f"sweep key 'pack[{i}]': needs kind, raw and out")


def _fractions(sw: Sweep, src: SourceSpec) -> tuple:
    """(the source fractions of the data axis, the fraction for models off it): ``fractions`` as given,
    or sizes in images (the source's own ``sizes``, else the sweep's) over the size of this source's train
    split, so that sources of different sizes meet at the same sizes."""
    sizes = src.sizes or sw.sizes
    if not sizes:
        return [float(f) for f in sw.fractions], max(float(f) for f in sw.fractions)
    n = 0
    for d in src.data:
        try:
            n += int(load_index(d)["splits"]["train"]["count"])
        except (UserError, KeyError):
            raise UserError(f"sizes: cannot read the train split size of {d!r} (packed dataset?)") from None
    out = []
    for size in sizes + ([src.model_size] if src.model_size else []):
        if not 0 < size <= n:
            raise UserError(f"sizes: {size} images asked of a source with {n} train images ({src.data})")
        out.append(round(size / n, 6))
    return out[:len(sizes)], (out[-1] if src.model_size else max(out))


def _load(d: dict, where: str) -> C.Config:
    """One run's config from the merged sweep sections; an error says which sections made it."""
    try:
        return C.load_config(base=d)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def expand(sw: Sweep) -> tuple:
    """-> (pretrain [(run_name, config)], transfer [(run_name, config, [expected run dirs])]).

    Pre-training: sources x models x fractions (or sizes) x steps (or epochs) x seeds; ``data_models``
    limits the data axis to those models (the others train on the largest fraction only). Transfer: each
    pre-training run in each regime with the run's own seed (full and linear: one transfer per
    pre-trained checkpoint, so a cell's n counts independent pre-training + transfer pipelines);
    few-shot from the largest model and fraction per source, shots x transfer seeds per checkpoint; and
    from-scratch baselines (transfer.scratch: models, regimes) with the sweep's seeds."""
    out = Path(sw.out_dir)
    common = {"out_dir": str(out / "runs"), "results": str(out / "results.jsonl"),
              "feature_cache": str(out / "features")}
    base = C.merge(sw.base, common)
    pre, tr = [], []
    p = sw.pretrain
    budget = [("epochs", float(e)) for e in p.epochs] if p.epochs else [("steps", int(n)) for n in p.steps or [0]]
    data_models = sw.data_models or sw.models
    tgt = sw.target
    largest = {}
    for src_name, src in sw.sources.items():
        fracs, model_frac = _fractions(sw, src)
        for model in src.models or sw.models:
            for frac in (fracs if model in data_models else [model_frac]):
                for kind, amount in budget:
                    for seed in sw.seeds:
                        d = C.merge(base, p.config)
                        d = C.merge(d, src.config)
                        d = C.merge(d, {"task": "pretrain", "model": {"name": model}, "source_name": src_name,
                                       "source_domain": src.domain, "seed": int(seed), "seeds": [],
                                       "data": {"sources": list(src.data), "fraction": float(frac),
                                                "label_space": src.label_space, "rename": dict(src.rename)},
                                       "optim": {kind: amount, ("steps" if kind == "epochs" else "epochs"): 0}})
                        cfg = _load(d, f"sources.{src_name} (base + pretrain.config + sources.{src_name}.config)")
                        tag = f"e{amount:g}" if kind == "epochs" else f"n{amount}"
                        name = f"pre-{src_name}-{model}-f{frac:g}-{tag}-s{seed}-{C.config_hash(cfg)[:8]}"
                        cfg = C.copy_with(cfg, run_name=name)
                        pre.append((name, cfg))
                        rank = ((src.models or sw.models).index(model), frac, amount)
                        if src_name not in largest or rank > largest[src_name][0]:
                            largest[src_name] = (rank, [])
                        if largest[src_name][0] == rank:
                            largest[src_name][1].append(name)
    t = sw.transfer
    regimes, fs_seeds = t.regimes, t.seeds

    def transfer_cfg(regime, extra, name_stem):
        d = C.merge(base, t.config)
        d = C.merge(d, {"task": "transfer", "regime": regime, "target_name": tgt.name,
                       "target_domain": tgt.domain, "data": {"sources": list(tgt.data)},
                       "shots": list(t.shots), **extra})
        cfg = _load(d, "transfer (base + transfer.config)")
        tname = f"{name_stem}-{C.config_hash(cfg)[:8]}"
        return tname, C.copy_with(cfg, run_name=tname)

    for name, pcfg in pre:
        for regime in regimes:
            if regime == "fewshot" and t.fewshot_from == "largest" \
                    and name not in largest[pcfg.source_name][1]:
                continue
            extra = {"model": {"name": pcfg.model.name, "init_from": str(RunDir(out / "runs" / name).ckpt)},
                     "source_domain": pcfg.source_domain, "seed": pcfg.seed,
                     "seeds": fs_seeds if regime == "fewshot" else []}
            tname, cfg = transfer_cfg(regime, extra, f"tr-{regime}-{name}")
            subs = C.run_names(cfg, tname)
            tr.append((tname, cfg, subs))
    for model in t.scratch.models:
        for regime in t.scratch.regimes:
            for seed in sw.seeds:
                extra = {"model": {"name": model, "init_from": ""}, "source_name": "scratch", "seed": int(seed),
                         "seeds": []}
                tname, cfg = transfer_cfg(regime, extra, f"tr-{regime}-scratch-{model}-s{seed}")
                tr.append((tname, cfg, [tname]))
    return pre, tr


def config_paths(sw: Sweep, pre: list, tr: list) -> dict:
    """Run name -> OUT/configs/RUN.yaml (where ``write_configs`` puts each run's config)."""
    cdir = Path(sw.out_dir) / "configs"
    return {item[0]: cdir / f"{item[0]}.yaml" for item in pre + tr}


def write_configs(sw: Sweep, pre: list, tr: list) -> dict:
    paths = config_paths(sw, pre, tr)
    for item in pre + tr:
        p, text = paths[item[0]], C.dump(item[1]).encode()
        if not p.is_file() or p.read_bytes() != text:
            atomic_write_bytes(p, text)
    return paths


def _done(sw, run_names) -> bool:
    runs = Path(sw.out_dir) / "runs"
    return all(RunDir(runs / n).is_done() for n in run_names)


def status(sw: Sweep, pre, tr, out=None) -> int:
    """Print the state of every run of the sweep; 0 when all are done, 1 otherwise."""
    out = out or sys.stdout
    runs, now = Path(sw.out_dir) / "runs", time.time()
    order = ("done", "checkpointed", "started", "not started")
    total_done = total = 0
    print(f"sweep {sw.name} ({sw.out_dir}):", file=out)
    for stage, names in (("pretrain", [n for n, _ in pre]), ("transfer", [s for *_, subs in tr for s in subs])):
        states = {n: RunDir(runs / n).state(now) for n in names}
        counts = {k: sum(1 for v in states.values() if v[0] == k) for k in order}
        print(f"  {stage}: {len(names)} runs: " + ", ".join(f"{counts[k]} {k}" for k in order if counts[k]), file=out)
        for n, (state, detail) in states.items():
            if state in ("checkpointed", "started"):
                print(f"    {state:<12} {n}: {detail}", file=out)
        # finished runs read back as typed result rows: those that predict one class for every image
        collapsed = [n for n, v in states.items() if v[0] == "done" and RunDir(runs / n).result().get("collapsed")]
        if collapsed:
            print(f"    collapsed (one class predicted for every image): {', '.join(collapsed[:8])}"
                  + (f" and {len(collapsed) - 8} more" if len(collapsed) > 8 else ""), file=out)
        waiting = [n for n, v in states.items() if v[0] == "not started"]
        if waiting:
            print(f"    not started: {', '.join(waiting[:8])}" + (f" and {len(waiting) - 8} more" if len(waiting) > 8 else ""),
                  file=out)
        total_done += counts["done"]
        total += len(names)
    res = Path(sw.out_dir) / "results.jsonl"
    rows = load_results(res) if res.is_file() else []          # checked row by row: a damaged table is named
    print(f"  {total_done} of {total} runs done; {res}: {len(rows)} result row(s), "
          f"{sum(r.final for r in rows)} final", file=out)
    return 0 if total_done == total else 1


def run_local(sw: Sweep, pre, tr, paths, nprocs: int, stage: str, dry: bool) -> int:
    todo_pre = [paths[n] for n, _ in pre if not _done(sw, [n])]
    todo_tr = [paths[n] for n, _, subs in tr if not _done(sw, subs)]
    print(f"sweep {sw.name}: {len(pre)} pre-training runs ({len(todo_pre)} to do), {len(tr)} transfer configs "
          f"({sum(len(s) for *_, s in tr)} runs; {len(todo_tr)} configs to do); {nprocs} process(es) per run",
          flush=True)
    # probes (linear, few-shot on cached features) run as one process: each is one solve on rank 0, and a
    # second rank would only wait for it, busy-polling the core the solve needs
    probes = {paths[n] for n, cfg, _ in tr if C.is_probe(cfg)}
    stages = [("pretrain", todo_pre, nprocs), ("transfer", [p for p in todo_tr if p not in probes], nprocs),
              ("transfer", [p for p in todo_tr if p in probes], 1)]
    for name, todo, n_proc in stages:
        if stage not in ("all", name) or not todo:
            continue
        cmd = (mpirun_cmd(n_proc) if n_proc > 1 else []) + [sys.executable, "-m", "covidnetx.cli", "runs",
                                                              *map(str, todo)]
        if dry:
            print("$ " + " ".join(cmd[:12]) + (f" ... ({len(todo)} configs)" if len(todo) > 1 else ""))
            continue
        r = subprocess.run(cmd)
        if r.returncode:
            print(f"covidnetx sweep: stage {name} failed with exit code {r.returncode}", file=sys.stderr)
            return r.returncode
    if stage in ("all", "report") and not dry:
        res = Path(sw.out_dir) / "results.jsonl"
        from covidnetx.scaling.report import write_report  # lazy: heavy, scipy and matplotlib, only to write the report
        report = write_report(res, Path(sw.out_dir) / "report", metric=sw.fit.metric,
                              run_ids=[n for n, _ in pre] + [x for *_, subs in tr for x in subs])
        print(f"report: {report}")
    return 0


def run(args) -> int:
    if args.keys:
        print(C.format_keys(Sweep))
        return 0
    if not args.sweep:
        print("covidnetx sweep: error: give a sweep file (covidnetx sweep --keys lists its keys)", file=sys.stderr)
        return 2
    try:
        sw = load_sweep(args.sweep)
        try:
            pre, tr = expand(sw)
        except UserError as e:
            raise UserError(f"{args.sweep}: {e}") from None
        if args.status:                  # a query: writes nothing
            return status(sw, pre, tr)
        if args.dry_run:                 # writes nothing: says where the configs would go
            paths = config_paths(sw, pre, tr)
            print(f"--dry-run: {len(paths)} run configs would be written to {Path(sw.out_dir) / 'configs'}; "
                  "nothing is written")
        else:
            paths = write_configs(sw, pre, tr)
    except UserError as e:
        print(f"covidnetx sweep: error: {e}", file=sys.stderr)
        return 2
    if args.executor == "local":
        return run_local(sw, pre, tr, paths, args.nprocs or sw.np, args.stage, args.dry_run)
    try:
        return submit_chain(sw, pre, tr, paths, args.sweep, dry_run=args.dry_run)
    except UserError as e:
        print(f"covidnetx sweep: error: {e}", file=sys.stderr)
        return 2
