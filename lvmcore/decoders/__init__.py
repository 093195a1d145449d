"""Decoders p(x | z) beyond the factorized Bernoulli, each a forward/backward pair.

A decoder provides ``log_prob(x, z[, ...]) -> (log_px (*S, B), cache)``,
``log_prob_backward(dlog_px, cache) -> dz`` (adding its parameter gradients),
``input_vjp(dlog_px, cache) -> dz`` (no parameter gradients), ``draw_noise(rng, lead)`` and
``sample(z, rng_or_noise)``.
"""

from .categorical import (
    CategoricalDecoder,
    CategoricalDecoderCache,
    CategoricalLogProbCache,
    categorical_log_prob_backward,
    categorical_log_prob_forward,
)
from .made import MADEDecoder, MADEDecoderCache, band_masks
