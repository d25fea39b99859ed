"""Run under a launcher with 2+ ranks: Horovod allreduce / broadcast / allgather; each rank writes what it got."""
import json
import os
import sys

import torch
import horovod.torch as hvd


def main(out_dir):
    hvd.init()
    r, n = hvd.rank(), hvd.size()
    x = torch.tensor([float(r + 1), 10.0 * (r + 1)])
    summed = hvd.allreduce(x, op=hvd.Sum, name="sum")
    avg = hvd.allreduce(x, op=hvd.Average, name="avg")
    b = torch.full((3,), float(100 + r))
    hvd.broadcast_(b, root_rank=0, name="bcast")
    g = hvd.allgather(torch.tensor([[float(r)]]), name="gather")
    res = {"rank": r, "size": n, "local_rank": hvd.local_rank(), "sum": summed.tolist(), "avg": avg.tolist(),
           "bcast": b.tolist(), "gather": g.flatten().tolist(),
           "controller": "mpi" if hvd.mpi_enabled() else "gloo", "gloo_built": hvd.gloo_built(),
           "mpi_built": hvd.mpi_built()}
    with open(os.path.join(out_dir, f"rank{r}.json"), "w") as f:
        json.dump(res, f)
    hvd.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
