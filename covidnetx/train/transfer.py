"""`covidnetx transfer --config F regime=full|linear|fewshot [key=value ...]`: transfer to a target."""
import sys
from functools import partial

from covidnetx.train import tasks

build_parser = partial(tasks.build_parser, task="transfer")
run = tasks.run
main = tasks.main_transfer

if __name__ == "__main__":
    sys.exit(main())
