r"""Diagonal Gaussian mixtures: a discrete-latent model whose marginal is an exact finite sum.

.. math::

    c \sim \mathrm{Categorical}(\pi), \qquad
    x \mid c \sim \mathcal N(\mu_c, \operatorname{diag}(v_c)), \qquad
    p(x) = \sum_{c=1}^{C} \pi_c \, \mathcal N(x; \mu_c, \operatorname{diag}(v_c)).

The latent takes C values, so :math:`\log p(x)` and the posterior :math:`p(c \mid x)` are exact
(a log-sum-exp over components). That makes the mixture an oracle for importance sampling with
a discrete latent: ``gmm_importance_log_marginal`` forms the K-sample estimate
:math:`\log \frac1K \sum_k p(x, c_k)/q(c_k \mid x)` and can be compared with the exact value.

Mixture weights are carried as ``log_pi`` (log space, so a component may have weight 0 as
``-inf``). Every function computes in float64 whatever the input dtype. Shape letters: B batch,
D data, C components, K samples.
"""

from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp

from ..._validation import check_array, check_param, check_rng

_LOG_2PI = float(np.log(2.0 * np.pi))


class GMM(NamedTuple):
    """Parameters of a diagonal Gaussian mixture.

    A NamedTuple, so ``gmm_log_marginal(x, *params)`` works.

    Attributes
    ----------
    log_pi : ndarray of shape (C,)
        Log mixture weights, ``logsumexp(log_pi) == 0``; ``-inf`` marks an empty component.
    means : ndarray of shape (C, D)
        Component means.
    variances : ndarray of shape (C, D)
        Per-dimension component variances, > 0.
    """

    log_pi: np.ndarray
    means: np.ndarray
    variances: np.ndarray


# ---------------------------------------------------------------------------------------------
# validation


def _normalization_tol(dtype):
    # sqrt(eps): 1.5e-8 in float64, 3.5e-4 in float32; loose enough for weights that were
    # normalized in that dtype, tight enough to catch unnormalized ones.
    return float(np.sqrt(np.finfo(dtype).eps))


def _check_log_probs(log_p, name, func, *, ndim):
    """Log-probabilities over the last axis: no NaN or +inf, each row normalized."""
    check_array(log_p, name, func, ndim=ndim, allow_inf=True)
    if bool(np.any(log_p == np.inf)):
        raise ValueError(
            f"{func}: expected {name} to contain no +inf values, got "
            f"{int(np.sum(log_p == np.inf))}. Log-probabilities are <= 0."
        )
    lse = logsumexp(np.asarray(log_p, dtype=np.float64), axis=-1)
    err = np.abs(lse)
    tol = _normalization_tol(log_p.dtype)
    if not bool(np.all(err <= tol)):
        raise ValueError(
            f"{func}: expected {name} to be normalized (logsumexp over the last axis == 0 "
            f"within {tol:.1e}), got logsumexp {float(np.ravel(lse)[np.argmax(np.ravel(err))])!r}."
            f" Normalize with {name} - scipy.special.logsumexp({name}, axis=-1, keepdims=True)."
        )
    return np.asarray(log_p, dtype=np.float64)


def _check_params(log_pi, means, variances, func):
    log_pi = _check_log_probs(log_pi, "log_pi", func, ndim=1)
    C = log_pi.shape[0]
    if C < 1:
        raise ValueError(f"{func}: expected log_pi to have at least one component, got shape (0,).")
    check_array(means, "means", func, ndim=2)
    if means.shape[0] != C or means.shape[1] < 1:
        raise ValueError(
            f"{func}: expected means to have shape (C, D) with C == log_pi.shape[0] ({C}) and "
            f"D >= 1, got {tuple(means.shape)}."
        )
    check_array(variances, "variances", func, ndim=2)
    if variances.shape != means.shape:
        raise ValueError(
            f"{func}: expected variances to have the shape of means {tuple(means.shape)}, got "
            f"{tuple(variances.shape)}."
        )
    if not bool(np.all(variances > 0)):
        raise ValueError(
            f"{func}: expected variances to be positive, got {int(np.sum(variances <= 0))} "
            f"entries <= 0 (smallest {float(np.min(variances))!r}). Floor them, e.g. "
            f"numpy.maximum(variances, 1e-6)."
        )
    return log_pi, np.asarray(means, dtype=np.float64), np.asarray(variances, dtype=np.float64)


