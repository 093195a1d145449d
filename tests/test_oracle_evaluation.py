"""The K-sample log-likelihood of the VAE and the IWAE, replayed in PyTorch from its noise.

``model.log_likelihood(x, rng, k, batch_size, chunk_size)`` takes its noise from the
counter-based Philox stream, and a caller can replay it without lvmcore's kernels:

- evaluation batch i (rows ``i*batch_size`` on, in order) takes one seed,
  ``seed_i = int(rng.integers(0, 2**63))``, when the evaluation reaches it;
- its noise for all k samples is ``kernels.philox.normal_ref(seed_i, 0, k * B_i * Z, dtype)``
  reshaped to (k, B_i, Z): sample s of row b starts at element ``s*B_i*Z + b*Z``, whatever
  the chunking (the chunks draw their own element ranges of the same stream).

From it, written here in torch from the math: z = mu + exp(logvar / 2) eps, log w = log p(x|z)
+ log p(z) - log q(z|x), and log p(x) ~ logsumexp_s log w - log k. The estimate must agree with
lvmcore's to float64 rounding (rtol 1e-10) for uneven batches and chunks, Bernoulli and
Gaussian likelihoods, and either model.
"""

import numpy as np
import pytest
from oracle_torch import (
    bernoulli_loglik,
    leaves,
    log_mean_exp,
    log_normal,
    log_std_normal,
    mlp,
    one_torch_thread,  # noqa: F401  (autouse)
    perturb,
)

from kernels.philox import normal_ref
from lvmcore.models import IWAE, VAE

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.oracle

D, Z = 9, 3


def _torch_log_likelihood(model, x, seed, k, batch_size, activation, likelihood):
    P = leaves(model, requires_grad=False)
    rng = np.random.default_rng(seed)
    out = []
    for b0 in range(0, x.shape[0], batch_size):
        xb = torch.tensor(x[b0 : b0 + batch_size])
        B = xb.shape[0]
        seed_i = int(rng.integers(0, 2**63))
        eps = torch.tensor(normal_ref(seed_i, 0, k * B * Z, np.float64).reshape(k, B, Z))
        h = mlp(P, "encoder", xb, activation)
        mu, logvar = h[:, :Z], h[:, Z:]
        z = mu + torch.exp(0.5 * logvar) * eps  # (k, B, Z)
        y = mlp(P, "decoder", z.reshape(k * B, Z), activation).reshape(k, B, D)
        if likelihood == "bernoulli":
            log_px = bernoulli_loglik(y, xb)
        else:
            log_px = log_normal(xb, y, P["decoder.logvar"])
        log_w = log_px + log_std_normal(z) - log_normal(z, mu, logvar)  # (k, B)
        out.append(log_mean_exp(log_w))
    return torch.cat(out).numpy()


def _model(cls, likelihood, hidden, activation, seed):
    kw = {"k": 4} if cls is IWAE else {}
    model = cls(
        D,
        Z,
        hidden,
        activation=activation,
        likelihood=likelihood,
        seed=seed,
        dtype=np.float64,
        **kw,
    )
    return perturb(model, seed + 100, 0.3)


@pytest.mark.parametrize(
    "cls, likelihood, hidden, activation, k, batch_size, chunk_size",
    [
        (VAE, "bernoulli", (7,), "tanh", 7, 3, 3),
        (VAE, "bernoulli", (7, 5), "softplus", 10, 5, None),
        (VAE, "gaussian", (6,), "relu", 5, 2, 2),
        (IWAE, "bernoulli", (7,), "tanh", 9, 4, 4),
        (IWAE, "gaussian", (6, 4), "tanh", 6, 5, 1),
    ],
)
def test_the_k_sample_estimate_replays_from_its_philox_noise(
    cls, likelihood, hidden, activation, k, batch_size, chunk_size
):
    data = np.random.default_rng(3)
    n = 5
    if likelihood == "bernoulli":
        x = (data.random((n, D)) < 0.4).astype(np.float64)
    else:
        x = data.standard_normal((n, D))
    model = _model(cls, likelihood, hidden, activation, seed=11)
    got = model.log_likelihood(
        x, np.random.default_rng(21), k=k, batch_size=batch_size, chunk_size=chunk_size
    )
    want = _torch_log_likelihood(model, x, 21, k, batch_size, activation, likelihood)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)
    # a different seed is a different estimate: the replay is not vacuous
    other = _torch_log_likelihood(model, x, 22, k, batch_size, activation, likelihood)
    assert not np.allclose(got, other, rtol=1e-6, atol=0)
