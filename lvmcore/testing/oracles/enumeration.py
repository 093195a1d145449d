"""Exact bounds of a categorical VAE by enumerating its latent space, with their gradients.

For N latents of C classes there are M = C^N configurations z_m; for a small space (N = 2,
C = 3: M = 9) every expectation under q(z|x) = prod_n q(z_n|x) is a finite sum, so the ELBO,
the K-sample bound and their gradients are exact. They are the oracle against which the
score-function estimators of :class:`lvmcore.models.CatVAE` are shown unbiased.

With :math:`a_m = \\log q(z_m|x)`, :math:`\\ell_m = \\log p(x|z_m)` and
:math:`\\log w_m = \\ell_m - N\\log C - a_m` (uniform prior), the K-sample bound is

.. math::

    \\mathcal{L}_K = \\sum_{t \\in [M]^K} P_t\\, L_t, \\qquad
    P_t = \\prod_{j=1}^{K} q(z_{t_j}|x), \\qquad
    L_t = \\log \\tfrac1K \\sum_{j=1}^{K} w_{t_j},

a sum over M^K tuples (K = 1: the ELBO, :math:`\\sum_m q_m \\ell_m - KL`). Its gradient, by
hand: with :math:`\\tilde w_{tj} = w_{t_j} / \\sum_i w_{t_i}`,

.. math::

    \\frac{\\partial \\mathcal{L}_K}{\\partial a_m} = \\sum_t P_t \\sum_j [t_j = m]\\,
        (L_t - \\tilde w_{tj}), \\qquad
    \\frac{\\partial \\mathcal{L}_K}{\\partial \\ell_m} = \\sum_t P_t \\sum_j [t_j = m]\\,
        \\tilde w_{tj}

(the first term of the a-derivative is the score :math:`\\partial P_t/\\partial a_m`, the
second the dependence of log w on log q), then chained through the log-softmax of the encoder
logits and the decoder's likelihood; both MLPs' backward do the rest.
"""

import itertools
import math

import numpy as np

from ..._validation import check_param
from ...losses import bernoulli_nll_backward, bernoulli_nll_forward
from ...ops.softmax import log_softmax_backward, log_softmax_forward, logsumexp_forward

__all__ = ["one_hot_configurations", "catvae_exact_bound"]


def one_hot_configurations(n_latents, n_categories, dtype=np.float64):
    """Every joint configuration of N categorical latents, as one-hots, shape (C^N, N, C).

    Row m is ``itertools.product(range(C), repeat=N)``'s m-th tuple (last latent fastest).
    """
    idx = np.array(
        list(itertools.product(range(n_categories), repeat=n_latents)), dtype=np.int64
    ).reshape(-1, n_latents)  # (M, N)
    return (np.arange(n_categories) == idx[..., None]).astype(dtype)  # (M, N, C)


def catvae_exact_bound(model, x, k=1, max_terms=200_000):
    """The exact K-sample bound per row of a small CatVAE, and the gradient of its loss.

    Parameters
    ----------
    model : lvmcore.models.CatVAE
    x : ndarray of shape (B, D)
    k : int
        K; 1 gives the ELBO.
    max_terms : int
        Refuse when B * M^K exceeds this (the enumeration would be too large).

    Returns
    -------
    bound : ndarray of shape (B,)
        :math:`\\mathcal{L}_K(x_b)`, exactly.
    grads : dict
        Gradients of :math:`-\\tfrac1B\\sum_b \\mathcal{L}_K(x_b)` for every ``encoder.*`` and
        ``decoder.*`` parameter (copies). The model's accumulated gradients are overwritten.
    """
    func = "catvae_exact_bound"
    k = check_param(k, "k", func, kind="int", low=1, low_inclusive=True)
    N, C = model.n_latents, model.n_categories
    B = x.shape[0]
    M = C**N
    if B * M**k > max_terms:
        raise ValueError(
            f"{func}: expected B * (C^N)^K <= {max_terms} terms, got "
            f"{B} * {M}^{k} = {B * M**k}. Use fewer latents, classes or samples."
        )
    dt = model.dtype
    Z = one_hot_configurations(N, C, dt)  # (M, N, C)
    model.zero_grad()
    h, enc = model.encoder.forward(x)  # (B, N*C)
    logp, lsm = log_softmax_forward(h.reshape(B, N, C), axis=-1)  # (B, N, C)
    a = np.einsum("mnc,bnc->bm", Z, logp)  # (B, M) log q
    out, dec = model.decoder.forward(Z.reshape(M, N * C))  # (M, D)
    out_bm = np.broadcast_to(out, (B, M, out.shape[1])).reshape(B * M, -1)
    x_bm = np.broadcast_to(x[:, None], (B, M, x.shape[1])).reshape(B * M, -1)
    nll, lik = bernoulli_nll_forward(out_bm, x_bm)
    ell = -nll.reshape(B, M)  # (B, M) log p(x|z)
    lw = ell - dt.type(N * math.log(C)) - a  # (B, M)

    tuples = np.array(list(itertools.product(range(M), repeat=k)), dtype=np.int64)  # (T, K)
    E = (np.arange(M) == tuples[..., None]).astype(dt)  # (T, K, M)
    lwt = lw[:, tuples]  # (B, T, K)
    lse, lc = logsumexp_forward(lwt, axis=-1)  # (B, T)
    L = lse - dt.type(math.log(k))
    wt = lc.weights  # (B, T, K)
    P = np.exp(a[:, tuples].sum(axis=-1))  # (B, T)
    bound = (P * L).sum(axis=-1)  # (B,)
    da = np.einsum("btk,tkm->bm", P[..., None] * (L[..., None] - wt), E)  # (B, M)
    dell = np.einsum("btk,tkm->bm", P[..., None] * wt, E)  # (B, M)

    # loss = -mean_b bound; nll = -ell
    dout = bernoulli_nll_backward((dell / B).reshape(B * M), lik)  # (B*M, D)
    model.decoder.backward(dout.reshape(B, M, -1).sum(axis=0), dec, need_dx=False)
    dlogp = np.einsum("bm,mnc->bnc", -da / B, Z)  # (B, N, C)
    dlogits = log_softmax_backward(dlogp, lsm)
    model.encoder.backward(dlogits.reshape(B, N * C), enc, need_dx=False)
    grads = {
        key: g.copy()
        for key, g in model.gradients().items()
        if key.startswith(("encoder.", "decoder."))
    }
    return bound, grads
