"""`covidnetx transfer --config F regime=full|linear|fewshot [key=value ...]`: transfer to a target."""
from functools import partial

from covidnetx.train import runner as tasks

build_parser = partial(tasks.build_parser, task="transfer")
run = tasks.run
