r"""Probabilistic PCA: a continuous-latent model whose marginal and posterior are exact.

The model (Tipping & Bishop 1999) is

.. math::

    z \sim \mathcal N(0, I_Z), \qquad x \mid z \sim \mathcal N(W z + b, \sigma^2 I_D),

so :math:`p(x) = \mathcal N(x; b, C)` with :math:`C = W W^\top + \sigma^2 I_D` and
:math:`p(z \mid x)` is Gaussian. That makes it an oracle for importance-sampled bounds:
``ppca_log_joint`` is the target :math:`\log p(x, z)`, ``ppca_log_marginal`` the exact value the
IWAE bound must approach, and ``ppca_posterior`` the zero-variance proposal.

Every function works in the :math:`Z \times Z` matrix :math:`M = W^\top W + \sigma^2 I_Z`, never
in the :math:`D \times D` covariance, and computes in float64 whatever the input dtype (these
are references, not fast paths). Shape letters: B batch, D data, Z latent, K samples.
"""

from typing import NamedTuple

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from ..._validation import check_array, check_param, check_rng

_LOG_2PI = float(np.log(2.0 * np.pi))


class PPCA(NamedTuple):
    """Parameters of a probabilistic PCA model.

    A NamedTuple, so ``ppca_log_marginal(x, *model)`` works.

    Attributes
    ----------
    W : ndarray of shape (D, Z)
        Loading matrix.
    b : ndarray of shape (D,)
        Data mean.
    sigma2 : float
        Isotropic observation-noise variance, > 0.
    """

    W: np.ndarray
    b: np.ndarray
    sigma2: float


# ---------------------------------------------------------------------------------------------
# validation


def _check_model(W, b, sigma2, func):
    check_array(W, "W", func, ndim=2)
    D, Z = W.shape
    if D < 1 or Z < 1:
        raise ValueError(
            f"{func}: expected W to have shape (D, Z) with D >= 1 and Z >= 1, got {tuple(W.shape)}."
        )
    check_array(b, "b", func, ndim=1)
    if b.shape[0] != D:
        raise ValueError(
            f"{func}: expected b.shape[0] == W.shape[0] ({D}), got b of shape {tuple(b.shape)}."
        )
    sigma2 = check_param(sigma2, "sigma2", func, kind="float", low=0.0)
    return (np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64), sigma2)


def _check_x(x, D, func):
    check_array(x, "x", func, ndim=2)
    if x.shape[1] != D:
        raise ValueError(
            f"{func}: expected x.shape[1] == W.shape[0] ({D}), got x of shape "
            f"{tuple(x.shape)}. Pass a batch of shape (B, {D})."
        )
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# private math (float64, valid input)


def _factor(W, sigma2):
    """Cholesky factor of M = W^T W + sigma2 I (lower) and log det M."""
    Z = W.shape[1]
    M = W.T @ W + sigma2 * np.eye(Z)  # (Z, Z)
    cf = cho_factor(M, lower=True)
    logdet_M = 2.0 * float(np.sum(np.log(np.diag(cf[0]))))
    return cf, logdet_M


def _posterior_mean(r, W, cf):
    return cho_solve(cf, (r @ W).T).T  # (B, Z)


# ---------------------------------------------------------------------------------------------
# public API


