"""`covidnetx <subcommand>`: the one entry point and the one ``main``. Every subcommand's module exports
``build_parser(parser)`` and ``run(args)``; errors are formatted here (a ``UserError`` is one line and
exit 2, Ctrl-C one line and exit 130)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from covidnetx import __version__
from covidnetx.utils import UserError

# name -> (module, help); modules are imported only when their subcommand runs
SUBCOMMANDS = {
    "pack": ("data_tools.pack", "pack a raw dataset into verified HDF5 shards (parallel under mpirun)"),
    "verify": ("data_tools.verify", "recompute checksums/counts of a packed dataset; check patient-disjoint splits"),
    "inspect": ("data_tools.inspect", "show a packed dataset's index, sample rows, and a mixture/few-shot selection"),
    "generate": ("data_tools.generate", "write the built-in synthetic multi-domain raw datasets"),
    "pretrain": ("covidnetx.train.pretrain", "pre-train a model on a packed source (Horovod / torch.distributed / single)"),
    "transfer": ("covidnetx.train.transfer", "transfer to a packed target: full fine-tune, linear probe or few-shot"),
    "evaluate": ("covidnetx.eval.evaluatecmd", "evaluate a saved checkpoint on a packed split (exact under any launcher)"),
    "runs": ("covidnetx.train.runs", "run several resolved configs in one launcher invocation (a sweep stage)"),
    "sweep": ("covidnetx.sweep", "expand a sweep file into runs; execute locally or as a chain of Slurm jobs"),
    "fit": ("covidnetx.scaling.fitcmd", "fit scaling laws to a results table or CSV (refuses what the data cannot support)"),
    "report": ("covidnetx.scaling.report", "write the Markdown report: tables, fits, plots"),
    "launch-check": ("covidnetx.launch_check", "what every rank of a launch sees (node, local rank, GPU) and a checked allreduce"),
    "bench": ("covidnetx.bench", "run a benchmark from benchmarks/ (pack, loader, train, allreduce, scaling, project, probe, gpu_check)"),
    "study": ("covidnetx.study", "a whole transfer-scaling study from a preset (synthetic, real images, demo)"),
    "demo": ("covidnetx.demo", "the main job: the demo study on built-in generated data"),
    "baseline": ("covidnetx.baseline", "reproduce MedMNIST v2's PneumoniaMNIST ResNet-18 baseline on kermany-small"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, just that subcommand's module is imported (fast start-up: packing
    never imports torch)."""

    p = argparse.ArgumentParser(prog="covidnetx", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"covidnetx {__version__}")
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for name, (mod, help_) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        if only is None or name == only:
            m = importlib.import_module(mod)
            m.build_parser(sp)
            sp.set_defaults(func=m.run)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv and argv[0] in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"covidnetx {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C (SIGINT) in any phase: one line, no traceback; nothing half-written (files are written
        # atomically). SIGTERM/SIGUSR1 instead end a training run in a checkpoint and exit 75.
        print(f"\ncovidnetx {args.command}: interrupted (SIGINT)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`covidnetx inspect DATA | head -1`): end quietly, as Unix tools do; stdout
        # goes to /dev/null so that the interpreter's final flush does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
