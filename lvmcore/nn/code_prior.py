"""An autoregressive categorical prior over the S code slots of a VQ-VAE.

Shape letters: B batch (N samples), S code slots, M codebook size, W input features per slot (M
for one-hot codes, E for embedded ones), C context width.

The prior factorizes over the slots in a fixed order,
:math:`p(k) = \\prod_s p(k_s \\mid k_{<s})`, with every conditional an M-way categorical whose
logits come from one MADE (``lvmcore.nn.MADE``) with M output heads and the slots' one-hot or
embedded codes as grouped inputs (``input_width=W``)::

    x       = table[k]                     (B, S*W)   table: I_M (one-hot) or a fixed (M, E)
    y       = MADE(x [, context])          (B, M, S)
    logits  = y^T                          (B, S, M)  slot s sees only the slots before it
    log p   = sum_s log_softmax(logits)[s, k_s]     (B,)

Sampling is exact and ancestral: slot after slot in the MADE's order, one MADE pass each, the code
is the Gumbel-max of that slot's logits with explicit Gumbel noise, so a fixed noise array gives a
fixed sample.

References
----------
M. Germain, K. Gregor, I. Murray, H. Larochelle, "MADE: Masked Autoencoder for Distribution
Estimation", ICML 2015. A. van den Oord, O. Vinyals, K. Kavukcuoglu, "Neural Discrete
Representation Learning", NeurIPS 2017, sec. 3.2 (a learned autoregressive prior over the codes).
"""

import math
from typing import NamedTuple

import numpy as np

from .. import noise
from .._validation import check_array, check_param, get_xp, to_numpy
from ..distributions.gumbel import gumbel_max
from ..ops.softmax import log_softmax_forward
from ._checks import check_grad, check_input
from .made import MADE, MADECache
from .module import Module

__all__ = ["CodePrior", "CodePriorCache", "fit_code_prior"]


class CodePriorCache(NamedTuple):
    """What CodePrior.backward and log_prob_backward need.

    made : MADECache; codes : (B, S) int64 the codes scored (None for ``forward``'s logits
    alone); probs : (B, S, M) the conditionals' probabilities (None likewise).
    """

    made: MADECache
    codes: object
    probs: object