def ppca_log_marginal(x, W, b, sigma2):
    r"""Exact log-marginal likelihood :math:`\log p(x)` of probabilistic PCA.

    Parameters
    ----------
    x : ndarray of shape (B, D)
        Data, float32 or float64, finite.
    W : ndarray of shape (D, Z)
        Loading matrix.
    b : ndarray of shape (D,)
        Data mean.
    sigma2 : float
        Noise variance, > 0.

    Returns
    -------
    log_px : ndarray of shape (B,)
        :math:`\log \mathcal N(x_b; b, W W^\top + \sigma^2 I)`, float64.

    Raises
    ------
    ValueError
        Shapes that disagree (``x.shape[1] != W.shape[0]``), NaN or Inf entries.
    TypeError
        Non-array or non-float arguments.
    InvalidParameterError
        ``sigma2`` not a float in (0, inf).

    Notes
    -----
    With :math:`C = W W^\top + \sigma^2 I_D`, :math:`M = W^\top W + \sigma^2 I_Z`,
    :math:`r = x - b` and the posterior mean :math:`m = M^{-1} W^\top r`:

    .. math::

        \log p(x) = -\tfrac12 \left[D \log 2\pi + \log\det C + r^\top C^{-1} r\right],

        \log\det C = (D - Z)\log\sigma^2 + \log\det M \quad\text{(determinant lemma)},

        r^\top C^{-1} r = \frac{\lVert r - W m\rVert^2}{\sigma^2} + \lVert m\rVert^2
        \quad\text{(Woodbury)}.

    The last form follows from :math:`C^{-1} r = (r - W m)/\sigma^2` and
    :math:`m^\top M m = r^\top W m`. It is a sum of non-negative terms, so unlike
    :math:`(\lVert r\rVert^2 - r^\top W m)/\sigma^2` it does not cancel when
    :math:`\sigma^2` is small. The cost is :math:`O(B D Z + D Z^2 + Z^3)`.

    References
    ----------
    .. [1] M. E. Tipping and C. M. Bishop, "Probabilistic principal component analysis",
       J. R. Statist. Soc. B 61(3), 611-622, 1999, eqs. (4)-(6).
    """
    func = "ppca_log_marginal"
    W, b, sigma2 = _check_model(W, b, sigma2, func)
    x = _check_x(x, W.shape[0], func)
    D, Z = W.shape
    cf, logdet_M = _factor(W, sigma2)
    r = x - b  # (B, D)
    m = _posterior_mean(r, W, cf)  # (B, Z)
    resid = r - m @ W.T  # (B, D)
    quad = np.sum(resid * resid, axis=1) / sigma2 + np.sum(m * m, axis=1)  # (B,)
    logdet_C = (D - Z) * np.log(sigma2) + logdet_M
    return -0.5 * (D * _LOG_2PI + logdet_C + quad)


def ppca_posterior(x, W, b, sigma2):
    r"""Exact posterior :math:`p(z \mid x) = \mathcal N(\mu_b, \Sigma)` of probabilistic PCA.

    Parameters
    ----------
    x : ndarray of shape (B, D)
        Data.
    W : ndarray of shape (D, Z)
        Loading matrix.
    b : ndarray of shape (D,)
        Data mean.
    sigma2 : float
        Noise variance, > 0.

    Returns
    -------
    mean : ndarray of shape (B, Z)
        Posterior means :math:`\mu_b = M^{-1} W^\top (x_b - b)`.
    cov : ndarray of shape (Z, Z)
        Posterior covariance :math:`\Sigma = \sigma^2 M^{-1}`, shared by every row (it does
        not depend on :math:`x`). Symmetric to machine precision.

    Raises
    ------
    ValueError, TypeError, InvalidParameterError
        As for :func:`ppca_log_marginal`.

    Notes
    -----
    Completing the square in :math:`\log p(z) + \log p(x \mid z)` in :math:`z` gives the
    precision :math:`I + W^\top W / \sigma^2 = M / \sigma^2` and the linear term
    :math:`W^\top (x - b)/\sigma^2`, hence

    .. math::

        p(z \mid x) = \mathcal N\!\left(z;\; M^{-1} W^\top (x - b),\; \sigma^2 M^{-1}\right),
        \qquad M = W^\top W + \sigma^2 I_Z.

    References
    ----------
    .. [1] M. E. Tipping and C. M. Bishop, "Probabilistic principal component analysis",
       J. R. Statist. Soc. B 61(3), 611-622, 1999, eq. (6).
    """
    func = "ppca_posterior"
    W, b, sigma2 = _check_model(W, b, sigma2, func)
    x = _check_x(x, W.shape[0], func)
    cf, _ = _factor(W, sigma2)
    mean = _posterior_mean(x - b, W, cf)  # (B, Z)
    cov = sigma2 * cho_solve(cf, np.eye(W.shape[1]))  # (Z, Z)
    cov = 0.5 * (cov + cov.T)  # cho_solve is symmetric only up to rounding
    return mean, cov


