"""Linear probes on frozen features, few-shot probes, and the transfer measures of a checkpoint.

**Linear probe** (as in CLIP's and BiT's linear evaluation, Kornblith et al. 2019): the frozen network's
pooled features are computed once per (checkpoint, target split) and cached; standardised with the
mean and standard deviation of the target's train images; a multinomial logistic regression (L-BFGS,
to convergence) is fitted for every inverse L2 strength in ``probe_c``; the one with the best balanced
accuracy on the val split (ties: lower val log-loss, then stronger regularisation) is kept; the test
split is scored once, at the end. The standardisation is folded into the classifier head, so a linear
run's ``last.ckpt`` is an ordinary covidnetx checkpoint (``covidnetx evaluate`` reads it).

**Few-shot** (``regime=fewshot``, ``fewshot_mode=linear``, the default): the same probe trained on k
labelled images per class, from the same cached features, so a whole k x seeds grid costs one feature
pass. The standardisation statistics come from the target's train images without their labels (the
few-shot setting lacks labels, not images). Each run writes ``head.npz`` (weights and bias on the
network's raw features) instead of a checkpoint. ``fewshot_mode=full`` fine-tunes instead (engine).

**Transfer measures** (covidnetx.scaling.alignment): align_ref, align_norm and logme, once per
(checkpoint, target), cached, and recorded in every transfer row that starts from that checkpoint.

Cache: ``feature_cache`` (default OUT_DIR/features), one ``.npz`` per feature set (loaded with
allow_pickle=False) and one ``.json`` of measures, keyed by the checkpoint's sha256, the packed
datasets' index checksums, the split and the preprocessing. Features are extracted by all ranks (each a
padded block, as in evaluation) and gathered; rank 0 fits and writes; the head is broadcast.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from covidnetx import config as C
from covidnetx.data.compose import Mixture
from covidnetx.data.hdf5 import PackedDataset, index_path
from covidnetx.data.loader import make_loader
from covidnetx.data.transforms import Preprocess, normalize
from covidnetx.eval.metrics import all_metrics, bootstrap_ci, confusion, from_confusion
from covidnetx.eval.rows import result_row
from covidnetx.models import count_params, create_model, flops_per_sample, load_state, load_weights
from covidnetx.rundir import (PROBE_HEAD, PROBE_TRIALS, RunDir, checkpoint, read_checkpoint, results_path,
                              save_checkpoint)
from covidnetx.scaling.alignment import frechet, frechet_normalised, logme
from covidnetx.utils import UserError, atomic_write_bytes, atomic_write_json, read_yaml, require_file, sha256_file

_SHA: dict = {}


def _file_sha(path: str) -> str:
    require_file(path, "weights file")
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA:
        _SHA[key] = sha256_file(path)
    return _SHA[key]


def checkpoint_id(cfg: C.Config) -> str:
    """What the frozen features depend on: the initial weights (file checksum; or the random init of a
    scratch model, which the seed decides)."""
    if cfg.model.init_from:
        return f"{cfg.model.name}:sha256:{_file_sha(cfg.model.init_from)}"
    return f"{cfg.model.name}:scratch:seed{cfg.seed}"


def data_id(dirs, split: str, cfg: C.Config, extra="") -> str:
    idx = [_file_sha(str(index_path(d))) for d in dirs]
    pp = Preprocess.from_config(cfg.data, augment=False)
    return json.dumps([idx, split, cfg.data.label_space, cfg.data.rename, pp.image_size, pp.eval_resize,
                       list(pp.mean), list(pp.std), extra], sort_keys=True)


def cache_dir(cfg: C.Config) -> Path:
    return Path(cfg.feature_cache or Path(cfg.out_dir) / "features")


def _key(*parts) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _once(build):
    """A callable that builds its object on the first call (a network only when features must be
    extracted) and returns the same object after."""
    box = []

    def get():
        if not box:
            box.append(build())
        return box[0]
    return get


def init_model(cfg: C.Config, num_classes: int, device, say=None) -> torch.nn.Module:
    """The network whose features are probed: the init_from weights (head dropped; ``say`` gets the
    loading report), or a seeded random init (a from-scratch baseline)."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model.name, num_classes)
    if cfg.model.init_from:
        got = load_weights(model, cfg.model.init_from, drop_head=True)
        if say is not None:
            say(f"[{cfg.run_name}] features from {got['report']}")
    return model.to(device).eval()


