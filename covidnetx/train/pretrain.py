"""`covidnetx pretrain --config F [key=value ...]`: pre-train a model on a packed source (mixture)."""
from functools import partial

from covidnetx.train import runner as tasks

build_parser = partial(tasks.build_parser, task="pretrain")
run = tasks.run
