"""The GEMMs of an IWAE-paper training step and of the K-sample evaluation, alone.

The bound a step can reach on this machine is the time of its matrix products: everything else
(sampling, bias and activation passes, the likelihood, the weights, the optimizer) is
elementwise work on arrays that the GEMMs also read. ``step_gemms`` and ``eval_gemms`` replay
exactly the products lvmcore's fused step and chunked evaluation run (shapes, transposes,
preallocated outputs, the same BLAS), with nothing else, so that ``time(step) / time(GEMMs)``
measured in one run says how far the step is from that bound (1.0 is the bound itself).

The architecture is the IWAE paper's: encoder D-H-H-2Z, decoder Z-H-H-D, tanh, D = 784,
H = 200, Z = 50; batch B, K samples per example, N = K B decoder rows.

Training step (``lvmcore.nn.MLP.forward_buffered`` / ``backward_buffered``)::

    encoder forward   x (B, D) @ W (D, H), (B, H) @ (H, H), (B, H) @ (H, 2Z)
    decoder forward   z (N, Z) @ (Z, H), (N, H) @ (H, H), (N, H) @ (H, D)
    decoder backward  dW = (s h)^T G: (H, N) @ (N, D); db = s^T G: (N,) @ (N, D) (a GEMV)
                      dh = G @ W^T: (N, D) @ (D, H); then per hidden layer
                      dW = h^T da: (H, N) @ (N, H) / (Z, N) @ (N, H) and dh = da @ W^T
    encoder backward  the same on B rows, without the input gradient of its first layer

Evaluation (``lvmcore.evaluate.log_likelihood``): per batch of B rows the encoder forward once,
then per chunk of n samples (n B = ``eval_chunk_rows`` decoder rows) the decoder forward.

The GEMMs run on the thread split of an engine step (``lvmcore.backend.engine_kernel_threads``:
BLAS on ``engine_blas_threads()`` when a count was chosen, else the process's setting), so
that the bound is that of the same BLAS configuration the step runs on.
"""

import numpy as np

from lvmcore.backend import engine_kernel_threads

__all__ = [
    "step_gemms",
    "eval_gemms",
    "step_flops",
    "parameter_shapes",
    "IWAE_PAPER_SIZES",
    "CATVAE_SIZES",
]

D, H, Z = 784, 200, 50
# The IWAE paper's one-layer model: (encoder widths, decoder widths).
IWAE_PAPER_SIZES = ((D, H, H, 2 * Z), (Z, H, H, D))
# The categorical VAE of compare_peers.py: 20 x 10 latents, hidden 512, 256.
CATVAE_SIZES = ((D, 512, 256, 200), (200, 256, 512, D))


def parameter_shapes(sizes=IWAE_PAPER_SIZES):
    """The shapes of a model's parameters, W (a, b) then b (b,) for each layer of each MLP,
    in the order the engine lists them (the IWAE-paper model's twelve arrays by default)."""
    return [sh for widths in sizes for a, b in zip(widths, widths[1:]) for sh in ((a, b), (b,))]


def _weights(sizes, dtype, rng):
    return [rng.standard_normal((a, b)).astype(dtype) * 0.05 for a, b in zip(sizes, sizes[1:])]


