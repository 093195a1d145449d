"""The adversarial autoencoder's blocks: discriminator, its two losses, the target samplers."""

import math

import numpy as np
import pytest

from lvmcore import InvalidParameterError
from lvmcore.losses.adversarial import (
    discriminator_loss_backward,
    discriminator_loss_forward,
    generator_loss_backward,
    generator_loss_forward,
)
from lvmcore.nn.discriminator import (
    Discriminator,
    circle_mixture,
    gaussian_target_sample,
    mixture_target_sample,
)
from lvmcore.oracles.gmm import gmm_log_marginal
from lvmcore.testing import gradcheck


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_discriminator_backward_by_central_differences(rng, activation):
    disc = Discriminator(3, (5, 4), rng, activation=activation, dtype=np.float64)
    for k in ("b0", "b1", "b2"):  # nonzero biases: no row sits on a ReLU kink
        disc.params[k] += 0.3 * rng.standard_normal(disc.params[k].shape)
    z = rng.standard_normal((6, 3))
    G = rng.standard_normal(6)
    logits, cache = disc.forward(z)
    assert logits.shape == (6,)
    disc.zero_grad()
    dz = disc.backward(G, cache)
    analytic = {**{k: g.copy() for k, g in disc.grads.items()}, "z": dz}
    gradcheck(lambda: np.sum(disc.forward(z)[0] * G), {**disc.params, "z": z}, analytic)


def test_loss_backwards_by_central_differences(rng):
    dp, dq = 2 * rng.standard_normal(5), 2 * rng.standard_normal(7)
    _, cache = discriminator_loss_forward(dp, dq)
    gp, gq = discriminator_loss_backward(cache, dloss=1.7)
    gradcheck(
        lambda: 1.7 * discriminator_loss_forward(dp, dq)[0],
        {"dp": dp, "dq": dq},
        {"dp": gp, "dq": gq},
    )
    for saturating in (False, True):
        _, cache = generator_loss_forward(dq, saturating=saturating)
        g = generator_loss_backward(cache, dloss=0.6)
        gradcheck(
            lambda s=saturating: 0.6 * generator_loss_forward(dq, s)[0], {"dq": dq}, {"dq": g}
        )


def test_discriminator_and_generator_steps_end_to_end(rng):
    """L_D through D to its parameters; L_G through D to the encoder's codes."""
    disc = Discriminator(2, (6,), rng, activation="tanh", dtype=np.float64)
    z_prior, z_post = rng.standard_normal((4, 2)), rng.standard_normal((5, 2))

    def loss_d():
        return discriminator_loss_forward(disc.forward(z_prior)[0], disc.forward(z_post)[0])[0]

    lp, cp = disc.forward(z_prior)
    lq, cq = disc.forward(z_post)
    _, cache = discriminator_loss_forward(lp, lq)
    dlp, dlq = discriminator_loss_backward(cache)
    disc.zero_grad()
    disc.backward(dlp, cp, need_dx=False)
    disc.backward(dlq, cq, need_dx=False)
    gradcheck(loss_d, disc.params, {k: g.copy() for k, g in disc.grads.items()})

    _, cache = generator_loss_forward(lq)
    dz = disc.backward(generator_loss_backward(cache), cq)
    gradcheck(lambda: generator_loss_forward(disc.forward(z_post)[0])[0], {"z": z_post}, {"z": dz})


def test_loss_values_at_zero_and_at_huge_logits():
    zero = np.zeros(3)
    assert discriminator_loss_forward(zero, zero)[0] == pytest.approx(2 * math.log(2), rel=1e-15)
    assert generator_loss_forward(zero)[0] == pytest.approx(math.log(2), rel=1e-15)
    assert generator_loss_forward(zero, saturating=True)[0] == pytest.approx(-math.log(2))
    big = np.array([1e30, 1e4])
    loss, cache = discriminator_loss_forward(big, -big)
    assert loss == 0.0
    gp, gq = discriminator_loss_backward(cache)
    assert np.all(gp == 0) and np.all(gq == 0)
    loss, cache = discriminator_loss_forward(-big, big)  # the discriminator is fooled
    assert loss == pytest.approx(np.mean(big) * 2, rel=1e-15)
    np.testing.assert_array_equal(discriminator_loss_backward(cache)[0], [-0.5, -0.5])
    # the discriminator wins: the saturating gradient vanishes, the non-saturating one does not
    _, sat = generator_loss_forward(-big, saturating=True)
    _, nonsat = generator_loss_forward(-big)
    assert np.all(generator_loss_backward(sat) == 0)
    np.testing.assert_array_equal(generator_loss_backward(nonsat), [-0.5, -0.5])
    assert generator_loss_forward(np.array([np.inf]))[0] == 0.0


