"""Time lvmcore's CUDA kernels and GPU training beside PyTorch CUDA on the same device.

    python benchmarks/compare_gpu.py [--repeat 20] [--only NAME,...] [--small]

Needs CuPy with a CUDA device (``pip install 'lvmcore[cuda]'``); PyTorch CUDA is timed when
it is installed and sees the device. Prints, for each piece of work, the median time of
lvmcore and of the peer, the ratio peer / lvmcore, and for the memory-bound kernels the
achieved bandwidth as a fraction of the device's copy bandwidth measured in the same run (a
device-to-device ``cupy.copyto`` of 1 GiB; bytes counted as the kernel's compulsory reads plus
writes). The targets this is read against: memory-bound kernels at >= 80 % of copy bandwidth;
nearest-code search (N = 2**20, E = 64, M = 512 and 8192) >= 3x ``torch.cdist`` + ``argmin``;
the IWAE-architecture training step (batch 100, K = 50) >= 1.5x and K = 5000 evaluation >= 2x
PyTorch eager. ``--small`` shrinks every size (a check that the script runs, not a
measurement).
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class Device:
    """The two libraries on one GPU, each timed with its own synchronisation."""

    def __init__(self):
        import cupy

        self.cp = cupy
        self.torch = None
        try:
            import torch

            if torch.cuda.is_available():
                self.torch = torch
        except ImportError:
            pass

    def sync(self):
        self.cp.cuda.Device().synchronize()
        if self.torch is not None:
            self.torch.cuda.synchronize()

    def median_ms(self, fn, repeat, warmup=3):
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return 1e3 * statistics.median(times)

    def torch_tensor(self, a):
        return self.torch.from_numpy(np.ascontiguousarray(a)).cuda()


def copy_bandwidth(D, S, repeat):
    """Device copy bandwidth in GB/s (bytes read + written)."""
    a = D.cp.ones(S["copy"], dtype=D.cp.float32)
    b = D.cp.empty_like(a)
    ms = D.median_ms(lambda: D.cp.copyto(b, a), repeat)
    return 2 * a.nbytes / (ms / 1e3) / 1e9


def row(name, ours_ms, peers, extra=""):
    cells = "  ".join(f"{k} {v:8.3f} ms ({v / ours_ms:5.2f}x)" for k, v in peers.items())
    print(f"{name:<44} lvmcore {ours_ms:8.3f} ms  {cells}  {extra}", flush=True)


def _bandwidth_note(nbytes, ms, copy_gbs):
    gbs = nbytes / (ms / 1e3) / 1e9
    return f"{gbs:.0f} GB/s = {gbs / copy_gbs:.0%} of copy bandwidth"


def bench_importance_weights(D, S, copy_gbs, repeat):
    import kernels

    k, b = S["importance"]
    lw = D.cp.asarray((np.random.default_rng(0).standard_normal((k, b)) * 5).astype(np.float32))
    out = D.cp.empty_like(lw)
    fn = kernels.get("importance_weights", "cupy")
    ours = D.median_ms(lambda: fn(lw, out), repeat)
    peers = {}
    if D.torch:
        t = D.torch_tensor(D.cp.asnumpy(lw))
        peers["torch"] = D.median_ms(
            lambda: (D.torch.logsumexp(t, 0), D.torch.softmax(t, 0)), repeat
        )
    row(
        f"importance weights {(k, b)} f32",
        ours,
        peers,
        _bandwidth_note(2 * lw.nbytes, ours, copy_gbs),
    )


def bench_bernoulli(D, S, copy_gbs, repeat):
    import kernels

    n, d = S["bernoulli"]
    rng = np.random.default_rng(0)
    logits_h = (rng.standard_normal((n, d)) * 3).astype(np.float32)
    x_h = (rng.random((n // 50, d)) < 0.13).astype(np.float32)
    logits, x = D.cp.asarray(logits_h), D.cp.asarray(x_h)
    grad = D.cp.empty_like(logits)
    fn = kernels.get("bernoulli_loglik", "cupy")
    ours = D.median_ms(lambda: fn(logits, x, grad), repeat)
    peers = {}
    if D.torch:
        F = D.torch.nn.functional
        tl, tx = D.torch_tensor(logits_h), D.torch_tensor(np.tile(x_h, (50, 1)))
        peers["torch"] = D.median_ms(
            lambda: (
                -F.binary_cross_entropy_with_logits(tl, tx, reduction="none").sum(1),
                tx - D.torch.sigmoid(tl),
            ),
            repeat,
        )
    row(
        f"bernoulli loglik+grad {(n, d)} f32",
        ours,
        peers,
        _bandwidth_note(2 * logits.nbytes, ours, copy_gbs),
    )


def bench_reparam(D, S, copy_gbs, repeat):
    import kernels

    k, b, z = S["reparam"]
    rng = np.random.default_rng(0)
    mu = D.cp.asarray(rng.standard_normal((b, z)).astype(np.float32))
    lv = D.cp.asarray((0.3 * rng.standard_normal((b, z))).astype(np.float32))
    out = D.cp.empty((k, b, z), D.cp.float32)
    fn = kernels.get("reparam_sample", "cupy")
    ours = D.median_ms(lambda: fn(mu, lv, k, 1, 0, 0, out), repeat)
    peers = {}
    if D.torch:
        tm, tl = D.torch_tensor(D.cp.asnumpy(mu)), D.torch_tensor(D.cp.asnumpy(lv))
        peers["torch (no densities)"] = D.median_ms(
            lambda: tm + D.torch.exp(0.5 * tl) * D.torch.randn(k, b, z, device="cuda"), repeat
        )
    row(
        f"reparam sample+densities {(k, b, z)}",
        ours,
        peers,
        _bandwidth_note(out.nbytes + 2 * 4 * k * b, ours, copy_gbs),
    )


def bench_gumbel(D, S, copy_gbs, repeat):
    import kernels

    fn = kernels.get("gumbel_softmax", "cupy")
    for shape in S["gumbel"]:
        logits_h = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        logits = D.cp.asarray(logits_h)
        y = D.cp.empty_like(logits)
        ours = D.median_ms(lambda: fn(logits, 0.5, 1, 0, 0, False, y), repeat)
        peers = {}
        if D.torch:
            tl = D.torch_tensor(logits_h)
            peers["torch"] = D.median_ms(
                lambda: D.torch.nn.functional.gumbel_softmax(tl, tau=0.5), repeat
            )
        row(
            f"gumbel-softmax tau 0.5 {shape}",
            ours,
            peers,
            _bandwidth_note(2 * logits.nbytes, ours, copy_gbs),
        )


def bench_nearest(D, S, copy_gbs, repeat):
    import kernels

    n, e = S["nearest"]
    rng = np.random.default_rng(0)
    x_h = rng.standard_normal((n, e)).astype(np.float32)
    x = D.cp.asarray(x_h)
    fn = kernels.get("nearest_code", "cupy")
    for m in (512, 8192):
        cb_h = rng.standard_normal((m, e)).astype(np.float32)
        cb = D.cp.asarray(cb_h)
        ours = D.median_ms(lambda: fn(x, cb), repeat)
        peers = {}
        if D.torch:
            tx, tc = D.torch_tensor(x_h), D.torch_tensor(cb_h)
            chunk = 1 << 17  # the (chunk, M) distances fit

            def cdist():
                for i in range(0, n, chunk):
                    D.torch.cdist(tx[i : i + chunk], tc).argmin(1)

            peers["torch cdist+argmin"] = D.median_ms(cdist, max(3, repeat // 4))
        tflops = 2 * n * m * e / (ours / 1e3) / 1e12
        row(f"nearest code N={n} E={e} M={m}", ours, peers, f"{tflops:.1f} TFLOP/s")


def bench_training(D, S, copy_gbs, repeat):
    from compare_peers import _torch_model

    from lvmcore.models import IWAE
    from lvmcore.optim import Adam

    batch, k = S["train"]
    X_h = (np.random.default_rng(0).random((2000, 784)) < 0.13).astype(np.float32)
    X = D.cp.asarray(X_h)
    m = IWAE(784, 50, (200, 200), k=k).to(D.cp)
    m.init_output_bias(X)
    opt = Adam(m.parameters(), m.gradients(), lr=1e-3, eps=1e-4)
    rng = np.random.default_rng(0)
    it = iter(range(10**9))

    def ours_step():
        i = next(it) * batch % 2000
        m.loss_and_grads(X[i : i + batch], rng, validate=False)
        opt.step()

    ours = D.median_ms(ours_step, repeat * 2, warmup=20)
    peers = {}
    if D.torch:
        D.torch.manual_seed(0)
        step, _ = _torch_model(D.torch, k, device="cuda")
        TX = D.torch_tensor(X_h)
        jt = iter(range(10**9))

        def torch_step():
            i = next(jt) * batch % 2000
            step(TX[i : i + batch])

        peers["torch eager"] = D.median_ms(torch_step, repeat * 2, warmup=20)
    row(f"IWAE-paper train step B={batch} K={k}", ours, peers)


def bench_eval(D, S, copy_gbs, repeat):
    from compare_peers import _torch_model

    from lvmcore.models import VAE

    n, k = S["eval"]
    X_h = (np.random.default_rng(0).random((n, 784)) < 0.13).astype(np.float32)
    X = D.cp.asarray(X_h)
    m = VAE(784, 50, (200, 200)).to(D.cp)
    m.init_output_bias(X)
    ours = D.median_ms(
        lambda: m.log_likelihood(X, np.random.default_rng(0), k=k), max(3, repeat // 4), warmup=1
    )
    peers = {}
    if D.torch:
        D.torch.manual_seed(0)
        _, evaluate = _torch_model(D.torch, 1, device="cuda")
        TX = D.torch_tensor(X_h)
        peers["torch no_grad"] = D.median_ms(lambda: evaluate(TX, k), max(3, repeat // 4), warmup=1)
    row(f"K={k} log-likelihood, {n} images", ours, peers, f"{n / (ours / 1e3):.0f} images/s")


SIZES = {
    "full": dict(
        copy=1 << 28,
        importance=(5000, 50000),
        bernoulli=(320000, 784),
        reparam=(5000, 1000, 50),
        gumbel=[(10**7, 10), (500000, 512)],
        nearest=(1 << 20, 64),
        train=(100, 50),
        eval=(100, 5000),
    ),
    "small": dict(
        copy=1 << 16,
        importance=(50, 33),
        bernoulli=(100, 37),
        reparam=(7, 5, 3),
        gumbel=[(33, 5)],
        nearest=(300, 8),
        train=(10, 3),
        eval=(3, 20),
    ),
}
BENCHES = {
    "importance": bench_importance_weights,
    "bernoulli": bench_bernoulli,
    "reparam": bench_reparam,
    "gumbel": bench_gumbel,
    "nearest": bench_nearest,
    "train": bench_training,
    "eval": bench_eval,
}


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--only", default=",".join(BENCHES))
    p.add_argument("--small", action="store_true", help="tiny sizes: check that it runs")
    a = p.parse_args(argv)
    from lvmcore.backend import available_backends

    why = available_backends()["cupy"]
    if why != "available":
        print(f"compare_gpu: needs a CUDA device through CuPy: {why}", file=sys.stderr)
        return 2
    D = Device()
    S = SIZES["small" if a.small else "full"]
    copy_gbs = copy_bandwidth(D, S, a.repeat)
    name = D.cp.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    print(
        f"device {name}; cupy {D.cp.__version__}; torch "
        f"{D.torch.__version__ if D.torch else 'absent (or no CUDA)'}; copy bandwidth "
        f"{copy_gbs:.0f} GB/s (ratios below are peer time / lvmcore time)",
        flush=True,
    )
    for bench in a.only.split(","):
        BENCHES[bench](D, S, copy_gbs, a.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
