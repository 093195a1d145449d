"""The model contract (lvmcore.models.base) held by every registered model: the registry, rows of
a batch's noise, the non-parameter state, the batch-statistic reduction point as a data-parallel
run would use it, the declared capabilities and the CLI flags; the one chunked K-sample
evaluation against the two routines it replaced; the evaluation report and its random keys."""

import argparse
import json
import math

import numpy as np
import pytest

from lvmcore import InvalidParameterError
from lvmcore.backend import get_backend
from lvmcore.evaluate import evaluate, evaluate_report, log_likelihood
from lvmcore.losses import bernoulli_nll_forward, gaussian_nll_forward
from lvmcore.models import (
    IWAE,
    MODELS,
    VAE,
    VQVAE,
    CatVAE,
    Model,
    PriorDecoderIWAE,
    PriorDecoderVAE,
    build_model,
    get_model_class,
    register_model,
)
from lvmcore.models.logweight import IWAETraining

D = 7

# One small float64 instance of each model family and of its variants with batch statistics,
# and of the learned-prior, autoregressive and categorical decoder and dequantized variants (the
# binary data are levels in [0, 3) for the last ones).
CASES = {
    "vae": lambda: VAE(D, 3, (5,), n_samples=2, seed=1, dtype=np.float64),
    "vae-free-bits": lambda: VAE(
        D, 3, (5,), kl="sampled", n_samples=2, free_bits=0.2, seed=1, dtype=np.float64
    ),
    "vae-gaussian": lambda: VAE(D, 3, (5,), likelihood="gaussian", seed=1, dtype=np.float64),
    "iwae": lambda: IWAE(D, 3, (5,), k=4, estimator="dreg", seed=1, dtype=np.float64),
    "piwae": lambda: IWAE(D, 3, (5,), k=2, objective="piwae", groups=2, seed=1, dtype=np.float64),
    "catvae-nvil": lambda: CatVAE(D, 2, 3, (5,), estimator="nvil", seed=1, dtype=np.float64),
    "catvae-vimco": lambda: CatVAE(D, 2, 3, (5,), estimator="vimco", k=3, seed=1, dtype=np.float64),
    "vae-mog-prior": lambda: PriorDecoderVAE(
        D, 3, (5,), prior="mog", prior_components=3, n_samples=2, seed=1, dtype=np.float64
    ),
    "iwae-vamp-prior-dreg": lambda: PriorDecoderIWAE(
        D, 3, (5,), prior="vamp", prior_components=3, k=3, estimator="dreg", dtype=np.float64
    ),
    "vae-flow-prior": lambda: PriorDecoderVAE(
        D, 3, (5,), prior="flow", prior_flow_hidden=(4,), seed=1, dtype=np.float64
    ),
    "vae-made-context-dropout-free-bits": lambda: PriorDecoderVAE(
        D,
        3,
        (5,),
        decoder="made",
        ar_context=3,
        ar_dropout=0.3,
        kl="sampled",
        n_samples=2,
        free_bits=0.2,
        seed=1,
        dtype=np.float64,
    ),
    "iwae-categorical": lambda: PriorDecoderIWAE(
        D, 3, (5,), decoder="categorical", levels=3, k=3, estimator="stl", dtype=np.float64
    ),
    "vae-uniform-dequantized": lambda: PriorDecoderVAE(
        D, 3, (5,), dequantize="uniform", likelihood="logistic", levels=3, dtype=np.float64
    ),
    "iwae-variational-dequantized": lambda: PriorDecoderIWAE(
        D,
        3,
        (5,),
        dequantize="variational",
        likelihood="gaussian",
        levels=3,
        k=2,
        seed=1,
        dtype=np.float64,
    ),
    "vqvae-ema": lambda: VQVAE(
        D,
        codes=5,
        slots=2,
        code_dim=2,
        hidden=(5,),
        codebook_update="ema",
        reset_dead_codes=True,
        dead_code_steps=1,
        seed=1,
        dtype=np.float64,
    ),
}


@pytest.fixture
def rng():
    return np.random.default_rng(20261202)


def _data(rng, B=10):
    return (rng.random((B, D)) < 0.4).astype(np.float64)


