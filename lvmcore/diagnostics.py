"""Diagnostics of a trained model: active units, KL per latent dimension, and the
variance and signal-to-noise ratio of gradient estimators."""

import numpy as np

from ._validation import check_param, get_xp
from .distributions.kl import kl_normal_std_per_dim


def posterior_means(model, x, batch_size=1000):
    """mu(x) for every row, shape (N, Z)."""
    xp = get_xp(x)
    return xp.concatenate(
        [model.encode(x[i : i + batch_size])[0] for i in range(0, x.shape[0], batch_size)]
    )


def active_units(model, x, threshold=0.01, batch_size=1000):
    """Latent dimensions whose posterior mean varies over the data.

    A unit u is active when :math:`\\mathrm{Cov}_x(\\mathbb{E}_{q(z|x)}[z_u]) > 0.01`
    (Burda et al. 2016, sec. 5.2).

    Returns
    -------
    count : int
    variances : ndarray of shape (Z,)
        The variance over the data of each dimension's posterior mean.
    """
    threshold = check_param(threshold, "threshold", "active_units", low=0, low_inclusive=True)
    mu = posterior_means(model, x, batch_size).astype(np.float64)
    variances = mu.var(axis=0)
    return int((variances > threshold).sum()), variances


def kl_per_dimension(model, x, batch_size=1000):
    """Mean over the data of KL(q(z_j|x) || N(0, 1)) per latent dimension, shape (Z,)."""
    xp = get_xp(x)
    total = xp.zeros(model.latent_dim, dtype=np.float64)
    for i in range(0, x.shape[0], batch_size):
        mu, logvar = model.encode(x[i : i + batch_size])
        total += kl_normal_std_per_dim(mu, logvar).astype(np.float64).sum(axis=0)
    return total / x.shape[0]


def gradient_statistics(model, x, rng, n_draws=100):
    """Mean, variance and signal-to-noise ratio of the model's gradient estimator.

    The gradient of the batch loss is drawn ``n_draws`` times with fresh noise and the
    parameters fixed. Per coordinate, SNR = |mean| / std (Rainforth et al. 2018, eq. 4).

    Returns
    -------
    dict of str -> dict
        For "encoder" and "decoder": ``mean_snr`` (mean over coordinates),
        ``median_snr``, ``mean_variance`` (mean over coordinates of the variance) and
        ``snr`` (the per-coordinate array).
    """
    n_draws = check_param(
        n_draws, "n_draws", "gradient_statistics", kind="int", low=2, low_inclusive=True
    )
    names = sorted(model.gradients())
    draws = []
    for _ in range(n_draws):
        model.loss_and_grads(x, rng)
        g = model.gradients()
        draws.append(np.concatenate([np.asarray(g[k], np.float64).ravel() for k in names]))
    draws = np.array(draws)  # (n_draws, P)
    mean, std = draws.mean(axis=0), draws.std(axis=0, ddof=1)
    snr = np.abs(mean) / np.where(std > 0, std, np.inf)
    sizes = [model.gradients()[k].size for k in names]
    owner = np.concatenate([np.full(s, k.split(".")[0]) for k, s in zip(names, sizes)])
    out = {}
    for part in ("encoder", "decoder"):
        sel = owner == part
        out[part] = dict(
            mean_snr=float(snr[sel].mean()),
            median_snr=float(np.median(snr[sel])),
            mean_variance=float((std[sel] ** 2).mean()),
            snr=snr[sel],
        )
    return out
