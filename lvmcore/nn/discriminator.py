"""The adversarial autoencoder's discriminator on z, and samplers of its target priors.

Shape letters: N rows, Z latent, H hidden, C mixture components.

The discriminator is an MLP with one output, D(z) (N,), a logit; its losses live in
``lvmcore.losses.adversarial``. Training alternates (Makhzani et al. 2016, sec. 2): (1) the
reconstruction step on the autoencoder; (2) the discriminator step on
``discriminator_loss(D(z_prior), D(z_post))``, updating D only; (3) the generator step on
``generator_loss(D(z_post))``, whose gradient reaches the encoder through
``Discriminator.backward``'s dz (D's own gradients from this step are discarded).

The targets: a standard Gaussian, or a diagonal Gaussian mixture such as C components evenly
spaced on a circle (the 2-D target of the paper's figure 4), sampled with explicit noise from
``lvmcore.noise`` on the device of ``like``.

References
----------
A. Makhzani, J. Shlens, N. Jaitly, I. Goodfellow, B. Frey, "Adversarial Autoencoders", 2016,
sec. 2 and fig. 4.
"""

import math

import numpy as np

from .. import noise
from .._validation import check_array, check_param, get_xp, to_numpy
from ..oracles.gmm import GMM
from ._checks import check_grad, check_input
from .module import MLP

__all__ = [
    "Discriminator",
    "circle_mixture",
    "gaussian_target_sample",
    "mixture_target_sample",
]


class Discriminator(MLP):
    """D(z): an MLP from the latent to one logit.

    Parameters
    ----------
    n_latent : int
        Z.
    hidden : sequence of int
        Hidden widths (at least one layer).
    rng : numpy.random.Generator
        Draws the Glorot-uniform weights.
    activation : {"relu", "tanh", "softplus", "sigmoid"}, default "relu"
    dtype : float32 or float64

    Notes
    -----
    Parameters are the MLP's, ``W0, b0, ..., W<L>`` (H_L, 1), ``b<L>`` (1,). Backward is the
    MLP's with ``dy = dlogits[:, None]``; it accumulates into ``grads`` and returns dz, the
    path by which the generator loss trains the encoder.
    """

    def __init__(self, n_latent, hidden, rng, activation="relu", dtype=np.float32):
        Z = check_param(
            n_latent, "n_latent", "Discriminator", kind="int", low=1, low_inclusive=True
        )
        hidden = tuple(hidden)
        if not hidden:
            raise ValueError(
                "Discriminator: expected hidden to list at least one hidden width, got (). "
                "Pass e.g. hidden=(256, 256)."
            )
        super().__init__((Z, *hidden, 1), activation, rng, dtype=dtype)
        self.n_latent = Z

    def forward(self, z):
        """Logits D(z).

        Parameters
        ----------
        z : ndarray of shape (N, Z)

        Returns
        -------
        logits : ndarray of shape (N,)
        cache : MLPCache
        """
        W0 = self.params["W0"]
        check_input(
            z, "z", "Discriminator.forward", dtype=W0.dtype, xp=get_xp(W0), last=self.n_latent
        )
        if z.ndim != 2:
            raise ValueError(
                f"Discriminator.forward: expected z of shape (N, {self.n_latent}), got "
                f"{tuple(z.shape)}. Flatten sample axes first: z.reshape(-1, {self.n_latent})."
            )
        y, cache = super().forward(z)  # (N, 1)
        return y[:, 0], cache

    def backward(self, dlogits, cache, need_dx=True):
        """Accumulate parameter gradients; return dz (N, Z) (None with ``need_dx=False``)."""
        N = cache.linear[0].x.shape[0]
        check_grad(dlogits, "dlogits", (N,), "Discriminator.backward")
        return super().backward(dlogits[:, None], cache, need_dx=need_dx)


# --- target priors ---------------------------------------------------------------------------


def _like(like, func):
    if like is None:
        return np.empty(0, dtype=np.float32)
    check_array(like, "like", func, dtype="any", finite=False)
    return like


def gaussian_target_sample(rng, n, n_latent, dtype=np.float32, like=None):
    """``n`` draws of the standard Gaussian target N(0, I), shape (n, Z).

    Parameters
    ----------
    rng : numpy.random.Generator
        Seeds the noise stream (``lvmcore.noise.standard_normal``).
    n, n_latent : int
        N rows and Z dimensions, both >= 1.
    dtype : float32 or float64
    like : ndarray, optional
        An array on the device to draw on (host when None).
    """
    func = "gaussian_target_sample"
    n = check_param(n, "n", func, kind="int", low=1, low_inclusive=True)
    Z = check_param(n_latent, "n_latent", func, kind="int", low=1, low_inclusive=True)
    return noise.standard_normal(rng, (n, Z), dtype, like=_like(like, func))


