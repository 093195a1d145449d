"""Probability distributions with hand-derived gradients (torch.distributions names).

Each distribution exposes ``batch_shape``, ``event_shape``, ``params``,
``sample(rng, shape)``, ``log_prob(value)`` and ``entropy()``; each forward method
has a ``*_backward`` returning a dict of gradients keyed like ``params``.
Reparameterizable ones add ``rsample(rng, shape) -> (z, noise)`` and
``rsample_backward(dz, noise)``. ``kl_divergence(p, q)`` dispatches through
``@register_kl(P, Q)``; ``kl_divergence_backward(p, q, dkl)`` through
``@register_kl_backward(P, Q)``.

Randomness enters only through an explicit ``numpy.random.Generator`` argument.
"""

from .base import Distribution
from .bernoulli import Bernoulli
from .categorical import Categorical, UniformCategorical
from .gumbel import Gumbel, gumbel_max, gumbel_max_sample, standard_gumbel
from .kl import (
    KLNormalStdCache,
    kl_divergence,
    kl_divergence_backward,
    kl_normal_std_per_dim,
    kl_normal_std_per_dim_backward,
    kl_normal_std_per_dim_forward,
    register_kl,
    register_kl_backward,
)
from .normal import DiagNormal, StandardNormal
from .relaxed import ExpRelaxedCategorical, RelaxedCategorical

__all__ = [
    "Distribution",
    "DiagNormal",
    "StandardNormal",
    "Bernoulli",
    "Categorical",
    "UniformCategorical",
    "register_kl",
    "register_kl_backward",
    "kl_divergence",
    "kl_divergence_backward",
    "KLNormalStdCache",
    "kl_normal_std_per_dim",
    "kl_normal_std_per_dim_forward",
    "kl_normal_std_per_dim_backward",
    "Gumbel",
    "standard_gumbel",
    "gumbel_max",
    "gumbel_max_sample",
    "RelaxedCategorical",
    "ExpRelaxedCategorical",
]
