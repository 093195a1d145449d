"""Every registered model checks the arguments of its methods: batch sizes, sample counts,
generators, empty data, layer widths and dtypes give a clear error naming the argument."""

import numpy as np
import pytest

from lvmcore.exceptions import InvalidParameterError
from lvmcore.models import MODELS, VQVAE

D = 6
# A small instance of each registered model: a new model adds its line here.
SMALL = {
    "vae": dict(latent_dim=2, hidden=(4,)),
    "iwae": dict(latent_dim=2, hidden=(4,), k=2),
    "vqvae": dict(codes=4, slots=2, code_dim=2, hidden=(4,)),
    "catvae": dict(n_latents=2, n_categories=3, hidden=(4,)),
    "mvae": dict(latent_dim=2, hidden=(4,)),
    "aae": dict(latent_dim=2, hidden=(4,)),
}
# Models conditioned on labels: their argument checks, labels included, are tested with their
# own calls in tests/test_models_latent.py and, probe by probe, in tests/test_bad_input.py.
LABELLED = {"cvae"}


def small(name, **kw):
    return MODELS[name](D, **{**SMALL[name], **kw})


def data(n=5):
    return (np.random.default_rng(0).random((n, D)) > 0.5).astype(np.float32)


def test_every_registered_model_has_a_small_instance():
    assert set(SMALL) | LABELLED == set(MODELS)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("method", ["bound", "elbo"])
@pytest.mark.parametrize("batch_size", [-1, 0, 2.5, "10", None])
def test_bound_and_elbo_check_batch_size(name, method, batch_size):
    model = small(name)
    fn = getattr(model, method)
    with pytest.raises(InvalidParameterError, match=r"'batch_size' parameter of \w+\.\w+"):
        fn(data(), np.random.default_rng(0), batch_size=batch_size)


def test_vqvae_elbo_with_negative_batch_size_is_refused_not_empty():
    # the reproducer: it returned an empty array
    model = small("vqvae")
    with pytest.raises(InvalidParameterError, match=r"'batch_size' parameter of VQVAE\.elbo"):
        model.elbo(data(), np.random.default_rng(0), batch_size=-1)
    with pytest.raises(InvalidParameterError, match=r"'batch_size' parameter of VQVAE\.bound"):
        model.bound(data(), np.random.default_rng(0), batch_size=-1)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_bound_and_elbo_of_zero_rows_are_empty(name):
    model = small(name)
    for fn in (model.bound, model.elbo):
        out = fn(data(0), np.random.default_rng(0))
        assert out.shape == (0,) and out.dtype == model.dtype


@pytest.mark.parametrize("name", sorted(SMALL))
def test_evaluation_needs_a_generator(name):
    model = small(name)
    if name == "vqvae":  # deterministic: rng is accepted and unused, None included
        assert model.bound(data(), None).shape == (5,)
        with pytest.raises(TypeError, match="expected rng to be a numpy.random.Generator"):
            model.bound(data(), 7)
        return
    for fn in (model.bound, model.elbo):
        with pytest.raises(TypeError, match="expected rng to be a numpy.random.Generator"):
            fn(data(), None)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("n", [-1, 1.5, None])
def test_sample_checks_n_and_rng(name, n):
    model = small(name)
    with pytest.raises(InvalidParameterError, match=r"'n' parameter of \w+\.sample"):
        model.sample(np.random.default_rng(0), n)
    with pytest.raises(TypeError, match=r"\w+\.sample: expected rng"):
        model.sample(None, 2)
    assert model.sample(np.random.default_rng(0), 0).shape == (0, D)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_loss_and_grads_on_zero_rows_is_a_clear_error(name):
    model = small(name)
    with pytest.raises(ValueError, match=r"loss_and_grads: expected x to hold at least one row"):
        model.loss_and_grads(data(0), np.random.default_rng(0))


@pytest.mark.parametrize("name", ["vae", "iwae", "catvae"])
def test_loss_and_grads_needs_a_generator(name):
    with pytest.raises(TypeError, match=r"loss_and_grads: expected rng to be a numpy"):
        small(name).loss_and_grads(data(), None)


def test_vqvae_loss_and_grads_without_rng_but_with_dead_code_reset():
    model = small("vqvae", reset_dead_codes=True, dead_code_steps=1)
    with pytest.raises(TypeError, match=r"VQVAE.loss_and_grads: expected rng to be a numpy"):
        model.loss_and_grads(data(), None)
    # without the reset nothing is drawn: None is accepted
    loss, _ = small("vqvae").loss_and_grads(data(), None)
    assert np.isfinite(loss)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_loss_and_grads_checks_kl_weight(name):
    model = small(name)
    if name == "vqvae":  # no KL term: any weight is refused
        with pytest.raises(ValueError, match="expected kl_weight None"):
            model.loss_and_grads(data(), np.random.default_rng(0), kl_weight=1.0)
        return
    with pytest.raises(InvalidParameterError, match="'kl_weight' parameter"):
        model.loss_and_grads(data(), np.random.default_rng(0), kl_weight=-1.0)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("hidden", [8, "8", 8.0, (8, 0), (8, None)])
def test_hidden_must_be_a_sequence_of_positive_ints(name, hidden):
    with pytest.raises(InvalidParameterError, match=r"'hidden' parameter of \w+ must be a seq"):
        small(name, hidden=hidden)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("dtype", [None, np.float16, np.int32, "complex64"])
def test_dtype_must_be_float32_or_float64(name, dtype):
    # numpy.dtype(None) is float64: None used to give a float64 model silently
    with pytest.raises(TypeError, match=r"\w+: expected dtype to be float32 or float64"):
        small(name, dtype=dtype)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_draw_noise_checks_its_sizes(name):
    model = small(name)
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidParameterError, match="'batch_size' parameter of .*draw_noise"):
        model.draw_noise(rng, -1)
    with pytest.raises(InvalidParameterError, match="'n_samples' parameter of .*draw_noise"):
        model.draw_noise(rng, 2, 0)


@pytest.mark.parametrize("name", ["vae", "iwae"])
def test_log_likelihood_checks_k_batch_size_and_rng(name):
    model = small(name)
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidParameterError, match="'k' parameter"):
        model.log_likelihood(data(), rng, k=0)
    with pytest.raises(InvalidParameterError, match="'batch_size' parameter"):
        model.log_likelihood(data(), rng, k=2, batch_size=-1)
    with pytest.raises(TypeError, match="log_likelihood: expected rng"):
        model.log_likelihood(data(), None, k=2)


def test_vqvae_helpers_check_batch_size_and_iters():
    model = small("vqvae")
    with pytest.raises(InvalidParameterError, match="'batch_size' parameter of VQVAE.code_usage"):
        model.code_usage(data(), batch_size=0)
    with pytest.raises(InvalidParameterError, match="'iters' parameter of VQVAE.init_codebook"):
        model.init_codebook_kmeans(data(), np.random.default_rng(0), iters=-1)
    assert isinstance(model, VQVAE)


def test_catvae_diagnostics_check_batch_size_and_rows():
    model = small("catvae")
    with pytest.raises(InvalidParameterError, match="'batch_size' parameter of CatVAE.latent"):
        model.latent_diagnostics(data(), batch_size=0)
    with pytest.raises(ValueError, match="latent_diagnostics: expected x to hold at least one"):
        model.latent_diagnostics(data(0))
