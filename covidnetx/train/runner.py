"""The run planner and runner behind `covidnetx pretrain`, `transfer` and `runs`: a config -> its runs
(one per seed; few-shot: per shots x seed) -> data views -> the Trainer or the linear probe, one after
another in one launcher invocation.

    covidnetx pretrain --config CONFIG.yaml [key=value ...]
    covidnetx transfer --config CONFIG.yaml regime=full|linear|fewshot [key=value ...]

Exit codes: 0 done, 2 configuration/input error (one message naming the key or file), 3 non-finite
loss (names the step), 75 interrupted by SIGUSR1/SIGTERM after saving a checkpoint (requeue me).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from covidnetx import config as C
from covidnetx import dist as D
from covidnetx.data.compose import few_shot
from covidnetx.data.views import check_sources, source_name, views
from covidnetx.dist import end_on_error, set_threads
from covidnetx.launch import EXIT_REQUEUE, STOP, Interrupted, world_from_env
from covidnetx.models.weights import read as read_weights
from covidnetx.rundir import RunDir
from covidnetx.train.engine import Trainer
from covidnetx.train.probe import run_probe, transfer_measures
from covidnetx.utils import StopRequested, UserError, ensure_writable_dir

EXIT_NONFINITE = 3


def domain_pair(source_domain: str, target_domain: str):
    """intra (the source's domain is the target's), inter (another), mixed (a mixture of domains), or None
    where either is not given."""
    if not (source_domain and target_domain):
        return None
    return "mixed" if source_domain == "mixed" else ("intra" if source_domain == target_domain else "inter")


def build_parser(parser: Optional[argparse.ArgumentParser] = None, task: str = "pretrain") -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog=f"covidnetx {task}")
    p.add_argument("--config", default=None, help="YAML config file or packaged preset name")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.01 data.sources=[a,b]")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--keys", action="store_true",
                   help="list every config key with its type, default and meaning, and exit")
    p.add_argument("--force", action="store_true",
                   help="delete an existing run directory of the same name and start the run over (without "
                        "it, a run directory holding another config is an error naming the keys that differ, "
                        "and one holding this config is resumed or skipped)")
    p.set_defaults(task=task)
    return p


def _init_meta(path: str) -> dict:
    """What a covidnetx checkpoint says of its run ({} for other weight files)."""
    if not path or not os.path.isfile(path) or path.lower().endswith((".npz", ".safetensors")):
        return {}                 # only covidnetx checkpoints carry metadata (and .npz files can be large)
    try:
        return read_weights(path)[2]
    except UserError:  # unreadable: load_weights says so when the run starts
        return {}


def plan_runs(cfg: C.Config) -> list:
    """[(config, meta, subset indices or None)] for one command: one run per seed (``seeds``; [] = one
    run with ``seed``), and for few-shot one per (shots, seed). With several seeds the runs are named
    RUN-sSEED (few-shot: RUN-kK-sSEED)."""
    check_sources(cfg)
    base_hash = C.config_hash(cfg)
    seeds = list(cfg.seeds) or [cfg.seed]

    def per_seed(name, meta):
        if not cfg.seeds:
            return [(C.copy_with(cfg, run_name=name), meta, None)]
        return [(C.copy_with(cfg, run_name=sub, seed=s, seeds=[]), meta, None)
                for sub, s in zip(C.run_names(cfg, name), seeds)]
    if cfg.task == "pretrain":
        name = cfg.run_name or f"pretrain-{cfg.model.name}-{base_hash}"
        meta = {"source": cfg.source_name or source_name(cfg), "source_fraction": cfg.data.fraction,
                "target": cfg.target_name or source_name(cfg), "shots": None}
        return per_seed(name, meta)
    im = _init_meta(cfg.model.init_from)
    sdom = cfg.source_domain or im.get("domain") or ""
    meta = {"source": cfg.source_name or im.get("source") or ("scratch" if not cfg.model.init_from else "unknown"),
            "source_fraction": im.get("source_fraction"), "target": cfg.target_name or source_name(cfg),
            "init_meta": im, "source_domain": sdom or None,
            "domain_pair": domain_pair(sdom, cfg.target_domain)}
    if cfg.regime != "fewshot":
        if is_probe(cfg) and cfg.model.init_from and len(seeds) > 1:
            raise UserError("config key 'seeds': a linear probe of one checkpoint is deterministic, so seeds "
                            "would repeat one run; probe checkpoints pre-trained with different seeds instead")
        name = cfg.run_name or f"transfer-{cfg.regime}-{cfg.model.name}-{base_hash}"
        return per_seed(name, {**meta, "shots": None})
    train, _, _ = views(cfg)
    if train.label_kind != "multiclass":
        raise UserError("few-shot transfer needs a multi-class target")
    names = iter(C.run_names(cfg, cfg.run_name or f"transfer-fewshot-{cfg.model.name}-{base_hash}"))
    runs = []
    for k in cfg.shots:
        for seed in seeds:
            idx = few_shot(train.labels, train.class_names, k, seed)
            sub = C.copy_with(cfg, run_name=next(names), seed=seed, seeds=[], shots=[k])
            runs.append((sub, {**meta, "shots": k}, idx))
    return runs


is_probe = C.is_probe


def check_out_dir(cfg: C.Config) -> None:
    """Every rank, before any run: out_dir is (or can be made) a writable folder. Each rank reaches the same
    verdict on a shared file system, so all stop together with one message."""
    ensure_writable_dir(cfg.out_dir, "config key 'out_dir'")


def run_one(cfg: C.Config, meta: dict, subset, dist, force: bool = False) -> dict:
    run_dir = Path(cfg.out_dir) / cfg.run_name
    with dist.phase():
        RunDir(run_dir).claim(cfg, dist, force)
    with dist.phase():                    # after the one above: a --force removal is complete on rank 0
        done = RunDir(run_dir).result()
        if done is None:
            train, ev, val = views(cfg)          # reads and checks the shards
    if done is not None:
        if dist.is_primary:
            print(f"[{cfg.run_name}] already done; skipping", flush=True)
        return done
    meta = dict(meta)
    if cfg.task == "transfer" and cfg.model.init_from and "measures" not in meta:
        meta["measures"] = transfer_measures(cfg, dist, train, meta.get("init_meta") or {})
    if cfg.task == "transfer" and is_probe(cfg):
        return run_probe(cfg, dist, train, ev, val, run_dir, meta, subset)
    if subset is not None:
        train = train.subset(subset)
    with dist.phase():
        trainer = Trainer(cfg, dist, train, ev, run_dir, meta, val_view=val)
    return trainer.fit()


def run(args) -> int:
    if args.keys:
        print(C.format_keys())
        return 0
    try:
        cfg = C.load_config(args.config, [f"task={args.task}"] + list(args.overrides))
    except UserError as e:
        if world_from_env().rank == 0:      # every rank read the same config: one message
            print(f"covidnetx {args.task}: error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(C.dump(cfg))
        return 0
    return run_configs([cfg], args.task, force=args.force)


def run_configs(cfgs: list, label: str, force: bool = False) -> int:
    """Run configs one after another in this launcher invocation (the distributed backend is started
    once; few-shot configs expand to shots x seeds runs). Finished runs are skipped."""
    set_threads(cfgs[0])
    dist = None
    with STOP:                 # from here on SIGUSR1/SIGTERM end in exit EXIT_REQUEUE, never in a killed step
        try:
            dist = D.init(cfgs[0].backend, "cuda" if cfgs[0].data.device == "gpu" else "auto")
            for cfg in cfgs:
                with dist.phase():
                    check_out_dir(cfg)
                    plan = plan_runs(cfg)
                for sub, meta, subset in plan:
                    # between runs: every rank agrees (the signal may have reached only some of them)
                    if dist.allreduce_sum([1.0 if STOP.requested else 0.0])[0] > 0:
                        raise Interrupted(None, sub.run_name)
                    run_one(sub, meta, subset, dist, force)
            return 0
        except FloatingPointError as e:
            return end_on_error(dist, label, e, EXIT_NONFINITE)
        except StopRequested:            # a signal during a long start-up step of the current run
            if dist is not None and dist.is_primary:
                print(f"covidnetx {label}: interrupted during start-up, exit {EXIT_REQUEUE} (requeue to continue)",
                      file=sys.stderr, flush=True)
            return EXIT_REQUEUE
        except Interrupted as e:
            if dist.is_primary:
                where = (f"before run {e.args[1]} started" if e.args[0] is None
                         else f"at step {e.args[0]}; checkpoint saved")
                print(f"covidnetx {label}: interrupted {where}, exit {EXIT_REQUEUE} (requeue to continue)",
                      file=sys.stderr, flush=True)
            return EXIT_REQUEUE
        except Exception as e:  # noqa: BLE001 - UserErrors and the last resort: see end_on_error
            return end_on_error(dist, label, e)
        finally:
            if dist is not None:
                dist.shutdown()