def extract(model, view, cfg: C.Config, dist) -> tuple:
    """Pooled features of every image of ``view`` (evaluation preprocessing), in view order, on every
    rank: (features float32 (n, d), labels, seconds)."""
    pp = Preprocess.from_config(cfg.data, augment=False)
    t0 = time.perf_counter()
    feats, labels, index = [], [], []
    loader = make_loader(cfg.data.loader, view, pp, max(64, cfg.optim.batch_size), cfg.seed, dist.rank, dist.size,
                         workers=cfg.data.workers, train=False, device=cfg.data.device, torch_device=dist.device)
    model.eval()
    with torch.no_grad():
        for b in loader:
            keep = b["valid"].bool().numpy()
            f = model.features(normalize(b["image"], pp, dist.device)).float().cpu().numpy()
            feats.append(f[keep])
            labels.append(b["label"].numpy()[keep])
            index.append(b["index"].numpy()[keep])
    d = getattr(model, "feat_dim", feats[0].shape[1] if feats else 0)
    f = np.concatenate(feats) if feats else np.zeros((0, d), np.float32)
    y = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    i = np.concatenate(index) if index else np.zeros(0, np.int64)
    f, y, i = dist.allgather(f.astype(np.float32)), dist.allgather(y.astype(np.int64)), dist.allgather(i)
    order = np.argsort(i, kind="stable")
    if len(order) != len(view):
        raise RuntimeError(f"feature extraction gathered {len(order)} samples, the split has {len(view)}")
    return f[order], y[order], time.perf_counter() - t0


def cached_features(cfg: C.Config, dist, model_fn, view, ident: str) -> tuple:
    """(features, labels, seconds spent extracting; 0 when cached) on every rank: from the cache (rank 0
    decides whether it holds this feature set; every rank then reads it, the run folder being shared as
    for checkpoints), or extracted now by every rank and written by rank 0. ``model_fn`` builds the
    network only when needed."""
    path = cache_dir(cfg) / f"{_key(ident)}.npz"
    ok = None
    if dist.is_primary:
        try:
            with np.load(path, allow_pickle=False) as z:
                ok = int(z["n"]) == len(view) and str(z["ident"]) == ident
        except (OSError, ValueError, KeyError):
            ok = False
    if dist.broadcast_object(ok):
        with np.load(path, allow_pickle=False) as z:
            return z["features"], z["labels"], 0.0
    f, y, secs = extract(model_fn(), view, cfg, dist)
    with dist.phase():
        if dist.is_primary:
            buf = io.BytesIO()
            np.savez(buf, features=f, labels=y, n=np.int64(len(view)), ident=np.array(ident))
            atomic_write_bytes(path, buf.getvalue())
    return f, y, secs


def _reference_model(cfg: C.Config, num_classes: int, device):
    ref = cfg.alignment_reference
    if ref.startswith("random:"):
        torch.manual_seed(0)
        return create_model(ref.split(":", 1)[1], num_classes).to(device).eval()
    if not os.path.isfile(ref):
        raise UserError(f"config key 'alignment_reference': {ref!r} is neither random:MODEL nor a checkpoint")
    ck = read_checkpoint(ref, "config key 'alignment_reference': checkpoint")
    m = create_model(read_yaml(ck["config"], "the checkpoint's config")["model"]["name"], len(ck["class_names"]))
    load_state(m, ck["model"], ref)
    return m.to(device).eval()


def _reference_id(cfg: C.Config) -> str:
    ref = cfg.alignment_reference
    return ref if ref.startswith("random:") else f"ckpt:{_file_sha(ref)}"