def circle_mixture(n_latent=2, n_components=10, radius=4.0, std=0.5):
    """Equal-weight Gaussian components evenly spaced on a circle.

    Parameters
    ----------
    n_latent : int, default 2
        Z >= 2; the circle lies in the first two coordinates (the means' other coordinates
        are 0).
    n_components : int, default 10
        C >= 1 components, mean c at angle :math:`2\\pi c / C`.
    radius : float, default 4.0
        The circle's radius. Neighbouring means are :math:`2 r \\sin(\\pi/C)` apart (2.5 for
        the defaults, five standard deviations).
    std : float, default 0.5
        Every component's standard deviation in every dimension.

    Returns
    -------
    lvmcore.oracles.gmm.GMM
        ``(log_pi (C,), means (C, Z), variances (C, Z))``, float64, so that
        ``gmm_log_marginal(z, *mixture)`` gives the target's exact log-density.
    """
    func = "circle_mixture"
    Z = check_param(n_latent, "n_latent", func, kind="int", low=2, low_inclusive=True)
    C = check_param(n_components, "n_components", func, kind="int", low=1, low_inclusive=True)
    r = check_param(radius, "radius", func, low=0, low_inclusive=True)
    s = check_param(std, "std", func, low=0)
    angle = 2 * np.pi * np.arange(C) / C
    means = np.zeros((C, Z))
    means[:, 0], means[:, 1] = r * np.cos(angle), r * np.sin(angle)
    return GMM(np.full(C, -math.log(C)), means, np.full((C, Z), s * s))


def mixture_target_sample(rng, n, mixture, dtype=np.float32, like=None):
    """``n`` draws of a diagonal Gaussian mixture target and their components.

    Parameters
    ----------
    rng : numpy.random.Generator
        Seeds the noise streams (one uniform per row picks the component, one normal per entry).
    n : int
        N >= 1.
    mixture : lvmcore.oracles.gmm.GMM
        ``(log_pi (C,), means (C, Z), variances (C, Z))``, e.g. ``circle_mixture()``.
    dtype : float32 or float64
    like : ndarray, optional
        An array on the device to draw on (host when None).

    Returns
    -------
    z : ndarray of shape (N, Z)
    component : ndarray of int64, shape (N,)
        The component of each row (the label of the AAE's supervised variant).

    Notes
    -----
    The component is the inverse CDF of the weights at a uniform u in (0, 1):
    :math:`c = \\#\\{j : F_j \\le u\\}` with :math:`F` the cumulative weights, then
    :math:`z = \\mu_c + \\sqrt{v_c}\\,\\epsilon`.
    """
    func = "mixture_target_sample"
    n = check_param(n, "n", func, kind="int", low=1, low_inclusive=True)
    if not isinstance(mixture, tuple) or len(mixture) != 3:
        raise TypeError(
            f"{func}: expected mixture to be a GMM (log_pi, means, variances), got "
            f"{type(mixture).__name__}. Build one with circle_mixture(...)."
        )
    log_pi, means, variances = (to_numpy(a, np.float64) for a in mixture)
    C = log_pi.shape[0] if log_pi.ndim == 1 else -1
    if C < 1 or means.ndim != 2 or means.shape[0] != C or variances.shape != means.shape:
        raise ValueError(
            f"{func}: expected mixture with log_pi (C,), means (C, Z) and variances (C, Z), got "
            f"shapes {log_pi.shape}, {means.shape}, {variances.shape}."
        )
    if np.isnan(log_pi).any() or np.any(log_pi == np.inf) or not np.isfinite(log_pi.max()):
        raise ValueError(
            f"{func}: expected log_pi to be log weights with at least one finite entry and no "
            f"NaN or +inf, got {log_pi}."
        )
    if not (
        np.all(np.isfinite(means)) and np.all(variances > 0) and np.all(np.isfinite(variances))
    ):
        raise ValueError(
            f"{func}: expected finite means and finite positive variances, got means with "
            f"{int((~np.isfinite(means)).sum())} non-finite and variances with "
            f"{int((~(variances > 0)).sum())} non-positive entries."
        )
    like = _like(like, func)
    xp = get_xp(like)
    cdf = np.cumsum(np.exp(log_pi - log_pi.max()))
    cdf /= cdf[-1]
    u = noise.uniform(rng, (n,), np.float64, like=like)  # (N,)
    component = xp.minimum(xp.searchsorted(xp.asarray(cdf), u, side="right"), C - 1)
    eps = noise.standard_normal(rng, (n, means.shape[1]), dtype, like=like)  # (N, Z)
    mu = xp.asarray(means.astype(dtype))[component]
    sd = xp.asarray(np.sqrt(variances).astype(dtype))[component]
    return mu + sd * eps, component.astype(np.int64)