class CodePrior(Module):
    """MADE with M-way categorical outputs over S code slots.

    Parameters
    ----------
    n_slots : int
        S, the code slots per example (``VQVAE.slots``).
    n_codes : int
        M, the codebook size (``VQVAE.codes``).
    hidden : sequence of int
        The MADE's hidden widths, each >= S - 1.
    rng : numpy.random.Generator
        Draws the initial weights (and the order when ``order="random"``).
    embedding : ndarray of shape (M, E), optional
        A fixed table giving each code's input features (e.g. a trained VQ-VAE's codebook).
        One-hot inputs (the identity table, W = M) when None. It is data, not a parameter: no
        gradient is computed for it.
    context_dim : int, default 0
        C, the width of an unmasked conditioning input (e.g. a one-hot class label).
    order : {"natural", "reverse", "random"} or sequence of int, default "natural"
        The order of the slots in the factorization.
    direct : bool, default False
        A direct (strictly masked) connection from the inputs to the logits. It holds
        (S*W) x (M*S) weights: 16.8 M for one-hot inputs with S = 8 and M = 512, 0.5 M with the
        same codes embedded in E = 16, so prefer it with an embedding.
    activation : {"tanh", "relu", "softplus", "sigmoid"}, default "tanh"
    dtype : float32 or float64

    Attributes
    ----------
    made : MADE
        The network; ``params`` and ``grads`` are its dicts (the same objects).
    table : ndarray of shape (M, W)
        The input features of each code.

    Notes
    -----
    Parameters are the MADE's: ``W0`` (S*W, H_1), ..., ``W<L>`` (H_L, M*S, column m*S + s is
    the logit of code m at slot s), ``b<l>``, ``Wd`` with ``direct``, ``Wc`` with a context.
    """

    def __init__(
        self,
        n_slots,
        n_codes,
        hidden,
        rng,
        *,
        embedding=None,
        context_dim=0,
        order="natural",
        direct=False,
        activation="tanh",
        dtype=np.float32,
    ):
        super().__init__()
        func = "CodePrior"
        S = check_param(n_slots, "n_slots", func, kind="int", low=1, low_inclusive=True)
        M = check_param(n_codes, "n_codes", func, kind="int", low=2, low_inclusive=True)
        dtype = np.dtype(dtype)
        if embedding is None:
            table = np.eye(M, dtype=dtype)
        else:
            check_array(embedding, "embedding", func, ndim=2)
            if embedding.shape[0] != M:
                raise ValueError(
                    f"{func}: expected embedding to have one row per code, shape ({M}, E), got "
                    f"{tuple(embedding.shape)}. Pass the codebook of the VQ-VAE whose codes "
                    f"this prior models."
                )
            table = to_numpy(embedding, dtype).copy()
        self.n_slots, self.n_codes = S, M
        self.made = MADE(
            S,
            hidden,
            rng,
            n_outputs_per_dim=M,
            input_width=table.shape[1],
            context_dim=context_dim,
            order=order,
            direct=direct,
            activation=activation,
            dtype=dtype,
        )
        self.table = table
        self.embedded = embedding is not None
        self.params, self.grads = self.made.params, self.made.grads

    def config(self):
        """The constructor's arguments as JSON-serialisable values, for a checkpoint.

        ``embedded`` says whether an embedding table was given; the table itself is not
        included (it is the VQ-VAE's codebook, stored with that model).
        """
        made = self.made
        return dict(
            n_slots=self.n_slots,
            n_codes=self.n_codes,
            hidden=list(made.hidden),
            embedded=self.embedded,
            context_dim=made.context_dim,
            order=[int(i) for i in made.order],
            direct=made.direct,
            activation=made.activation,
            dtype=str(np.dtype(made.params["W0"].dtype)),
        )

    @property
    def order(self):
        """The slots in the order of the factorization, ndarray of int (S,)."""
        return self.made.order

    @property
    def context_dim(self):
        return self.made.context_dim

    def to(self, xp):
        self.made.to(xp)
        self.params, self.grads = self.made.params, self.made.grads
        self.table = xp.asarray(self.table) if xp is not np else to_numpy(self.table)
        return self

    # --- checks ------------------------------------------------------------------------------

    def _check_codes(self, codes, func):
        check_array(codes, "codes", func, dtype="any", ndim=2, finite=False)
        if codes.dtype.kind not in "iu":
            raise TypeError(
                f"{func}: expected codes to be an integer array of code indices, got dtype "
                f"{codes.dtype}. Cast it with codes.astype(numpy.int64)."
            )
        if codes.shape[1] != self.n_slots:
            raise ValueError(
                f"{func}: expected codes of shape (B, {self.n_slots}) (one code per slot), got "
                f"{tuple(codes.shape)}."
            )
        if get_xp(codes) is not get_xp(self.params["W0"]):
            raise TypeError(
                f"{func}: expected codes on the parameters' device, got a "
                f"{get_xp(codes).__name__} array. Move it explicitly; lvmcore never copies "
                f"implicitly."
            )
        bad = (codes < 0) | (codes >= self.n_codes)
        if bool(bad.any()):
            raise ValueError(
                f"{func}: expected codes to lie in [0, {self.n_codes}), got {int(bad.sum())} "
                f"outside, e.g. {int(codes[bad].ravel()[0])}. Pass the indices of a codebook "
                f"of n_codes={self.n_codes} entries."
            )
        return codes

    def _check_context(self, context, n, func):
        if self.context_dim == 0:
            if context is not None:
                raise ValueError(
                    f"{func}: expected context None (this prior has context_dim=0), got an "
                    f"array of shape {tuple(context.shape)}. Build it with context_dim="
                    f"{context.shape[-1]}."
                )
            return None
        W0 = self.params["W0"]
        if context is None:
            raise ValueError(
                f"{func}: expected context of shape (B, {self.context_dim}) "
                f"(context_dim={self.context_dim}), got None."
            )
        check_input(context, "context", func, dtype=W0.dtype, xp=get_xp(W0), last=None)
        if tuple(context.shape) != (n, self.context_dim):
            raise ValueError(
                f"{func}: expected context of shape ({n}, {self.context_dim}), got "
                f"{tuple(context.shape)}."
            )
        return context

    # --- forward / backward ------------------------------------------------------------------

    def inputs(self, codes):
        """The MADE's input rows: each slot's code features, (B, S*W)."""
        B = codes.shape[0]
        return self.table[codes].reshape(B, -1)  # (B, S*W), slot-major

    def forward(self, codes, context=None):
        """Logits of every slot's conditional given the codes of the slots before it.

        Parameters
        ----------
        codes : ndarray of int, shape (B, S)
        context : ndarray of shape (B, C), optional
            Required when ``context_dim > 0``.

        Returns
        -------
        logits : ndarray of shape (B, S, M)
            ``logits[:, s]`` depends on ``codes`` only through the slots before s in ``order``.
        cache : CodePriorCache

        Raises
        ------
        ValueError
            Codes of the wrong shape or out of [0, M); a missing or ill-shaped context.
        TypeError
            Non-integer codes; arrays on another device or of another dtype.
        """
        func = "CodePrior.forward"
        self._check_codes(codes, func)
        context = self._check_context(context, codes.shape[0], func)
        y, mc = self.made.forward(self.inputs(codes), context)  # (B, M, S)
        return y.swapaxes(-1, -2), CodePriorCache(mc, None, None)

    def backward(self, dlogits, cache):
        """Accumulate parameter gradients from ``dlogits`` (B, S, M); return dcontext or None."""
        B = cache.made.x.shape[0]
        check_grad(dlogits, "dlogits", (B, self.n_slots, self.n_codes), "CodePrior.backward")
        _, dcontext = self.made.backward(dlogits.swapaxes(-1, -2), cache.made)
        return dcontext

    def log_prob_forward(self, codes, context=None):
        """:math:`\\log p(k) = \\sum_s \\log p(k_s \\mid k_{<s})` per row.

        Parameters
        ----------
        codes : ndarray of int, shape (B, S)
        context : ndarray of shape (B, C), optional

        Returns
        -------
        log_p : ndarray of shape (B,)
            In nats.
        cache : CodePriorCache
        """
        logits, cache = self.forward(codes, context)
        logp, (probs, _) = log_softmax_forward(logits, axis=-1)  # (B, S, M)
        xp = get_xp(logp)
        picked = xp.take_along_axis(logp, codes[:, :, None], axis=-1)[..., 0]  # (B, S)
        return picked.sum(axis=1), CodePriorCache(cache.made, codes, probs)

    def log_prob_backward(self, dlog_p, cache):
        """Accumulate parameter gradients from ``dlog_p`` (B,); return dcontext or None.

        Notes
        -----
        :math:`\\partial \\log p / \\partial \\mathrm{logits}_{s,m} = [k_s = m] - p_{s,m}`
        (the log-softmax gradient at the chosen code), then the MADE's backward.
        """
        B = cache.codes.shape[0]
        check_grad(dlog_p, "dlog_p", (B,), "CodePrior.log_prob_backward")
        xp = get_xp(cache.probs)
        onehot = (xp.arange(self.n_codes) == cache.codes[:, :, None]).astype(cache.probs.dtype)
        dlogits = dlog_p[:, None, None] * (onehot - cache.probs)  # (B, S, M)
        _, dcontext = self.made.backward(dlogits.swapaxes(-1, -2), cache.made)
        return dcontext

    def log_prob(self, codes, context=None):
        """log p(codes) per row (B,), in nats, without a cache for backward."""
        return self.log_prob_forward(codes, context)[0]

    def nll_bits(self, codes, context=None, batch_size=1024):
        """The prior's mean negative log-likelihood in bits per code slot.

        :math:`-\\frac{1}{B S \\log 2}\\sum_b \\log p(k_b)`, over ``batch_size`` rows at a time.
        A uniform prior scores :math:`\\log_2 M`.
        """
        func = "CodePrior.nll_bits"
        self._check_codes(codes, func)
        self._check_context(context, codes.shape[0], func)
        bs = check_param(batch_size, "batch_size", func, kind="int", low=1, low_inclusive=True)
        total = 0.0
        for i in range(0, codes.shape[0], bs):
            ctx = None if context is None else context[i : i + bs]
            total += float(self.log_prob(codes[i : i + bs], ctx).sum())
        return -total / (codes.shape[0] * self.n_slots * math.log(2.0))

    # --- sampling ----------------------------------------------------------------------------

    def sample_from_noise(self, g, context=None):
        """Exact ancestral samples driven by explicit Gumbel noise.

        Parameters
        ----------
        g : ndarray of shape (N, S, M)
            Standard Gumbel noise (``lvmcore.noise.standard_gumbel``), in the parameters' dtype.
        context : ndarray of shape (N, C), optional

        Returns
        -------
        codes : ndarray of int64, shape (N, S)

        Notes
        -----
        For j = 0, ..., S-1 with s = order[j]: one MADE pass on the codes drawn so far (the
        slots not yet drawn hold 0, which the masks make irrelevant) gives the logits of slot
        s, and :math:`k_s = \\arg\\max_m(\\mathrm{logits}_{s,m} + g_{s,m})` is an exact draw from
        :math:`p(k_s \\mid k_{<s})` (the Gumbel-max trick). S passes in all.
        """
        func = "CodePrior.sample_from_noise"
        W0 = self.params["W0"]
        xp = get_xp(W0)
        check_input(g, "g", func, dtype=W0.dtype, xp=xp, last=self.n_codes, hint="")
        if g.ndim != 3 or g.shape[1] != self.n_slots or g.shape[0] < 1:
            raise ValueError(
                f"{func}: expected g of shape (N, {self.n_slots}, {self.n_codes}) with N >= 1, "
                f"got {tuple(g.shape)}."
            )
        N = g.shape[0]
        context = self._check_context(context, N, func)
        codes = xp.zeros((N, self.n_slots), dtype=np.int64)
        for s in to_numpy(self.order).tolist():
            y, _ = self.made._forward(self.inputs(codes), context)  # (N, M, S)
            codes[:, s] = gumbel_max(y[:, :, s], g[:, s])
        return codes

    def sample(self, rng, n, context=None):
        """``n`` ancestral samples; returns (codes (n, S) int64, the Gumbel noise (n, S, M))."""
        n = check_param(n, "n", "CodePrior.sample", kind="int", low=1, low_inclusive=True)
        W0 = self.params["W0"]
        g = noise.standard_gumbel(rng, (n, self.n_slots, self.n_codes), W0.dtype, like=W0)
        return self.sample_from_noise(g, context), g


