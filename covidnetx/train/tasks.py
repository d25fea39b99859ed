"""`covidnetx pretrain` and `covidnetx transfer`: configs -> data views -> Trainer runs.

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

import torch

from covidnetx import config as C
from covidnetx.data.compose import Mixture, few_shot
from covidnetx.data.hdf5 import PackedDataset, index_path
from covidnetx.models.weights import read as read_weights
from covidnetx.record import CONFIG, RunDir
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


def check_sources(cfg: C.Config) -> None:
    if not cfg.data.sources:
        raise UserError("config key 'data.sources': no packed dataset given")
    for s in cfg.data.sources:
        if not index_path(s).is_file():
            raise UserError(f"config key 'data.sources': {s!r} is not a packed dataset (no {index_path(s).name})")


_UPSAMPLE_SAID: set = set()


def packed(cfg: C.Config, root: str, split: str) -> PackedDataset:
    """One split of a packed source, checked before training or evaluation reads it (``data.verify``).
    Says once per source when ``data.image_size`` is larger than the packed images (they are upsampled)."""
    ds = PackedDataset(root, split)
    size = ds.index.get("image_size")
    if size and max(size) < cfg.data.image_size and str(root) not in _UPSAMPLE_SAID:
        _UPSAMPLE_SAID.add(str(root))
        from covidnetx.launch import world_from_env
        if world_from_env().rank == 0:
            print(f"note: data.image_size={cfg.data.image_size} is larger than the packed images of {root} "
                  f"({size[0]}x{size[1]}): they are upsampled; pack with --size {cfg.data.image_size} or lower "
                  "data.image_size if that is not meant", file=sys.stderr, flush=True)
    return ds.verify() if cfg.data.verify else ds


def _views(cfg: C.Config):
    """(train, eval, val) views of the config's data: the train split (with the source fraction for
    pre-training), the split scored at the end, and the val split used for choices during a run (None
    when it is absent or is the eval split itself)."""
    check_sources(cfg)
    if cfg.task == "transfer" and cfg.data.fraction != 1.0:
        raise UserError("config key 'data.fraction': applies to pre-training sources only; transfer uses the "
                        "whole target train split (few-shot: shots)")
    train_parts = [packed(cfg, s, cfg.data.train_split) for s in cfg.data.sources]
    frac = cfg.data.fraction if cfg.task == "pretrain" else 1.0
    train = Mixture(train_parts, cfg.data.label_space, frac, cfg.data.fraction_seed, cfg.data.rename)

    def view(split):
        v = Mixture([packed(cfg, s, split) for s in cfg.data.sources], cfg.data.label_space, 1.0, 0,
                    cfg.data.rename)
        if v.class_names != train.class_names:
            raise UserError(f"train and {split} splits map to different class lists")
        return v
    ev = view(cfg.data.eval_split) if cfg.data.eval_split else None
    val = None
    if cfg.data.val_split and cfg.data.val_split != cfg.data.eval_split:
        try:
            val = view(cfg.data.val_split)
        except UserError:
            val = None
    return train, ev, val


def _name(cfg: C.Config) -> str:
    return "+".join(PackedDataset(s, cfg.data.train_split).index["name"] for s in cfg.data.sources)


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
        meta = {"source": cfg.source_name or _name(cfg), "source_fraction": cfg.data.fraction,
                "target": cfg.target_name or _name(cfg), "shots": None}
        return per_seed(name, meta)
    im = _init_meta(cfg.model.init_from)
    sdom = cfg.source_domain or im.get("domain") or ""
    meta = {"source": cfg.source_name or im.get("source") or ("scratch" if not cfg.model.init_from else "unknown"),
            "source_fraction": im.get("source_fraction"), "target": cfg.target_name or _name(cfg),
            "init_meta": im, "source_domain": sdom or None,
            "domain_pair": domain_pair(sdom, cfg.target_domain)}
    if cfg.regime != "fewshot":
        if is_probe(cfg) and cfg.model.init_from and len(seeds) > 1:
            raise UserError("config key 'seeds': a linear probe of one checkpoint is deterministic, so seeds "
                            "would repeat one run; probe checkpoints pre-trained with different seeds instead")
        name = cfg.run_name or f"transfer-{cfg.regime}-{cfg.model.name}-{base_hash}"
        return per_seed(name, {**meta, "shots": None})
    train, _, _ = _views(cfg)
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


def check_run_dir(cfg: C.Config, run_dir: Path, dist, force: bool = False) -> None:
    """A run directory belongs to one config. Reusing its name with another config is an error naming the
    keys that differ; ``force`` (``--force``) deletes the existing run directory (rank 0; run it inside
    ``dist.phase()``, whose agreement is the barrier after it), so the run starts over."""
    saved = run_dir / CONFIG
    if not saved.is_file():
        return
    if force:
        if dist.is_primary:
            import shutil
            shutil.rmtree(run_dir)
            print(f"[{cfg.run_name}] --force: removed the earlier run in {run_dir}", flush=True)
        return
    try:
        old = C.load_config(str(saved))
    except UserError as e:
        raise UserError(f"run directory {run_dir}: its config.yaml is not readable ({e}); pass --force to "
                        "start the run over") from None
    # keys this config leaves to the run's start match whatever the run resolved them to (the trainer
    # compares the resolved values before it resumes)
    diff = C.differences(old, cfg, ignore=C.RUN_KEYS_FREE + C.unresolved_keys(cfg))
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise UserError(f"run directory {run_dir} holds a run of another config ({shown}); choose another "
                        "run_name, or pass --force to delete that run and start over")


def check_out_dir(cfg: C.Config) -> None:
    """Every rank, before any run: out_dir is (or can be made) a writable folder. Each rank reaches the same
    verdict on a shared file system, so all stop together with one message."""
    ensure_writable_dir(cfg.out_dir, "config key 'out_dir'")


def run_one(cfg: C.Config, meta: dict, subset, dist, force: bool = False) -> dict:
    from covidnetx.train.engine import Trainer
    run_dir = Path(cfg.out_dir) / cfg.run_name
    with dist.phase():
        check_run_dir(cfg, run_dir, dist, force)
    with dist.phase():                    # after the one above: a --force removal is complete on rank 0
        done = RunDir(run_dir).result()
        if done is None:
            train, ev, val = _views(cfg)          # reads and checks the shards
    if done is not None:
        if dist.is_primary:
            print(f"[{cfg.run_name}] already done; skipping", flush=True)
        return done
    meta = dict(meta)
    if cfg.task == "transfer" and cfg.model.init_from and "measures" not in meta:
        from covidnetx.train.probe import transfer_measures
        meta["measures"] = transfer_measures(cfg, dist, train, meta.get("init_meta") or {})
    if cfg.task == "transfer" and is_probe(cfg):
        from covidnetx.train.probe import run_probe
        return run_probe(cfg, dist, train, ev, val, run_dir, meta, subset)
    if subset is not None:
        train = train.subset(subset)
    with dist.phase():
        trainer = Trainer(cfg, dist, train, ev, run_dir, meta, val_view=val)
    return trainer.fit()


def default_threads() -> int:
    """Intra-op threads per process when the config leaves ``threads`` at 0: the CPUs this process may
    run on. When a launcher bound it (srun --cpus-per-task, mpirun --bind-to ...), its affinity set is
    its share already; when unbound (the whole machine), the machine is split among the ranks on this
    node. os.cpu_count() alone would give every rank of a 4-GPU node all 128 cores of the node."""
    from covidnetx.launch import world_from_env
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if allowed < (os.cpu_count() or allowed):
        return max(1, allowed)
    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", "0") or 0)
                or world_from_env().size)
    return max(1, allowed // max(1, local))


def set_threads(cfg: C.Config) -> None:
    torch.set_num_threads(cfg.threads or default_threads())


def run(args) -> int:
    if args.keys:
        print(C.format_keys())
        return 0
    try:
        cfg = C.load_config(args.config, [f"task={args.task}"] + list(args.overrides))
    except UserError as e:
        from covidnetx.launch import world_from_env
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
    from covidnetx import dist as D
    from covidnetx.dist import end_on_error
    from covidnetx.train.engine import EXIT_REQUEUE, STOP, Interrupted
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


def main_pretrain(argv=None) -> int:
    return run(build_parser(task="pretrain").parse_args(argv))


def main_transfer(argv=None) -> int:
    return run(build_parser(task="transfer").parse_args(argv))
