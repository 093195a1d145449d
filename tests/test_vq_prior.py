"""The learned prior over a VQ-VAE's codes: the bound it gives never exceeds the exact log p(x)
of a small enumerable model, its file round-trips and refuses what does not belong, and
sampling decodes its codes."""

import itertools
import json
import zipfile

import numpy as np
import pytest

from lvmcore.models import VAE, VQVAE
from lvmcore.nn import CodePrior
from lvmcore.vq_prior import (
    codes_of,
    fit_prior,
    load_code_prior,
    prior_bound,
    prior_report,
    sample_with_prior,
    save_code_prior,
)


def _model(dtype=np.float64, **kw):
    return VQVAE(4, codes=3, slots=2, code_dim=2, hidden=(5,), seed=3, dtype=dtype, **kw)


def _all_binary(D):
    return np.array(list(itertools.product([0.0, 1.0], repeat=D)))


def _exact_log_px(model, prior, x):
    """log p(x) = logsumexp over all M^S codes of log p_prior(k) + log p(x | z_q(k))."""
    S, M = model.slots, model.codes
    ks = np.array(list(itertools.product(range(M), repeat=S)))  # (M^S, S)
    log_prior = prior.log_prob(ks)  # (M^S,)
    mean = model.decode_codes(ks)  # (M^S, D) Bernoulli means
    log_lik = x @ np.log(mean).T + (1 - x) @ np.log1p(-mean).T  # (N, M^S)
    joint = log_lik + log_prior
    top = joint.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(joint - top).sum(axis=1, keepdims=True)))[:, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prior_bound_never_exceeds_the_exact_log_likelihood(seed):
    rng = np.random.default_rng(seed)
    model = _model()
    model.params["codebook"][...] = rng.standard_normal((3, 2))
    for k, v in model.parameters().items():
        if k.startswith(("encoder", "decoder")):
            v[...] = rng.standard_normal(v.shape)
    prior = CodePrior(2, 3, (4,), rng, dtype=np.float64)
    x = _all_binary(4)  # every data point of the space
    bound = prior_bound(model, prior, x)
    exact = _exact_log_px(model, prior, x)
    assert np.all(bound <= exact + 1e-12)
    assert np.all(bound > exact - 10)  # a bound, not a trivial one
    # the exact marginal sums to one over the data space
    np.testing.assert_allclose(np.exp(exact).sum(), 1.0, rtol=1e-12)
    # the uniform prior's bound is the VQ-VAE's ELBO, and is a bound too
    uniform = model.elbo(x)
    assert np.all(uniform <= _exact_log_px(model, _uniform_prior(), x) + 1e-12)


def _uniform_prior():
    prior = CodePrior(2, 3, (4,), np.random.default_rng(0), dtype=np.float64)
    for v in prior.params.values():
        v[...] = 0  # zero logits: every conditional uniform
    return prior


def test_fit_save_load_report_and_sample(tmp_path):
    rng = np.random.default_rng(0)
    model = _model(np.float32)
    x = (rng.random((60, 4)) < 0.5).astype(np.float32)
    prior, history = fit_prior(model, x, rng, x_valid=x[:20], hidden=(4,), epochs=3)
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[-1]["valid_bits"] > 0
    state = dict(
        epochs=3, batch_size=128, lr=1e-3, seed=0, history=history, checkpoint_epoch=1, n_train=60
    )
    path = save_code_prior(tmp_path / "code_prior.npz", prior, model, state)
    again, saved = load_code_prior(path, model)
    assert saved["n_train"] == 60 and saved["history"] == json.loads(json.dumps(history))
    np.testing.assert_array_equal(
        again.log_prob(codes_of(model, x)), prior.log_prob(codes_of(model, x))
    )
    info, lines = prior_report(model, again, x)
    assert info["uniform_bits_per_code"] == pytest.approx(np.log2(3))
    assert len(lines) == 2
    np.testing.assert_allclose(
        info["prior_bound"] - float(model.bound(x).mean()),
        -info["prior_bits_per_code"] * 2 * np.log(2),
        rtol=1e-4,
    )
    images, codes = sample_with_prior(model, again, np.random.default_rng(1), 5)
    assert images.shape == (5, 4) and codes.shape == (5, 2) and codes.max() < 3


def test_prior_file_refuses_what_does_not_belong(tmp_path):
    rng = np.random.default_rng(0)
    model = _model(np.float32)
    x = (rng.random((30, 4)) < 0.5).astype(np.float32)
    prior, history = fit_prior(model, x, rng, hidden=(4,), epochs=1, embedded=False)
    state = dict(epochs=1, batch_size=128, lr=1e-3, seed=0, history=history, n_train=30)
    path = save_code_prior(tmp_path / "p.npz", prior, model, state)
    with pytest.raises(FileNotFoundError, match="lvmcore train-prior"):
        load_code_prior(tmp_path / "none.npz", model)
    moved = _model(np.float32)
    moved.params["codebook"][0, 0] += 1
    with pytest.raises(ValueError, match="fitted to this VQ-VAE's codebook"):
        load_code_prior(path, moved)
    other = VQVAE(4, codes=4, slots=2, code_dim=2, hidden=(5,), seed=3)
    with pytest.raises(ValueError, match="to model 2 slots of 4 codes"):
        load_code_prior(path, other)
    with pytest.raises(TypeError, match="expected model to be a VQ-VAE"):
        load_code_prior(path, VAE(4, 2, (3,)))
    # an altered member: NaN weights, an unknown member, a broken state
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    bad = dict(arrays)
    bad["param/W0"] = np.full_like(arrays["param/W0"], np.nan)
    np.savez(tmp_path / "nan.npz", **bad)
    with pytest.raises(ValueError, match="no NaN or Inf"):
        load_code_prior(tmp_path / "nan.npz", model)
    np.savez(tmp_path / "extra.npz", **arrays, evil=np.zeros(3))
    with pytest.raises(ValueError, match="refused unread"):
        load_code_prior(tmp_path / "extra.npz", model)
    st = json.loads(str(arrays["state_json"]))
    st["epochs"] = -1
    np.savez(tmp_path / "state.npz", **{**arrays, "state_json": np.array(json.dumps(st))})
    with pytest.raises(ValueError, match="code prior schema"):
        load_code_prior(tmp_path / "state.npz", model)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="readable"):
        load_code_prior(tmp_path / "junk.npz", model)
    assert zipfile.is_zipfile(path)