def _per_row(model, cache):
    """The per-row quantities of a forward cache, each with its batch axis."""
    if isinstance(model, (IWAE, IWAETraining)):
        _, _, stats = cache
        return {"bound": (stats["bound"], 0), "log_w": (stats["log_w"], 1)}
    if isinstance(model, VQVAE):
        return {"nll": (cache.nll, 0)}
    return {k: (v, 0) for k, v in cache.stats.items()}


# --- the registry ---------------------------------------------------------------------------


def test_registry_names_every_model_once():
    assert list(MODELS) == ["vae", "iwae", "vqvae", "catvae", "cvae", "mvae", "aae"]
    for name, cls in MODELS.items():
        assert cls.name == name and get_model_class(name) is cls and cls.help
        assert issubclass(cls, Model)
    with pytest.raises(ValueError, match=r"get_model_class: expected a model name, one of"):
        get_model_class("hvae")
    with pytest.raises(ValueError, match=r"build_model: expected config\['model'\]"):
        build_model({"model": "hvae"})
    with pytest.raises(TypeError, match="build_model: expected config to be a dict"):
        build_model([("model", "vae")])


def test_register_model_checks_its_argument():
    with pytest.raises(TypeError, match="expected cls to be a subclass of lvmcore.models.Model"):
        register_model(dict)

    class Nameless(Model):
        pass

    with pytest.raises(ValueError, match="expected cls.name to be a non-empty string"):
        register_model(Nameless)

    class Impostor(VAE):
        name = "vae"

    with pytest.raises(ValueError, match="already taken by VAE"):
        register_model(Impostor)
    assert register_model(VAE) is VAE and MODELS["vae"] is VAE  # registering again is harmless


# --- the contract, model by model -------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_noise_rows_give_the_rows_of_the_batch(case, rng):
    model = CASES[case]()
    x = _data(rng)
    model.init_output_bias(x)
    noise = model.draw_noise(rng, x.shape[0])
    _, full = model.forward(x, noise)
    whole = _per_row(model, full)
    for a, b in ((0, 3), (3, 10), (4, 5)):
        _, part = model.forward(x[a:b], model.noise_rows(noise, a, b))
        for key, (rows, axis) in _per_row(model, part).items():
            expect = np.take(whole[key][0], np.arange(a, b), axis=axis)
            np.testing.assert_allclose(rows, expect, rtol=1e-12, atol=1e-12, err_msg=key)


def test_noise_rows_checks_its_arguments(rng):
    model = CASES["vae"]()
    noise = model.draw_noise(rng, 4)  # (2, 4, 3)
    assert model.noise_rows(noise, 1, 3).shape == (2, 2, 3)
    assert model.noise_rows(noise, 1, 3).flags.c_contiguous
    assert CASES["vqvae-ema"]().noise_rows(None, 0, 2) is None
    with pytest.raises(ValueError, match=r"VAE.noise_rows: expected 0 <= start <= stop <= 4"):
        model.noise_rows(noise, 3, 5)
    with pytest.raises(InvalidParameterError, match="'start' parameter of VAE.noise_rows"):
        model.noise_rows(noise, -1, 2)
    with pytest.raises(ValueError, match="expected noise with a batch axis 1"):
        model.noise_rows(noise[0, 0], 0, 1)


@pytest.mark.parametrize("case", list(CASES))
def test_state_arrays_are_zero_gradient_entries_of_the_parameters(case, rng):
    model = CASES[case]()
    x = _data(rng)
    model.init_output_bias(x)
    model.loss_and_grads(x, rng)
    state, params, grads = model.state_arrays(), model.parameters(), model.gradients()
    assert set(state) <= set(params)
    expected = {
        "catvae-nvil": {"state.step", "state.signal_mean", "state.signal_var"},
        "catvae-vimco": {"state.step", "state.signal_mean", "state.signal_var"},
        "vqvae-ema": {"code_age", "ema_cluster_size", "ema_code_sum"},
    }.get(case, set())
    assert set(state) == expected
    for k, v in state.items():
        assert v is params[k] and not grads[k].any(), k
    other = CASES[case]()
    other.load_state_arrays({k: v + 1 for k, v in state.items()})
    for k, v in other.state_arrays().items():
        np.testing.assert_array_equal(v, state[k] + 1)
    if state:
        with pytest.raises(ValueError, match="load_state_arrays: expected arrays for every"):
            other.load_state_arrays({})