def _check_x(x, D, func):
    check_array(x, "x", func, ndim=2)
    if x.shape[1] != D:
        raise ValueError(
            f"{func}: expected x.shape[1] == means.shape[1] ({D}), got x of shape "
            f"{tuple(x.shape)}. Pass a batch of shape (B, {D})."
        )
    return np.asarray(x, dtype=np.float64)


def _check_gmm(params, func):
    if not isinstance(params, GMM):
        raise TypeError(
            f"{func}: expected params to be a GMM, got {type(params).__name__}. Build one with "
            f"GMM(log_pi=..., means=..., variances=...) or gmm_fit_em(...)."
        )
    return _check_params(*params, func)


# ---------------------------------------------------------------------------------------------
# private math (float64, valid input)


def _log_joint(x, log_pi, means, variances):
    """log p(x_b, c) for every row and component, shape (B, C)."""
    B, C = x.shape[0], log_pi.shape[0]
    out = np.empty((B, C))  # (B, C)
    log_norm = -0.5 * np.sum(_LOG_2PI + np.log(variances), axis=1)  # (C,)
    # A loop over components keeps memory at O(B D) instead of a (B, C, D) broadcast;
    # C is small for an oracle. Squared distances are formed directly (not expanded into
    # x^2 - 2 x mu + mu^2), so there is no cancellation far from the means.
    for c in range(C):
        diff = x - means[c]  # (B, D)
        out[:, c] = log_pi[c] + log_norm[c] - 0.5 * np.sum(diff * diff / variances[c], axis=1)
    return out


def _sample_categorical(rng, log_q, shape):
    """Inverse-CDF draws from rows of log_q (R, C); returns ints of shape shape + (R,)."""
    q = np.exp(log_q - np.max(log_q, axis=-1, keepdims=True))  # (R, C)
    cdf = np.cumsum(q, axis=-1)  # (R, C)
    u = rng.random(shape + (q.shape[0],)) * cdf[:, -1]  # (..., R)
    # Count of cdf entries <= u is the first index with cdf > u; zero-weight categories have
    # cdf equal to their predecessor and are never chosen. min() guards the u == total edge.
    idx = np.sum(u[..., None] >= cdf, axis=-1)  # (..., R)
    return np.minimum(idx, q.shape[1] - 1)


# ---------------------------------------------------------------------------------------------
# public API


def gmm_log_joint(x, log_pi, means, variances):
    r"""Log joint :math:`\log p(x_b, c)` of every row and component.

    Parameters
    ----------
    x : ndarray of shape (B, D)
        Data.
    log_pi : ndarray of shape (C,)
        Normalized log mixture weights (``-inf`` allowed).
    means : ndarray of shape (C, D)
        Component means.
    variances : ndarray of shape (C, D)
        Component variances, > 0.

    Returns
    -------
    log_pxc : ndarray of shape (B, C)
        float64; ``-inf`` in the columns of zero-weight components.

    Raises
    ------
    ValueError
        Shape mismatches, NaN (or Inf in ``x``, ``means``, ``variances``), non-positive
        variances, ``log_pi`` containing +inf or not normalized.
    TypeError
        Non-array or non-float arguments.

    Notes
    -----
    .. math::

        \log p(x, c) = \log\pi_c - \tfrac12 \sum_{d=1}^{D}
        \left[\log(2\pi v_{cd}) + (x_d - \mu_{cd})^2 / v_{cd}\right].
    """
    func = "gmm_log_joint"
    log_pi, means, variances = _check_params(log_pi, means, variances, func)
    x = _check_x(x, means.shape[1], func)
    return _log_joint(x, log_pi, means, variances)


