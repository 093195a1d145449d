"""Time lvmcore's kernels and training steps beside the peers a user would otherwise run.

    python benchmarks/compare_peers.py [--threads 2] [--repeat 15] [--only NAME,...]
                                       [--clock {wall,cpu}]

Peers, each timed only when installed: NumPy, PyTorch CPU (eager, with and without
flush-to-zero, and no_grad for evaluation) and FAISS. Every library runs with the same thread
count, set explicitly (Numba, and BLAS through threadpoolctl; PyTorch in its own process), one
library at a time (their thread pools fight on a small machine); lvmcore's kernels inside a
model step run on ``LVMCORE_KERNEL_THREADS`` (default 1) between the BLAS calls. Prints the
median time of each, the ratio peer / lvmcore, and the fraction of this machine's memory
bandwidth (memory-bound kernels, against a read-only stream and a copy measured in the same run)
or SGEMM rate (search, training steps) that lvmcore reaches.

The bound of each kernel (``benchmarks/benchmarks/machine_bounds.py`` defines and measures
them, on the same threads as the kernels), timed alternately with the kernel, so that a load
spike on a shared machine hits both; the last column is the kernel's fraction of it:

- importance weights, Bernoulli likelihood + gradient: copy bandwidth (they read one array and
  write one), the faster of NumPy's one-thread copy and a Numba prange copy of 256 MiB;
- reparameterized sampling: the normal generator bound, a loop doing per element only what it
  must (a quarter Philox4x32-10 block, half a Box-Muller pair: log, sqrt, sincos) and summing;
- Gumbel-Softmax: the Gumbel generator bound (a quarter Philox block, two logs, one exp and
  the normalization's division per element);
- nearest-code search: the SGEMM rate of x @ E^T alone, the faster of NumPy's chunked matmul
  (timed on its own: OpenBLAS's workers spin for about 0.1 s after a call and would hold the
  kernel's second core) and the kernel's own tiles with the search left out.

Every timing of lvmcore against its bound starts after a pause (``settle``) for the same
reason: a previous row's peers leave spinning worker threads behind.

The bound of a training step and of the K-sample evaluation: the same GEMMs alone
(``benchmarks/benchmarks/gemm_bound.py``: the products of the step, on preallocated arrays, with
nothing else), timed in the same run; "x GEMMs" is the step's time over theirs (1.00 is the
bound). An engine step runs its GEMMs on the count ``LVMCORE_BLAS_THREADS`` chooses, else on
the process's setting, here ``--threads`` (``lvmcore.backend.engine_kernel_threads``), and its
GEMMs alone run on the same split; each row says which. PyTorch runs on ``--threads``.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time

import numpy as np

import lvmcore  # noqa: F401  (first: it may choose OpenBLAS's kernels before NumPy loads)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmarks.gemm_bound import (
    CATVAE_SIZES,
    eval_gemms,
    parameter_shapes,
    step_flops,
    step_gemms,
)

from benchmarks import machine_bounds as mb


def median_ms(fn, repeat, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = mb.CLOCK()
        fn()
        times.append(mb.CLOCK() - t)
    return 1e3 * statistics.median(times)


class Peers:
    def __init__(self, threads):
        self.threads = threads
        import numba
        from threadpoolctl import threadpool_limits

        numba.set_num_threads(threads)
        threadpool_limits(threads)
        self.torch = None
        if importlib.util.find_spec("torch"):
            import torch

            torch.set_num_threads(threads)
            self.torch = torch
        self.faiss = None
        if importlib.util.find_spec("faiss"):
            import faiss

            faiss.omp_set_num_threads(threads)
            self.faiss = faiss


def machine_rates(threads, repeat):
    """Read and copy bandwidth (GB/s, the faster of NumPy on one thread and Numba on
    ``threads``) and the SGEMM rate (GFLOP/s, BLAS on ``threads``), measured now."""
    read, copy, detail = mb.read_copy_gbps(threads, repeat)
    x = np.random.default_rng(0).random((4096, 1024), dtype=np.float32)
    w = np.random.default_rng(1).random((1024, 1024), dtype=np.float32)
    out = np.empty((4096, 1024), np.float32)
    gemm = 2 * 4096 * 1024 * 1024 / (median_ms(lambda: np.matmul(x, w, out=out), repeat) / 1e3)
    return read, copy, gemm / 1e9, detail


def _copy_bound(threads, detail):
    """The faster copy of machine_rates as a timed function, and the bytes it moves."""
    a = np.ones(1 << 26, dtype=np.float32)
    b = np.empty_like(a)
    if detail["copy numba"] >= detail["copy numpy"]:
        return (lambda: mb.copy_parallel(a, b, max(1, threads))), 2 * a.nbytes
    return (lambda: np.copyto(b, a)), 2 * a.nbytes


def row(name, ours_ms, peers, extra=""):
    cells = "  ".join(f"{k} {v:8.2f} ms ({v / ours_ms:5.2f}x)" for k, v in peers.items())
    print(f"{name:<38} lvmcore {ours_ms:8.2f} ms  {cells}  {extra}", flush=True)


def torch_ceiling(peers):
    """The fastest PyTorch time over lvmcore's GEMMs alone: the largest speed-up over PyTorch
    that any step running these GEMMs could reach (its elementwise work made free)."""
    torch_ms = [v for k, v in peers.items() if k.startswith("torch")]
    if not torch_ms:
        return ""
    return f"; PyTorch / GEMMs alone {min(torch_ms) / peers['GEMMs alone']:.2f}x"


def bound_row(name, ours_ms, peers, frac, definition):
    """A kernel row: its time, the peers, and its fraction of the machine bound it is held to."""
    row(name, ours_ms, peers, f"{frac:4.0%} of {definition}")


def bench_importance_weights(P, R, repeat):
    from kernels import importance_weights as iw

    lw = (np.random.default_rng(0).standard_normal((5000, 1000)) * 5).astype(np.float32)
    out = np.empty_like(lw)
    copy, copy_bytes = _copy_bound(P.threads, R[3])
    ours, bound = median_pair(lambda: iw.importance_weights(lw, out), copy, repeat)
    peers = {"numpy": median_ms(lambda: iw.importance_weights_ref(lw, out), max(3, repeat // 3))}
    if P.torch:
        t = P.torch.from_numpy(lw)
        peers["torch"] = median_ms(lambda: (P.torch.logsumexp(t, 0), P.torch.softmax(t, 0)), repeat)
    gbs = 2 * lw.nbytes / (ours / 1e3) / 1e9  # log_w read, weights written
    cbs = copy_bytes / (bound / 1e3) / 1e9
    bound_row(
        "importance weights (5000,1000) f32",
        ours,
        peers,
        gbs / cbs,
        f"copy bandwidth ({gbs:.1f} of {cbs:.1f} GB/s read + written)",
    )
    # in place, as the K-sample evaluation calls it (lvmcore.evaluate): each call turns the
    # previous weights into the next ones, the same work on every call
    work = lw.copy()
    ours, bound = median_pair(lambda: iw.importance_weights(work, work), copy, repeat)
    gbs = 2 * lw.nbytes / (ours / 1e3) / 1e9
    cbs = copy_bytes / (bound / 1e3) / 1e9
    bound_row(
        "  the same, in place",
        ours,
        {},
        gbs / cbs,
        f"copy bandwidth ({gbs:.1f} of {cbs:.1f} GB/s read + written)",
    )


def bench_bernoulli(P, R, repeat):
    from kernels import bernoulli_loglik as bl

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((50000, 784)) * 3).astype(np.float32)
    x = (rng.random((1000, 784)) < 0.13).astype(np.float32)
    grad = np.empty_like(logits)
    copy, copy_bytes = _copy_bound(P.threads, R[3])
    ours, bound = median_pair(lambda: bl.bernoulli_loglik(logits, x, grad), copy, repeat)
    xt = np.tile(x, (50, 1))
    peers = {"numpy": median_ms(lambda: (np.logaddexp(0, logits) - xt * logits).sum(1), 3)}
    if P.torch:
        F = P.torch.nn.functional
        tl, tx = P.torch.from_numpy(logits), P.torch.from_numpy(xt)
        peers["torch"] = median_ms(
            lambda: (
                -F.binary_cross_entropy_with_logits(tl, tx, reduction="none").sum(1),
                tx - P.torch.sigmoid(tl),
            ),
            repeat,
        )
    gbs = 2 * logits.nbytes / (ours / 1e3) / 1e9  # logits read, gradient written
    cbs = copy_bytes / (bound / 1e3) / 1e9
    bound_row(
        "bernoulli loglik+grad (50000,784) f32",
        ours,
        peers,
        gbs / cbs,
        f"copy bandwidth ({gbs:.1f} of {cbs:.1f} GB/s read + written)",
    )


def bench_reparam(P, R, repeat):
    from kernels import reparam_sample as rs

    rng = np.random.default_rng(0)
    mu = rng.standard_normal((100, 50)).astype(np.float32)
    lv = (0.3 * rng.standard_normal((100, 50))).astype(np.float32)
    z = np.empty((5000, 100, 50), np.float32)
    ours, bound = median_pair(
        lambda: rs.reparam_sample(mu, lv, 5000, 1, 0, 0, z), mb.normal_bound(z.size), repeat
    )
    g = np.random.default_rng(1)
    peers = {
        "numpy": median_ms(
            lambda: mu + np.exp(0.5 * lv) * g.standard_normal((5000, 100, 50), dtype=np.float32), 3
        )
    }
    if P.torch:
        tm, tl = P.torch.from_numpy(mu), P.torch.from_numpy(lv)
        peers["torch"] = median_ms(
            lambda: tm + P.torch.exp(0.5 * tl) * P.torch.randn(5000, 100, 50), repeat
        )
    rate = z.size / (ours / 1e3) / 1e9
    bound_row(
        "reparam sample+densities (5000,100,50)",
        ours,
        peers,
        bound / ours,
        f"normal generator bound ({rate:.2f} of {z.size / (bound / 1e3) / 1e9:.2f} G/s: "
        f"Philox + log, sqrt, sincos per element)",
    )


def bench_gumbel(P, R, repeat):
    from kernels import gumbel_softmax as gs

    for shape in [(100000, 10), (10000, 512)]:
        logits = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        y = np.empty_like(logits)
        ours, bound = median_pair(
            lambda: gs.gumbel_softmax(logits, 0.5, 1, 0, 0, False, y),
            mb.gumbel_bound(logits.size),
            repeat,
        )
        peers = {}
        if P.torch:
            tl = P.torch.from_numpy(logits)
            peers["torch"] = median_ms(
                lambda: P.torch.nn.functional.gumbel_softmax(tl, tau=0.5), repeat
            )
        rate = logits.size / (ours / 1e3) / 1e9
        bound_row(
            f"gumbel-softmax tau 0.5 {shape}",
            ours,
            peers,
            bound / ours,
            f"Gumbel generator bound ({rate:.2f} of {logits.size / (bound / 1e3) / 1e9:.2f} "
            f"G/s: Philox + 2 log + exp + division per element)",
        )


def bench_nearest(P, R, repeat):
    from kernels import nearest_code as nc

    rng = np.random.default_rng(0)
    x = rng.standard_normal((65536, 64)).astype(np.float32)
    for m in (512, 8192):
        cb = rng.standard_normal((m, 64)).astype(np.float32)
        rep = repeat if m == 512 else max(3, repeat // 3)
        out = np.empty((4096, m), np.float32)

        def sgemm():
            for i in range(0, 65536, 4096):
                np.matmul(x[i : i + 4096], cb.T, out=out)

        tiles = mb.sgemm_tiles(x, cb, P.threads)
        # NumPy's SGEMM alone, then a pause: OpenBLAS's workers keep spinning for about 0.1 s
        # after a call, and timed alternately with it the kernel's second thread shared a core
        # with that spin (M=512, 2 threads: 44 ms against 30 ms run alone). The kernel and its
        # own tiles (both Numba) alternate.
        bare = median_ms(sgemm, rep)
        ours, bare_tiles = median_pair(lambda: nc.IMPLEMENTATIONS["numba"](x, cb), tiles, rep)
        peers = {"sgemm x@E^T": bare, "same tiles, GEMM only": bare_tiles}
        if P.faiss:
            index = P.faiss.IndexFlatL2(64)
            index.add(cb)
            peers["faiss"] = median_ms(lambda: index.search(x, 1), rep)
        if P.torch:
            tx, tc = P.torch.from_numpy(x), P.torch.from_numpy(cb)

            def cdist():
                for i in range(0, 65536, 8192):
                    P.torch.cdist(tx[i : i + 8192], tc).argmin(1)

            peers["torch cdist"] = median_ms(cdist, max(3, rep // 3))
        flops = 2 * 65536 * m * 64
        gflops = flops / (ours / 1e3) / 1e9
        best = min(bare, bare_tiles)
        bound_row(
            f"nearest code N=65536 E=64 M={m}",
            ours,
            peers,
            best / ours,
            f"the SGEMM rate of x @ E^T alone ({gflops:.0f} of {flops / (best / 1e3) / 1e9:.0f} "
            f"GFLOP/s)",
        )


def _torch_model(torch, k, device="cpu"):
    """The IWAE-paper architecture in PyTorch eager on ``device``: (step, evaluate)."""
    nn = torch.nn

    def mlp(sizes):
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            lin = nn.Linear(a, b)
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
            layers += [lin] + ([nn.Tanh()] if i < len(sizes) - 2 else [])
        return nn.Sequential(*layers).to(device)

    enc, dec = mlp([784, 200, 200, 100]), mlp([50, 200, 200, 784])
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, eps=1e-4)

    def log_w(x, kk):
        h = enc(x)
        mu, lv = h[:, :50], h[:, 50:]
        eps = torch.randn(kk, x.shape[0], 50, device=device)
        z = mu + torch.exp(0.5 * lv) * eps
        logits = dec(z)
        ll = -nn.functional.binary_cross_entropy_with_logits(
            logits, x.expand(kk, -1, -1), reduction="none"
        ).sum(-1)
        return ll - 0.5 * (z * z).sum(-1) + 0.5 * (eps * eps).sum(-1) + 0.5 * lv.sum(-1)

    def step(x):
        lw = log_w(x, k)
        loss = -(torch.logsumexp(lw, 0) - np.log(k)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def evaluate(x, kk, chunk=500):
        with torch.no_grad():
            parts = [log_w(x, chunk) for _ in range(kk // chunk)]
            return torch.logsumexp(torch.cat(parts), 0) - np.log(kk)

    return step, evaluate


def _engine_split():
    """How an engine step splits its threads here, for the rows."""
    from lvmcore.backend import engine_blas_threads

    blas = engine_blas_threads()
    return f"step BLAS {blas} thr" if blas is not None else "step BLAS auto"


def _eval_split():
    """How the K-sample evaluation splits its threads here, for its row."""
    from lvmcore.backend import engine_worker_count

    n = engine_worker_count()
    return f"chunks on {n} threads x 1 BLAS thread" if n > 1 else "chunks on 1 thread"


def bench_training(P, R, repeat):
    from lvmcore.models import IWAE, VAE
    from lvmcore.optim import Adam

    X = (np.random.default_rng(0).random((2000, 784)) < 0.13).astype(np.float32)
    for batch, k in [(100, 1), (20, 50), (100, 50)]:
        m = VAE(784, 50, (200, 200)) if k == 1 else IWAE(784, 50, (200, 200), k=k)
        m.init_output_bias(X)
        opt = Adam(m.parameters(), m.gradients(), lr=1e-3, eps=1e-4)
        rng = np.random.default_rng(0)
        it = iter(range(10**9))

        def ours_step():
            i = next(it) * batch % 2000
            m.loss_and_grads(X[i : i + batch], rng, validate=False)
            opt.step()

        for _ in range(20):
            ours_step()
        gemms = step_gemms(batch, k)
        # the step and its GEMMs alternate, so that a load spike on a shared machine hits both
        ours, bare = median_pair(ours_step, gemms, repeat * 2)
        peers = {"GEMMs alone": bare}
        if P.torch:
            for ftz in (False, True):
                peers["torch" + (" FTZ" if ftz else "")] = _torch_worker(
                    P.threads, "train", batch, k, repeat * 2, ftz
                )
        gf = step_flops(batch, k) / (ours / 1e3) / 1e9
        row(
            f"IWAE-paper train step B={batch} K={k}",
            ours,
            peers,
            f"{ours / bare:.2f} x GEMMs (best {median_pair.best:.2f}); {gf:.0f} GFLOP/s = "
            f"{gf / R[2]:.0%} of SGEMM; "
            f"{_engine_split()}{torch_ceiling(peers)}",
        )


def settle(seconds=0.3):
    """Let other libraries' worker threads (OpenBLAS's, PyTorch's OpenMP pool) stop spinning
    before a timing: they hold a core for up to about 0.1 s after their last call."""
    time.sleep(seconds)


def median_pair(a, b, repeat):
    """Medians (ms) of a and b timed alternately, ``repeat`` times each, after ``settle``;
    ``median_pair.best`` holds the ratio of their best times (on a shared machine a longer call
    is interrupted more often, which the medians' ratio counts against it and the best times'
    ratio does not)."""
    settle()
    a(), b()
    ta, tb = [], []
    for _ in range(repeat):
        for fn, ts in ((a, ta), (b, tb)):
            t = mb.CLOCK()
            fn()
            ts.append(mb.CLOCK() - t)
    median_pair.best = min(ta) / min(tb)
    return 1e3 * statistics.median(ta), 1e3 * statistics.median(tb)


def bench_subnormals(P, R, repeat):
    """The fused step keeps subnormal numbers from being produced (tiny float32 importance
    weights flushed to zero, lvmcore.models.iwae._TINY) instead of setting the FPU's
    flush-to-zero: an IWAE step whose log-weights spread over hundreds of nats, with the
    flush and without it."""
    from lvmcore.models import IWAE
    from lvmcore.models import iwae as iwae_module

    X = (np.random.default_rng(0).random((2000, 784)) < 0.13).astype(np.float32)
    m = IWAE(784, 50, (200, 200), k=50)
    m.init_output_bias(X)
    # wide posteriors (sigma = e): the normalized weights spread over hundreds of nats; with
    # this model about 4 % of the weights / B are subnormal and 40 % below the flush threshold
    m.encoder.params["b2"][50:] += 2.0
    xb = X[:100]
    rng = np.random.default_rng(0)
    _, cache = m.forward(xb, m.draw_key(rng, 100))
    w = cache[1].decoder
    tiny = float(np.mean((w > 0) & (w < np.finfo(np.float32).tiny)))
    flush = float(np.mean((w > 0) & (w < w.max() * iwae_module._TINY)))

    def step():
        m.loss_and_grads(xb, rng, validate=False)

    saved = iwae_module._TINY
    try:
        flushed = median_ms(step, repeat)
        iwae_module._TINY = 0.0
        kept = median_ms(step, repeat)
    finally:
        iwae_module._TINY = saved
    row(
        "IWAE step B=100 K=50, weights spread",
        flushed,
        {"subnormals kept": kept},
        f"weights/B: {tiny:.0%} subnormal, {flush:.0%} flushed to 0",
    )


def bench_bias_act(P, R, repeat):
    from kernels import bias_act as ba

    rng = np.random.default_rng(0)
    a = rng.standard_normal((5000, 200)).astype(np.float32)
    b = rng.standard_normal(200).astype(np.float32)
    y = np.tanh(a)
    out = np.empty_like(a)
    fwd = median_ms(lambda: ba.bias_act(a, b, "tanh", out), repeat)
    bwd = median_ms(lambda: ba.bias_act_backward(a, y, "tanh", None, out), repeat)

    def np_fwd():
        np.add(a, b, out=out)
        np.tanh(out, out=out)

    def np_bwd():
        np.multiply(y, y, out=out)
        np.subtract(1, out, out=out)
        np.multiply(a, out, out=out)
        out.sum(axis=0)

    gbs = 2 * a.nbytes / (fwd / 1e3) / 1e9
    row(
        "bias+tanh (5000,200) f32, in place",
        fwd,
        {"numpy add,tanh": median_ms(np_fwd, repeat)},
        f"{gbs:.1f} GB/s = {gbs / R[1]:.0%} of copy bandwidth",
    )
    gbs = 3 * a.nbytes / (bwd / 1e3) / 1e9
    row(
        "its backward (da and db)",
        bwd,
        {"numpy 4 passes": median_ms(np_bwd, repeat)},
        f"{gbs:.1f} GB/s = {gbs / R[1]:.0%} of copy bandwidth",
    )


# The IWAE-paper model's parameters: W and b of each of its six layers.
_ADAM_SHAPES = parameter_shapes()


def bench_adam(P, R, repeat):
    """One Adam step over the IWAE-paper model's 12 arrays (0.42 M parameters, float32): the
    engine's one-call update (``adam_update_group``), the twelve single calls it replaced, and
    PyTorch's ``Adam`` (foreach, its default) on arrays of the same shapes, in its own process
    (beside Numba's threads it took 20 ms instead of 1.2). The 12 MB of arrays stay in
    the last-level cache between steps, so the rate (p, g, m, v read, p, m, v written: 28 bytes
    an element) is a cache rate, not held to DRAM copy bandwidth."""
    from kernels import adam_update as au

    rng = np.random.default_rng(0)
    quads = [
        tuple(rng.standard_normal(sh).astype(np.float32) for _ in range(3))
        + (rng.random(sh).astype(np.float32),)
        for sh in _ADAM_SHAPES
    ]
    group = au.AdamGroup(*(list(a) for a in zip(*quads)))
    one = au.adam_update_group_numba_v1
    ours = median_ms(lambda: one(group, 1e-5, 0.9, 0.999, 1e-8), repeat * 4)

    def twelve():
        for q in quads:
            au.adam_update_numba_v2(*q, 1e-5, 0.9, 0.999, 1e-8)

    peers = {"twelve calls": median_ms(twelve, repeat * 4)}
    if P.torch:
        peers["torch Adam"] = _torch_worker(P.threads, "adam", 0, 0, repeat * 4)
    n = sum(q[0].size for q in quads)
    gbs = 28 * n / (ours / 1e3) / 1e9
    row(
        "Adam step, 12 arrays (0.42 M params)",
        ours,
        peers,
        f"{gbs:.1f} GB/s moved (in cache)",
    )


def bench_iaf_gate(P, R, repeat):
    from kernels import iaf_gate as ig

    rng = np.random.default_rng(0)
    n, Z = 5000, 50  # an IWAE step at K = 50, B = 100 with Z = 50
    y = (3 * rng.standard_normal((n, 2, Z))).astype(np.float32)
    z = rng.standard_normal((n, Z)).astype(np.float32)
    g, dl = rng.standard_normal((n, Z)).astype(np.float32), np.ones(n, np.float32)
    outs = [np.empty((n, Z), np.float32) for _ in range(3)] + [np.empty(n, np.float32)]
    _, s, oms, _ = ig.iaf_gate(y, z, 1.0)
    dy, dz = np.empty_like(y), np.empty_like(z)
    fwd = median_ms(lambda: ig.iaf_gate(y, z, 1.0, *outs), repeat)
    bwd = median_ms(lambda: ig.iaf_gate_backward(g, dl, y, z, s, oms, dy, dz), repeat)
    peers = {"numpy": median_ms(lambda: ig.iaf_gate_ref(y, z, 1.0, *outs), repeat)}
    peers_b = {"numpy": median_ms(lambda: ig.iaf_gate_backward_ref(g, dl, y, z, s, oms), repeat)}
    if P.torch:
        T = P.torch
        ty, tz, tg, tdl = (T.from_numpy(a) for a in (y, z, g, dl))
        ts, toms = T.from_numpy(s), T.from_numpy(oms)

        def torch_fwd():
            t = ty[:, 1] + 1.0
            ss, om = T.sigmoid(t), T.sigmoid(-t)
            return ss * tz + om * ty[:, 0], T.nn.functional.logsigmoid(t).sum(-1)

        def torch_bwd():
            return tg * toms, toms * (tg * (tz - ty[:, 0]) * ts + tdl[:, None]), tg * ts

        peers["torch"] = median_ms(torch_fwd, repeat)
        peers_b["torch"] = median_ms(torch_bwd, repeat)
    gbs = 6 * z.nbytes / (fwd / 1e3) / 1e9  # reads y, z; writes z_new, s, 1 - s
    row(
        "IAF gate (5000,50) f32",
        fwd,
        peers,
        f"{gbs:.1f} GB/s = {gbs / R[1]:.0%} of copy bandwidth",
    )
    gbs = 8 * z.nbytes / (bwd / 1e3) / 1e9  # reads dz', m, z, s, 1 - s; writes dy, dz
    row(
        "its backward (dy and dz)",
        bwd,
        peers_b,
        f"{gbs:.1f} GB/s = {gbs / R[1]:.0%} of copy bandwidth",
    )


def bench_eval(P, R, repeat):
    from lvmcore.models import VAE

    X = (np.random.default_rng(0).random((20, 784)) < 0.13).astype(np.float32)
    m = VAE(784, 50, (200, 200))
    m.init_output_bias(X)
    n = 20
    gemms, flops = eval_gemms(n, 5000, chunk_rows=m.eval_chunk_rows)
    ours, bare = median_pair(
        lambda: m.log_likelihood(X[:n], np.random.default_rng(0), k=5000),
        gemms,
        max(3, repeat // 5),
    )
    peers = {"GEMMs alone": bare}
    if P.torch:
        peers["torch no_grad"] = _torch_worker(P.threads, "eval", n, 5000, max(3, repeat // 5))
    gf = flops / (ours / 1e3) / 1e9
    row(
        f"K=5000 log-likelihood, {n} images",
        ours,
        peers,
        f"{ours / bare:.2f} x GEMMs (best {median_pair.best:.2f}); {n / (ours / 1e3):.1f} "
        f"images/s; {gf:.0f} GFLOP/s = "
        f"{gf / R[2]:.0%} of SGEMM; {_eval_split()}{torch_ceiling(peers)}",
    )


def bench_catvae(P, R, repeat):
    from lvmcore.models import CatVAE
    from lvmcore.optim import Adam

    X = (np.random.default_rng(0).random((2000, 784)) < 0.13).astype(np.float32)
    m = CatVAE(784, 20, 10, (512, 256), estimator="gumbel", tau=1.0)
    m.init_output_bias(X)
    opt = Adam(m.parameters(), m.gradients(), lr=1e-3)
    rng = np.random.default_rng(0)
    it = iter(range(10**9))

    def step():
        i = next(it) * 100 % 2000
        m.loss_and_grads(X[i : i + 100], rng, validate=False)
        opt.step()

    for _ in range(10):
        step()
    gemms = step_gemms(100, 1, sizes=CATVAE_SIZES)
    ours, bare = median_pair(step, gemms, repeat * 2)
    peers = {"GEMMs alone": bare}
    if P.torch:
        peers["torch F.gumbel_softmax"] = _torch_worker(P.threads, "catvae", 100, 1, repeat * 2)
    gf = step_flops(100, 1, sizes=CATVAE_SIZES) / (ours / 1e3) / 1e9
    row(
        "CatVAE step 20x10, (512,256), B=100",
        ours,
        peers,
        f"{ours / bare:.2f} x GEMMs (best {median_pair.best:.2f}); {gf:.0f} GFLOP/s = "
        f"{gf / R[2]:.0%} of SGEMM; "
        f"{_engine_split()}{torch_ceiling(peers)}",
    )


def _torch_worker(threads, kind, batch, k, repeat, ftz=False):
    """Median ms of a PyTorch training step, evaluation or Adam step, timed in a fresh process so that
    no other library's thread pool is spinning beside it."""
    import subprocess

    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--torch-worker",
            f"{threads},{kind},{batch},{k},{repeat},{int(ftz)}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


def _torch_catvae(torch):
    """The categorical VAE of bench_catvae in PyTorch eager, with F.gumbel_softmax."""
    nn, F = torch.nn, torch.nn.functional

    def mlp(sizes):
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [nn.Linear(a, b)] + ([nn.Tanh()] if i < len(sizes) - 2 else [])
        return nn.Sequential(*layers)

    enc, dec = mlp([784, 512, 256, 200]), mlp([200, 256, 512, 784])
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)

    def step(x):
        logits = enc(x).view(-1, 20, 10)
        y = F.gumbel_softmax(logits, tau=1.0).view(-1, 200)
        rec = -F.binary_cross_entropy_with_logits(dec(y), x, reduction="none").sum(-1)
        q = F.softmax(logits, -1)
        kl = (q * (F.log_softmax(logits, -1) + np.log(10))).sum((-2, -1))
        loss = (kl - rec).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def torch_worker_main(spec):
    threads, kind, batch, k, repeat, ftz = spec.split(",")
    threads, batch, k, repeat = int(threads), int(batch), int(k), int(repeat)
    import torch

    torch.set_num_threads(threads)
    torch.set_flush_denormal(bool(int(ftz)))
    torch.manual_seed(0)
    X = torch.from_numpy((np.random.default_rng(0).random((2000, 784)) < 0.13).astype(np.float32))
    if kind == "adam":
        params = [torch.randn(*sh, requires_grad=True) for sh in _ADAM_SHAPES]
        for t in params:
            t.grad = torch.randn(*t.shape)
        opt = torch.optim.Adam(params, lr=1e-5, eps=1e-8)
        print(median_ms(opt.step, repeat, warmup=5))
    elif kind in ("train", "catvae"):
        step = _torch_model(torch, k)[0] if kind == "train" else _torch_catvae(torch)
        it = iter(range(10**9))

        def fn():
            i = next(it) * batch % 2000
            step(X[i : i + batch])

        for _ in range(20):
            fn()
        print(median_ms(fn, repeat))
    else:
        evaluate = _torch_model(torch, 1)[1]
        print(median_ms(lambda: evaluate(X[:batch], k), repeat, warmup=1))


