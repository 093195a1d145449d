"""All-reduce time of a model's flat gradient buffer, and the data-parallel step time.

    mpiexec -n 2 python benchmarks/bench_allreduce.py               # 1.6 MiB all-reduce
    mpiexec -n 2 python benchmarks/bench_allreduce.py --step 1000   # + a step at global B=1000

The buffer is the gradient of the IWAE paper's one-stochastic-layer MNIST model (784-200-200-50,
Burda et al. 2016): 425,284 float32 values, 1.62 MiB, reduced in place through
``FlatGradients.allreduce`` (the path training takes). Rank 0 prints the median, min and 90th
percentile over ``--reps`` timed calls after ``--warmup`` untimed ones, with the algorithmic
bandwidth (bytes / time) and the bus bandwidth (``2 (P - 1) / P`` bytes / time, what a ring
moves per link). With ``--step B`` it also times one data-parallel IWAE step (K=50, DReG) on a
global batch of B rows: each rank's forward/backward on its B/P rows, the all-reduce and the Adam
step; run it at -n 1 and -n 2 to see the scaling. Not a timed test: numbers depend on the machine.
"""

import argparse
import time

import numpy as np

from lvmcore.backend import engine_kernel_threads
from lvmcore.distributed import FlatGradients, MPICommunicator, shard_rows
from lvmcore.models import IWAE
from lvmcore.optim import Adam


def _stats(comm, seconds):
    """Per call: the slowest rank's time of each repetition (what a step waits for)."""
    worst = np.max(np.array(comm.allgather(seconds)), axis=0)
    return np.median(worst), worst.min(), np.percentile(worst, 90)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--step", type=int, default=0, metavar="B", help="also time a step at B")
    args = ap.parse_args()

    comm = MPICommunicator()
    P = comm.size
    model = IWAE(784, 50, (200, 200), k=50, estimator="dreg", dtype=np.dtype(args.dtype))
    flat = FlatGradients.bind(model)
    nbytes = flat.buffer.nbytes
    times = []
    for i in range(args.warmup + args.reps):
        comm.barrier()
        t0 = time.perf_counter()
        flat.allreduce(comm)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    med, low, p90 = _stats(comm, times)
    if comm.is_root:
        print(
            f"all-reduce of {flat.buffer.size} {args.dtype} ({nbytes / 2**20:.2f} MiB), P={P}: "
            f"median {med * 1e6:.0f} us (min {low * 1e6:.0f}, p90 {p90 * 1e6:.0f}); "
            f"algorithmic {nbytes / med / 1e9:.2f} GB/s, "
            f"bus {2 * (P - 1) / P * nbytes / med / 1e9:.2f} GB/s"
        )
    if args.step:
        x = (np.random.default_rng(0).random((args.step, 784)) < 0.3).astype(model.dtype)
        opt = Adam(model.parameters(), model.gradients(), lr=1e-3)
        start, stop = shard_rows(args.step, comm.rank, P)
        compute, total = [], []
        for i in range(3 + 10):
            rng = np.random.default_rng([0, 1, i, 1])
            comm.barrier()
            t0 = time.perf_counter()
            with engine_kernel_threads():
                eps = model.draw_noise(rng, args.step)
                model.zero_grad()
                _, cache = model.forward(x[start:stop], np.ascontiguousarray(eps[:, start:stop]))
                model.backward(cache)
            t1 = time.perf_counter()
            flat.allreduce(comm, scale=(stop - start) / args.step)
            opt.step()
            if i >= 3:
                compute.append(t1 - t0)
                total.append(time.perf_counter() - t0)
        c, _, _ = _stats(comm, compute)
        s, _, _ = _stats(comm, total)
        if comm.is_root:
            print(
                f"IWAE step, K=50, global batch {args.step}, P={P} ({args.step // P} rows per "
                f"rank): {s * 1e3:.1f} ms, of which forward/backward {c * 1e3:.1f} ms"
            )


if __name__ == "__main__":
    main()
