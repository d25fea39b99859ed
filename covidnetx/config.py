"""Typed run configuration: dataclasses, YAML load, dotted ``key=value`` overrides, dump.

Unknown keys and values of the wrong type are errors that name the key. The resolved config is saved
in every run directory and every checkpoint, and its hash identifies the run.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from covidnetx.utils import UserError, dump_yaml, read_text, read_yaml, stable_hash


@dataclass
class DataConfig:
    sources: List[str] = field(default_factory=list)     # packed dataset folders (a mixture if several)
    label_space: str = "union"                            # union | intersection (mixtures)
    rename: dict = field(default_factory=dict)            # class renames before merging
    fraction: float = 1.0                                 # source data fraction (data-size axis)
    fraction_seed: int = 0                                # seed of the nested class-stratified fraction
    train_split: str = "train"                            # packed split to train on
    eval_split: str = "auto"                              # auto (pretrain: val, transfer: test) | val | test | "" (none)
    val_split: str = "val"                                # transfer: split that selects (linear probe L2 strength)
    verify: bool = True                                   # check shard checksums and labels before reading (once per process)
    loader: str = "torch"                                 # torch | dali
    device: str = "cpu"                                   # where DALI runs: cpu | gpu
    workers: int = 0                                      # loader worker processes per rank
    image_size: int = 32                                  # model input (crop) size
    resize_size: int = 0                                  # eval: resize shorter side to this (0 = image_size)
    augment: bool = True                                  # training: random-resized crop (+ flip, rotation if set)
    crop_scale: float = 0.8                               # smallest crop area fraction (mild: small images keep their content)
    hflip: bool = False                                   # horizontal flips (photos; off for X-rays, digits, text)
    rotate_deg: float = 0.0                               # largest rotation, degrees (either way)
    mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])    # per channel, on [0, 1] pixels
    std: List[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])  # per channel


@dataclass
class ModelConfig:
    name: str = "resnet_w8"       # resnet_w4..w64, resnet18..152, bit_r50x1..bit_r152x4, or timm:NAME (any timm architecture)
    init_from: str = ""            # weights: a covidnetx checkpoint, a torchvision/timm .pth or .safetensors, an official BiT .npz
    drop_head: bool = True         # init_from: replace the classifier head (new classes)


@dataclass
class OptimConfig:
    name: str = "sgd"              # sgd | adamw
    lr: float = 0.003              # per global batch base_batch (scaled linearly with the global batch)
    base_batch: int = 512          # global batch at which lr applies as given
    momentum: float = 0.9          # sgd momentum
    weight_decay: float = 0.0      # sgd: L2 added to the gradient; adamw: decoupled
    batch_size: int = 32           # per rank
    steps: int = 0                 # 0 = from epochs, else BiT-HyperRule (transfer) / 1000 (pre-training); resolved when the run starts
    epochs: float = 0.0            # > 0: steps = ceil(epochs x training-set size / global batch) (steps must be 0)
    min_steps: int = 0             # with epochs: at least this many steps (small data still trains), else unused
    warmup_steps: int = -1         # -1 = BiT-HyperRule / 5% of steps; resolved when the run starts
    schedule: str = "step"         # step (/10 at decay points) | cosine | constant
    decay_at: List[float] = field(default_factory=list)   # fractions of steps; [] = BiT-HyperRule's (transfer, steps unset) else 0.4, 0.6, 0.8
    accum_steps: int = 1           # gradient accumulation (Horovod backward_passes_per_step)
    grad_clip: float = 0.0         # clip the gradient norm to this (0 = off)
    mixup: float = -1.0            # -1 = BiT-HyperRule (0.1 at >= 20k examples, else 0); resolved when the run starts


@dataclass
class Config:
    task: str = "pretrain"         # pretrain | transfer
    regime: str = "full"           # full | linear | fewshot (transfer)
    shots: List[int] = field(default_factory=lambda: [1, 5, 10, 25])   # fewshot: examples per class
    seeds: List[int] = field(default_factory=list)   # one run per seed (every task and regime; few-shot: per (shots, seed)); [] = one run with seed
    seed: int = 0                  # initialisation, data order, augmentation, MixUp; few-shot: the k-shot draw
    fewshot_mode: str = "linear"   # fewshot: linear (probe on cached frozen features) | full (fine-tune on the k-shot subset)
    probe_c: List[float] = field(default_factory=lambda: [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0])  # linear probe: inverse L2 strengths tried on the val split
    feature_cache: str = ""        # folder of cached frozen features and transfer measures ("" = OUT_DIR/features)
    loss: str = "auto"             # auto | ce | bce (masked multi-label)
    class_weights: str = "none"    # none | balanced (ce: each class weighs n / (classes x its train count), as balanced accuracy counts it)
    hyperrule: bool = True         # BiT-HyperRule defaults for transfer where a value is left unset
    backend: str = "horovod"       # horovod | torch | none
    fp16_allreduce: bool = False   # Horovod fp16 compression
    precision: str = "fp32"        # fp32 | bf16 | fp16 (fp16 only on CUDA)
    out_dir: str = "runs"          # run directories and the results table go here
    run_name: str = ""             # "" = derived from the config hash
    resume: str = ""               # explicit checkpoint to resume from
    eval_every: int = 0            # 0 = only at the end
    ckpt_every: int = 0            # 0 = only at the end (and on a signal)
    log_every: int = 10            # TensorBoard scalars every this many steps
    progress_s: float = 30.0       # a console line (step, loss, img/s, ETA) at a log step at most this often (0: each)
    results: str = ""              # results table (JSONL); "" = OUT_DIR/results.jsonl
    source_name: str = ""          # label for the source composition in results ("" = derived)
    target_name: str = ""          # label for the target in results ("" = derived)
    source_domain: str = ""        # e.g. natural | xray | mixed: intra- vs inter-domain grouping
    target_domain: str = ""        # as source_domain, for the target
    alignment_samples: int = 256   # source images for the source-target alignment measures (0 = off)
    alignment_reference: str = "random:resnet_w16"   # the one feature space for comparable alignment: random:MODEL (fixed init, seed 0) or a checkpoint
    threads: int = 0               # torch CPU threads per rank (0 = its launcher-bound CPUs, else cores / local ranks)
    bootstrap: int = 200           # bootstrap resamples for metric CIs
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


CHOICES = {
    "task": ("pretrain", "transfer"), "regime": ("full", "linear", "fewshot"), "loss": ("auto", "ce", "bce"),
    "class_weights": ("none", "balanced"),
    "backend": ("horovod", "torch", "none"), "precision": ("fp32", "bf16", "fp16"),
    "data.label_space": ("union", "intersection"), "data.loader": ("torch", "dali"),
    "data.device": ("cpu", "gpu"), "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("step", "cosine", "constant"), "fewshot_mode": ("linear", "full"),
}


@dataclasses.dataclass(frozen=True)
class Schema:
    """A typed file: its root dataclass, what its keys are called in errors, and the command that lists
    them. Run configs and sweep files are read by the same code."""
    root: type
    what: str = "config key"
    keys_cmd: str = "covidnetx pretrain --keys"


RUN_SCHEMA = Schema(Config)


def _coerce(key: str, tp, value, schema: Optional["Schema"] = None):
    schema = schema or RUN_SCHEMA
    what = schema.what
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{what} {key!r}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key + ".", schema)
    if origin in (dict, Dict) and typing.get_args(tp):
        _, inner = typing.get_args(tp)
        if not isinstance(value, dict):
            raise UserError(f"{what} {key!r}: expected a mapping, got {value!r}")
        return {str(k): _coerce(f"{key}.{k}", inner, v, schema) for k, v in value.items()}
    if origin in (list, List):
        (inner,) = typing.get_args(tp)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise UserError(f"{what} {key!r}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", inner, v, schema) for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{what} {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{what} {key!r}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{what} {key!r}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):          # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{what} {key!r}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{what} {key!r}: expected a string, got {value!r}")
    return value


def _unknown(key: str, known_here=None, schema: Optional["Schema"] = None) -> UserError:
    """The error for an unknown key: the nearest known dotted key when one is close (a typo), else the
    keys known at that level; and where the whole list is."""
    schema = schema or RUN_SCHEMA
    near = difflib.get_close_matches(key, [k for k, *_ in key_reference(schema.root)], n=1, cutoff=0.75)
    if near and near[0] == key:         # a known dotted key written inside a YAML mapping
        top, _, rest = key.partition(".")
        hint = f"a dotted name inside a mapping: nest it ({top}: {{{rest}: ...}}); dotted names are for overrides"
    else:
        hint = f"did you mean {near[0]!r}?" if near else (
            f"known here: {', '.join(sorted(known_here))}" if known_here else "")
    return UserError(f"unknown {schema.what} {key!r}" + (f" ({hint})" if hint else "")
                     + f"; `{schema.keys_cmd}` lists every key")


def _build(cls, d: dict, prefix: str = "", schema: Optional["Schema"] = None):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in d:
        if not isinstance(k, str):
            raise UserError(f"{'key ' + repr(prefix.rstrip('.')) if prefix else 'top level'}: {k!r} is not a key "
                            "name (keys are text)")
        if k not in names:
            raise _unknown(prefix + k, names, schema)
    kwargs = {k: _coerce(prefix + k, hints[k], v, schema) for k, v in d.items()}
    obj = cls(**kwargs)
    return obj


def build(schema: "Schema", d: dict):
    """A ``schema.root`` object from a mapping (a YAML file's content): types checked and coerced, unknown
    keys named with the nearest known one."""
    if not isinstance(d, dict):
        raise UserError(f"expected a mapping of {schema.what}s, got {type(d).__name__}")
    return _build(schema.root, d, "", schema)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


INF = float("inf")
# valid range of every numeric key (list keys: of each element): (low, high, low included, high included)
RANGES = {
    "optim.lr": (0, INF, False, False), "optim.base_batch": (1, INF, True, False),
    "optim.momentum": (0, 1, True, False), "optim.weight_decay": (0, INF, True, False),
    "optim.batch_size": (1, INF, True, False), "optim.steps": (0, INF, True, False),
    "optim.epochs": (0, INF, True, False), "optim.min_steps": (0, INF, True, False), "optim.warmup_steps": (-1, INF, True, False),
    "optim.decay_at": (0, 1, True, False), "optim.accum_steps": (1, INF, True, False),
    "optim.grad_clip": (0, INF, True, False), "optim.mixup": (-1, INF, True, False),
    "data.fraction": (0, 1, False, True), "data.workers": (0, INF, True, False),
    "seed": (0, 2 ** 32 - 1, True, True), "seeds": (0, 2 ** 32 - 1, True, True),
    "data.fraction_seed": (0, 2 ** 32 - 1, True, True), "data.mean": (-10, 10, True, True),
    "data.image_size": (1, 8192, True, True), "data.resize_size": (0, INF, True, False),
    "data.crop_scale": (0, 1, False, True), "data.rotate_deg": (0, 180, True, True),
    "data.std": (0, INF, False, False), "shots": (1, INF, True, False), "probe_c": (0, INF, False, False),
    "eval_every": (0, INF, True, False), "ckpt_every": (0, INF, True, False), "log_every": (1, INF, True, False), "progress_s": (0, INF, True, False),
    "alignment_samples": (0, INF, True, False), "threads": (0, INF, True, False), "bootstrap": (0, INF, True, False),
}


def _range_text(lo, hi, lo_in, hi_in) -> str:
    if hi == INF:
        return f"{'>=' if lo_in else '>'} {lo:g}"
    return f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def _check_range(key: str, value) -> None:
    lo, hi, lo_in, hi_in = RANGES[key]
    for v in (value if isinstance(value, list) else [value]):
        ok = (v >= lo if lo_in else v > lo) and (v <= hi if hi_in else v < hi) and v == v
        if not ok:
            raise UserError(f"config key {key!r}: {value!r} is not valid (must be {_range_text(*RANGES[key])}"
                            f"{' for each value' if isinstance(value, list) else ''})")


MAX_RUN_NAME = 200


def check_run_name(name: str, key: str = "run_name") -> None:
    """A run name is one folder under out_dir: no path separators, not '.' or '..', no leading '.'."""
    if name and ("/" in name or "\\" in name or name.startswith(".") or any(ord(c) < 32 or c == "\x7f" for c in name)):
        raise UserError(f"config key {key!r}: {name!r} is not a plain folder name (no '/', no leading '.'): "
                        "runs stay inside out_dir")
    if len(name.encode()) > MAX_RUN_NAME:
        raise UserError(f"config key {key!r}: {len(name.encode())} bytes long; at most {MAX_RUN_NAME} (a folder "
                        "name, with room for the seed suffix and temporary files, under the 255-byte limit)")


def validate(cfg: Config) -> Config:
    flat = flatten(to_dict(cfg))
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise UserError(f"config key {key!r}: {flat[key]!r} is not one of {', '.join(allowed)}")
    for key in RANGES:
        _check_range(key, flat[key])
    if cfg.optim.mixup < 0 and cfg.optim.mixup != -1:
        raise UserError(f"config key 'optim.mixup': {cfg.optim.mixup} is not valid (-1 = BiT-HyperRule, or >= 0)")
    check_run_name(cfg.run_name)
    for key in ("mean", "std"):
        v = getattr(cfg.data, key)
        if len(v) not in (1, 3):
            raise UserError(f"config key 'data.{key}': {v} has {len(v)} values; give 1 (every channel) or 3 "
                            "(R, G, B; gray images use the first)")
    if cfg.optim.epochs < 0 or (cfg.optim.epochs > 0 and cfg.optim.steps > 0):
        raise UserError("config keys 'optim.epochs'/'optim.steps': give one of them (epochs >= 0)")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise UserError(f"config key 'seeds': {cfg.seeds} repeats a seed")
    if not cfg.probe_c:
        raise UserError("config key 'probe_c': needs at least one value")
    if cfg.class_weights == "balanced" and cfg.loss == "bce":
        raise UserError("config key 'class_weights': balanced needs the ce loss (multi-class labels); loss is bce")
    return cfg


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("rename",):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def apply_overrides(d: dict, overrides: list) -> dict:
    """``a.b=value`` pairs; values are parsed as YAML (numbers, true/false, [lists], {maps})."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        value = read_yaml(raw, f"override {item!r}") if raw != "" else ""
        node = d
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise _unknown(key.strip())
            node = node[p]
        node[parts[-1]] = value
    return d


def load_config(path: Optional[str] = None, overrides: Optional[list] = None, base: Optional[dict] = None) -> Config:
    d: dict = {} if base is None else dict(base)
    if path is not None and not str(path).strip():
        raise UserError("--config '': give a config file or a packaged preset's name (or leave --config out)")
    if path:
        p = Path(path)
        if not p.exists():
            packaged = resources.files("covidnetx") / "configs" / (path if path.endswith(".yaml") else path + ".yaml")
            if packaged.is_file():
                p = Path(str(packaged))
            else:
                raise UserError(f"config file {path!r} not found (nor a packaged preset of that name)")
        loaded = read_yaml(read_text(p, "config file"), str(p)) or {}
        if not isinstance(loaded, dict):
            raise UserError(f"{p}: expected a mapping at the top level")
        d = merge(d, loaded)
    full = to_dict(Config())
    d = merge(full, d)
    d = apply_overrides(d, overrides or [])
    if isinstance(d.get("data"), dict) and d["data"].get("eval_split") == "auto":
        # the protocol: pre-training is watched on val; a transfer run selects on val and is scored on test
        d["data"]["eval_split"] = "test" if d.get("task") == "transfer" else "val"
    return validate(_build(Config, d))


def merge(a: dict, b: dict) -> dict:
    """``b`` over ``a``, nested sections merged key by key (``data.rename`` is a value, replaced whole)."""
    out = dict(a)
    for k, v in (b or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "rename":
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def copy_with(cfg: Config, **changes) -> Config:
    """A copy of ``cfg`` with top-level keys changed (``dataclasses.replace``), validated."""
    return validate(dataclasses.replace(copy.deepcopy(cfg), **changes))


def run_names(cfg: Config, name: str) -> list:
    """The runs one command makes under ``name`` (the one naming rule, used by the tasks that run them
    and by the sweep that predicts them): few-shot NAME-kK-sSEED for every shots x seeds (seeds [] =
    [seed]); otherwise NAME-sSEED per seed, or NAME alone when ``seeds`` is empty."""
    seeds = list(cfg.seeds) or [cfg.seed]
    if cfg.task == "transfer" and cfg.regime == "fewshot":
        return [f"{name}-k{k}-s{s}" for k in cfg.shots for s in seeds]
    return [f"{name}-s{s}" for s in cfg.seeds] if cfg.seeds else [name]


def dump(cfg: Config) -> str:
    return dump_yaml(to_dict(cfg), sort_keys=True)


def key_reference(root=None) -> list:
    """(dotted key, type, default, description) of every key of ``root`` (a dataclass; the run Config by
    default), in definition order. The descriptions are the comments beside the fields: one place keeps
    them."""
    rows = []

    def type_name(tp) -> str:
        args = typing.get_args(tp)
        base = getattr(typing.get_origin(tp) or tp, "__name__", str(tp))
        return f"{base}[{', '.join(type_name(a) for a in args)}]" if args else base

    def walk(obj, prefix):
        notes = {}
        for line in inspect.getsource(type(obj)).splitlines():
            m = re.match(r"\s+(\w+):[^#]*#\s*(.*)$", line)
            if m:
                notes[m.group(1)] = m.group(2).strip()
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            args = typing.get_args(hints[f.name])
            if dataclasses.is_dataclass(value):
                walk(value, prefix + f.name + ".")
            elif args and dataclasses.is_dataclass(args[-1]):      # {NAME: spec} or [spec, ...]
                walk(args[-1](), prefix + f.name + (".NAME." if len(args) == 2 else "[]."))
            else:
                rows.append((prefix + f.name, type_name(hints[f.name]), value, notes.get(f.name, "")))
    walk((root or Config)(), "")
    return rows


def format_keys(root=None) -> str:
    rows = [(k, t, yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...").strip(), d)
            for k, t, v, d in key_reference(root)]
    wk, wt, wv = (max(len(r[i]) for r in rows) for i in range(3))
    return "\n".join(f"{k:<{wk}}  {t:<{wt}}  {v:<{wv}}  {d}".rstrip() for k, t, v, d in rows)


# keys that do not change a run's results: where files go, how often to log, whether to check inputs
HASH_FREE = ("out_dir", "results", "resume", "run_name", "eval_every", "ckpt_every", "log_every", "progress_s", "threads",
             "feature_cache", "data.verify")
# ... and, for a run directory and its resumption, also these
RUN_KEYS_FREE = HASH_FREE + ("data.workers", "seeds")


# keys whose default means "decided when the run starts" (from the training-set size and the number of
# ranks: BiT-HyperRule, epochs): a run's saved config.yaml holds the values it ran with instead
RESOLVED_AT_START = {"optim.steps": 0, "optim.warmup_steps": -1, "optim.mixup": -1.0, "optim.decay_at": []}


def unresolved_keys(cfg: Config) -> tuple:
    """The keys of ``cfg`` still to be decided when its run starts (``epochs`` with ``steps``: they
    resolve to a number of steps)."""
    flat = flatten(to_dict(cfg))
    keys = [k for k, v in RESOLVED_AT_START.items() if flat[k] == v]
    if "optim.steps" in keys and cfg.optim.epochs > 0:
        keys.append("optim.epochs")
    return tuple(keys)


def with_schedule(cfg: Config, sched) -> Config:
    """``cfg`` with its schedule resolved (``sched``: train.schedule.Schedule): steps, warmup, MixUp and
    the decay points as fractions, so the saved config says what ran and reruns it as it ran."""
    optim = dataclasses.replace(cfg.optim, steps=sched.steps, epochs=0.0, warmup_steps=sched.warmup,
                                mixup=sched.mixup, decay_at=list(sched.decay_fractions))
    return copy_with(cfg, optim=optim)


def differences(a: Config, b: Config, ignore=RUN_KEYS_FREE) -> list:
    """['key: A -> B', ...] for the keys whose values differ (dotted keys; ``ignore`` names keys or their
    top-level prefix that may change between a run and its resumption)."""
    fa, fb = flatten(to_dict(a)), flatten(to_dict(b))
    out = []
    for k in sorted(set(fa) | set(fb)):
        if k in ignore or k.split(".")[0] in ignore:
            continue
        if fa.get(k) != fb.get(k):
            out.append(f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}")
    return out


def config_hash(cfg: Config, exclude=HASH_FREE) -> str:
    """What the results depend on: the config without keys that only say where files go, how often to log,
    or whether to check inputs (dotted keys name nested ones)."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in exclude}
    for key in exclude:
        if "." in key:
            top, sub = key.split(".", 1)
            if isinstance(d.get(top), dict):
                d[top] = {k: v for k, v in d[top].items() if k != sub}
    for key, default in HASH_NEW_DEFAULTS.items():     # keys added later: at their default, as if absent
        top, _, sub = key.partition(".")
        if not sub:
            if d.get(top) == default:
                del d[top]
        elif isinstance(d.get(top), dict) and d[top].get(sub) == default:
            d[top] = {k: v for k, v in d[top].items() if k != sub}
    return stable_hash(d, 12)


# keys added after runs were made: at these values a config hashes as it did before the key existed, so
# the run ids of existing studies (and their resumption) survive an upgrade
HASH_NEW_DEFAULTS = {"optim.min_steps": 0, "class_weights": "none"}


def is_probe(cfg: "Config") -> bool:
    """Transfer by a linear probe on frozen features (linear; few-shot unless fewshot_mode=full)."""
    return cfg.regime == "linear" or (cfg.regime == "fewshot" and cfg.fewshot_mode == "linear")
