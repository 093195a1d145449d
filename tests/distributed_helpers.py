"""Pieces shared by the in-process and the mpiexec tests of lvmcore.distributed.

- ``VAELogLikelihoodGrid``: ``VAE._log_likelihood``'s loop cut into (evaluation batch, K-chunk)
  cells, the reference order for sharded evaluation.
- ``local_loss_and_grads``: one rank's share of a data-parallel step over today's engine.
- ``install_fake_nccl``: a NCCL stand-in for the CUDA emulator (tests/cuda_emu), reducing the
  emulated device memory through MPI on the host.
"""

import contextlib
import ctypes
import math
import os
import sys
import types

import numpy as np

from lvmcore.backend import get_backend
from lvmcore.losses import bernoulli_nll_forward, gaussian_nll_forward


class VAELogLikelihoodGrid:
    """``VAE._log_likelihood`` (lvmcore/models/vae.py) as a grid of independent cells.

    The loop draws one seed per evaluation batch from ``rng``, in batch order, before that
    batch's chunks; chunk j of batch i takes samples [j c, j c + n_j) with Philox element offset
    ``j c B Z``, and contributes ``lme_j + log n_j`` to a running float64 ``logaddexp``. Drawing
    the seeds up front gives the same seeds, and every cell depends only on (i, j).
    """

    def __init__(self, model, x, rng, k, batch_size, chunk_size):
        self.model, self.x, self.k = model, x, k
        self.batch_size, self.chunk_size = batch_size, chunk_size
        self.n_batches = math.ceil(x.shape[0] / batch_size)
        self.n_chunks = math.ceil(k / chunk_size)
        self.seeds = [int(rng.integers(0, 2**63)) for _ in range(self.n_batches)]
        self.be = get_backend(x)
        self._encoded = (None, None)  # (batch index, (xb, mu, logvar)): one batch at a time

    def _batch(self, i):
        if self._encoded[0] != i:
            xp = self.be.xp
            xb = xp.ascontiguousarray(self.x[i * self.batch_size : (i + 1) * self.batch_size])
            mu, logvar = (xp.ascontiguousarray(a) for a in self.model.encode(xb))
            self._encoded = (i, (xb, mu, logvar))
        return self._encoded[1]

    def cell(self, i, j):
        """Partial log-sum-exp (B_i,) float64 of chunk j of batch i."""
        m, xp = self.model, self.be.xp
        xb, mu, logvar = self._batch(i)
        B = xb.shape[0]
        s = j * self.chunk_size
        n = min(self.chunk_size, self.k - s)
        z, log_q, log_p = self.be.kernel("reparam_sample")(
            mu, logvar, n, self.seeds[i], 0, s * B * m.latent_dim
        )
        logits, _ = m.decoder.forward(z.reshape(n * B, -1))  # (n*B, D)
        if m.likelihood == "bernoulli":
            nll, _ = bernoulli_nll_forward(logits, xb, need_grad=False)
        else:
            xs = xp.broadcast_to(xb, (n,) + xb.shape).reshape(n * B, -1)
            nll, _ = gaussian_nll_forward(logits, m._decoder_logvar(xp), xs)
        lw = xp.ascontiguousarray(log_p - log_q - nll.reshape(n, B))
        chunk_lme, _ = self.be.kernel("importance_weights")(lw, lw)
        return chunk_lme.astype(np.float64) + math.log(n)

    def finish(self, lse):
        """log p(x) estimates (N,) in the model's dtype, from the folded log-sum-exps."""
        return (lse - math.log(self.k)).astype(self.model.dtype)


def local_loss_and_grads(model, xb, eps, start, stop):
    """This rank's part of one data-parallel step of a VAE or IWAE on today's engine.

    ``eps`` is the global batch's noise (S, B, Z) from ``model.draw_noise(rng, B)``; the rank
    takes rows ``start:stop`` of the batch and of the noise, so the noise does not depend on P.
    The gradients left in the model are those of the mean loss over its rows; the caller scales
    them by ``share`` in the all-reduce. Returns ``(share * loss, share)``.
    """
    B = xb.shape[0]
    share = (stop - start) / B
    model.zero_grad()
    if stop == start:  # fewer rows than ranks: contribute zeros to the all-reduce
        return 0.0, share
    rows = np.ascontiguousarray(eps[:, start:stop])
    loss, cache = model.forward(xb[start:stop], rows)
    model.backward(cache)
    return share * loss, share


NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0  # ncclFloat32, ncclFloat64, ncclSum


@contextlib.contextmanager
def install_fake_nccl(fake):
    """Give the emulated ``cupy`` (``fake``, from cuda_emu.fake_cupy.installed()) a NCCL.

    ``cupy.cuda.nccl`` gets ``get_unique_id``, ``NcclCommunicator`` and the dtype and op
    constants; ``allReduce`` reads the emulated device memory behind the pointers it is given
    and sums it over MPI ranks on the host. The communicator checks that every rank joined with
    the same unique id, the right world size and its own rank. Device arrays get ``.data.ptr``
    and ``cupy.cuda.get_current_stream()`` a stream with a pointer. Yields the list of calls
    ``(count, datatype)``.
    """
    from cuda_emu import fake_cupy
    from mpi4py import MPI

    calls = []
    ctype = {NCCL_FLOAT32: ctypes.c_float, NCCL_FLOAT64: ctypes.c_double}

    class NcclCommunicator:
        def __init__(self, ndev, commId, rank):
            world = MPI.COMM_WORLD
            ids = world.allgather(commId)
            if any(i != ids[0] for i in ids) or ndev != world.size or rank != world.rank:
                raise RuntimeError(
                    f"fake nccl: ranks joined with different ids, or ndev {ndev} / rank {rank} "
                    f"do not match the world ({world.size}, {world.rank})"
                )
            self.world = world

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
            if op != NCCL_SUM or datatype not in ctype or not isinstance(stream, int):
                raise RuntimeError(f"fake nccl: unexpected op {op}, dtype {datatype}, {stream}")
            send = np.ctypeslib.as_array((ctype[datatype] * count).from_address(sendbuf))
            recv = np.ctypeslib.as_array((ctype[datatype] * count).from_address(recvbuf))
            if sendbuf != recvbuf:
                recv[...] = send
            self.world.Allreduce(MPI.IN_PLACE, recv, op=MPI.SUM)
            calls.append((count, datatype))

    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.available = True
    nccl.NCCL_FLOAT32, nccl.NCCL_FLOAT64, nccl.NCCL_SUM = NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM
    nccl.get_unique_id = lambda: tuple(os.urandom(128))
    nccl.NcclCommunicator = NcclCommunicator
    fake.cuda.nccl = nccl
    fake.cuda.get_current_stream = lambda: types.SimpleNamespace(ptr=0)
    saved = {name: sys.modules.get(name) for name in ("cupy.cuda", "cupy.cuda.nccl")}
    sys.modules["cupy.cuda"], sys.modules["cupy.cuda.nccl"] = fake.cuda, nccl
    fake_cupy.ndarray.data = property(lambda a: types.SimpleNamespace(ptr=a._a.ctypes.data))
    try:
        yield calls
    finally:
        del fake_cupy.ndarray.data
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