def step_gemms(batch, k, dtype=np.float32, seed=0, sizes=None):
    """A function running the GEMMs of one training step at (B, K), on preallocated arrays.

    ``sizes`` = (encoder widths, decoder widths), each of three layers; the IWAE paper's
    ((D, H, H, 2Z), (Z, H, H, D)) when None (``CATVAE_SIZES``: the categorical VAE's).
    """
    rng = np.random.default_rng(seed)
    n = batch * k
    enc_sizes, dec_sizes = sizes or IWAE_PAPER_SIZES
    D_out = dec_sizes[-1]
    We, Wd = _weights(enc_sizes, dtype, rng), _weights(dec_sizes, dtype, rng)
    x = (rng.random((batch, enc_sizes[0])) < 0.13).astype(dtype)
    z = rng.standard_normal((n, dec_sizes[0])).astype(dtype)
    s = rng.random(n).astype(dtype)

    def acts(rows, sizes):
        return [np.tanh(rng.standard_normal((rows, w))).astype(dtype) for w in sizes[1:]]

    he, hd = acts(batch, enc_sizes), acts(n, dec_sizes)
    ge = [np.empty_like(w) for w in We]
    gd = [np.empty_like(w) for w in Wd]
    de = [np.empty((batch, w), dtype) for w in enc_sizes[:-1]]
    dd = [np.empty((n, w), dtype) for w in dec_sizes[:-1]]
    db = np.empty(D_out, dtype)

    def run():
        with engine_kernel_threads():
            products()

    def products():
        # forward
        inp = x
        for W, h in zip(We, he):
            np.matmul(inp, W, out=h)
            inp = h
        inp = z
        for W, h in zip(Wd, hd):
            np.matmul(inp, W, out=h)
            inp = h
        # decoder backward: the last layer reads G (here its logits buffer) once per product
        G = hd[-1]
        np.matmul(hd[1].T, G, out=gd[2])
        np.matmul(s, G, out=db)
        np.matmul(G, Wd[2].T, out=dd[2])
        np.matmul(hd[0].T, dd[2], out=gd[1])
        np.matmul(dd[2], Wd[1].T, out=dd[1])
        np.matmul(z.T, dd[1], out=gd[0])
        np.matmul(dd[1], Wd[0].T, out=dd[0])
        # encoder backward (no input gradient for the data)
        g = he[-1]
        np.matmul(he[1].T, g, out=ge[2])
        np.matmul(g, We[2].T, out=de[2])
        np.matmul(he[0].T, de[2], out=ge[1])
        np.matmul(de[2], We[1].T, out=de[1])
        np.matmul(x.T, de[1], out=ge[0])

    return run


def step_flops(batch, k, sizes=None):
    """Floating-point operations of ``step_gemms(batch, k, sizes=sizes)`` (the GEMV
    included)."""
    n = batch * k
    enc_sizes, dec_sizes = sizes or IWAE_PAPER_SIZES
    dec = sum(a * b for a, b in zip(dec_sizes, dec_sizes[1:]))
    enc = sum(a * b for a, b in zip(enc_sizes, enc_sizes[1:]))
    return (
        6 * n * dec
        + 2 * n * dec_sizes[-1]
        + 6 * batch * enc
        - 2 * batch * enc_sizes[0] * enc_sizes[1]
    )


def eval_gemms(n_images, k, batch=100, chunk_rows=1 << 13, dtype=np.float32, seed=0):
    """A function running the GEMMs of the K-sample log-likelihood of ``n_images`` rows in
    batches of ``batch`` and chunks of about ``chunk_rows`` decoder rows, as
    ``lvmcore.evaluate.log_likelihood`` chunks them; returns (run, flops)."""
    rng = np.random.default_rng(seed)
    enc_sizes, dec_sizes = (D, H, H, 2 * Z), (Z, H, H, D)
    We, Wd = _weights(enc_sizes, dtype, rng), _weights(dec_sizes, dtype, rng)
    b = min(batch, n_images)
    chunk = max(1, min(k, chunk_rows // b))
    x = (rng.random((b, D)) < 0.13).astype(dtype)
    z = rng.standard_normal((chunk * b, Z)).astype(dtype)
    he = [np.empty((b, w), dtype) for w in enc_sizes[1:]]
    hd = [np.empty((chunk * b, w), dtype) for w in dec_sizes[1:]]
    batches = [min(batch, n_images - i) for i in range(0, n_images, batch)]
    flops = 0
    for rows in batches:
        flops += 2 * rows * (D * H + H * H + H * 2 * Z)
        flops += 2 * rows * k * (Z * H + H * H + H * D)

    def run():
        with engine_kernel_threads():
            products()

    def products():
        for rows in batches:
            inp = x[:rows]
            for W, h in zip(We, he):
                np.matmul(inp, W, out=h[:rows])
                inp = h[:rows]
            for s in range(0, k, chunk):
                m = min(chunk, k - s) * rows
                inp = z[:m]
                for W, h in zip(Wd, hd):
                    np.matmul(inp, W, out=h[:m])
                    inp = h[:m]

    return run, flops