@pytest.mark.parametrize("case", list(CASES))
def test_config_capabilities_and_bounds(case, rng):
    model = CASES[case]()
    x = _data(rng)
    model.init_output_bias(x)
    config = json.loads(json.dumps(model.config()))
    assert config["model"] == model.name
    rebuilt = build_model(config)
    rebuilt.load_parameters(model.parameters())
    assert type(rebuilt) is type(model) and rebuilt.config() == model.config()
    for method in ("bound", "elbo"):
        values = getattr(model, method)(x, np.random.default_rng(3), batch_size=4)
        assert values.shape == (x.shape[0],) and np.isfinite(values).all()
    assert isinstance(model.bound_name, str) and model.bound_name
    if model.has_log_likelihood:
        ll = model.log_likelihood(x, rng, k=6, batch_size=4)
        assert ll.shape == (x.shape[0],) and np.isfinite(ll).all()
    else:
        with pytest.raises(NotImplementedError, match="has no importance-sampled"):
            model.log_likelihood(x, rng, k=6)
    if model.has_gaussian_latents:
        mu, logvar = model.encode(x)
        assert mu.shape == logvar.shape == (x.shape[0], model.latent_dim)
    else:
        with pytest.raises(NotImplementedError, match="has_gaussian_latents is False"):
            model.encode(x)
    assert model.sample(rng, 3).shape == (3, D) and model.has_sample
    assert model.reconstruct(x).shape == x.shape and model.has_reconstruct
    info, lines = model.eval_report(x, batch_size=4)
    assert isinstance(info, dict) and isinstance(lines, list)


@pytest.mark.parametrize("name", list(MODELS))
def test_each_model_names_its_flags_in_one_place(name):
    cls = MODELS[name]
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    args = parser.parse_args([])
    defaults = cls.flag_defaults()
    assert set(defaults) == {f.dest for f in cls.flags}
    assert all(getattr(args, dest) is None for dest in defaults)  # left-out flags stay None


# --- the reduction point and the noise seam, as a data-parallel run uses them -----------------


def _simulate_two_processes(factory, x, shards):
    """Run one training step of ``factory()`` on x in one process, then as data-parallel
    processes owning the rows ``shards``: each takes its rows of the global noise
    (``_step_noise``) and the whole batch's rows of every batch statistic (``_batch_rows``,
    replayed from the one-process run). Returns (one-process gradients, share-weighted sum of
    the processes' gradients, one-process state, each process's state, gathered statistics)."""
    B = x.shape[0]
    full = factory()
    full.init_output_bias(x)
    start = {k: v.copy() for k, v in full.parameters().items()}
    gathered = []

    def record(array, axis=0):
        gathered.append((array.copy(), axis))
        return array

    full._batch_rows = record
    full.loss_and_grads(x, np.random.default_rng(5))
    want = {k: v.copy() for k, v in full.gradients().items()}
    total = {k: np.zeros_like(v) for k, v in want.items()}
    states = []
    for a, b in shards:
        shard = factory()
        shard.load_parameters(start)
        calls = iter(gathered)

        def gather(array, axis=0, calls=calls, a=a, b=b):
            whole, whole_axis = next(calls)
            assert axis == whole_axis
            rows = np.take(whole, np.arange(a, b), axis=axis)
            np.testing.assert_allclose(array, rows, rtol=1e-12, atol=1e-12)
            return whole

        def step_noise(rng, batch_size, shard=shard, a=a, b=b):
            return shard.noise_rows(shard.draw_noise(rng, B), a, b)

        shard._batch_rows = gather
        shard._step_noise = step_noise
        shard.loss_and_grads(x[a:b], np.random.default_rng(5))
        for k, g in shard.gradients().items():
            total[k] += (b - a) / B * g
        states.append({k: v.copy() for k, v in shard.state_arrays().items()})
    return want, total, dict(full.state_arrays()), states, gathered


