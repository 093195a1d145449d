"""Decoders: the MADE decoder (gradients, autoregressive property with full and limited
context, exact ancestral sampling, input dropout) and the categorical decoder (gradients,
normalization, sampling, level checks); float32, bad input, the CuPy path."""

import itertools

import numpy as np
import pytest
from cuda_emu import fake_cupy
from scipy import stats
from scipy.special import log_softmax

from lvmcore import InvalidParameterError
from lvmcore.decoders import (
    CategoricalDecoder,
    MADEDecoder,
    categorical_log_prob_backward,
    categorical_log_prob_forward,
)
from lvmcore.testing import check_vjp, gradcheck

D, Z = 5, 2


def _made_dec(rng, D=D, Z=Z, hidden=(6, 5), dtype=np.float64, **kw):
    kw.setdefault("activation", "tanh")
    dec = MADEDecoder(D, Z, hidden, rng, dtype=dtype, **kw)
    for k, v in dec.params.items():  # nonzero biases too, masks kept
        v[...] = 0.7 * rng.standard_normal(v.shape) * dec.masks.get(k, 1)
    return dec


def _binary(rng, shape):
    return (rng.random(shape) < 0.5).astype(np.float64)


def _grads_of(module, dz, z):
    return {"z": dz, **{k: g.copy() for k, g in module.grads.items()}}


# ------------------------------------------------------------------ MADE decoder: gradients


@pytest.mark.parametrize("ar_context", [None, 2])
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("direct", [False, True])
def test_made_decoder_backward_every_parameter_and_z(rng, ar_context, dropout, direct):
    dec = _made_dec(
        rng, ar_context=ar_context, input_dropout=0.3 if dropout else 0.0, direct=direct
    )
    x, z = _binary(rng, (3, D)), rng.standard_normal((2, 3, Z))
    noise = dec.draw_noise(rng, (2, 3)) if dropout else None
    log_px, cache = dec.log_prob(x, z, noise)
    assert log_px.shape == (2, 3)
    G = rng.standard_normal(log_px.shape)
    dec.zero_grad()
    dz = dec.log_prob_backward(G, cache)
    analytic = _grads_of(dec, dz, z)
    gradcheck(lambda: np.sum(dec.log_prob(x, z, noise)[0] * G), {"z": z, **dec.params}, analytic)
    for name, mask in dec.masks.items():
        assert np.all(dec.grads[name][mask == 0] == 0), name
    np.testing.assert_allclose(dec.input_vjp(G, cache), dz, rtol=1e-13)
    for k, g in dec.grads.items():
        np.testing.assert_array_equal(g, analytic[k])  # input_vjp added nothing


def test_made_decoder_log_likelihood_is_a_sum_of_bernoullis(rng):
    dec = _made_dec(rng)
    x, z = _binary(rng, (4, D)), rng.standard_normal((4, Z))
    logits = dec.forward(2 * x - 1, z)[0][:, 0, :]  # the MADE itself
    want = stats.bernoulli(1 / (1 + np.exp(-logits))).logpmf(x).sum(axis=1)
    np.testing.assert_allclose(dec.log_prob(x, z)[0], want, rtol=1e-12)


# ------------------------------------------------------------------ autoregressive property


def _dependence(dec, rng):
    """dep[i, j]: does logit i change when input j flips (at random x, z)?"""
    Dd = dec.data_dim
    x, z = _binary(rng, (1, Dd)), rng.standard_normal((1, dec.n_latent))
    base = dec.forward(2 * x - 1, z)[0][0, 0]
    dep = np.zeros((Dd, Dd), dtype=bool)
    for j in range(Dd):
        xj = x.copy()
        xj[0, j] = 1 - xj[0, j]
        dep[:, j] = np.abs(dec.forward(2 * xj - 1, z)[0][0, 0] - base) > 1e-12
    return dep


def _reachable(dec):
    """Structural dependence from the products of the 0/1 masks."""
    R = dec.masks["W0"]
    for l in range(1, dec.n_layers):
        R = R @ dec.masks[f"W{l}"]
    R = R > 0
    if "Wd" in dec.masks:
        R |= dec.masks["Wd"] > 0
    return R.T  # (output i, input j)


