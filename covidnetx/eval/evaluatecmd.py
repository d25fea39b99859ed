"""`covidnetx evaluate CKPT [key=value ...]`: evaluate a saved checkpoint on a packed split.

The checkpoint's own resolved config is the base; overrides change what is evaluated, e.g.
``data.sources=[packed/other-hospital] data.eval_split=test``. The evaluation is the training engine's
(exact under any launcher and rank count), so a run's final row and this command agree on its data.
Prints one JSON object of metrics; ``--out FILE`` also writes it (atomically).

Exit codes: 0 done, 2 bad checkpoint, config or data (one message naming it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from covidnetx import config as C
from covidnetx import dist as D
from covidnetx.data.compose import Mixture
from covidnetx.data.transforms import Preprocess
from covidnetx.data.views import check_sources, packed
from covidnetx.dist import end_on_error, set_threads
from covidnetx.eval.evaluator import evaluate_model
from covidnetx.models import create_model, load_state
from covidnetx.results import json_safe
from covidnetx.rundir import read_checkpoint
from covidnetx.utils import UserError, atomic_write_json, read_yaml

SUMMARY = ("n", "accuracy", "balanced_accuracy", "auc", "ap")


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="covidnetx evaluate", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="a covidnetx checkpoint (e.g. runs/NAME/last.ckpt)")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the checkpoint's config, e.g. "
                                                "data.sources=[packed/cxr] data.eval_split=test backend=horovod")
    p.add_argument("--out", default=None, help="also write the metrics to this JSON file")
    return p


def run(args) -> int:

    ck = read_checkpoint(args.checkpoint)
    cfg = C.load_config(overrides=list(args.overrides), base=read_yaml(ck["config"], f"{args.checkpoint}: its config"))
    if not cfg.data.eval_split:
        raise UserError("config key 'data.eval_split' is empty: name the split to evaluate (e.g. data.eval_split=test)")
    check_sources(cfg)
    view = Mixture([packed(cfg, s, cfg.data.eval_split) for s in cfg.data.sources], cfg.data.label_space,
                   1.0, 0, cfg.data.rename)
    if list(view.class_names) != list(ck["class_names"]):
        raise UserError(f"the data's classes {list(view.class_names)} differ from the checkpoint's "
                        f"{list(ck['class_names'])} (config keys data.label_space / data.rename map them)")
    set_threads(cfg)
    dist = D.init(cfg.backend, "cuda" if cfg.data.device == "gpu" else "auto")
    try:
        with dist.phase():
            model = create_model(cfg.model.name, len(ck["class_names"]))
            load_state(model, ck["model"], args.checkpoint)
            model.to(dist.device)
            pp = Preprocess.from_config(cfg.data, augment=False)
        metrics = evaluate_model(model, view, cfg, dist, pp)
        with dist.phase():
            if dist.is_primary:
                out = {"checkpoint": str(Path(args.checkpoint).resolve()), "step": ck.get("step"),
                       "model": cfg.model.name, "sources": list(cfg.data.sources), "split": cfg.data.eval_split,
                       "world_size": dist.size, **metrics}
                out = json_safe(out)          # undefined metrics (a class never predicted: PPV) are null
                if args.out:
                    atomic_write_json(args.out, out)
                print(json.dumps(out, sort_keys=True, allow_nan=False))
                print("covidnetx evaluate: " + ", ".join(f"{k} {metrics[k]:.4f}" if isinstance(metrics.get(k), float)
                                                         else f"{k} {metrics.get(k)}" for k in SUMMARY),
                      file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - on one rank alone the others would wait in a collective
        return end_on_error(dist, "evaluate", e)
    finally:
        dist.shutdown()
    return 0
