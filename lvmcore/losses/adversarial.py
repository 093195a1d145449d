"""The adversarial autoencoder's two losses, in logit space, with their backward.

Shape letters: P prior samples, Q posterior codes (encoder outputs) in the minibatch.

The discriminator D(z) gives a logit: :math:`\\sigma(D(z))` is its probability that z came from
the target prior rather than the encoder. With :math:`d_p = D(z_{prior})`,
:math:`d_q = D(z_{post})` and :math:`-\\log\\sigma(d) = \\mathrm{softplus}(-d)`::

    discriminator: L_D = mean_P softplus(-d_p) + mean_Q softplus(d_q)
    generator:     L_G = mean_Q softplus(-d_q)              (non-saturating, the default)
                   L_G = -mean_Q softplus(d_q)               (saturating: mean log(1 - sigma(d_q)))

Both are exact for logits of any size (softplus never overflows and its gradient, a sigmoid, is
evaluated without cancellation), so no logit or probability is clipped.

Which generator loss. The saturating form is the minimax game's own term: minimizing
:math:`\\log(1 - \\sigma(d_q))`. When the discriminator wins (:math:`d_q \\ll 0`) its gradient
:math:`-\\sigma(d_q)` vanishes, so the encoder stops learning exactly when it most needs to. The
non-saturating form :math:`-\\log\\sigma(d_q)` has the same fixed point and gradient
:math:`-\\sigma(-d_q) \\to -1` there (Goodfellow et al. 2014, sec. 3); it is the default.

References
----------
A. Makhzani, J. Shlens, N. Jaitly, I. Goodfellow, B. Frey, "Adversarial Autoencoders", ICLR 2016
workshop, sec. 2. I. Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014, sec. 3.
"""

from typing import NamedTuple

from .._validation import check_array, check_param, check_same_device, check_same_dtype
from ..ops.activations import sigmoid, softplus

__all__ = [
    "discriminator_loss_forward",
    "discriminator_loss_backward",
    "generator_loss_forward",
    "generator_loss_backward",
    "DiscriminatorLossCache",
    "GeneratorLossCache",
]


class DiscriminatorLossCache(NamedTuple):
    """logits_prior : (P,); logits_post : (Q,): the discriminator's logits."""

    logits_prior: object
    logits_post: object


class GeneratorLossCache(NamedTuple):
    """logits_post : (Q,) the discriminator's logits on the encoder's codes; saturating : bool."""

    logits_post: object
    saturating: bool


def _check_logits(x, name, func):
    # +-inf logits are exact here (softplus and sigmoid take them); NaN is not.
    check_array(x, name, func, ndim=1, allow_inf=True)
    if x.shape[0] == 0:
        raise ValueError(f"{func}: expected {name} to hold at least one logit, got shape (0,).")
    return x


def discriminator_loss_forward(logits_prior, logits_post):
    """Binary cross-entropy of the discriminator: prior samples are 1, encoder codes are 0.

    Parameters
    ----------
    logits_prior : ndarray of shape (P,)
        D(z) on samples of the target prior.
    logits_post : ndarray of shape (Q,)
        D(z) on the encoder's codes.

    Returns
    -------
    loss : float
        :math:`\\frac1P\\sum \\mathrm{softplus}(-d_p) + \\frac1Q\\sum \\mathrm{softplus}(d_q)`
        (nats; each term a mean over its own samples).
    cache : DiscriminatorLossCache
    """
    func = "discriminator_loss_forward"
    _check_logits(logits_prior, "logits_prior", func)
    _check_logits(logits_post, "logits_post", func)
    names = ["logits_prior", "logits_post"]
    check_same_dtype([logits_prior, logits_post], names, func)
    check_same_device([logits_prior, logits_post], names, func)
    loss = float(softplus(-logits_prior).mean()) + float(softplus(logits_post).mean())
    return loss, DiscriminatorLossCache(logits_prior, logits_post)


def discriminator_loss_backward(cache, dloss=1.0):
    """(dlogits_prior (P,), dlogits_post (Q,)).

    Notes
    -----
    :math:`\\partial\\,\\mathrm{softplus}(-d)/\\partial d = -\\sigma(-d)` and
    :math:`\\partial\\,\\mathrm{softplus}(d)/\\partial d = \\sigma(d)`, each divided by its
    term's sample count.
    """
    dp, dq = cache.logits_prior, cache.logits_post
    dloss = dp.dtype.type(dloss)
    return -sigmoid(-dp) * (dloss / dp.shape[0]), sigmoid(dq) * (dloss / dq.shape[0])


def generator_loss_forward(logits_post, saturating=False):
    """The encoder's adversarial loss: make the discriminator call its codes prior samples.

    Parameters
    ----------
    logits_post : ndarray of shape (Q,)
        D(z) on the encoder's codes.
    saturating : bool, default False
        False: :math:`\\frac1Q\\sum -\\log\\sigma(d_q)` (non-saturating). True:
        :math:`\\frac1Q\\sum \\log(1 - \\sigma(d_q))` (the minimax term). See the module notes.

    Returns
    -------
    loss : float
    cache : GeneratorLossCache
    """
    func = "generator_loss_forward"
    _check_logits(logits_post, "logits_post", func)
    saturating = check_param(saturating, "saturating", func, kind="choice", choices=(False, True))
    if saturating:
        loss = -float(softplus(logits_post).mean())
    else:
        loss = float(softplus(-logits_post).mean())
    return loss, GeneratorLossCache(logits_post, bool(saturating))


def generator_loss_backward(cache, dloss=1.0):
    """dlogits_post (Q,): :math:`-\\sigma(-d_q)/Q` (non-saturating) or :math:`-\\sigma(d_q)/Q`."""
    d = cache.logits_post
    scale = d.dtype.type(dloss) / d.shape[0]
    return -(sigmoid(d) if cache.saturating else sigmoid(-d)) * scale
