"""One training engine for pre-training and every transfer regime.

Horovod's steps, in order (each marked ``# Horovod:``): init and device pinning happen in ``dist.init``;
data is sharded by global rank (covidnetx.data.loader); the LR is scaled by the global batch with a
linear warmup; parameters and optimizer state (a resumed one; loaded before) are broadcast from rank 0;
the optimizer is wrapped in DistributedOptimizer, which keeps that state. Only rank 0 writes
(TensorBoard, checkpoints, results); all ranks meet after checkpoints and evaluations.

Resume order: this run's own directory (last.ckpt) -> an explicit ``resume`` checkpoint -> ``init_from``
(weights only, head dropped) -> scratch. On SIGUSR1/SIGTERM (see StopSignals) the ranks agree one step
later through a sum of stop flags that overlaps the step, rank 0 saves, and the process exits with
EXIT_REQUEUE so the job script can requeue.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from covidnetx import config as C
from covidnetx.data.loader import Preprocess, make_loader, normalize
from covidnetx.dist import to_device
from covidnetx.eval.metrics import all_metrics, bootstrap_ci, confusion, from_confusion
from covidnetx.models import count_params, create_model, flops_per_sample, load_state, load_weights
from covidnetx.results import append_row
from covidnetx.train.schedule import bit_hyperrule, lr_at
from covidnetx.record import RunDir
from covidnetx.utils import UserError

EXIT_REQUEUE = 75           # EX_TEMPFAIL: "saved, run me again"


class Interrupted(Exception):
    """Raised after the checkpoint of a signalled run is safely on disk (args: step, or None when the
    signal came between runs and nothing needed saving)."""


class StopSignals:
    """SIGUSR1 and SIGTERM (Slurm's warning before the time limit, scancel, a requeue) set a flag instead
    of killing the process; training acts on it at the next step, the run loop between runs. Installed
    for a whole launcher invocation (``with STOP:``; re-entrant), so a signal during start-up, evaluation
    or between the runs of a sweep stage still ends in a checkpoint and exit EXIT_REQUEUE."""

    def __init__(self):
        self.requested = False
        self._depth = 0
        self._old: dict = {}

    def _handler(self, signum, frame):
        self.requested = True

    def __enter__(self):
        if self._depth == 0:
            self.requested = False
            self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGUSR1, signal.SIGTERM)}
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            for s, h in self._old.items():
                signal.signal(s, h)


STOP = StopSignals()


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def masked_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    known = ~torch.isnan(target)
    if not known.any():
        return logits.sum() * 0.0
    return nn.functional.binary_cross_entropy_with_logits(logits[known], target[known].float())


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def evaluate_model(model: nn.Module, view, cfg: C.Config, dist, pp: Preprocess) -> dict:
    """Exact evaluation of ``model`` on ``view`` under any number of ranks: rank 0's buffers everywhere
    (BatchNorm statistics), each rank a padded block, confusion counts over un-padded samples summed over
    ranks, scores gathered for AUC/AP and bootstrap CIs on rank 0; the metrics dict on every rank."""
    device = dist.device
    multilabel = view.label_kind == "multilabel"
    class_names = list(view.class_names)
    k = len(class_names)
    dist.broadcast_buffers(model)
    model.eval()
    loader = make_loader(cfg.data.loader, view, pp, cfg.optim.batch_size, cfg.seed, dist.rank, dist.size,
                         workers=cfg.data.workers, train=False, device=cfg.data.device, torch_device=device)
    scores, labels, keeps = [], [], []
    with torch.no_grad():
        for b in loader:
            with autocast(cfg.precision, device):
                logits = model(normalize(b["image"], pp, device))
            p = torch.sigmoid(logits.float()) if multilabel else torch.softmax(logits.float(), 1)
            # scores stay on the device until the loop ends: one copy back instead of a host-device
            # synchronisation per batch; the padding is dropped on the host afterwards
            scores.append(p)
            keeps.append(b["valid"].bool().numpy())
            labels.append(b["label"].numpy()[keeps[-1]])
    if scores:
        scores = torch.cat(scores).cpu().numpy()[np.concatenate(keeps)]
    else:
        scores = np.zeros((0, k), np.float32)
    labels = np.concatenate(labels) if labels else np.zeros((0,) if not multilabel else (0, k))
    out = {}
    if not multilabel:
        # exact: confusion counts over un-padded samples, summed over ranks
        cm = dist.allreduce_sum(confusion(labels, scores.argmax(1) if len(scores) else np.zeros(0), k))
        out.update(from_confusion(cm.astype(np.int64), class_names))
    all_scores = dist.allgather(scores.astype(np.float32))
    all_labels = dist.allgather(labels.astype(np.float32 if multilabel else np.int64))
    if dist.is_primary:
        m = all_metrics(all_labels, all_scores, class_names, multilabel)
        m.update(out)          # the exact, all-reduced counts win (they must agree)
        m.update(bootstrap_ci(all_labels, all_scores, class_names, multilabel, cfg.bootstrap, cfg.seed))
        out = m
    out = dist.broadcast_object(out)
    if out.get("n") != len(view):
        raise RuntimeError(f"evaluation counted {out.get('n')} samples, the split has {len(view)}")
    return out


def mixup_batch(x: torch.Tensor, alpha: float, key: list) -> tuple:
    """MixUp (Zhang et al.; BiT-HyperRule uses alpha 0.1 from 20k examples on): x' = lam x + (1 - lam)
    x[perm], lam ~ Beta(alpha, alpha). Drawn from a generator keyed by ``key`` (seed, step, micro-batch,
    rank), so a resumed run mixes exactly as an uninterrupted one and ranks mix differently. Returns
    (mixed x, perm as a tensor on x's device, lam)."""
    rng = np.random.default_rng([int(k) for k in key] + [0x6D6978])
    lam = float(rng.beta(alpha, alpha))
    perm = to_device(torch.as_tensor(rng.permutation(x.shape[0])), x.device)
    return x.mul(lam).add_(x[perm], alpha=1.0 - lam), perm, lam


def result_row(cfg: C.Config, dist, meta: dict, metrics: dict, *, params: int, trainable_params: int,
               train_size: int, steps: int, total_steps: int, samples_seen: int, global_batch: int, flops: float,
               flops_fwd: int, img_per_s: float, mixup: float, final: bool) -> dict:
    """One row of the results table (the engine's and the linear probe's): what ran, on what, and how it
    scored; the metrics dict is merged in last."""
    im = meta.get("init_meta") or {}
    row = {
        "run_id": cfg.run_name, "task": cfg.task, "model": cfg.model.name, "params": params,
        "trainable_params": trainable_params, "source": meta.get("source"),
        "source_fraction": meta.get("source_fraction"), "target": meta.get("target"),
        "regime": cfg.regime if cfg.task == "transfer" else "pretrain", "shots": meta.get("shots"),
        "seed": cfg.seed, "pretrain_seed": im.get("seed"), "world_size": dist.size, "global_batch": global_batch,
        "steps": steps, "total_steps": total_steps, "samples_seen": samples_seen, "train_size": train_size,
        "epochs": samples_seen / train_size if train_size else None,
        "flops": flops, "flops_per_sample_fwd": flops_fwd,
        "pretrain_flops": im.get("flops"), "pretrain_steps": im.get("steps"),
        "pretrain_train_size": im.get("train_size"), "pretrain_epochs": im.get("epochs"),
        "source_domain": meta.get("source_domain"), "target_domain": cfg.target_domain or None,
        "domain_pair": meta.get("domain_pair"), "img_per_s": img_per_s, "precision": cfg.precision,
        "mixup": mixup, "loader": cfg.data.loader, "backend": dist.backend, "eval_split": cfg.data.eval_split,
        "git_sha": git_sha(), "config_hash": C.config_hash(cfg), "final": final, "time": time.time(),
    }
    for k in ("align_ref", "align_norm", "logme"):
        row[k] = (meta.get("measures") or {}).get(k)
    for k in ("accuracy", "balanced_accuracy", "auc", "ap"):
        row[k] = metrics.get(k)
    row.update({k: v for k, v in metrics.items() if k not in row})
    return row


class Trainer:
    def __init__(self, cfg: C.Config, dist, train_view, eval_view, run_dir: Path, meta: dict, val_view=None):
        self.cfg, self.dist, self.train_view, self.eval_view = cfg, dist, train_view, eval_view
        self.val_view = val_view            # evaluations during the run (the eval split is scored at the end)
        self.run_dir, self.meta = Path(run_dir), dict(meta)
        self.record = RunDir(run_dir)
        self.multilabel = train_view.label_kind == "multilabel"
        self.class_names = list(train_view.class_names)
        loss = cfg.loss if cfg.loss != "auto" else ("bce" if self.multilabel else "ce")
        if loss == "ce" and self.multilabel:
            raise UserError("config key 'loss': ce needs multi-class labels; these are multi-label (use bce)")
        self.loss_name = loss
        self.device = dist.device
        o = cfg.optim
        rule = bit_hyperrule(len(train_view))
        use_rule = cfg.task == "transfer" and cfg.hyperrule
        self.global_batch = o.batch_size * dist.size * o.accum_steps
        if o.epochs > 0:
            self.steps = max(1, math.ceil(o.epochs * len(train_view) / self.global_batch))
        else:
            self.steps = o.steps or (rule["steps"] if use_rule else 1000)
        self.warmup = o.warmup_steps if o.warmup_steps >= 0 else (
            min(rule["warmup"], self.steps // 5) if use_rule else max(1, self.steps // 20))
        self.decay_at = ([d for d in rule["decay_at"] if d < self.steps] if (use_rule and not o.steps and not o.epochs)
                         else [int(f * self.steps) for f in o.decay_at])
        self.mixup = o.mixup if o.mixup >= 0 else (rule["mixup"] if use_rule else 0.0)
        # Horovod: scale the learning rate by the global batch (i.e. by the number of ranks), with warmup
        self.base_lr = o.lr * self.global_batch / o.base_batch
        self.pp = Preprocess.from_config(cfg.data)

    # ------------------------------------------------------------------------------------------------
    def _build(self):
        cfg, dist = self.cfg, self.dist
        with dist.phase():          # every rank reads the checkpoints; any failure stops all of them
            torch.manual_seed(cfg.seed)
            model = create_model(cfg.model.name, len(self.class_names))
            self.flops_fwd = flops_per_sample(model, cfg.data.image_size)
            start, state, how = 0, None, "scratch"
            state, how = self.record.resume_from(cfg.resume)
            if state is None and cfg.model.init_from:
                ck = load_weights(model, cfg.model.init_from, drop_head=cfg.model.drop_head)
                how = f"initialised from {cfg.model.init_from} (head {'dropped' if cfg.model.drop_head else 'kept'})"
                self.meta.setdefault("init_meta", ck.get("meta", {}))
            if state is not None:
                if state["class_names"] != self.class_names:
                    raise UserError(f"checkpoint classes {state['class_names']} differ from the task's {self.class_names}")
                load_state(model, state.get("model"), how.replace("resumed from ", ""))
                start = int(state["step"])
            model.to(self.device)
            if cfg.regime == "linear" and cfg.task == "transfer":
                model.freeze_backbone()
            params = [p for p in model.parameters() if p.requires_grad]
            o = cfg.optim
            if o.name == "sgd":
                opt = torch.optim.SGD(params, lr=self.base_lr, momentum=o.momentum, weight_decay=o.weight_decay)
            else:
                opt = torch.optim.AdamW(params, lr=self.base_lr, weight_decay=o.weight_decay)
            if state is not None and state.get("optimizer"):
                opt.load_state_dict(state["optimizer"])
            if cfg.precision == "fp16" and self.device.type != "cuda":
                raise UserError("precision fp16 needs a GPU; use bf16 on CPU")
        # Horovod: broadcast parameters and optimizer state from rank 0
        dist.broadcast_state(model, opt)
        # Horovod: wrap the optimizer (named_parameters, compression, backward_passes_per_step; keeps the state)
        opt = dist.wrap_optimizer(opt, model, o.accum_steps, cfg.fp16_allreduce)
        self.scaler = None
        if cfg.precision == "fp16":
            self.scaler = torch.amp.GradScaler("cuda")
            if state is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        self.model, self.opt, self.start_step, self.how = model, opt, start, how
        self.samples_before = int(state.get("samples_seen", start * self.global_batch)) if state else 0

    def _autocast(self):
        return autocast(self.cfg.precision, self.device)

    def _loss(self, logits, y):
        if self.loss_name == "bce":
            return masked_bce(logits.float(), y.to(logits.device))
        return nn.functional.cross_entropy(logits.float(), y.to(logits.device))

    def _mixed_loss(self, logits, y, perm, lam):
        if self.loss_name == "bce":           # soft multi-label targets; unknown (NaN) in either stays unknown
            return self._loss(logits, lam * y.float() + (1.0 - lam) * y.float()[perm])
        return lam * self._loss(logits, y) + (1.0 - lam) * self._loss(logits, y[perm])

    # ------------------------------------------------------------------------------------------------
    def _stop_flag(self):
        """Start summing this rank's stop request over ranks; the sum is read one step later, so the
        agreement costs no blocking collective per step (every rank reads the same sum and stops at the
        same step, one step after the signal)."""
        return self.dist.allreduce_sum_async(np.array([1.0 if STOP.requested else 0.0]))

    def save(self, step: int, samples_seen: int) -> None:
        with self.dist.phase():                 # a failed write (disk full) ends every rank with its message
            if self.dist.is_primary:
                state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "step": step,
                         "samples_seen": samples_seen, "class_names": self.class_names, "config": C.dump(self.cfg),
                         "scaler": self.scaler.state_dict() if self.scaler else None,
                         "meta": self.meta_for_ckpt(step, samples_seen)}
                self.record.save(state, step=step, total_steps=self.steps, samples_seen=samples_seen)

    def meta_for_ckpt(self, step, samples_seen) -> dict:
        return {"model": self.cfg.model.name, "params": count_params(self.model), "seed": self.cfg.seed,
                "epochs": samples_seen / len(self.train_view) if len(self.train_view) else None,
                "source": self.meta.get("source"), "source_fraction": self.meta.get("source_fraction"),
                "steps": step, "samples_seen": samples_seen,
                "flops": 3 * self.flops_fwd * samples_seen, "classes": self.class_names,
                "train_size": len(self.train_view), "source_dirs": list(self.cfg.data.sources),
                "source_split": self.cfg.data.eval_split or self.cfg.data.train_split,
                "domain": self.cfg.source_domain, "label_space": self.cfg.data.label_space,
                "rename": dict(self.cfg.data.rename)}

    # ------------------------------------------------------------------------------------------------
    def evaluate(self, step: int, final: bool = True) -> dict:
        """Metrics of the current model: at the end on the eval split; during the run on the val split
        where there is one (a test split is then read once per run, at the end)."""
        view = self.eval_view if (final or self.val_view is None) else self.val_view
        if view is None:
            return {}
        out = evaluate_model(self.model, view, self.cfg, self.dist, self.pp)
        out["split"] = self.cfg.data.eval_split if view is self.eval_view else self.cfg.data.val_split
        self.model.train()
        return out

    def result_row(self, metrics: dict, step: int, samples_seen: int, img_per_s: float, final: bool) -> dict:
        return result_row(self.cfg, self.dist, self.meta, metrics, params=count_params(self.model),
                          trainable_params=count_params(self.model, trainable_only=True),
                          train_size=len(self.train_view), steps=step, total_steps=self.steps,
                          samples_seen=samples_seen, global_batch=self.global_batch,
                          flops=3 * self.flops_fwd * samples_seen, flops_fwd=self.flops_fwd, img_per_s=img_per_s,
                          mixup=self.mixup, final=final)

    # ------------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        with STOP:                 # a no-op inside run_configs, which holds the handlers for all its runs
            return self._fit()

    def _fit(self) -> dict:
        cfg, dist = self.cfg, self.dist
        with dist.phase():
            if dist.is_primary:
                self.record.write_config(C.dump(cfg))
        self._build()
        writer = None
        with dist.phase():
            if dist.is_primary:
                from torch.utils.tensorboard import SummaryWriter
                writer = SummaryWriter(str(self.record.tb), purge_step=self.start_step or None)
        if dist.is_primary:
            print(f"[{self.run_dir.name}] {self.how}; {len(self.train_view)} train samples, {self.steps} steps, "
                  f"global batch {self.global_batch}, lr {self.base_lr:.4g}"
                  f"{f', mixup {self.mixup:g}' if self.mixup > 0 else ''}, {dist.size} rank(s), "
                  f"{count_params(self.model)} params", flush=True)
        results = cfg.results or str(Path(cfg.out_dir) / "results.jsonl")
        metrics: dict = {}
        sync_debug = ""
        loader = None
        try:
            step = self.start_step
            samples = self.samples_before
            loader = make_loader(cfg.data.loader, self.train_view, self.pp, cfg.optim.batch_size, cfg.seed,
                                 dist.rank, dist.size, workers=cfg.data.workers, train=True,
                                 start_step=step * cfg.optim.accum_steps,
                                 steps=(self.steps - step) * cfg.optim.accum_steps, device=cfg.data.device,
                                 torch_device=self.device)
            self.model.train()
            accum = cfg.optim.accum_steps
            remaining = (self.steps - step) * accum             # batches the loader will yield
            t_data = t_comp = 0.0

            def fetch():
                """The next batch on the device (None after the last): called while the device still runs the
                previous backward pass, so on a GPU loading overlaps compute."""
                nonlocal remaining, t_data
                if remaining == 0:
                    return None
                remaining -= 1
                t0 = time.perf_counter()
                b = next(loader)
                out = normalize(b["image"], self.pp, self.device), to_device(b["label"], self.device)
                t_data += time.perf_counter() - t0
                return out
            # the losses reach the host by an asynchronous copy that is waited for only after the next batch
            # is fetched: no host synchronisation between forward and backward (on a GPU a .item() or a
            # bool() of the loss would stall the CPU until the device is idle); a non-finite loss still
            # stops the step before the optimizer applies it
            cuda = self.device.type == "cuda"
            loss_host = torch.zeros(accum, dtype=torch.float32, pin_memory=cuda)
            forward_done = torch.cuda.Event() if cuda else None
            n_timed = 0
            t_last = time.perf_counter()
            ahead = fetch()
            # throughput excludes the first steps (lazy init, autotuning) when the run is long enough
            warm_until = step + min(5, (self.steps - step) // 4)
            stop_sum = None            # the ranks' stop flags, summed while the previous step ran
            # COVIDNETX_CUDA_SYNC_DEBUG=warn|error: torch flags every operation in the training loop that
            # makes the host wait for the GPU (the step itself should have none; Horovod's wait for the
            # allreduce is not a torch operation)
            sync_debug = os.environ.get("COVIDNETX_CUDA_SYNC_DEBUG", "") if cuda else ""
            if sync_debug:
                torch.cuda.set_sync_debug_mode(sync_debug)
            while step < self.steps:
                if step == warm_until:
                    t_last, n_timed = time.perf_counter(), 0
                if stop_sum is not None and stop_sum()[0] > 0:
                    self.save(step, samples)
                    raise Interrupted(step)
                stop_sum = self._stop_flag()
                lr = lr_at(step, base=self.base_lr, steps=self.steps, warmup=self.warmup,
                           schedule=cfg.optim.schedule, decay_at=self.decay_at)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                t_step, data_before = time.perf_counter(), t_data
                for micro in range(accum):
                    x, y = ahead
                    if self.mixup > 0:
                        x, perm, lam = mixup_batch(x, self.mixup, [cfg.seed, step, micro, dist.rank])
                    with self._autocast():
                        logits = self.model(x)
                    if self.mixup > 0:
                        loss = self._mixed_loss(logits, y, perm, lam)
                    else:
                        loss = self._loss(logits, y)
                    loss_host[micro].copy_(loss.detach().float(), non_blocking=True)
                    if forward_done is not None:
                        forward_done.record()
                    scaled = loss / accum
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                    ahead = fetch()
                if forward_done is not None:
                    forward_done.synchronize()       # the last forward pass, not the backward passes after it
                losses = loss_host.tolist()
                for v in losses:
                    if not np.isfinite(v):
                        raise FloatingPointError(f"non-finite loss ({v}) at step {step}, rank {dist.rank}")
                loss_sum = sum(losses)
                dist.step(self.model, self.opt, self.scaler, cfg.optim.grad_clip)
                t_comp += time.perf_counter() - t_step - (t_data - data_before)
                step += 1
                samples += self.global_batch
                n_timed += 1
                if dist.is_primary and (step % cfg.log_every == 0 or step == self.steps):
                    now = time.perf_counter()
                    ips = n_timed * self.global_batch / max(1e-9, now - t_last)
                    writer.add_scalar("train/loss", loss_sum / accum, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/img_per_s", ips, step)
                    writer.add_scalar("train/data_time_frac", t_data / max(1e-9, t_data + t_comp), step)
                if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < self.steps:
                    self.save(step, samples)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < self.steps:
                    m = self.evaluate(step, final=False)
                    with dist.phase():
                        if dist.is_primary:
                            self._log_eval(writer, m, step, results, samples, 0.0, final=False)
            if stop_sum is not None:
                stop_sum()             # a signal during the last step: the run is complete anyway
            elapsed = time.perf_counter() - t_last
            img_per_s = n_timed * self.global_batch / max(1e-9, elapsed) if n_timed else 0.0
            self.save(step, samples)
            metrics = self.evaluate(step)
            metrics["ranks_in_sync"] = self.ranks_in_sync()
            with dist.phase():
                if dist.is_primary:
                    row = self._log_eval(writer, metrics, step, results, samples, img_per_s, final=True)
                    self.record.finish(row)
                    print(f"[{self.run_dir.name}] done at step {step}: " + ", ".join(
                        f"{k} {metrics[k]:.4f}" for k in ("accuracy", "balanced_accuracy", "auc")
                        if isinstance(metrics.get(k), float)) + f"; {img_per_s:.1f} img/s", flush=True)
        finally:
            if sync_debug:
                torch.cuda.set_sync_debug_mode(0)
            if writer is not None:
                writer.close()
            if hasattr(loader, "close"):
                loader.close()             # its worker processes end now, also after an error
        return metrics

    def ranks_in_sync(self) -> bool:
        """True when every rank holds bit-identical parameters and buffers (compares per-rank checksums)."""
        with torch.no_grad():
            flat = torch.cat([p.detach().double().reshape(-1).cpu()
                              for p in [*self.model.parameters(), *self.model.buffers()]])
            w = torch.arange(1, flat.numel() + 1, dtype=torch.float64).remainder_(97).add_(1)
            sums = np.array([[flat.sum().item(), (flat * flat).sum().item(), (flat * w).sum().item()]])
        allv = self.dist.allgather(sums)
        return bool(np.all(allv == allv[0]))

    def _log_eval(self, writer, m, step, results, samples, img_per_s, final) -> dict:
        for k, v in m.items():
            if isinstance(v, float) and np.isfinite(v) and "/" not in k and not k.endswith(("_lo", "_hi")):
                writer.add_scalar(f"eval/{k}", v, step)
        row = self.result_row(m, step, samples, img_per_s, final)
        append_row(results, row)
        return row