@pytest.mark.parametrize("hidden", [(9,), (8, 10)])
@pytest.mark.parametrize("ar_context", [None, 1, 2, 3, 5])
def test_output_i_depends_exactly_on_the_allowed_inputs(rng, hidden, ar_context):
    Dd = 9
    dec = _made_dec(rng, D=Dd, hidden=hidden, ar_context=ar_context, direct=True)
    i, j = np.meshgrid(np.arange(Dd), np.arange(Dd), indexing="ij")
    N = Dd if ar_context is None else ar_context
    allowed = (j < i) & (i - j <= N)  # inputs i-N, ..., i-1 in raster order
    np.testing.assert_array_equal(_reachable(dec), allowed)
    np.testing.assert_array_equal(_dependence(dec, rng), allowed)
    # z reaches every output that has any hidden unit
    dz = dec.log_prob_backward(
        np.ones(1), dec.log_prob(_binary(rng, (1, Dd)), rng.standard_normal((1, Z)))[1]
    )
    assert dz.shape == (1, Z)


def test_a_context_covering_every_previous_pixel_is_the_full_made(rng):
    a = MADEDecoder(6, Z, (5,), np.random.default_rng(1), ar_context=5)
    b = MADEDecoder(6, Z, (5,), np.random.default_rng(1))
    assert a.ar_context is None
    for k in b.masks:
        np.testing.assert_array_equal(a.masks[k], b.masks[k])


# ------------------------------------------------------------------ sampling


def _all_binary(Dd):
    return np.array(list(itertools.product([0.0, 1.0], repeat=Dd)))


@pytest.mark.parametrize("ar_context", [None, 1])
def test_ancestral_sampling_is_exact(ar_context):
    rng = np.random.default_rng(21)
    Dd = 3
    dec = _made_dec(rng, D=Dd, hidden=(4,), ar_context=ar_context)
    z1 = rng.standard_normal((1, Z))
    xs = _all_binary(Dd)  # (8, 3)
    p = np.exp(dec.log_prob(xs, np.repeat(z1, len(xs), axis=0))[0])
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-12)
    n = 20000
    x = dec.sample(np.repeat(z1, n, axis=0), np.random.default_rng(22))
    assert set(np.unique(x)) <= {0.0, 1.0}
    idx = (x @ (2 ** np.arange(Dd)[::-1])).astype(int)
    counts = np.bincount(idx, minlength=len(xs))
    stat = np.sum((counts - n * p) ** 2 / (n * p))
    assert stats.chi2.sf(stat, len(xs) - 1) > 1e-3


def test_sampling_with_explicit_noise_is_replayable(rng):
    dec = _made_dec(rng)
    z = rng.standard_normal((2, 3, Z))
    u = dec.draw_noise(np.random.default_rng(3), (2, 3))
    a = dec.sample(z, u)
    assert a.shape == (2, 3, D)
    np.testing.assert_array_equal(a, dec.sample(z, u))
    np.testing.assert_array_equal(a, dec.sample(z, np.random.default_rng(3)))


# ------------------------------------------------------------------ input dropout


def test_input_dropout_zeroes_the_centred_inputs_it_drops(rng):
    dec = _made_dec(rng, input_dropout=0.4)
    x, z = _binary(rng, (3, D)), rng.standard_normal((2, 3, Z))
    u = dec.draw_noise(np.random.default_rng(4), (2, 3))
    keep = u >= 0.4
    assert keep.any() and (~keep).any()
    log_px, _ = dec.log_prob(x, z, u)
    np.testing.assert_array_equal(log_px, dec.log_prob(x, z, u)[0])  # replayable
    logits = dec.forward((2 * x - 1) * keep, z)[0][..., 0, :]
    want = (x * logits - np.logaddexp(0, logits)).sum(axis=-1)
    np.testing.assert_allclose(log_px, want, rtol=1e-12)
    np.testing.assert_array_equal(
        dec.log_prob(x, z, np.full((2, 3, D), 0.5))[0], dec.log_prob(x, z)[0]
    )


# ------------------------------------------------------------------ categorical decoder


def test_categorical_op_backward(rng):
    L = 4
    logits = rng.standard_normal((2, 3, D, L))
    x = rng.integers(0, L, (3, D))
    check_vjp(
        lambda lg: categorical_log_prob_forward(lg, x),
        categorical_log_prob_backward,
        [logits],
        names=["logits"],
    )


