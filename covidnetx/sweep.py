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
from pathlib import Path
from typing import Optional

import yaml

from covidnetx import config as C
from covidnetx.record import RunDir
from covidnetx.utils import UserError, atomic_write_bytes

SWEEP_KEYS = {"name", "out_dir", "np", "base", "sources", "target", "models", "fractions", "sizes", "data_models",
              "seeds", "pretrain", "transfer", "fit", "slurm", "pack"}
PRETRAIN_KEYS = {"steps", "epochs", "config"}
TRANSFER_KEYS = {"regimes", "shots", "seeds", "fewshot_from", "config", "scratch"}


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx sweep", description=__doc__.split("\n")[0])
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--dry-run", action="store_true", help="print what would run (local) or the job scripts (slurm)")
    p.add_argument("--np", dest="nprocs", type=int, default=None, help="processes per run (local; overrides np)")
    p.add_argument("--stage", choices=("all", "pretrain", "transfer", "report"), default="all")
    p.add_argument("--status", action="store_true",
                   help="show which runs are done, checkpointed, started or not started (from the run "
                        "directories, under either executor); exit 0 when every run is done, else 1")
    return p


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in (b or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "rename" else v
    return out


def load_sweep(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"sweep file {path!r} not found")
    try:
        sw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({e})") from None
    unknown = sorted(set(sw) - SWEEP_KEYS)
    if unknown:
        raise UserError(f"{p}: unknown sweep key {unknown[0]!r} (known: {', '.join(sorted(SWEEP_KEYS))})")
    for key in ("sources", "target", "models"):
        if not sw.get(key):
            raise UserError(f"{p}: sweep key {key!r} is required")
    for name, src in sw["sources"].items():
        if not isinstance(src, dict) or not src.get("data"):
            raise UserError(f"{p}: sources.{name}: needs data: [packed folder, ...]")
    for section, known in (("pretrain", PRETRAIN_KEYS), ("transfer", TRANSFER_KEYS)):
        bad = sorted(set(sw.get(section) or {}) - known)
        if bad:
            raise UserError(f"{p}: unknown key {section}.{bad[0]!r} (known: {', '.join(sorted(known))})")
    if sw.get("sizes") and sw.get("fractions"):
        raise UserError(f"{p}: give fractions or sizes (source sizes in images), not both")
    for name, src in sw["sources"].items():
        bad = sorted(set(src) - {"data", "domain", "label_space", "rename", "config"})
        if bad:
            raise UserError(f"{p}: unknown key sources.{name}.{bad[0]!r}")
    sw.setdefault("name", p.stem)
    sw.setdefault("out_dir", str(Path("runs") / sw["name"]))
    sw.setdefault("np", 1)
    if not sw.get("sizes"):
        sw.setdefault("fractions", [1.0])
    sw.setdefault("seeds", [0])
    sw.setdefault("pretrain", {})
    sw.setdefault("transfer", {})
    sw.setdefault("fit", {})
    return sw


def _target(sw) -> dict:
    t = sw["target"]
    data = t["data"] if isinstance(t["data"], list) else [t["data"]]
    return {"data": data, "domain": t.get("domain", ""), "name": t.get("name", "")}


def _fractions(sw: dict, src: dict) -> list:
    """The source fractions of the data axis: ``fractions`` as given, or ``sizes`` (images) over the size
    of this source's train split (so that sources of different sizes meet at the same sizes)."""
    if not sw.get("sizes"):
        return [float(f) for f in sw["fractions"]]
    from covidnetx.data.hdf5 import load_index
    n = 0
    for d in src["data"]:
        try:
            n += int(load_index(d)["splits"]["train"]["count"])
        except (UserError, KeyError):
            raise UserError(f"sizes: cannot read the train split size of {d!r} (packed dataset?)") from None
    out = []
    for size in sw["sizes"]:
        if not 0 < size <= n:
            raise UserError(f"sizes: {size} images asked of a source with {n} train images ({src['data']})")
        out.append(round(size / n, 6))
    return out


def expand(sw: dict) -> tuple:
    """-> (pretrain [(run_name, config)], transfer [(run_name, config, [expected run dirs])]).

    Pre-training: sources x models x fractions (or sizes) x steps (or epochs) x seeds; ``data_models``
    limits the data axis to those models (the others train on the largest fraction only). Transfer: each
    pre-training run in each regime with the run's own seed (full and linear: one transfer per
    pre-trained checkpoint, so a cell's n counts independent pre-training + transfer pipelines);
    few-shot from the largest model and fraction per source, shots x transfer seeds per checkpoint; and
    from-scratch baselines (transfer.scratch: models, regimes) with the sweep's seeds."""
    out = Path(sw["out_dir"])
    common = {"out_dir": str(out / "runs"), "results": str(out / "results.jsonl"),
              "feature_cache": str(out / "features")}
    base = _merge(sw.get("base") or {}, common)
    pre, tr = [], []
    p = sw["pretrain"]
    if "steps" in p and "epochs" in p:
        raise UserError("pretrain: give steps or epochs, not both")
    budget = [("epochs", float(e)) for e in _as_list(p["epochs"])] if "epochs" in p else \
        [("steps", int(n)) for n in _as_list(p.get("steps", [0]))]
    data_models = sw.get("data_models") or sw["models"]
    tgt = _target(sw)
    largest = {}
    for src_name, src in sw["sources"].items():
        fracs = _fractions(sw, src)
        for model in sw["models"]:
            for frac in (fracs if model in data_models else [max(fracs)]):
                for kind, amount in budget:
                    for seed in sw["seeds"]:
                        d = _merge(base, p.get("config") or {})
                        d = _merge(d, src.get("config") or {})
                        d = _merge(d, {"task": "pretrain", "model": {"name": model}, "source_name": src_name,
                                       "source_domain": src.get("domain", ""), "seed": int(seed), "seeds": [],
                                       "data": {"sources": list(src["data"]), "fraction": float(frac),
                                                "label_space": src.get("label_space", "union"),
                                                "rename": src.get("rename") or {}},
                                       "optim": {kind: amount, ("steps" if kind == "epochs" else "epochs"): 0}})
                        cfg = C.load_config(base=d)
                        tag = f"e{amount:g}" if kind == "epochs" else f"n{amount}"
                        name = f"pre-{src_name}-{model}-f{frac:g}-{tag}-s{seed}-{C.config_hash(cfg)[:8]}"
                        cfg = C.load_config(base=d, overrides=[f"run_name={name}"])
                        pre.append((name, cfg))
                        rank = (sw["models"].index(model), frac, amount)
                        if src_name not in largest or rank > largest[src_name][0]:
                            largest[src_name] = (rank, [])
                        if largest[src_name][0] == rank:
                            largest[src_name][1].append(name)
    t = sw["transfer"]
    regimes = t.get("regimes", ["full"])
    fs_seeds = t.get("seeds", [0, 1, 2, 3, 4])

    def transfer_cfg(regime, extra, name_stem):
        d = _merge(base, t.get("config") or {})
        d = _merge(d, {"task": "transfer", "regime": regime, "target_name": tgt["name"],
                       "target_domain": tgt["domain"], "data": {"sources": tgt["data"]},
                       "shots": t.get("shots", [1, 5, 10]), **extra})
        cfg = C.load_config(base=d)
        tname = f"{name_stem}-{C.config_hash(cfg)[:8]}"
        return tname, C.load_config(base=d, overrides=[f"run_name={tname}"])

    for name, pcfg in pre:
        for regime in regimes:
            if regime == "fewshot" and t.get("fewshot_from", "largest") == "largest" \
                    and name not in largest[pcfg.source_name][1]:
                continue
            extra = {"model": {"name": pcfg.model.name, "init_from": str(RunDir(out / "runs" / name).ckpt)},
                     "source_domain": pcfg.source_domain, "seed": pcfg.seed,
                     "seeds": fs_seeds if regime == "fewshot" else []}
            tname, cfg = transfer_cfg(regime, extra, f"tr-{regime}-{name}")
            subs = [f"{tname}-k{k}-s{s}" for k in cfg.shots for s in cfg.seeds] if regime == "fewshot" else [tname]
            tr.append((tname, cfg, subs))
    scratch = t.get("scratch") or {}
    for model in scratch.get("models", []):
        for regime in scratch.get("regimes", ["full"]):
            if regime == "fewshot":
                raise UserError("transfer.scratch.regimes: full and/or linear (few-shot needs a checkpoint)")
            for seed in sw["seeds"]:
                extra = {"model": {"name": model, "init_from": ""}, "source_name": "scratch", "seed": int(seed),
                         "seeds": []}
                tname, cfg = transfer_cfg(regime, extra, f"tr-{regime}-scratch-{model}-s{seed}")
                tr.append((tname, cfg, [tname]))
    return pre, tr


def _as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def write_configs(sw: dict, pre: list, tr: list) -> dict:
    cdir = Path(sw["out_dir"]) / "configs"
    paths = {}
    for item in pre + tr:
        name, cfg = item[0], item[1]
        p = cdir / f"{name}.yaml"
        text = C.dump(cfg).encode()
        if not p.is_file() or p.read_bytes() != text:
            atomic_write_bytes(p, text)
        paths[name] = p
    return paths


def _done(sw, run_names) -> bool:
    runs = Path(sw["out_dir"]) / "runs"
    return all(RunDir(runs / n).is_done() for n in run_names)


def run_state(run_dir: Path, now: float) -> tuple:
    """(state, detail) of one run directory: done | checkpointed | started | not started."""
    return RunDir(run_dir).state(now)


def status(sw: dict, pre, tr, out=None) -> int:
    """Print the state of every run of the sweep; 0 when all are done, 1 otherwise."""
    import time
    out = out or sys.stdout
    runs, now = Path(sw["out_dir"]) / "runs", time.time()
    order = ("done", "checkpointed", "started", "not started")
    total_done = total = 0
    print(f"sweep {sw['name']} ({sw['out_dir']}):", file=out)
    for stage, names in (("pretrain", [n for n, _ in pre]), ("transfer", [s for *_, subs in tr for s in subs])):
        states = {n: run_state(runs / n, now) for n in names}
        counts = {k: sum(1 for v in states.values() if v[0] == k) for k in order}
        print(f"  {stage}: {len(names)} runs: " + ", ".join(f"{counts[k]} {k}" for k in order if counts[k]), file=out)
        for n, (state, detail) in states.items():
            if state in ("checkpointed", "started"):
                print(f"    {state:<12} {n}: {detail}", file=out)
        waiting = [n for n, v in states.items() if v[0] == "not started"]
        if waiting:
            print(f"    not started: {', '.join(waiting[:8])}" + (f" and {len(waiting) - 8} more" if len(waiting) > 8 else ""),
                  file=out)
        total_done += counts["done"]
        total += len(names)
    res = Path(sw["out_dir"]) / "results.jsonl"
    n_rows = sum(1 for line in res.open() if line.strip()) if res.is_file() else 0
    print(f"  {total_done} of {total} runs done; {res}: {n_rows} result row(s)", file=out)
    return 0 if total_done == total else 1


def run_local(sw: dict, pre, tr, paths, nprocs: int, stage: str, dry: bool) -> int:
    from covidnetx.launch import mpirun_cmd
    todo_pre = [paths[n] for n, _ in pre if not _done(sw, [n])]
    todo_tr = [paths[n] for n, _, subs in tr if not _done(sw, subs)]
    print(f"sweep {sw['name']}: {len(pre)} pre-training runs ({len(todo_pre)} to do), {len(tr)} transfer configs "
          f"({sum(len(s) for *_, s in tr)} runs; {len(todo_tr)} configs to do); {nprocs} process(es) per run",
          flush=True)
    stages = [("pretrain", todo_pre), ("transfer", todo_tr)]
    for name, todo in stages:
        if stage not in ("all", name) or not todo:
            continue
        cmd = (mpirun_cmd(nprocs) if nprocs > 1 else []) + [sys.executable, "-m", "covidnetx.cli", "runs",
                                                              *map(str, todo)]
        if dry:
            print("$ " + " ".join(cmd[:12]) + (f" ... ({len(todo)} configs)" if len(todo) > 1 else ""))
            continue
        r = subprocess.run(cmd)
        if r.returncode:
            print(f"covidnetx sweep: stage {name} failed with exit code {r.returncode}", file=sys.stderr)
            return r.returncode
    if stage in ("all", "report") and not dry:
        from covidnetx.scaling.report import write_report
        res = Path(sw["out_dir"]) / "results.jsonl"
        report = write_report(res, Path(sw["out_dir"]) / "report", metric=sw["fit"].get("metric", "accuracy"),
                              run_ids=[n for n, _ in pre] + [x for *_, subs in tr for x in subs])
        print(f"report: {report}")
    return 0


def run(args) -> int:
    try:
        sw = load_sweep(args.sweep)
        pre, tr = expand(sw)
        if args.status:                  # a query: writes nothing
            return status(sw, pre, tr)
        paths = write_configs(sw, pre, tr)
    except UserError as e:
        print(f"covidnetx sweep: error: {e}", file=sys.stderr)
        return 2
    if args.executor == "local":
        return run_local(sw, pre, tr, paths, args.nprocs or int(sw["np"]), args.stage, args.dry_run)
    from covidnetx.slurm import submit_chain
    try:
        return submit_chain(sw, pre, tr, paths, args.sweep, dry_run=args.dry_run)
    except UserError as e:
        print(f"covidnetx sweep: error: {e}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
