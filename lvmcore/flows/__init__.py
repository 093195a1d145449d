"""Normalizing-flow steps and flow posteriors, each a forward/backward pair.

A flow step provides ``forward(z, h) -> (z_new, logdet, cache)``,
``backward(dz_new, dlogdet, cache) -> (dz, dh)`` (accumulating its parameter gradients),
``input_vjp(dz_new, dlogdet, cache) -> dz`` (no parameter gradients),
``solve_transpose(r, cache)`` (:math:`J^{-\\top} r`) and ``inverse(z_new, h)``.
:class:`FlowPosterior` composes a diagonal Gaussian with T steps. :class:`MAFStep` runs the
other way (density in one pass, ``inverse`` sequential): the steps of ``priors.FlowPrior``.
"""

from .iaf import IAFCache, IAFStep
from .maf import MAFCache, MAFStep
from .planar import PlanarCache, PlanarStep, planar_backward, planar_forward
from .posterior import FlowPosterior, FlowPosteriorCache, iaf_posterior, planar_posterior
