"""An autoregressive Bernoulli decoder: a MADE over the pixels with z as its context.

Shape letters: S leading sample axes (K), B batch, D data (pixels, raster order), Z latent,
H hidden.

Teacher-forced log-likelihood, one MADE pass, for x (B, D) binary and z (*S, B, Z)::

    x_in = (2 x - 1) * keep                     (*S, B, D)  keep = 1 without dropout
    l = MADE(x_in, context=z)                   (*S, B, D)  l_i depends on x_<i and z only
    log p(x | z) = sum_i [x_i l_i - softplus(l_i)]   (*S, B)

Ancestral sampling: D passes, pixel i drawn from Bernoulli(sigmoid(l_i)) after pixels < i.

Decoder weakening (what makes the latent code worth using when the decoder could model the
pixels alone):

- ``ar_context=N``: each pixel sees only the N pixels before it in raster order, the
  flat-data analogue of PixelVAE's small receptive field. A band on the MADE's masks, built
  from its degrees (see :func:`band_masks`).
- ``input_dropout=r``: each autoregressive input is dropped with probability r during
  training (Bowman et al. 2016's word dropout), from explicit uniforms so a step replays.
  Inputs are centred, 2x - 1 in {-1, 1}, so a dropped input (0) is "unknown", not a black
  pixel.
"""

from typing import NamedTuple

import numpy as np

from .._validation import check_array, check_binary, check_param, get_xp
from ..losses.likelihoods import bernoulli_nll_forward
from ..nn._checks import check_grad, check_input
from ..nn.made import MADE
from ..noise import uniform
from ..ops import sigmoid

__all__ = ["MADEDecoder", "MADEDecoderCache", "band_masks"]