def transfer_measures(cfg: C.Config, dist, pool: Mixture, init_meta: dict) -> dict:
    """align_ref, align_norm and logme for (init_from checkpoint, target train split), cached; {} when
    there is no checkpoint or alignment_samples is 0. ``pool`` is the whole target train split."""
    if not cfg.model.init_from or cfg.alignment_samples <= 0:
        return {}
    ck = checkpoint_id(cfg)
    tgt = data_id(cfg.data.sources, cfg.data.train_split, cfg)
    path = cache_dir(cfg) / f"measures-{_key(ck, tgt, _reference_id(cfg), str(cfg.alignment_samples))}.json"
    have = dist.broadcast_object(path.is_file() if dist.is_primary else None)
    if have:
        return dist.broadcast_object(json.loads(path.read_text()) if dist.is_primary else None)
    k = len(pool.class_names)
    dev = dist.device
    model_fn = _once(lambda: init_model(cfg, k, dev))
    ft, yt, _ = cached_features(cfg, dist, model_fn, pool, f"{ck}|{tgt}")
    out = {"logme": None, "align_norm": None, "align_ref": None}
    if dist.is_primary and pool.label_kind == "multiclass":
        out["logme"] = logme(ft, yt, k)
    src = None
    dirs = init_meta.get("source_dirs") or []
    try:
        if dirs:
            src = Mixture([PackedDataset(d, init_meta.get("source_split") or "train") for d in dirs],
                          init_meta.get("label_space", "union"), rename=init_meta.get("rename") or None)
    except Exception:  # noqa: BLE001 - the source may not be reachable from this job: no distance then
        src = None
    if src is not None and len(src) >= 2:
        n = min(cfg.alignment_samples, len(src))
        pick = np.sort(np.random.default_rng(0).permutation(len(src))[:n])
        sview = src.subset(pick)
        sid = json.dumps([sorted(str(d) for d in dirs), init_meta.get("source_split"), n,
                          data_id(cfg.data.sources, "-", cfg)])
        fs, _, _ = cached_features(cfg, dist, model_fn, sview, f"{ck}|source|{sid}")
        rid = _reference_id(cfg)
        ref_fn = _once(lambda: _reference_model(cfg, k, dev))
        rs, _, _ = cached_features(cfg, dist, ref_fn, sview, f"{rid}|source|{sid}")
        rt, _, _ = cached_features(cfg, dist, ref_fn, pool, f"{rid}|{tgt}")
        if dist.is_primary:
            out["align_norm"] = frechet_normalised(fs, ft)
            out["align_ref"] = frechet(rs, rt)
    with dist.phase():
        if dist.is_primary:
            atomic_write_json(path, out)
    return dist.broadcast_object(out if dist.is_primary else None)