BENCHES = {
    "importance": bench_importance_weights,
    "bernoulli": bench_bernoulli,
    "reparam": bench_reparam,
    "gumbel": bench_gumbel,
    "nearest": bench_nearest,
    "bias_act": bench_bias_act,
    "iaf_gate": bench_iaf_gate,
    "adam": bench_adam,
    "train": bench_training,
    "subnormals": bench_subnormals,
    "eval": bench_eval,
    "catvae": bench_catvae,
}


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--only", default=",".join(BENCHES))
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu (with --threads 1): time in-process work by the calling thread's CPU time, "
        "which other jobs on a shared machine disturb far less (PyTorch steps, timed in their "
        "own processes, stay wall time)",
    )
    p.add_argument("--torch-worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.torch_worker:
        torch_worker_main(a.torch_worker)
        return 0
    if a.clock == "cpu":
        if a.threads != 1:
            p.error("--clock cpu measures one thread: pass --threads 1")
        mb.CLOCK = time.thread_time
    P = Peers(a.threads)
    R = machine_rates(a.threads, a.repeat)
    print(
        f"threads {a.threads}; clock {a.clock}; "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}; "
        f"torch {P.torch.__version__ if P.torch else 'absent'}; "
        f"faiss {'present' if P.faiss else 'absent'}"
    )
    print(
        f"machine: read {R[0]:.1f} GB/s, copy {R[1]:.1f} GB/s, SGEMM {R[2]:.0f} GFLOP/s "
        f"(ratios below are peer time / lvmcore time)"
    )
    print("  bandwidth, 256 MiB: " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in R[3].items()))
    for name in a.only.split(","):
        BENCHES[name](P, R, a.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