def fit_code_prior(
    prior,
    codes,
    rng,
    *,
    epochs=10,
    batch_size=128,
    lr=1e-3,
    valid_codes=None,
    context=None,
    valid_context=None,
):
    """Fit a CodePrior to code indices by Adam on the mean negative log-likelihood.

    Parameters
    ----------
    prior : CodePrior
    codes : ndarray of int, shape (B, S)
        Training codes, e.g. ``VQVAE.quantize(x_train)``.
    rng : numpy.random.Generator
        Shuffles the rows each epoch.
    epochs, batch_size : int
    lr : float
        Adam's step size.
    valid_codes : ndarray of int, shape (B', S), optional
        Scored after every epoch.
    context, valid_context : ndarray of shape (B, C) and (B', C), optional
        With a conditional prior (``context_dim > 0``).

    Returns
    -------
    list of dict
        Per epoch: ``epoch``, ``train_bits`` (mean over the epoch's minibatches, before each
        step), ``valid_bits`` (after the epoch; None without ``valid_codes``), in bits per code.

    Notes
    -----
    The loss of a minibatch is :math:`-\\frac{1}{B}\\sum_b \\log p(k_b)` (nats per example),
    so ``log_prob_backward`` is seeded with :math:`-1/B` per row.
    """
    from ..optim import Adam

    func = "fit_code_prior"
    if not isinstance(prior, CodePrior):
        raise TypeError(f"{func}: expected prior to be a CodePrior, got {type(prior).__name__}.")
    prior._check_codes(codes, func)
    epochs = check_param(epochs, "epochs", func, kind="int", low=1, low_inclusive=True)
    batch_size = check_param(batch_size, "batch_size", func, kind="int", low=1, low_inclusive=True)
    if valid_codes is not None:
        prior._check_codes(valid_codes, func)
    prior._check_context(context, codes.shape[0], func)
    if valid_codes is not None:
        prior._check_context(valid_context, valid_codes.shape[0], func)
    opt = Adam(prior.params, prior.grads, lr=lr)
    xp = get_xp(prior.params["W0"])
    dtype = prior.params["W0"].dtype
    B, S = codes.shape
    history = []
    for epoch in range(1, epochs + 1):
        perm = xp.asarray(rng.permutation(B))
        nats, rows = 0.0, 0
        for i in range(0, B, batch_size):
            idx = perm[i : i + batch_size]
            ctx = None if context is None else context[idx]
            prior.zero_grad()
            log_p, cache = prior.log_prob_forward(codes[idx], ctx)
            prior.log_prob_backward(xp.full(idx.shape[0], -1.0 / idx.shape[0], dtype=dtype), cache)
            opt.step()
            nats -= float(log_p.sum())
            rows += idx.shape[0]
        valid = None
        if valid_codes is not None:
            valid = prior.nll_bits(valid_codes, valid_context)
        history.append(
            dict(epoch=epoch, train_bits=nats / (rows * S * math.log(2.0)), valid_bits=valid)
        )
    return history