def ppca_log_joint(x, z, W, b, sigma2):
    r"""Log joint density :math:`\log p(x, z) = \log p(z) + \log p(x \mid z)`.

    The importance-sampling target: with samples :math:`z_k \sim q(z \mid x)`, the IWAE bound
    is :math:`\log \frac1K \sum_k \exp(\log p(x, z_k) - \log q(z_k \mid x))`.

    Parameters
    ----------
    x : ndarray of shape (B, D)
        Data.
    z : ndarray of shape (B, Z) or (K, B, Z)
        Latent values; a leading K axis holds K samples per data row.
    W : ndarray of shape (D, Z)
        Loading matrix.
    b : ndarray of shape (D,)
        Data mean.
    sigma2 : float
        Noise variance, > 0.

    Returns
    -------
    log_pxz : ndarray of shape (B,) or (K, B)
        ``z.shape[:-1]``, float64.

    Raises
    ------
    ValueError
        ``z.shape[-2:] != (B, Z)``, other shape mismatches, NaN or Inf entries.
    TypeError, InvalidParameterError
        As for :func:`ppca_log_marginal`.

    Notes
    -----
    .. math::

        \log p(x, z) = -\tfrac12\left[Z\log 2\pi + \lVert z\rVert^2\right]
                       -\tfrac12\left[D\log(2\pi\sigma^2)
                       + \lVert x - W z - b\rVert^2/\sigma^2\right].

    For any :math:`z`, :math:`\log p(x, z) - \log p(z \mid x) = \log p(x)` (Bayes' rule), so
    with the exact posterior as proposal every importance weight equals :math:`p(x)`.
    """
    func = "ppca_log_joint"
    W, b, sigma2 = _check_model(W, b, sigma2, func)
    x = _check_x(x, W.shape[0], func)
    D, Z = W.shape
    B = x.shape[0]
    check_array(z, "z", func, ndim=(2, 3))
    if tuple(z.shape[-2:]) != (B, Z):
        lead = "(K, " if z.ndim == 3 else "("
        raise ValueError(
            f"{func}: expected z to have shape {lead}{B}, {Z}) to match x ({B} rows) and "
            f"W ({Z} latent dims), got {tuple(z.shape)}."
        )
    z = np.asarray(z, dtype=np.float64)
    log_pz = -0.5 * (Z * _LOG_2PI + np.sum(z * z, axis=-1))  # (B,) or (K, B)
    resid = x - (z @ W.T + b)  # (B, D) or (K, B, D)
    log_px_z = -0.5 * (
        D * (_LOG_2PI + np.log(sigma2)) + np.sum(resid * resid, axis=-1) / sigma2
    )  # (B,) or (K, B)
    return log_pz + log_px_z


