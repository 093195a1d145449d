"""Priors p(z), each a forward/backward pair behind one interface (see ``base``).

``log_prob(z) -> (log_p, cache)``, ``log_prob_backward(dlog_p, cache) -> dz`` (adding the
prior's parameter gradients), ``input_vjp`` (dz only), ``draw_noise(rng, n)``,
``sample(rng_or_noise, n)``, and ``params``/``grads`` dicts as ``nn.Module``.
"""

from .base import Prior
from .flow import FlowPrior, FlowPriorCache
from .mixture import (
    MixtureCache,
    MixtureNoise,
    MixturePrior,
    MixturePriorCache,
    mixture_log_prob_backward,
    mixture_log_prob_backward_ref,
    mixture_log_prob_forward,
    mixture_log_prob_ref,
    mixture_sample,
)
from .standard import StandardNormalCache, StandardNormalPrior
from .vamp import VampPrior, VampPriorCache
