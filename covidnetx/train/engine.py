"""One training engine for pre-training and every transfer regime.

Horovod's steps, in order (each marked ``# Horovod:``): init and device pinning happen in ``dist.init``;
data is sharded by global rank (covidnetx.data.sampling); the LR is scaled by the global batch with a
linear warmup; parameters and optimizer state (a resumed one; loaded before) are broadcast from rank 0;
the optimizer is wrapped in DistributedOptimizer, which keeps that state. Only rank 0 writes
(TensorBoard, checkpoints, results); all ranks meet after checkpoints and evaluations.

Resume order: this run's own directory (last.ckpt) -> an explicit ``resume`` checkpoint -> ``init_from``
(weights only, head dropped) -> scratch. On SIGUSR1/SIGTERM (see launch.StopSignals) the ranks agree one step
later through a sum of stop flags that overlaps the step, rank 0 saves, and the process exits with
EXIT_REQUEUE so the job script can requeue.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from covidnetx import config as C
from covidnetx.data.loader import make_loader
from covidnetx.data.transforms import Preprocess, normalize
from covidnetx.dist import autocast, to_device
from covidnetx.eval.evaluator import evaluate_model, ranks_in_sync
from covidnetx.eval.rows import result_row
from covidnetx.launch import STOP, Interrupted
from covidnetx.models import count_params, create_model, flops_per_sample, load_state, load_weights
from covidnetx.rundir import RunDir, checkpoint, results_path
from covidnetx.train.schedule import resolve_run
from covidnetx.utils import Progress, UserError


def masked_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    known = ~torch.isnan(target)
    if not known.any():
        return logits.sum() * 0.0
    return nn.functional.binary_cross_entropy_with_logits(logits[known], target[known].float())


def balanced_class_weights(labels, class_names) -> torch.Tensor:
    """Cross-entropy weights n / (classes x count) from the training labels, so that every class weighs
    alike in the loss as in balanced accuracy; a class absent from the training set is an error."""
    n_classes = len(class_names)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)[:n_classes]
    if (counts == 0).any():
        raise UserError("config key 'class_weights': balanced needs every class in the training set; it has "
                        f"no '{class_names[int(np.flatnonzero(counts == 0)[0])]}'")
    return torch.tensor(counts.sum() / (n_classes * counts), dtype=torch.float32)


def mixup_batch(x: torch.Tensor, alpha: float, key: list) -> tuple:
    """MixUp (Zhang et al.; BiT-HyperRule uses alpha 0.1 from 20k examples on): x' = lam x + (1 - lam)
    x[perm], lam ~ Beta(alpha, alpha). Drawn from a generator keyed by ``key`` (seed, step, micro-batch,
    rank), so a resumed run mixes exactly as an uninterrupted one and ranks mix differently. Returns
    (mixed x, perm as a tensor on x's device, lam)."""
    rng = np.random.default_rng([int(k) for k in key] + [0x6D6978])
    lam = float(rng.beta(alpha, alpha))
    perm = to_device(torch.as_tensor(rng.permutation(x.shape[0])), x.device)
    return x.mul(lam).add_(x[perm], alpha=1.0 - lam), perm, lam


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
        self.class_weight = None
        if cfg.class_weights == "balanced":
            if loss != "ce":
                raise UserError("config key 'class_weights': balanced needs the ce loss (multi-class labels)")
            self.class_weight = balanced_class_weights(train_view.labels, self.class_names).to(self.device)
        # Horovod: scale the learning rate by the global batch (i.e. by the number of ranks), with warmup;
        # from here on the config holds the resolved schedule (it is what config.yaml and checkpoints save)
        self.cfg, self.sched = resolve_run(cfg, len(train_view), dist.size)
        self.steps, self.global_batch, self.mixup = self.sched.steps, self.sched.global_batch, self.sched.mixup
        self.pp = Preprocess.from_config(cfg.data)

    # ------------------------------------------------------------------------------------------------
    def _build(self):
        cfg, dist = self.cfg, self.dist
        with dist.phase():          # every rank reads the checkpoints; any failure stops all of them
            torch.manual_seed(cfg.seed)
            model = create_model(cfg.model.name, len(self.class_names))
            self.flops_fwd = flops_per_sample(model, cfg.data.image_size)
            start = 0
            state, how = self.record.resume_from(cfg.resume)
            if state is None and cfg.model.init_from:
                ck = load_weights(model, cfg.model.init_from, drop_head=cfg.model.drop_head)
                how = f"initialised from {ck['report']} (head {'dropped' if cfg.model.drop_head else 'kept'})"
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
                opt = torch.optim.SGD(params, lr=self.sched.base_lr, momentum=o.momentum, weight_decay=o.weight_decay)
            else:
                opt = torch.optim.AdamW(params, lr=self.sched.base_lr, weight_decay=o.weight_decay)
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

    def _loss(self, logits, y):
        if self.loss_name == "bce":
            return masked_bce(logits.float(), y.to(logits.device))
        return nn.functional.cross_entropy(logits.float(), y.to(logits.device), weight=self.class_weight)

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
                state = checkpoint(model=self.model.state_dict(), class_names=self.class_names,
                                   config=C.dump(self.cfg), meta=checkpoint_meta(self, step, samples_seen), step=step,
                                   samples_seen=samples_seen, optimizer=self.opt.state_dict(),
                                   scaler=self.scaler.state_dict() if self.scaler else None)
                self.record.save(state, step=step, total_steps=self.steps, samples_seen=samples_seen)

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

    def fit(self) -> dict:
        with STOP:                 # a no-op inside run_configs, which holds the handlers for all its runs
            return self._fit()

    def _fit(self) -> dict:
        cfg, dist = self.cfg, self.dist
        with dist.phase():
            self.record.check_resolved(cfg)
        self._build()                # weights and checkpoints read first: a run that cannot start leaves no trace
        with dist.phase():
            if dist.is_primary:
                self.record.write_config(C.dump(cfg))
        writer = None
        with dist.phase():
            if dist.is_primary:
                from torch.utils.tensorboard import SummaryWriter  # lazy: heavy, TensorBoard's writer, rank 0 only
                writer = SummaryWriter(str(self.record.tb), purge_step=self.start_step or None)
        if dist.is_primary:
            print(f"[{self.run_dir.name}] {self.how}; {len(self.train_view)} train samples, {self.steps} steps, "
                  f"global batch {self.global_batch}, lr {self.sched.base_lr:.4g}"
                  f"{f', mixup {self.mixup:g}' if self.mixup > 0 else ''}, {dist.size} rank(s), "
                  f"{count_params(self.model)} params", flush=True)
        # COVIDNETX_CUDA_SYNC_DEBUG=warn|error: torch flags every operation in the training loop that makes
        # the host wait for the GPU (the step should have none; Horovod's wait for the allreduce is not a
        # torch operation)
        sync_debug = os.environ.get("COVIDNETX_CUDA_SYNC_DEBUG", "") if self.device.type == "cuda" else ""
        batches = None
        try:
            accum = cfg.optim.accum_steps
            loader = make_loader(cfg.data.loader, self.train_view, self.pp, cfg.optim.batch_size, cfg.seed,
                                 dist.rank, dist.size, workers=cfg.data.workers, train=True,
                                 start_step=self.start_step * accum, steps=(self.steps - self.start_step) * accum,
                                 device=cfg.data.device, torch_device=self.device)
            batches = DeviceBatches(loader, (self.steps - self.start_step) * accum, self.pp, self.device)
            batches.advance()
            if sync_debug:
                torch.cuda.set_sync_debug_mode(sync_debug)
            step, samples, img_per_s = self._train(batches, writer)
            return self._finish(step, samples, img_per_s, writer)
        finally:
            if sync_debug:
                torch.cuda.set_sync_debug_mode(0)
            if writer is not None:
                writer.close()
            if batches is not None:
                batches.close()            # the loader's worker processes end now, also after an error

    def _train(self, batches: "DeviceBatches", writer) -> tuple:
        """The training loop from ``start_step`` to the end: (step, samples seen, img/s)."""
        cfg, dist = self.cfg, self.dist
        step, samples = self.start_step, self.samples_before
        self.model.train()
        # the losses reach the host by an asynchronous copy that is waited for only after the next batch is
        # fetched: no host synchronisation between forward and backward (on a GPU a .item() or a bool() of
        # the loss would stall the CPU until the device is idle); a non-finite loss still stops the step
        # before the optimizer applies it
        cuda = self.device.type == "cuda"
        loss_host = torch.zeros(cfg.optim.accum_steps, dtype=torch.float32, pin_memory=cuda)
        forward_done = torch.cuda.Event() if cuda else None
        t_comp, n_timed, t_last = 0.0, 0, time.perf_counter()
        # throughput excludes the first steps (lazy init, autotuning) when the run is long enough
        warm_until = step + min(5, (self.steps - step) // 4)
        stop_sum = None            # the ranks' stop flags, summed while the previous step ran
        progress = Progress(self.run_dir.name, self.steps, self.global_batch, cfg.progress_s, step)
        while step < self.steps:
            if step == warm_until:
                t_last, n_timed = time.perf_counter(), 0
            if stop_sum is not None and stop_sum()[0] > 0:
                self.save(step, samples)
                raise Interrupted(step)
            stop_sum = self._stop_flag()
            lr = self.sched.lr(step, cfg.optim.schedule)
            for g in self.opt.param_groups:
                g["lr"] = lr
            t_step, data_before = time.perf_counter(), batches.data_time
            loss = self._step(step, batches, loss_host, forward_done)
            t_comp += time.perf_counter() - t_step - (batches.data_time - data_before)
            step += 1
            samples += self.global_batch
            n_timed += 1
            if dist.is_primary and (step % cfg.log_every == 0 or step == self.steps):
                ips = n_timed * self.global_batch / max(1e-9, time.perf_counter() - t_last)
                for tag, v in (("loss", loss), ("lr", lr), ("img_per_s", ips),
                               ("data_time_frac", batches.data_time / max(1e-9, batches.data_time + t_comp))):
                    writer.add_scalar(f"train/{tag}", v, step)
                progress.step(step, loss)
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < self.steps:
                self.save(step, samples)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < self.steps:
                m = self.evaluate(step, final=False)
                with dist.phase():
                    if dist.is_primary:
                        self._log_eval(writer, m, step, samples, 0.0, final=False)
        if stop_sum is not None:
            stop_sum()             # a signal during the last step: the run is complete anyway
        elapsed = time.perf_counter() - t_last
        return step, samples, (n_timed * self.global_batch / max(1e-9, elapsed) if n_timed else 0.0)

    def _step(self, step: int, batches: "DeviceBatches", loss_host, forward_done) -> float:
        """One optimizer step over ``accum_steps`` micro-batches; the mean loss."""
        cfg, accum = self.cfg, self.cfg.optim.accum_steps
        for micro in range(accum):
            x, y = batches.current
            if self.mixup > 0:
                x, perm, lam = mixup_batch(x, self.mixup, [cfg.seed, step, micro, self.dist.rank])
            with autocast(cfg.precision, self.device):
                logits = self.model(x)
            loss = self._mixed_loss(logits, y, perm, lam) if self.mixup > 0 else self._loss(logits, y)
            loss_host[micro].copy_(loss.detach().float(), non_blocking=True)
            if forward_done is not None:
                forward_done.record()
            scaled = loss / accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            batches.advance()          # while the device still runs this backward pass
        if forward_done is not None:
            forward_done.synchronize()       # the last forward pass, not the backward passes after it
        losses = loss_host.tolist()
        for v in losses:
            if not np.isfinite(v):
                raise FloatingPointError(f"non-finite loss ({v}) at step {step}, rank {self.dist.rank}")
        self.dist.step(self.model, self.opt, self.scaler, cfg.optim.grad_clip)
        return sum(losses) / accum

    def _finish(self, step: int, samples: int, img_per_s: float, writer) -> dict:
        """The last checkpoint, the final evaluation, the result row and done.json."""
        dist = self.dist
        self.save(step, samples)
        metrics = self.evaluate(step)
        metrics["ranks_in_sync"] = ranks_in_sync(self.model, dist)
        with dist.phase():
            if dist.is_primary:
                self._log_eval(writer, metrics, step, samples, img_per_s, final=True)    # the row, then done.json
                print(f"[{self.run_dir.name}] done at step {step}: " + ", ".join(
                    f"{k} {metrics[k]:.4f}" for k in ("accuracy", "balanced_accuracy", "auc")
                    if isinstance(metrics.get(k), float)) + f"; {img_per_s:.1f} img/s", flush=True)
        return metrics

    def _log_eval(self, writer, m, step, samples, img_per_s, final) -> dict:
        for k, v in m.items():
            if isinstance(v, float) and np.isfinite(v) and "/" not in k and not k.endswith(("_lo", "_hi")):
                writer.add_scalar(f"eval/{k}", v, step)
        row = result_row(self.cfg, self.dist, self.meta, m, params=count_params(self.model),
                         trainable_params=count_params(self.model, trainable_only=True),
                         train_size=len(self.train_view), steps=step, total_steps=self.steps, samples_seen=samples,
                         global_batch=self.global_batch, flops=3 * self.flops_fwd * samples,
                         flops_fwd=self.flops_fwd, img_per_s=img_per_s, mixup=self.mixup, final=final)
        self.record.publish(row, results_path(self.cfg))
        return row


def checkpoint_meta(t: Trainer, step: int, samples_seen: int) -> dict:
    """What a checkpoint says of its run (read by transfer runs initialised from it, and by reports)."""
    cfg, n = t.cfg, len(t.train_view)
    return {"model": cfg.model.name, "params": count_params(t.model), "seed": cfg.seed,
            "epochs": samples_seen / n if n else None, "source": t.meta.get("source"),
            "source_fraction": t.meta.get("source_fraction"), "steps": step, "samples_seen": samples_seen,
            "flops": 3 * t.flops_fwd * samples_seen, "classes": t.class_names, "train_size": n,
            "source_dirs": list(cfg.data.sources), "source_split": cfg.data.eval_split or cfg.data.train_split,
            "domain": cfg.source_domain, "label_space": cfg.data.label_space, "rename": dict(cfg.data.rename)}


class DeviceBatches:
    """The training batches on the device, one ahead of the step that uses them: ``advance`` is called
    while the device still runs the previous backward pass, so on a GPU loading overlaps compute.
    ``data_time`` is the host time spent waiting for batches."""

    def __init__(self, loader, n: int, pp: Preprocess, device: torch.device):
        self.loader, self.remaining, self.pp, self.device = loader, n, pp, device
        self.data_time = 0.0
        self.current = None         # call advance() for the first batch

    def advance(self) -> None:
        if self.remaining == 0:
            self.current = None
            return
        self.remaining -= 1
        t0 = time.perf_counter()
        b = next(self.loader)
        self.current = normalize(b["image"], self.pp, self.device), to_device(b["label"], self.device)
        self.data_time += time.perf_counter() - t0

    def close(self) -> None:
        if hasattr(self.loader, "close"):
            self.loader.close()