def test_gaussian_target_moments(rng):
    z = gaussian_target_sample(rng, 20_000, 3, dtype=np.float64)
    assert z.shape == (20_000, 3) and z.dtype == np.float64
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=4 / math.sqrt(20_000))
    np.testing.assert_allclose(np.cov(z.T), np.eye(3), atol=0.05)


def test_circle_mixture_samples_follow_their_components(rng):
    mix = circle_mixture(2, n_components=10, radius=4.0, std=0.5)
    np.testing.assert_allclose(np.linalg.norm(mix.means, axis=1), 4.0)
    n = 30_000
    z, comp = mixture_target_sample(rng, n, mix, dtype=np.float64)
    assert z.shape == (n, 2) and comp.shape == (n,) and comp.dtype == np.int64
    counts = np.bincount(comp, minlength=10)
    assert np.all(np.abs(counts / n - 0.1) < 5 * math.sqrt(0.09 / n))
    for c in range(10):
        zc = z[comp == c]
        np.testing.assert_allclose(zc.mean(axis=0), mix.means[c], atol=5 * 0.5 / math.sqrt(len(zc)))
        np.testing.assert_allclose(zc.std(axis=0), 0.5, rtol=0.08)
    # every draw is most likely under its own component, almost always (5 sd apart)
    log_p = gmm_log_marginal(z[:100], *mix)
    assert np.all(np.isfinite(log_p))


def test_mixture_target_respects_weights_and_dimension(rng):
    mix = circle_mixture(3, n_components=4, radius=2.0, std=0.1)
    assert mix.means.shape == (4, 3) and np.all(mix.means[:, 2] == 0)
    log_pi = np.log(np.array([0.0, 0.5, 0.5, 0.0]) + 1e-300)
    log_pi[[0, 3]] = -np.inf
    z, comp = mixture_target_sample(rng, 2000, (log_pi, mix.means, mix.variances))
    assert z.dtype == np.float32 and set(np.unique(comp).tolist()) == {1, 2}


def test_adversarial_blocks_reject_bad_input(rng):
    with pytest.raises(InvalidParameterError, match="'n' parameter of gaussian_target_sample"):
        gaussian_target_sample(rng, 0, 2)
    with pytest.raises(InvalidParameterError, match="'n' parameter of mixture_target_sample"):
        mixture_target_sample(rng, -3, circle_mixture())
    with pytest.raises(InvalidParameterError, match="'n_latent' parameter of circle_mixture"):
        circle_mixture(1)
    mix = circle_mixture()
    with pytest.raises(ValueError, match="mixture_target_sample: expected mixture with log_pi"):
        mixture_target_sample(rng, 5, (mix.log_pi[:3], mix.means, mix.variances))
    with pytest.raises(ValueError, match="expected finite means and finite positive variances"):
        mixture_target_sample(rng, 5, (mix.log_pi, mix.means, -mix.variances))
    with pytest.raises(TypeError, match="mixture_target_sample: expected mixture to be a GMM"):
        mixture_target_sample(rng, 5, mix.means)
    disc = Discriminator(2, (4,), rng)
    with pytest.raises(ValueError, match=r"Discriminator.forward: expected z.shape\[-1\] == 2"):
        disc.forward(np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match=r"Discriminator.forward: expected z of shape \(N, 2\)"):
        disc.forward(np.zeros((2, 3, 2), np.float32))
    with pytest.raises(TypeError, match="Discriminator.forward: expected z to have dtype float32"):
        disc.forward(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="Discriminator: expected hidden to list at least one"):
        Discriminator(2, (), rng)
    with pytest.raises(ValueError, match="discriminator_loss_forward: expected logits_post to"):
        discriminator_loss_forward(np.zeros(3), np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="generator_loss_forward: expected logits_post to have 1"):
        generator_loss_forward(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="generator_loss_forward: expected logits_post to hold"):
        generator_loss_forward(np.zeros(0))
    with pytest.raises(InvalidParameterError, match="'saturating' parameter"):
        generator_loss_forward(np.zeros(3), saturating="yes")
    _, cache = disc.forward(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="Discriminator.backward: expected dlogits"):
        disc.backward(np.zeros((3, 1), np.float32), cache)