def gmm_log_marginal(x, log_pi, means, variances):
    r"""Exact log-marginal likelihood :math:`\log p(x)` of a diagonal Gaussian mixture.

    Parameters
    ----------
    x : ndarray of shape (B, D)
        Data.
    log_pi : ndarray of shape (C,)
        Normalized log mixture weights (``-inf`` allowed).
    means : ndarray of shape (C, D)
        Component means.
    variances : ndarray of shape (C, D)
        Component variances, > 0.

    Returns
    -------
    log_px : ndarray of shape (B,)
        float64.

    Raises
    ------
    ValueError, TypeError
        As for :func:`gmm_log_joint`.

    Notes
    -----
    .. math::

        \log p(x) = \operatorname{logsumexp}_c \log p(x, c)
                  = a + \log \sum_c \exp(\log p(x, c) - a), \quad a = \max_c \log p(x, c),

    which stays finite far from every mean, where each :math:`p(x, c)` underflows to 0.
    """
    func = "gmm_log_marginal"
    log_pi, means, variances = _check_params(log_pi, means, variances, func)
    x = _check_x(x, means.shape[1], func)
    return logsumexp(_log_joint(x, log_pi, means, variances), axis=1)


def gmm_log_posterior(x, log_pi, means, variances):
    r"""Log responsibilities :math:`\log p(c \mid x_b)`, shape (B, C).

    Parameters and errors as for :func:`gmm_log_marginal`.

    Returns
    -------
    log_resp : ndarray of shape (B, C)
        :math:`\log p(x_b, c) - \log p(x_b)`; each row has logsumexp 0. Computed in log space,
        so it stays finite (no ``log(0)``) for components that are merely improbable.
    """
    func = "gmm_log_posterior"
    log_pi, means, variances = _check_params(log_pi, means, variances, func)
    x = _check_x(x, means.shape[1], func)
    log_joint = _log_joint(x, log_pi, means, variances)  # (B, C)
    return log_joint - logsumexp(log_joint, axis=1, keepdims=True)


def gmm_posterior(x, log_pi, means, variances):
    r"""Responsibilities :math:`p(c \mid x_b)`, shape (B, C).

    Parameters
    ----------
    x : ndarray of shape (B, D)
        Data.
    log_pi : ndarray of shape (C,)
        Normalized log mixture weights (``-inf`` allowed).
    means : ndarray of shape (C, D)
        Component means.
    variances : ndarray of shape (C, D)
        Component variances, > 0.

    Returns
    -------
    resp : ndarray of shape (B, C)
        Rows sum to 1, float64.

    Raises
    ------
    ValueError, TypeError
        As for :func:`gmm_log_joint`.

    Notes
    -----
    .. math::

        p(c \mid x) = \exp\left(\log p(x, c) - \operatorname{logsumexp}_{c'} \log p(x, c')\right).
    """
    func = "gmm_posterior"
    log_pi, means, variances = _check_params(log_pi, means, variances, func)
    x = _check_x(x, means.shape[1], func)
    log_joint = _log_joint(x, log_pi, means, variances)  # (B, C)
    return np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))