def test_categorical_op_is_log_softmax_at_the_levels(rng):
    L = 5
    logits = 3 * rng.standard_normal((2, 4, 3, L))
    x = rng.integers(0, L, (4, 3))
    want = np.take_along_axis(log_softmax(logits, axis=-1), x[None, :, :, None], axis=-1)
    np.testing.assert_allclose(
        categorical_log_prob_forward(logits, x)[0], want[..., 0].sum(-1), rtol=1e-12
    )
    lp_float = categorical_log_prob_forward(logits, x.astype(np.float64))[0]
    np.testing.assert_array_equal(lp_float, categorical_log_prob_forward(logits, x)[0])


def test_categorical_decoder_backward_every_parameter_and_z(rng):
    dec = CategoricalDecoder((Z, 6, 3), 4, "tanh", rng, dtype=np.float64)
    x, z = rng.integers(0, 4, (3, 3)), rng.standard_normal((2, 3, Z))
    log_px, cache = dec.log_prob(x, z)
    G = rng.standard_normal(log_px.shape)
    dec.zero_grad()
    dz = dec.log_prob_backward(G, cache)
    analytic = _grads_of(dec, dz, z)
    gradcheck(lambda: np.sum(dec.log_prob(x, z)[0] * G), {"z": z, **dec.params}, analytic)
    np.testing.assert_allclose(dec.input_vjp(G, cache), dz, rtol=1e-13)
    for k, g in dec.grads.items():
        np.testing.assert_array_equal(g, analytic[k])


def test_categorical_decoder_normalizes_and_samples_its_distribution():
    rng = np.random.default_rng(31)
    L, Dd = 3, 2
    dec = CategoricalDecoder((Z, 5, Dd), L, "tanh", rng, dtype=np.float64)
    z1 = rng.standard_normal((1, Z))
    xs = np.array(list(itertools.product(range(L), repeat=Dd)))  # (9, 2)
    p = np.exp(dec.log_prob(xs, np.repeat(z1, len(xs), axis=0))[0])
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-12)
    n = 20000
    x = dec.sample(np.repeat(z1, n, axis=0), np.random.default_rng(32))
    assert x.dtype == np.int64 and x.min() >= 0 and x.max() < L
    counts = np.bincount(x[:, 0] * L + x[:, 1], minlength=len(xs))
    stat = np.sum((counts - n * p) ** 2 / (n * p))
    assert stats.chi2.sf(stat, len(xs) - 1) > 1e-3


# ------------------------------------------------------------------ float32