@pytest.mark.parametrize("case", list(CASES))
def test_processes_with_gathered_statistics_reproduce_the_whole_batch(case, rng):
    """The gradients weighted by the shares of rows add up to the one-process gradient, and
    every process's state after the step is the one-process state."""
    x = _data(rng)
    want, total, state, states, _ = _simulate_two_processes(CASES[case], x, ((0, 4), (4, 10)))
    for k in want:
        np.testing.assert_allclose(total[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)
    for shard_state in states:
        assert set(shard_state) == set(state)
        for k, v in shard_state.items():
            np.testing.assert_allclose(v, state[k], rtol=1e-12, atol=1e-12, err_msg=k)


def test_free_bits_floor_is_decided_on_the_whole_batch(rng):
    """A floor between one process's own mean KL and the batch's: that process's rows still
    get the KL gradient, as in one process, because the decision uses the gathered rows."""
    x = _data(rng)
    shards = ((0, 4), (4, 10))
    *_, gathered = _simulate_two_processes(CASES["vae"], x, shards)
    kl_dim = gathered[0][0]  # (B, Z), the rows free bits averages
    own, whole = kl_dim[:4].mean(axis=0), kl_dim.mean(axis=0)
    j = int(np.argmax(whole - own))
    assert own[j] < whole[j]
    floor = float(own[j] + whole[j]) / 2

    def factory():
        return VAE(D, 3, (5,), n_samples=2, free_bits=floor, seed=1, dtype=np.float64)

    want, total, *_ = _simulate_two_processes(factory, x, shards)
    for k in want:
        np.testing.assert_allclose(total[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)


# --- the one chunked K-sample evaluation ------------------------------------------------------


def _vae_log_likelihood_before(model, x, rng, k, batch_size, chunk_size):
    """VAE.log_likelihood as it was before the chunked routine was shared (the reference)."""
    be = get_backend(x)
    xp = be.xp
    sample = be.kernel("reparam_sample")
    weights = be.kernel("importance_weights")
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = xp.ascontiguousarray(x[i : i + batch_size])
        B = xb.shape[0]
        seed = int(rng.integers(0, 2**63))
        mu, logvar = (xp.ascontiguousarray(a) for a in model.encode(xb))
        lse = xp.full(B, -xp.inf, dtype=np.float64)
        for s in range(0, k, chunk_size):
            n = min(chunk_size, k - s)
            z, log_q, log_p = sample(mu, logvar, n, seed, 0, s * B * model.latent_dim)
            logits, _ = model.decoder.forward(z.reshape(n * B, -1))
            if model.likelihood == "bernoulli":
                nll, _ = bernoulli_nll_forward(logits, xb, need_grad=False)
            else:
                xs = xp.broadcast_to(xb, (n,) + xb.shape).reshape(n * B, -1)
                nll, _ = gaussian_nll_forward(logits, model._decoder_logvar(xp), xs)
            lw = xp.ascontiguousarray(log_p - log_q - nll.reshape(n, B))
            chunk_lme, _ = weights(lw, lw)
            lse = xp.logaddexp(lse, chunk_lme.astype(np.float64) + math.log(n))
        out.append((lse - math.log(k)).astype(model.dtype))
    return xp.concatenate(out)


def _catvae_log_likelihood_before(model, x, rng, k, batch_size, chunk_size):
    """CatVAE.log_likelihood as it was, a running max and sum in the model's dtype, with the
    noise keyed as it is now: one seed per batch from rng, each chunk's Gumbels from
    default_rng([seed, chunk start]) (so that the (batch, chunk) cells can be sharded)."""
    xp = np
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        seed = int(rng.integers(0, 2**63))
        run_max = xp.full(xb.shape[0], -xp.inf, dtype=model.dtype)
        run_sum = xp.zeros(xb.shape[0], dtype=model.dtype)
        for s in range(0, k, chunk_size):
            n = min(chunk_size, k - s)
            g = model.draw_noise(np.random.default_rng([seed, s]), xb.shape[0], n)
            lw = model.log_weights(xb, g)
            new_max = xp.maximum(run_max, lw.max(axis=0))
            run_sum = run_sum * xp.exp(run_max - new_max) + xp.exp(lw - new_max).sum(axis=0)
            run_max = new_max
        out.append(xp.log(run_sum) + run_max - model.dtype.type(math.log(k)))
    return xp.concatenate(out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae_log_likelihood_is_the_one_it_replaced_bit_for_bit(dtype, likelihood):
    data = np.random.default_rng(1)
    x = (data.random((11, D)) < 0.4).astype(dtype)
    model = VAE(D, 3, (6,), likelihood=likelihood, seed=2, dtype=dtype)
    model.init_output_bias(x)
    for k, batch, chunk in ((7, 4, 3), (20, 11, 20), (5, 3, 1)):
        new = model.log_likelihood(
            x, np.random.default_rng(9), k=k, batch_size=batch, chunk_size=chunk
        )
        old = _vae_log_likelihood_before(model, x, np.random.default_rng(9), k, batch, chunk)
        assert new.dtype == dtype
        np.testing.assert_array_equal(new, old)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 2e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("estimator", ["gumbel", "vimco"])
def test_catvae_log_likelihood_equals_the_one_it_replaced(dtype, rtol, estimator):
    """The same noise, keyed by (batch, chunk); the sum over chunks now runs in float64 (the
    VAE's numerics), so the results agree to float rounding."""
    data = np.random.default_rng(1)
    x = (data.random((11, D)) < 0.4).astype(dtype)
    model = CatVAE(D, 2, 3, (6,), estimator=estimator, k=3 if estimator == "vimco" else 1, seed=2)
    model = CatVAE.from_config({**model.config(), "dtype": np.dtype(dtype).name})
    model.init_output_bias(x)
    for k, batch, chunk in ((7, 4, 3), (40, 11, 9)):
        new = log_likelihood(
            model, x, np.random.default_rng(9), k=k, batch_size=batch, chunk_size=chunk
        )
        old = _catvae_log_likelihood_before(model, x, np.random.default_rng(9), k, batch, chunk)
        assert new.dtype == dtype
        np.testing.assert_allclose(new, old, rtol=rtol)
    # the default chunking is the one the model always had: 2**15 decoder rows per chunk
    new = model.log_likelihood(x, np.random.default_rng(9), k=40, batch_size=4)
    old = _catvae_log_likelihood_before(model, x, np.random.default_rng(9), 40, 4, 40)
    np.testing.assert_allclose(new, old, rtol=rtol)


def test_log_likelihood_checks_its_arguments(rng):
    model = CASES["vae"]()
    x = _data(rng)
    with pytest.raises(InvalidParameterError, match="'k' parameter of log_likelihood"):
        log_likelihood(model, x, rng, k=0)
    with pytest.raises(InvalidParameterError, match="'chunk_size' parameter of log_likelihood"):
        log_likelihood(model, x, rng, k=3, chunk_size=0)
    with pytest.raises(ValueError, match=r"log_likelihood: expected x to have shape \(\*, 7\)"):
        log_likelihood(model, x[:, :5], rng, k=3)
    assert log_likelihood(model, x[:0], rng, k=3).shape == (0,)


# --- the evaluation report --------------------------------------------------------------------


def test_evaluate_replays_from_its_documented_keys(rng):
    model = IWAE(D, 3, (5,), k=3, seed=1, dtype=np.float64)
    x = _data(rng, B=30)
    model.init_output_bias(x)
    seed = 4
    result, lines = evaluate_report(
        model, x, k=9, seed=seed, batch_size=7, nll_batch_size=5, subset=12, split="valid"
    )
    assert result == evaluate(model, x, k=9, seed=seed, batch_size=7, nll_batch_size=5, subset=12)
    bound = model.bound(x, np.random.default_rng([seed, 0, 0, 5]), batch_size=7)
    elbo = model.elbo(x, np.random.default_rng([seed, 0, 0, 6]), batch_size=7)
    pick = np.sort(np.random.default_rng([seed, 7]).choice(30, 12, replace=False))
    ll = model.log_likelihood(x[pick], np.random.default_rng([seed, 0, 0, 8]), k=9, batch_size=5)
    assert result["bound"] == float(bound.mean()) and result["elbo"] == float(elbo.mean())
    assert result["nll"] == float(-ll.mean()) and (result["nll_k"], result["nll_n"]) == (9, 12)
    assert result["bound_name"] == "IWAE bound (K=3)" and result["n"] == 30
    assert len(result["kl_per_dim"]) == 3 and 0 <= result["active_units"] <= 3
    assert lines[0].startswith("valid ELBO ") and lines[1].startswith("valid IWAE bound (K=3) ")
    assert lines[2].startswith("valid NLL (K=9, n=12) ")


def test_evaluate_without_a_log_likelihood_says_so(rng):
    model = CASES["vqvae-ema"]()
    x = _data(rng)
    result, lines = evaluate_report(model, x.astype(np.float32), k=5)
    assert "nll" not in result and "active_units" not in result and "perplexity" in result
    assert lines[-1] == "no K-sample NLL: vqvae has no importance-sampled log-likelihood"
    with pytest.raises(InvalidParameterError, match="'k' parameter of evaluate"):
        evaluate(model, x, k=-1)
