"""One training engine for pre-training and every transfer regime.

Horovod's steps, in order (each marked ``# Horovod:``): init and device pinning happen in ``dist.init``;
data is sharded by global rank (covidnetx.data.sampling); the LR is scaled by the global batch with a
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
import functools
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
from covidnetx.data.loader import make_loader
from covidnetx.data.transforms import Preprocess, normalize
from covidnetx.dist import to_device
from covidnetx.eval.metrics import all_metrics, bootstrap_ci, confusion, from_confusion
from covidnetx.models import count_params, create_model, flops_per_sample, load_state, load_weights
from covidnetx.results import ResultRow, append_row
from covidnetx.record import RunDir
from covidnetx.train.schedule import resolve_run
from covidnetx.utils import UserError, set_stop_check

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
            set_stop_check(lambda: self.requested)       # long start-up loops (checksums) look too
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            for s, h in self._old.items():
                signal.signal(s, h)
            set_stop_check(lambda: False)


STOP = StopSignals()


@functools.lru_cache(maxsize=None)
def git_sha() -> str:
    """The checkout's commit, asked of git once per process (every result row carries it)."""
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


def balanced_class_weights(labels, class_names) -> torch.Tensor:
    """Cross-entropy weights n / (classes x count) from the training labels, so that every class weighs
    alike in the loss as in balanced accuracy; a class absent from the training set is an error."""
    n_classes = len(class_names)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)[:n_classes]
    if (counts == 0).any():
        raise UserError("config key 'class_weights': balanced needs every class in the training set; it has "
                        f"no '{class_names[int(np.flatnonzero(counts == 0)[0])]}'")
    return torch.tensor(counts.sum() / (n_classes * counts), dtype=torch.float32)


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
    per_rank = -(-len(view) // dist.size)
    n_batches = -(-per_rank // cfg.optim.batch_size)
    progress = Progress(f"evaluate {cfg.data.eval_split or 'split'}", n_batches, cfg.optim.batch_size * dist.size,
                        cfg.progress_s, unit="batch") if dist.is_primary else None
    with torch.no_grad():
        for i, b in enumerate(loader, 1):
            if progress is not None:
                progress.step(i)
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
               flops_fwd: int, img_per_s: float, mixup: float, final: bool) -> ResultRow:
    """One row of the results table (the engine's and the linear probe's): what ran, on what, and how it
    scored; the metrics dict is merged in last."""
    im = meta.get("init_meta") or {}
    measures = meta.get("measures") or {}
    fields = dict(
        run_id=cfg.run_name, task=cfg.task, model=cfg.model.name, params=params,
        trainable_params=trainable_params, source=meta.get("source"),
        source_fraction=meta.get("source_fraction"), target=meta.get("target"),
        regime=cfg.regime if cfg.task == "transfer" else "pretrain", shots=meta.get("shots"),
        seed=cfg.seed, pretrain_seed=im.get("seed"), world_size=dist.size, global_batch=global_batch,
        steps=steps, total_steps=total_steps, samples_seen=samples_seen, train_size=train_size,
        epochs=samples_seen / train_size if train_size else None,
        flops=float(flops), flops_per_sample_fwd=flops_fwd,
        pretrain_flops=im.get("flops"), pretrain_steps=im.get("steps"),
        pretrain_train_size=im.get("train_size"), pretrain_epochs=im.get("epochs"),
        source_domain=meta.get("source_domain"), target_domain=cfg.target_domain or None,
        domain_pair=meta.get("domain_pair"), img_per_s=float(img_per_s), precision=cfg.precision,
        mixup=float(mixup), loader=cfg.data.loader, backend=dist.backend, eval_split=cfg.data.eval_split,
        git_sha=git_sha(), config_hash=C.config_hash(cfg), final=final, time=time.time(),
        align_ref=measures.get("align_ref"), align_norm=measures.get("align_norm"), logme=measures.get("logme"))
    for k in ("n", "n_classes", "accuracy", "balanced_accuracy", "auc", "ap"):
        fields[k] = metrics.get(k)
    fields.update({k: v for k, v in metrics.items() if k not in fields and k != "schema"})
    return ResultRow.build(**fields)


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
                state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "step": step,
                         "samples_seen": samples_seen, "class_names": self.class_names, "config": C.dump(self.cfg),
                         "scaler": self.scaler.state_dict() if self.scaler else None,
                         "meta": checkpoint_meta(self, step, samples_seen)}
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
                from torch.utils.tensorboard import SummaryWriter
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
                row = self._log_eval(writer, metrics, step, samples, img_per_s, final=True)
                self.record.finish(row)
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
        append_row(self.cfg.results or str(Path(self.cfg.out_dir) / "results.jsonl"), row)
        return row


class Progress:
    """The console line of a long phase, on rank 0 (the caller's test): step / total, loss, images/s over
    the run so far and the ETA, at most every ``every_s`` seconds (0: at each call); plain lines (no carriage returns), so a Slurm output file shows a slow job from a hung one."""

    def __init__(self, name: str, total: int, batch: int, every_s: float, start: int = 0, unit: str = "step"):
        self.name, self.total, self.batch, self.every_s, self.unit = name, total, batch, every_s, unit
        self.t0 = self.t_last = time.perf_counter()
        self.start = self.last_step = start

    def line(self, step: int, loss, now: float) -> str:
        ips = (step - self.start) * self.batch / max(1e-9, now - self.t0)
        eta = (self.total - step) * self.batch / ips if ips > 0 else float("nan")
        eta_s = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "?"
        return (f"[{self.name}] {self.unit} {step}/{self.total} ({100 * step / max(1, self.total):.0f}%)"
                + (f" loss {loss:.4f}," if loss is not None else ",") + f" {ips:,.0f} img/s, ETA {eta_s}")

    def step(self, step: int, loss=None) -> None:
        now = time.perf_counter()
        if now - self.t_last >= self.every_s:
            print(self.line(step, loss, now), flush=True)
            self.t_last, self.last_step = now, step


def checkpoint_meta(t: Trainer, step: int, samples_seen: int) -> dict:
    """What a checkpoint says of its run (read by transfer runs initialised from it, and by reports)."""
    cfg, n = t.cfg, len(t.train_view)
    return {"model": cfg.model.name, "params": count_params(t.model), "seed": cfg.seed,
            "epochs": samples_seen / n if n else None, "source": t.meta.get("source"),
            "source_fraction": t.meta.get("source_fraction"), "steps": step, "samples_seen": samples_seen,
            "flops": 3 * t.flops_fwd * samples_seen, "classes": t.class_names, "train_size": n,
            "source_dirs": list(cfg.data.sources), "source_split": cfg.data.eval_split or cfg.data.train_split,
            "domain": cfg.source_domain, "label_space": cfg.data.label_space, "rename": dict(cfg.data.rename)}


def ranks_in_sync(model: nn.Module, dist) -> bool:
    """True when every rank holds bit-identical parameters and buffers (compares per-rank checksums)."""
    with torch.no_grad():
        flat = torch.cat([p.detach().double().reshape(-1).cpu() for p in [*model.parameters(), *model.buffers()]])
        w = torch.arange(1, flat.numel() + 1, dtype=torch.float64).remainder_(97).add_(1)
        sums = np.array([[flat.sum().item(), (flat * flat).sum().item(), (flat * w).sum().item()]])
    allv = dist.allgather(sums)
    return bool(np.all(allv == allv[0]))


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