def gmm_sample(rng, params, n):
    """Draw ``n`` ancestral samples ``(x, c)`` from a diagonal Gaussian mixture.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness; no global state is touched.
    params : GMM
        Mixture parameters.
    n : int
        Number of samples, >= 1.

    Returns
    -------
    x : ndarray of shape (n, D)
        Observations, float64.
    c : ndarray of shape (n,), int64
        The component that generated each row (never one with weight 0).

    Raises
    ------
    TypeError
        ``rng`` not a Generator, ``params`` not a GMM.
    InvalidParameterError
        ``n`` not an int in [1, inf).
    """
    func = "gmm_sample"
    check_rng(rng, func)
    log_pi, means, variances = _check_gmm(params, func)
    n = check_param(n, "n", func, kind="int", low=1, low_inclusive=True)
    c = _sample_categorical(rng, log_pi[None, :], (n,))[:, 0]  # (n,)
    noise = rng.standard_normal((n, means.shape[1]))  # (n, D)
    x = means[c] + np.sqrt(variances[c]) * noise  # (n, D)
    return x, c


def gmm_importance_log_marginal(x, params, proposal_log_probs, K, rng, *, return_log_weights=False):
    r"""K-sample importance estimate of :math:`\log p(x)` with a proposal over components.

    Parameters
    ----------
    x : ndarray of shape (B, D)
        Data.
    params : GMM
        Mixture parameters (the target :math:`p(x, c)`).
    proposal_log_probs : ndarray of shape (C,) or (B, C)
        :math:`\log q(c \mid x_b)`, normalized over C; shape (C,) uses one proposal for every
        row (e.g. uniform ``numpy.full(C, -numpy.log(C))``). ``-inf`` entries are allowed but
        make the estimate biased wherever the posterior is positive there.
    K : int
        Samples per row, >= 1.
    rng : numpy.random.Generator
        Source of the component draws.
    return_log_weights : bool, default False
        Also return the log importance weights.

    Returns
    -------
    log_px_hat : ndarray of shape (B,)
        :math:`\log \frac1K \sum_k w_k`, float64.
    log_weights : ndarray of shape (K, B)
        :math:`\log w_{kb} = \log p(x_b, c_{kb}) - \log q(c_{kb} \mid x_b)`; returned only when
        ``return_log_weights``.

    Raises
    ------
    ValueError, TypeError
        As for :func:`gmm_log_joint`; ``proposal_log_probs`` with NaN, +inf, a wrong shape or
        rows that are not normalized; ``rng`` not a Generator.
    InvalidParameterError
        ``K`` not an int in [1, inf).

    Notes
    -----
    With :math:`c_k \sim q(c \mid x)` i.i.d.,

    .. math::

        \hat L_K = \log \frac1K \sum_{k=1}^K \frac{p(x, c_k)}{q(c_k \mid x)}
                 = \operatorname{logsumexp}_k \log w_k - \log K .

    :math:`\mathbb E[\frac1K\sum_k w_k] = p(x)` when :math:`q > 0` wherever
    :math:`p(c \mid x) > 0`, so by Jensen :math:`\mathbb E \hat L_K \le \log p(x)` (the IWAE
    bound), the gap is :math:`O(1/K)` and the standard deviation :math:`O(1/\sqrt K)`: by the
    delta method about :math:`\operatorname{sd}_q(w) / (\sqrt K\, p(x))`. When
    :math:`q(c \mid x) = p(c \mid x)`, every weight is :math:`p(x, c)/p(c \mid x) = p(x)`,
    so :math:`\hat L_K = \log p(x)` for every draw and every K.

    References
    ----------
    .. [1] Y. Burda, R. Grosse and R. Salakhutdinov, "Importance weighted autoencoders",
       ICLR 2016, eq. (8).
    """
    func = "gmm_importance_log_marginal"
    log_pi, means, variances = _check_gmm(params, func)
    x = _check_x(x, means.shape[1], func)
    B, C = x.shape[0], log_pi.shape[0]
    log_q = _check_log_probs(proposal_log_probs, "proposal_log_probs", func, ndim=(1, 2))
    if log_q.shape[-1] != C or (log_q.ndim == 2 and log_q.shape[0] != B):
        raise ValueError(
            f"{func}: expected proposal_log_probs to have shape ({C},) or ({B}, {C}) to match "
            f"params ({C} components) and x ({B} rows), got {tuple(log_q.shape)}."
        )
    K = check_param(K, "K", func, kind="int", low=1, low_inclusive=True)
    check_rng(rng, func)
    log_q = np.broadcast_to(log_q, (B, C))  # (B, C)
    c = _sample_categorical(rng, log_q, (K,))  # (K, B)
    log_joint = _log_joint(x, log_pi, means, variances)  # (B, C)
    rows = np.arange(B)
    log_w = log_joint[rows, c] - log_q[rows, c]  # (K, B)
    log_px_hat = logsumexp(log_w, axis=0) - np.log(K)  # (B,)
    if return_log_weights:
        return log_px_hat, log_w
    return log_px_hat