def ppca_fit(x, Z):
    r"""Maximum-likelihood probabilistic PCA in closed form.

    Parameters
    ----------
    x : ndarray of shape (N, D)
        Training data, finite.
    Z : int
        Latent dimension, in [1, D - 1] (at least one discarded direction is needed to
        estimate the noise).

    Returns
    -------
    model : PPCA
        ``W`` of shape (D, Z), ``b`` of shape (D,), ``sigma2`` (float), all float64.

    Raises
    ------
    ValueError
        Bad ``x`` (see :func:`ppca_log_marginal`), or data whose discarded eigenvalues are
        all numerically zero (at most ``Z + 1`` distinct rows, or data on a ``Z``-dim affine
        subspace).
    InvalidParameterError
        ``Z`` not an int in [1, D - 1].

    Notes
    -----
    With sample mean :math:`\bar x`, ML covariance
    :math:`S = \frac1N \sum_n (x_n - \bar x)(x_n - \bar x)^\top` and its eigen-decomposition
    :math:`S = U \Lambda U^\top` (:math:`\lambda_1 \ge \dots \ge \lambda_D`), the maximum of
    the likelihood is

    .. math::

        b = \bar x, \qquad
        \sigma^2 = \frac{1}{D - Z} \sum_{j > Z} \lambda_j, \qquad
        W = U_Z (\Lambda_Z - \sigma^2 I)^{1/2} R,

    with :math:`R` any orthogonal :math:`Z \times Z` matrix: the likelihood sees only
    :math:`W W^\top`. Here :math:`R = I`, and each column's sign is fixed so that its entry of
    largest magnitude is positive, making the output deterministic. The maximised value is
    :math:`-\frac N2 [D \log 2\pi + \sum_{j \le Z} \log\lambda_j + (D - Z)\log\sigma^2 + D]`.

    References
    ----------
    .. [1] M. E. Tipping and C. M. Bishop, "Probabilistic principal component analysis",
       J. R. Statist. Soc. B 61(3), 611-622, 1999, eqs. (7)-(8) and Appendix A.
    """
    func = "ppca_fit"
    check_array(x, "x", func, ndim=2)
    N, D = x.shape
    if D < 2:
        raise ValueError(
            f"{func}: expected x to have at least 2 columns (one kept and one discarded "
            f"direction), got x of shape {tuple(x.shape)}."
        )
    Z = check_param(Z, "Z", func, kind="int", low=1, low_inclusive=True, high=D - 1)
    x = np.asarray(x, dtype=np.float64)
    b = x.mean(axis=0)  # (D,)
    r = x - b  # (N, D)
    S = (r.T @ r) / N  # (D, D)
    lam, U = np.linalg.eigh(S)
    lam, U = lam[::-1], U[:, ::-1]  # descending
    sigma2 = float(np.mean(lam[Z:]))
    # Eigenvalues below D * eps * lam_max are rounding noise (the numerical-rank cutoff of
    # numpy.linalg.matrix_rank); a noise variance that small would be a fitted singularity.
    if not sigma2 > D * np.finfo(np.float64).eps * max(float(lam[0]), 0.0):
        raise ValueError(
            f"{func}: expected the data covariance to have positive variance outside its top "
            f"Z={Z} directions, got a mean discarded eigenvalue of {sigma2!r} (largest "
            f"eigenvalue {float(lam[0])!r}) from {N} rows. Use more (distinct) rows or a "
            f"smaller Z."
        )
    # lam[:Z] >= sigma2 in exact arithmetic (eigenvalues are sorted); the clip only removes
    # rounding-level negatives before the square root. No gradient is claimed here.
    scale = np.sqrt(np.maximum(lam[:Z] - sigma2, 0.0))  # (Z,)
    W = U[:, :Z] * scale  # (D, Z)
    pivot = np.argmax(np.abs(W), axis=0)  # (Z,)
    signs = np.where(W[pivot, np.arange(Z)] < 0, -1.0, 1.0)
    return PPCA(W=W * signs, b=b, sigma2=sigma2)


def ppca_sample(rng, model, n):
    """Draw ``n`` ancestral samples ``(x, z)`` from a PPCA model.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness; no global state is touched.
    model : PPCA
        Model parameters.
    n : int
        Number of samples, >= 1.

    Returns
    -------
    x : ndarray of shape (n, D)
        Observations, float64.
    z : ndarray of shape (n, Z)
        The latents that generated them.

    Raises
    ------
    TypeError
        ``rng`` not a Generator, ``model`` not a PPCA.
    InvalidParameterError
        ``n`` not an int in [1, inf).
    """
    func = "ppca_sample"
    check_rng(rng, func)
    if not isinstance(model, PPCA):
        raise TypeError(
            f"{func}: expected model to be a PPCA, got {type(model).__name__}. Build one with "
            f"PPCA(W=..., b=..., sigma2=...) or ppca_fit(x, Z)."
        )
    W, b, sigma2 = _check_model(*model, func)
    n = check_param(n, "n", func, kind="int", low=1, low_inclusive=True)
    D, Z = W.shape
    z = rng.standard_normal((n, Z))  # (n, Z)
    noise = rng.standard_normal((n, D))  # (n, D)
    x = z @ W.T + b + np.sqrt(sigma2) * noise  # (n, D)
    return x, z
