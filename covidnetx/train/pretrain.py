"""`covidnetx pretrain --config F [key=value ...]`: pre-train a model on a packed source (mixture)."""
import sys
from functools import partial

from covidnetx.train import tasks

build_parser = partial(tasks.build_parser, task="pretrain")
run = tasks.run
main = tasks.main_pretrain

if __name__ == "__main__":
    sys.exit(main())