def gmm_fit_em(x, C, rng, n_iter=200, tol=1e-8, reg=1e-6):
    r"""Fit a diagonal Gaussian mixture by expectation-maximization.

    Parameters
    ----------
    x : ndarray of shape (B, D)
        Training data, finite.
    C : int
        Number of components, in [1, B].
    rng : numpy.random.Generator
        Drives the k-means++ initialization; the rest is deterministic.
    n_iter : int, default 200
        Maximum number of EM iterations (M-steps), >= 1.
    tol : float, default 1e-8
        Stop when the mean log-likelihood per row improves by less than ``tol`` (>= 0).
    reg : float, default 1e-6
        Variance floor, > 0: every variance is constrained to ``[reg, inf)``, which keeps
        the likelihood bounded when a component collapses onto one point.

    Returns
    -------
    params : GMM
        Fitted parameters; the ones whose mean log-likelihood is ``history[-1]``.
    history : ndarray of shape (T + 1,)
        Mean over rows of :math:`\log p(x_b)` after initialization and after each of the
        T <= ``n_iter`` iterations. Non-decreasing (see Notes).

    Raises
    ------
    ValueError, TypeError
        Bad ``x`` (see :func:`gmm_log_marginal`), ``rng`` not a Generator.
    InvalidParameterError
        ``C``, ``n_iter``, ``tol`` or ``reg`` outside their ranges.

    Notes
    -----
    Initialization: means by greedy k-means++ seeding [2]_ (first center uniform; each next
    one the best, by summed squared distance to the nearest center, of :math:`2 + \lfloor\log
    C\rfloor` rows drawn with probability proportional to that squared distance),
    variances equal to the data's per-dimension variance (floored at ``reg``), uniform weights.

    E-step: :math:`r_{bc} = p(c \mid x_b)` in log space. M-step, with
    :math:`N_c = \sum_b r_{bc}`:

    .. math::

        \pi_c = N_c / B, \qquad
        \mu_c = \frac{1}{N_c}\sum_b r_{bc} x_b, \qquad
        v_{cd} = \max\!\left(\mathrm{reg}, \frac{1}{N_c}\sum_b r_{bc}(x_{bd} - \mu_{cd})^2\right).

    The expected complete-data log-likelihood is, in each :math:`v_{cd}`,
    :math:`-\frac{N_c}2(\log v + S/v)`, unimodal with its peak at :math:`S`; so
    :math:`\max(\mathrm{reg}, S)` is its exact maximizer over the feasible set
    :math:`v \ge \mathrm{reg}`, and the EM guarantee of a non-decreasing likelihood holds.
    (Adding ``reg`` to :math:`S`, as scikit-learn does, is not a maximizer and can lower
    it.) A component with :math:`N_c = 0` keeps its mean and variances and gets weight 0
    (``log_pi = -inf``). If rounding makes a final step lower the likelihood by a few ulps,
    that step is dropped, so ``history`` is non-decreasing in floating point too.

    References
    ----------
    .. [1] A. P. Dempster, N. M. Laird and D. B. Rubin, "Maximum likelihood from incomplete
       data via the EM algorithm", J. R. Statist. Soc. B 39(1), 1-38, 1977, Theorem 1.
    .. [2] D. Arthur and S. Vassilvitskii, "k-means++: the advantages of careful seeding",
       SODA 2007.
    """
    func = "gmm_fit_em"
    check_array(x, "x", func, ndim=2)
    B, D = x.shape
    if B < 1 or D < 1:
        raise ValueError(
            f"{func}: expected x to have shape (B, D) with B, D >= 1, got {tuple(x.shape)}."
        )
    C = check_param(C, "C", func, kind="int", low=1, low_inclusive=True, high=B)
    check_rng(rng, func)
    n_iter = check_param(n_iter, "n_iter", func, kind="int", low=1, low_inclusive=True)
    tol = check_param(tol, "tol", func, kind="float", low=0.0, low_inclusive=True)
    reg = check_param(reg, "reg", func, kind="float", low=0.0)
    x = np.asarray(x, dtype=np.float64)

    means = _kmeans_pp(x, C, rng)  # (C, D)
    variances = np.tile(np.maximum(x.var(axis=0), reg), (C, 1))  # (C, D)
    log_pi = np.full(C, -np.log(C))  # (C,)
    params = GMM(log_pi, means, variances)

    log_joint = _log_joint(x, *params)  # (B, C)
    log_px = logsumexp(log_joint, axis=1)  # (B,)
    history = [float(log_px.mean())]
    for _ in range(n_iter):
        resp = np.exp(log_joint - log_px[:, None])  # (B, C)
        new = _m_step(x, resp, params, reg)
        log_joint = _log_joint(x, *new)
        log_px = logsumexp(log_joint, axis=1)
        ll = float(log_px.mean())
        if ll < history[-1]:
            # Only rounding can do this (EM is monotone): keep the better parameters.
            break
        params = new
        history.append(ll)
        if ll - history[-2] < tol:
            break
    return params, np.asarray(history)