def test_float32_matches_float64():
    x = _binary(np.random.default_rng(2), (3, D))
    z = np.random.default_rng(3).standard_normal((2, 3, Z))
    out = {}
    for dtype in (np.float64, np.float32):
        dec = _made_dec(np.random.default_rng(1), dtype=dtype, input_dropout=0.2)
        cat = CategoricalDecoder((Z, 4, D), 3, "relu", np.random.default_rng(1), dtype=dtype)
        u = np.random.default_rng(5).random((2, 3, D)).astype(dtype)  # one set of uniforms
        lp, c = dec.log_prob(x.astype(dtype), z.astype(dtype), u)
        lq, cq = cat.log_prob(np.ones((3, D), np.int64), z.astype(dtype))
        G = np.ones((2, 3), dtype)
        out[dtype] = (lp, dec.log_prob_backward(G, c), lq, cat.log_prob_backward(G, cq))
        assert all(a.dtype == dtype for a in out[dtype])
    for a, b in zip(out[np.float32], out[np.float64]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ bad input


def test_bad_hyper_parameters_name_the_argument(rng):
    for bad in (0, -2):
        with pytest.raises(InvalidParameterError, match="'ar_context' parameter of MADEDecoder"):
            MADEDecoder(D, Z, (6,), rng, ar_context=bad)
    with pytest.raises(InvalidParameterError, match="'ar_context' parameter of MADEDecoder"):
        MADEDecoder(D, Z, (6,), rng, ar_context=1.5)
    with pytest.raises(InvalidParameterError, match="'input_dropout' parameter of MADEDecoder"):
        MADEDecoder(D, Z, (6,), rng, input_dropout=1.0)
    with pytest.raises(InvalidParameterError, match="'levels' parameter of CategoricalDecoder"):
        CategoricalDecoder((Z, D), 1, "tanh", rng)


def test_made_decoder_bad_data_and_shapes(rng):
    dec = _made_dec(rng)
    x, z = _binary(rng, (3, D)), rng.standard_normal((2, 3, Z))
    with pytest.raises(ValueError, match="MADEDecoder.log_prob: expected x to be binary"):
        dec.log_prob(x + 0.5, z)
    with pytest.raises(ValueError, match=r"expected z of shape \(\*S, 3, 2\)"):
        dec.log_prob(x, z[:, :2])
    with pytest.raises(ValueError, match=r"expected z.shape\[-1\] == 2"):
        dec.log_prob(x, z[..., :1])
    with pytest.raises(TypeError, match="expected x to have dtype float64"):
        dec.log_prob(x.astype(np.float32), z)
    with pytest.raises(ValueError, match=r"expected dropout_noise to have shape \(2, 3, 5\)"):
        dec.log_prob(x, z, np.zeros((3, D)))
    with pytest.raises(ValueError, match="expected dropout_noise to hold uniforms"):
        dec.log_prob(x, z, np.full((2, 3, D), 1.0))
    _, cache = dec.log_prob(x, z)
    with pytest.raises(ValueError, match="log_prob_backward: expected dlog_px to have"):
        dec.log_prob_backward(np.ones(3), cache)
    with pytest.raises(ValueError, match="MADEDecoder.sample: expected rng_or_noise to have shape"):
        dec.sample(z, np.zeros((2, D)))


@pytest.mark.parametrize(
    "x, err, match",
    [
        (np.array([[0.5, 1.0]]), ValueError, "non-integer values, e.g. 0.5"),
        (np.array([[np.nan, 1.0]]), ValueError, "non-integer values"),
        (np.array([[0, 4]]), ValueError, r"levels in \[0, 4\), got 1 outside, e.g. 4"),
        (np.array([[-1, 0]]), ValueError, r"got 1 outside, e.g. -1"),
        (np.array([[True, False]]), TypeError, "expected x to be an integer"),
    ],
)
def test_categorical_levels_are_checked(rng, x, err, match):
    logits = rng.standard_normal((1, 2, 4))
    with pytest.raises(err, match=f"categorical_log_prob_forward: .*{match}"):
        categorical_log_prob_forward(logits, x)


def test_categorical_shapes_are_checked(rng):
    with pytest.raises(ValueError, match=r"expected logits of shape \(\*S, 1, 2, L\)"):
        categorical_log_prob_forward(rng.standard_normal((1, 3, 4)), np.zeros((1, 2), np.int64))
    dec = CategoricalDecoder((Z, 3), 4, "tanh", rng, dtype=np.float64)
    with pytest.raises(ValueError, match="CategoricalDecoder.sample: expected rng_or_noise"):
        dec.sample(np.zeros((2, Z)), np.zeros((2, 4)))


# ------------------------------------------------------------------ device (CuPy) path


def test_decoders_on_device_arrays_match_the_host():
    rng = np.random.default_rng(8)
    x, xl = _binary(rng, (3, D)), rng.integers(0, 3, (3, D))
    z, G = rng.standard_normal((2, 3, Z)), rng.standard_normal((2, 3))
    u = np.random.default_rng(9).random((2, 3, D))
    host = []
    for dec, data in (
        (_made_dec(np.random.default_rng(1)), x),
        (CategoricalDecoder((Z, 4, D), 3, "tanh", np.random.default_rng(1), dtype=np.float64), xl),
    ):
        lp, c = dec.log_prob(data, z)
        host.append((lp, dec.log_prob_backward(G, c), dec.sample(z, u)))
    with fake_cupy.installed() as cp:
        decs = (
            _made_dec(np.random.default_rng(1)),
            CategoricalDecoder((Z, 4, D), 3, "tanh", np.random.default_rng(1), dtype=np.float64),
        )
        for dec, data, want in zip(decs, (x, xl), host):
            dec.to(cp)
            lp, c = dec.log_prob(cp.asarray(data), cp.asarray(z))
            got = (
                lp,
                dec.log_prob_backward(cp.asarray(G), c),
                dec.sample(cp.asarray(z), cp.asarray(u)),
            )
            for a, b in zip(got, want):
                assert type(a) is cp.ndarray
                np.testing.assert_allclose(cp.asnumpy(a), b, rtol=1e-12, atol=1e-13)
