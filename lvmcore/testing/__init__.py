"""Tools for testing code built on lvmcore, kept importable for users.

- :mod:`lvmcore.testing.finite_differences`: ``gradcheck``, ``check_vjp`` and
  ``numerical_gradient`` (central differences in float64) and the dtype-keyed
  ``PARITY_TOLERANCES``, re-exported here (``lvmcore.testing.gradcheck``).
- :mod:`lvmcore.testing.oracles`: exact oracles for likelihood bounds (probabilistic PCA,
  diagonal Gaussian mixtures, enumeration over small discrete latent spaces). Import it
  explicitly (``from lvmcore.testing.oracles import ppca_log_marginal``); it is not loaded
  with this package.
"""

from .finite_differences import PARITY_TOLERANCES, check_vjp, gradcheck, numerical_gradient

__all__ = ["gradcheck", "check_vjp", "numerical_gradient", "PARITY_TOLERANCES"]