def _kmeans_pp(x, C, rng):
    """Greedy k-means++ seeding: C row indices of x, returned as centers (C, D)."""
    B = x.shape[0]
    # Greedy variant (as in scikit-learn): of 2 + log C candidates drawn by D^2 sampling, keep
    # the one that lowers the potential most; a single draw lands two seeds in one cluster
    # noticeably more often, which EM then cannot undo.
    n_trials = 2 + int(np.log(C))
    idx = [int(rng.integers(B))]
    d2 = np.sum((x - x[idx[0]]) ** 2, axis=1)  # (B,)
    for _ in range(1, C):
        total = float(d2.sum())
        if total > 0.0:
            u = rng.random(n_trials) * total  # (T,)
            cand = np.minimum(np.searchsorted(np.cumsum(d2), u, side="right"), B - 1)
        else:  # every row coincides with a chosen center: any row will do
            cand = rng.integers(B, size=n_trials)
        cand_d2 = np.minimum(
            d2, np.sum((x[None, :, :] - x[cand][:, None, :]) ** 2, axis=2)
        )  # (T, B)
        best = int(np.argmin(cand_d2.sum(axis=1)))
        idx.append(int(cand[best]))
        d2 = cand_d2[best]
    return x[idx].copy()


def _m_step(x, resp, params, reg):
    Nc = resp.sum(axis=0)  # (C,)
    means = params.means.copy()  # (C, D)
    variances = params.variances.copy()  # (C, D)
    for c in np.flatnonzero(Nc > 0):
        r = resp[:, c]  # (B,)
        means[c] = (r @ x) / Nc[c]
        diff = x - means[c]  # (B, D)
        # Centered second moment, not E[x^2] - mu^2, which cancels when mu is large.
        variances[c] = np.maximum((r @ (diff * diff)) / Nc[c], reg)
    with np.errstate(divide="ignore"):  # N_c == 0 gives weight 0, i.e. log_pi = -inf
        log_pi = np.log(Nc) - np.log(Nc.sum())
    return GMM(log_pi, means, variances)