def band_masks(degrees, n_context, n_outputs_per_dim=1):
    """0/1 bands that limit a natural-order MADE to the previous ``n_context`` inputs.

    Parameters
    ----------
    degrees : list of ndarray of int
        A MADE's ``degrees``: inputs (D,) then each hidden layer's.
    n_context : int
        N >= 1: output i may depend on inputs of degree in [d_i - N, d_i - 1].
    n_outputs_per_dim : int
        P, as the MADE's output columns are tiled.

    Returns
    -------
    dict of str -> ndarray of bool
        ``W0 ... W<L>`` (and ``Wd``): to be multiplied into the MADE's masks.

    Notes
    -----
    A MADE connects a unit of degree m to units of degree m' >= m (hidden) or m' > m
    (output), so a path from input degree d_j to output degree d_i climbs by
    :math:`d_i - d_j \\ge 1`. Capping the climb on each of the L + 1 connections at
    :math:`a_0, \\ldots, a_L` (the output's at :math:`1 + a_L`) with
    :math:`\\sum_l a_l = N - 1` caps every path at N, and every climb from 1 to N is still
    reachable (the hidden layers hold every degree 1..D-1), so output i depends on exactly
    the inputs i-N, ..., i-1. The N - 1 is split as evenly as possible over the connections.
    """
    m_in, hidden = degrees[0], degrees[1:]
    L = len(hidden)
    slack = n_context - 1
    a = [slack // (L + 1) + (1 if l < slack % (L + 1) else 0) for l in range(L + 1)]
    bands = {}
    for l in range(L):
        climb = hidden[l][None, :] - degrees[l][:, None]  # (fan_in, fan_out)
        bands[f"W{l}"] = climb <= a[l]
    out = (m_in[None, :] - hidden[-1][:, None]) <= 1 + a[L]  # (H_L, D)
    bands[f"W{L}"] = np.tile(out, (1, n_outputs_per_dim))
    bands["Wd"] = np.tile((m_in[None, :] - m_in[:, None]) <= n_context, (1, n_outputs_per_dim))
    return bands


class MADEDecoderCache(NamedTuple):
    """made : MADECache; grad : (N, D) x - sigmoid(l), N = prod(S) B; lead : z's leading
    shape (*S, B)."""

    made: object
    grad: object
    lead: tuple


class MADEDecoder(MADE):
    """p(x | z) = prod_i Bernoulli(x_i | sigmoid(l_i(x_<i, z))) over binary pixels.

    Parameters
    ----------
    data_dim : int
        D.
    n_latent : int
        Z, the MADE's context width.
    hidden : sequence of int
        The MADE's hidden widths, each >= D - 1.
    rng : numpy.random.Generator
    ar_context : int, optional
        N >= 1: each pixel sees only the previous N pixels. None (default), or N >= D - 1,
        is the full context.
    input_dropout : float in [0, 1), default 0
        Probability of dropping each autoregressive input when dropout noise is passed.
    direct : bool, default False
        The MADE's direct input-to-output connection (banded too under ``ar_context``).
    activation : {"tanh", "relu", "softplus", "sigmoid"}, default "relu"
    dtype : float32 or float64

    Notes
    -----
    Parameters are the MADE's (``W0, b0, Wc, W1, b1, ...``); ``Wc`` (Z, H_1) carries z.
    Backward: :math:`\\partial\\log p/\\partial l_i = x_i - \\sigma(l_i)`, scaled by the
    upstream dlog_px and sent back through the MADE, which adds its parameter gradients and
    returns dz through ``Wc``. The autoregressive inputs are data: no gradient is returned
    for them.

    References
    ----------
    M. Germain, K. Gregor, I. Murray, H. Larochelle, "MADE", ICML 2015. I. Gulrajani et al.,
    "PixelVAE", ICLR 2017 (a small receptive field keeps the latent code in use).
    S. R. Bowman et al., "Generating Sentences from a Continuous Space", CoNLL 2016, sec. 3.3
    (word dropout).
    """

    def __init__(
        self,
        data_dim,
        n_latent,
        hidden,
        rng,
        *,
        ar_context=None,
        input_dropout=0.0,
        direct=False,
        activation="relu",
        dtype=np.float32,
    ):
        func = "MADEDecoder"
        D = check_param(data_dim, "data_dim", func, kind="int", low=1, low_inclusive=True)
        Z = check_param(n_latent, "n_latent", func, kind="int", low=1, low_inclusive=True)
        if ar_context is not None:
            ar_context = check_param(
                ar_context, "ar_context", func, kind="int", low=1, low_inclusive=True
            )
        self.input_dropout = check_param(
            input_dropout,
            "input_dropout",
            func,
            low=0,
            high=1,
            low_inclusive=True,
            high_inclusive=False,
        )
        super().__init__(
            D,
            hidden,
            rng,
            n_outputs_per_dim=1,
            context_dim=Z,
            order="natural",
            direct=direct,
            activation=activation,
            dtype=dtype,
        )
        self.n_latent = Z
        self.ar_context = None if ar_context is None or ar_context >= D - 1 else ar_context
        if self.ar_context is not None:
            for name, band in band_masks(self.degrees, self.ar_context).items():
                if name in self.masks:
                    self.masks[name] = self.masks[name] * band.astype(self.masks[name].dtype)
                    self.params[name] *= self.masks[name]

    @property
    def data_dim(self):
        return self.n_in

    # --- checks ---------------------------------------------------------------------------

    def _check_z(self, z, func):
        W0 = self.params["W0"]
        check_input(z, "z", func, dtype=W0.dtype, xp=get_xp(W0), last=self.n_latent)
        if z.ndim < 2:
            raise ValueError(
                f"{func}: expected z of shape (*S, B, {self.n_latent}), got {tuple(z.shape)}."
            )

    def _check_uniforms(self, u, name, shape, func):
        W0 = self.params["W0"]
        check_input(u, name, func, dtype=W0.dtype, xp=get_xp(W0))
        if tuple(u.shape) != tuple(shape):
            raise ValueError(
                f"{func}: expected {name} to have shape {tuple(shape)}, got "
                f"{tuple(u.shape)}. Draw it with draw_noise(rng, {tuple(shape[:-1])})."
            )
        if bool(((u < 0) | (u >= 1)).any()):
            raise ValueError(f"{func}: expected {name} to hold uniforms in [0, 1).")

    # --- log-likelihood -------------------------------------------------------------------

    def _inputs(self, x, lead, keep_noise):
        xp = get_xp(x)
        x_in = xp.broadcast_to(2 * x - 1, lead + (self.n_in,))  # (*S, B, D), centred
        if keep_noise is not None:
            x_in = x_in * (keep_noise >= x.dtype.type(self.input_dropout))
        return xp.ascontiguousarray(x_in)

    def log_prob(self, x, z, dropout_noise=None):
        """Teacher-forced :math:`\\log p(x \\mid z)`, one MADE pass.

        Parameters
        ----------
        x : ndarray of shape (B, D), entries in {0, 1}
        z : ndarray of shape (*S, B, Z)
        dropout_noise : ndarray of shape (*S, B, D), optional
            Uniforms in [0, 1) (``draw_noise(rng, z.shape[:-1])``); input i is dropped where
            the uniform is below ``input_dropout``. None: no dropout (evaluation).

        Returns
        -------
        log_px : ndarray of shape (*S, B)
        cache : MADEDecoderCache

        Raises
        ------
        ValueError
            Non-binary x, shapes that disagree, NaN or Inf, noise outside [0, 1).
        TypeError
            Wrong dtype or device.
        """
        func = "MADEDecoder.log_prob"
        W0 = self.params["W0"]
        check_input(x, "x", func, dtype=W0.dtype, xp=get_xp(W0), last=self.n_in)
        check_array(x, "x", func, ndim=2)
        check_binary(x, "x", func)
        self._check_z(z, func)
        lead = tuple(z.shape[:-1])
        if lead[-1] != x.shape[0]:
            raise ValueError(
                f"{func}: expected z of shape (*S, {x.shape[0]}, {self.n_latent}) (the batch "
                f"of x last before Z), got {tuple(z.shape)}."
            )
        if dropout_noise is not None:
            self._check_uniforms(dropout_noise, "dropout_noise", lead + (self.n_in,), func)
        y, mc = self._forward(self._inputs(x, lead, dropout_noise), z)  # (*S, B, 1, D)
        logits = y.reshape(-1, self.n_in)  # (N, D), sample-major: row r scores x[r % B]
        nll, bc = bernoulli_nll_forward(logits, x)
        return -nll.reshape(lead), MADEDecoderCache(mc, bc.grad, lead)

    def _dy(self, dlog_px, cache, func):
        check_grad(dlog_px, "dlog_px", cache.lead, func, dtype=cache.grad.dtype)
        dlogits = dlog_px.reshape(-1, 1) * cache.grad  # (N, D)
        return dlogits.reshape(cache.lead + (1, self.n_in))

    def log_prob_backward(self, dlog_px, cache):
        """Add the MADE's parameter gradients; return dz (*S, B, Z).

        Parameters
        ----------
        dlog_px : ndarray of shape (*S, B)
        cache : MADEDecoderCache
        """
        dy = self._dy(dlog_px, cache, "MADEDecoder.log_prob_backward")
        _, dz = self._backward(dy, cache.made, self.grads)
        return dz

    def input_vjp(self, dlog_px, cache):
        """dz of :meth:`log_prob_backward` with the parameters held fixed (no gradient is
        accumulated): the decoder's share of :math:`d\\log w/dz` for DReG and STL.

        The MADE's input VJP skips its context branch, so this runs the full backward into
        scratch gradients (the weight-gradient GEMMs are wasted work, not wrong results)."""
        dy = self._dy(dlog_px, cache, "MADEDecoder.input_vjp")
        xp = get_xp(dy)
        scratch = {k: xp.zeros_like(g) for k, g in self.grads.items()}
        _, dz = self._backward(dy, cache.made, scratch)
        return dz

    # --- sampling -------------------------------------------------------------------------

    def draw_noise(self, rng, lead):
        """Uniforms of shape ``lead + (D,)`` on the decoder's device: for ``sample`` (lead =
        z.shape[:-1]) or for ``log_prob``'s dropout."""
        W0 = self.params["W0"]
        return uniform(rng, tuple(lead) + (self.n_in,), W0.dtype, W0)

    def sample(self, z, rng_or_noise):
        """Exact ancestral sampling: D MADE passes, pixel i after pixels < i.

        Parameters
        ----------
        z : ndarray of shape (*S, Z)
        rng_or_noise : numpy.random.Generator or ndarray of shape (*S, D)
            Uniforms in [0, 1): pixel i is 1 where its uniform is below
            :math:`\\sigma(l_i)`. Explicit uniforms make the draw replayable.

        Returns
        -------
        x : ndarray of shape (*S, D), entries 0 or 1 in the decoder's dtype
        """
        func = "MADEDecoder.sample"
        W0 = self.params["W0"]
        xp = get_xp(W0)
        check_input(z, "z", func, dtype=W0.dtype, xp=xp, last=self.n_latent)
        lead = tuple(z.shape[:-1])
        if isinstance(rng_or_noise, np.random.Generator):
            u = self.draw_noise(rng_or_noise, lead)
        else:
            u = rng_or_noise
            check_array(u, "rng_or_noise", func)
            self._check_uniforms(u, "rng_or_noise", lead + (self.n_in,), func)
        x = xp.zeros(lead + (self.n_in,), dtype=W0.dtype)
        for i in self.order:  # the raster order: pixel i sees only pixels already drawn
            y, _ = self._forward(2 * x - 1, z)  # (*S, 1, D)
            x[..., i] = u[..., i] < sigmoid(y[..., 0, i])
        return x
