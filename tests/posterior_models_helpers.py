"""Checks shared by the tests of the hierarchical and the flow-posterior models.

- ``grads``: one forward/backward for fixed noise, the gradients copied out.
- ``check_plain_gradient``: the whole loss against every parameter array, central differences.
- ``check_path_estimator``: STL and DReG end to end. Neither is the gradient of the fixed-noise
  loss, but each is the gradient of a surrogate with the bound's weights held at their values:
  the generative parameters get that of ``-sum a_s log w_s`` (a the decoder's weights), the
  inference parameters that of ``-sum e_s [log p(x, z_s(phi)) - log q_frozen(z_s(phi) | x)]``
  with e the encoder's (STL) or DReG's weights and ``log q_frozen`` the posterior's density
  evaluated by a frozen copy of the model at the live samples, written here from the blocks'
  density functions (not from the model's backward).
- ``paired_inference_difference``: per-coordinate z-scores of the mean difference between an
  estimator and the plain one on the same noise, for the unbiasedness tests.
"""

import numpy as np

from lvmcore.models import build_model
from lvmcore.testing import gradcheck


def grads(model, x, eps, **kw):
    model.zero_grad()
    _, cache = model.forward(x, eps, **kw)
    model.backward(cache)
    return {k: v.copy() for k, v in model.gradients().items()}


def jitter(model, rng, scale=0.1):
    """Move every parameter off its initial value (zero biases are a special point)."""
    for v in model.parameters().values():
        v += scale * rng.standard_normal(v.shape)
    return model


def check_plain_gradient(model, x, eps, **kw):
    g = grads(model, x, eps, **kw)
    return gradcheck(lambda: model.forward(x, eps, **kw)[0], model.parameters(), g)


def frozen_copy(model):
    other = build_model(model.config())
    other.load_parameters(model.parameters())
    return other


def check_path_estimator(model, x, eps, log_q_frozen, inference_prefixes):
    """``model`` an IWAE-trained model with estimator stl or dreg; ``log_q_frozen(frozen, x,
    cache) -> (S, B)`` the posterior's log-density at the cache's samples, by the frozen copy;
    ``inference_prefixes`` the parameter-name prefixes of the inference network."""
    g = grads(model, x, eps)
    frozen = frozen_copy(model)
    _, (_, bw, _) = model.forward(x, eps)
    a = bw.decoder.copy()
    e = (bw.encoder_dreg if model.estimator == "dreg" else bw.encoder).copy()
    params = model.parameters()
    inference = {k: v for k, v in params.items() if k.startswith(inference_prefixes)}
    generative = {k: v for k, v in params.items() if k not in inference}
    assert inference and generative

    def loss_generative():
        return -float((a * model.log_weights(x, eps)).sum())

    def loss_inference():
        terms, cache = model._terms_forward(x, eps, need_grad=False)
        log_q = log_q_frozen(frozen, x, cache)
        return -float((e * (terms.log_px_z + terms.log_pz - log_q)).sum())

    # the frozen density equals the model's at the unperturbed parameters
    terms, cache = model._terms_forward(x, eps, need_grad=False)
    np.testing.assert_allclose(log_q_frozen(frozen, x, cache), terms.log_qz, rtol=1e-10, atol=1e-10)
    gradcheck(loss_generative, generative, {k: g[k] for k in generative})
    gradcheck(loss_inference, inference, {k: g[k] for k in inference})


def _flat(model, x, rng, n):
    rows = []
    for _ in range(n):
        g = grads(model, x, model.draw_noise(rng, x.shape[0]))
        rows.append(np.concatenate([v.ravel() for _, v in sorted(g.items())]))
    return np.array(rows)


def paired_inference_difference(plain, other, x, inference_prefixes, n, seed=11):
    """z-scores (per inference coordinate) of mean(other - plain) over n paired draws; the
    generative gradients must agree draw by draw."""
    d = _flat(other, x, np.random.default_rng(seed), n) - _flat(
        plain, x, np.random.default_rng(seed), n
    )
    g = plain.gradients()
    names = sorted(g)
    is_inf = np.concatenate(
        [np.full(g[name].size, name.startswith(inference_prefixes)) for name in names]
    )
    np.testing.assert_allclose(d[:, ~is_inf], 0.0, atol=1e-12)
    inf = d[:, is_inf]
    se = inf.std(axis=0, ddof=1) / np.sqrt(n)
    assert (se > 0).sum() > 10  # the estimators really differ sample by sample
    return inf.mean(axis=0) / np.maximum(se, 1e-15)
