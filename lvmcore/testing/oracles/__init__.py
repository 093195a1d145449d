"""Exact oracles for checking importance-sampled likelihood bounds (IWAE).

Two latent-variable models whose log-marginal likelihood is known in closed form:

- probabilistic PCA (continuous latent, ``ppca``): ``ppca_log_joint`` is the importance target,
  ``ppca_log_marginal`` the exact value, ``ppca_posterior`` the zero-variance proposal;
- diagonal Gaussian mixtures (discrete latent, ``gmm``): the same roles are played by
  ``gmm_log_joint``, ``gmm_log_marginal`` and ``gmm_log_posterior``, and
  ``gmm_importance_log_marginal`` is a reference importance-sampling estimator.

All of them compute in float64 and validate their inputs at the boundary.
"""

from .gmm import (
    GMM,
    gmm_fit_em,
    gmm_importance_log_marginal,
    gmm_log_joint,
    gmm_log_marginal,
    gmm_log_posterior,
    gmm_posterior,
    gmm_sample,
)
from .ppca import PPCA, ppca_fit, ppca_log_joint, ppca_log_marginal, ppca_posterior, ppca_sample

__all__ = [
    "PPCA",
    "ppca_fit",
    "ppca_log_joint",
    "ppca_log_marginal",
    "ppca_posterior",
    "ppca_sample",
    "GMM",
    "gmm_fit_em",
    "gmm_importance_log_marginal",
    "gmm_log_joint",
    "gmm_log_marginal",
    "gmm_log_posterior",
    "gmm_posterior",
    "gmm_sample",
]