def _fit_logreg(x, y, c: float, k: int, class_weights: str = "none"):
    """Multinomial logistic regression (L-BFGS to convergence) at inverse L2 strength ``c``: (W (k, d),
    b (k,), converged, iterations); a class absent from ``y`` gets a bias that is never chosen.
    ``class_weights`` balanced weighs each class by n / (classes x its count), as the trainer's loss."""
    from sklearn.exceptions import ConvergenceWarning  # lazy: heavy, scikit-learn, only when a probe fits
    from sklearn.linear_model import LogisticRegression  # lazy: heavy, scikit-learn, only when a probe fits
    clf = LogisticRegression(C=c, max_iter=5000, tol=1e-6,
                             class_weight="balanced" if class_weights == "balanced" else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    W = np.zeros((k, x.shape[1]))
    b = np.zeros(k)
    classes = clf.classes_.astype(int)
    if len(classes) == 2 and clf.coef_.shape[0] == 1:          # sklearn's binary form: one row for class 1
        W[classes[1]], b[classes[1]] = clf.coef_[0], clf.intercept_[0]
    else:
        W[classes], b[classes] = clf.coef_, clf.intercept_
    for missing in set(range(k)) - set(classes):                # a class absent from training: never chosen
        b[missing] = -1e9
    converged = int(np.max(clf.n_iter_)) < clf.max_iter
    return W, b, converged, int(np.max(clf.n_iter_))


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


# ---------------------------------------------------------------------------------------------------
# The probe as an evaluator: features in, (head, metrics) out; each step a function of arrays.

def standardiser(f: np.ndarray) -> tuple:
    """(mean, sd) of the features the probe standardises with; a constant feature keeps sd 1."""
    mu = f.mean(0)
    sd = f.std(0)
    return mu, np.where(sd > 1e-8 * max(1.0, float(sd.max(initial=0.0))), sd, 1.0)


def select_c(xt, yt, xv, yv, cs, class_names, class_weights: str = "none") -> tuple:
    """Fit the probe at every inverse L2 strength in ``cs`` on (xt, yt) and keep the one with the best
    balanced accuracy on (xv, yv); ties: lower val log-loss, then the stronger regularisation (smaller C).
    Returns (best trial, all trials); a trial is {C, val_balanced_accuracy, val_log_loss, converged,
    iterations, W, b}."""
    k = len(class_names)
    trials = []
    for c in cs:
        W, b, conv, iters = _fit_logreg(xt, yt, c, k, class_weights)
        pv = _softmax(xv @ W.T + b)
        ba = from_confusion(confusion(yv, pv.argmax(1), k), list(class_names))["balanced_accuracy"]
        ll = float(-np.mean(np.log(np.maximum(pv[np.arange(len(yv)), yv], 1e-12)))) if len(yv) else float("nan")
        trials.append({"C": c, "val_balanced_accuracy": ba, "val_log_loss": ll, "converged": conv,
                       "iterations": iters, "W": W, "b": b})
    best = sorted(trials, key=lambda t: (-np.nan_to_num(t["val_balanced_accuracy"], nan=-1.0),
                                         np.nan_to_num(t["val_log_loss"], nan=np.inf), t["C"]))[0]
    return best, trials


def fold_head(W, b, mu, sd) -> tuple:
    """The head on raw features: logits = W (f - mu) / sd + b = (W / sd) f + (b - W mu / sd)."""
    Wf = W / sd[None, :]
    return Wf, b - Wf @ mu


def fit_probe(sets: dict, subset, cfg: C.Config, class_names) -> dict:
    """The whole probe on features ``sets`` = {train, val, test: (features, labels)}: standardise on the
    train features, choose C on val, fold the standardisation into the head, score test once.
    ``subset`` (few-shot) picks the training examples. Returns {metrics, W, b, trials}."""
    names = list(class_names)
    fp, yp = sets["train"]
    mu, sd = standardiser(fp)
    idx = np.arange(len(yp)) if subset is None else np.asarray(subset)
    best, trials = select_c((fp[idx] - mu) / sd, yp[idx], (sets["val"][0] - mu) / sd, sets["val"][1],
                            cfg.probe_c, names, cfg.class_weights)
    Wf, bf = fold_head(best["W"], best["b"], mu, sd)
    fe, ye = sets["test"]
    scores = _softmax(fe.astype(np.float64) @ Wf.T + bf)
    m = all_metrics(ye, scores, names, False)
    m.update(bootstrap_ci(ye, scores, names, False, cfg.bootstrap, cfg.seed))
    m.update({"probe_c": best["C"], "probe_val_balanced_accuracy": best["val_balanced_accuracy"],
              "probe_converged": bool(best["converged"]), "probe_iterations": best["iterations"],
              "probe_c_at_edge": best["C"] in (min(cfg.probe_c), max(cfg.probe_c)) and len(cfg.probe_c) > 1})
    return {"metrics": m, "W": Wf.astype(np.float32), "b": bf.astype(np.float32),
            "trials": [{k: v for k, v in t.items() if k not in ("W", "b")} for t in trials]}


def _check_probe_inputs(cfg: C.Config, train: Mixture, ev, val) -> None:
    if train.label_kind != "multiclass":
        raise UserError("the linear probe needs a multi-class target (multi-label: regime=full)")
    if ev is None:
        raise UserError("config key 'data.eval_split': a probe needs a split to score")
    if val is None:
        raise UserError(f"config key 'data.val_split': the linear probe chooses its L2 strength on a val "
                        f"split other than the scored one; {cfg.data.val_split!r} is missing from "
                        f"{cfg.data.sources} or is data.eval_split")


def _save_probe(record: RunDir, cfg: C.Config, model, result: dict, names: list, ck: str, seconds: float,
                measures: dict) -> None:
    """Rank 0: head.npz, probe.json, a linear probe's checkpoint (its head in the network) and the
    TensorBoard scalars."""
    m = result["metrics"]
    buf = io.BytesIO()
    np.savez(buf, weight=result["W"], bias=result["b"], C=np.float64(m["probe_c"]), classes=np.array(names),
             checkpoint=np.array(ck))
    atomic_write_bytes(record / PROBE_HEAD, buf.getvalue())
    atomic_write_json(record / PROBE_TRIALS, {"trials": result["trials"], "chosen_c": m["probe_c"],
                                               "seconds": seconds, "measures": measures})
    if cfg.regime == "linear":
        with torch.no_grad():
            model.head.weight.copy_(torch.as_tensor(result["W"]))
            model.head.bias.copy_(torch.as_tensor(result["b"]))
        meta = {"model": cfg.model.name, "params": count_params(model), "seed": cfg.seed, "steps": 0,
                "probe_of": ck, "classes": names}
        save_checkpoint(checkpoint(model=model.state_dict(), class_names=names, config=C.dump(cfg), meta=meta),
                        record.ckpt)
    from torch.utils.tensorboard import SummaryWriter  # lazy: heavy, TensorBoard's writer, rank 0 only
    with SummaryWriter(str(record.tb)) as w:
        for i, t in enumerate(result["trials"]):
            w.add_scalar("probe/val_balanced_accuracy", t["val_balanced_accuracy"], i)
        for key in ("accuracy", "balanced_accuracy", "auc"):
            if isinstance(m.get(key), float):
                w.add_scalar(f"eval/{key}", m[key], 0)


def run_probe(cfg: C.Config, dist, train: Mixture, ev: Mixture, val, run_dir: Path, meta: dict, subset) -> dict:
    """A linear (or few-shot linear) probe run: features -> ``fit_probe`` on rank 0 -> the row -> files."""
    record = RunDir(run_dir)
    with dist.phase():
        _check_probe_inputs(cfg, train, ev, val)
        if dist.is_primary:        # as given: the probe takes no SGD steps, so there is no schedule to resolve
            record.write_config(C.dump(cfg))
    names = list(train.class_names)
    ck = checkpoint_id(cfg)
    model_fn = _once(lambda: init_model(cfg, len(names), dist.device,
                                        say=(lambda m: print(m, flush=True)) if dist.is_primary else None))
    t0 = time.perf_counter()
    sets, secs = {}, 0.0
    for name, view, split in (("train", train, cfg.data.train_split), ("val", val, cfg.data.val_split),
                              ("test", ev, cfg.data.eval_split)):
        f, y, s = cached_features(cfg, dist, model_fn, view, f"{ck}|{data_id(cfg.data.sources, split, cfg)}")
        sets[name] = (f, y)
        secs += s
    result = None
    with dist.phase():
        if dist.is_primary:
            result = fit_probe(sets, subset, cfg, names)
    result = dist.broadcast_object(result)
    m = result["metrics"]
    if m.get("n") != len(ev):
        raise RuntimeError(f"the probe scored {m.get('n')} samples, the split has {len(ev)}")
    model = model_fn()
    n_train = len(train) if subset is None else len(subset)
    flops_fwd = flops_per_sample(model, cfg.data.image_size)
    n_feat = sum(len(y) for _, y in sets.values())
    # a probe row: no SGD steps (steps 0, no global batch); its L-BFGS iterations are probe_iterations
    row = result_row(cfg, dist, meta, m, params=count_params(model),
                     trainable_params=int(result["W"].size + result["b"].size), train_size=n_train,
                     steps=0, total_steps=0, samples_seen=n_train, global_batch=None,
                     flops=flops_fwd * n_feat if secs else 0.0, flops_fwd=flops_fwd,
                     img_per_s=n_feat / secs if secs else 0.0, mixup=0.0, final=True)
    with dist.phase():
        if dist.is_primary:
            _save_probe(record, cfg, model, result, names, ck, time.perf_counter() - t0, meta.get("measures") or {})
            record.publish(row, results_path(cfg))
            print(f"[{cfg.run_name}] probe{' (k=%s)' % meta.get('shots') if meta.get('shots') else ''}: C={m['probe_c']:g} "
                  f"(val balanced accuracy {m['probe_val_balanced_accuracy']:.3f}); test accuracy {m['accuracy']:.4f}, "
                  f"balanced {m['balanced_accuracy']:.4f}" + (" [collapsed]" if m.get("collapsed") else ""), flush=True)
    return m
