"""The VQ layer and codebook maintenance: the straight-through rule and both losses against
central differences (assignment held fixed), the per-code reductions against np.add.at, the EMA
rule, k-means, dead-code re-seeding, and the edge cases of the public boundary."""

import math

import numpy as np
import pytest

from lvmcore import InvalidParameterError, use_backend
from lvmcore.ops.codebook import ema_codebook_update, kmeans_codebook, reseed_codes
from lvmcore.ops.vq import VQFrozen, code_counts, code_sums, perplexity, vq_backward, vq_forward
from lvmcore.testing import gradcheck


def _inputs(rng, B=3, S=2, E=4, M=5, dtype=np.float64):
    """z_e near distinct codes (margin >> the FD step), so the nearest code is unambiguous."""
    codebook = rng.standard_normal((M, E)).astype(dtype)  # (M, E)
    index = rng.integers(0, M, size=B * S)
    z_e = (codebook[index] + 0.1 * rng.standard_normal((B * S, E))).reshape(B, S, E)
    return z_e.astype(dtype), codebook


def _margin(z_e, codebook):
    """Gap between the second-nearest and the nearest squared distance, per row."""
    d = ((z_e.reshape(-1, 1, codebook.shape[1]) - codebook[None]) ** 2).sum(-1)  # (N, M)
    d.sort(axis=1)
    return d[:, 1] - d[:, 0] if d.shape[1] > 1 else np.full(d.shape[0], np.inf)


# ------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize(
    "shape", [(3, 2, 4, 5), (1, 1, 3, 4), (4, 3, 2, 1)], ids=["B3S2E4M5", "B1S1", "M1"]
)
def test_forward_is_nearest_code_and_documented_reduction(rng, shape):
    B, S, E, M = shape
    z_e, codebook = _inputs(rng, B, S, E, M)
    beta = 0.3
    z_q, losses, cache = vq_forward(z_e, codebook, beta)
    d = ((z_e.reshape(-1, 1, E) - codebook[None]) ** 2).sum(-1)  # (N, M)
    k = d.argmin(axis=1)
    np.testing.assert_array_equal(cache.index, k)
    np.testing.assert_array_equal(z_q, codebook[k].reshape(B, S, E))
    # mean over B of the sum over S and E
    per_example = ((z_e - z_q) ** 2).sum(axis=(1, 2))
    assert losses.codebook == pytest.approx(per_example.mean(), rel=1e-13)
    assert losses.commitment == pytest.approx(beta * per_example.mean(), rel=1e-13)


def test_frozen_at_the_live_point_equals_the_training_forward(rng):
    z_e, codebook = _inputs(rng)
    z_q, losses, cache = vq_forward(z_e, codebook, 0.25)
    z_q2, losses2, _ = vq_forward(
        z_e, codebook, 0.25, index=cache.index, frozen=VQFrozen(z_e.copy(), codebook.copy())
    )
    np.testing.assert_allclose(z_q2, z_q, rtol=0, atol=1e-15)
    assert losses2 == losses


def test_fixed_index_is_used(rng):
    z_e, codebook = _inputs(rng, M=5)
    index = np.zeros(z_e.shape[0] * z_e.shape[1], dtype=np.int64)
    z_q, _, cache = vq_forward(z_e, codebook, index=index.reshape(z_e.shape[:2]))
    np.testing.assert_array_equal(cache.index, index)
    np.testing.assert_array_equal(z_q, np.broadcast_to(codebook[0], z_e.shape))


# ------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize(
    "shape",
    [(3, 2, 4, 5), (1, 1, 3, 4), (4, 3, 2, 1), (2, 5, 3, 3)],
    ids=["B3S2E4M5", "B1S1", "M1", "shared-codes"],
)
@pytest.mark.parametrize(
    "weights",
    [(1.0, 1.0), (0.7, -1.3), (0.0, 1.0), (1.0, 0.0)],
    ids=["both", "scaled", "no-codebook-loss", "no-commitment"],
)
def test_backward_matches_finite_differences_of_the_surrogate(rng, shape, weights):
    """Probe L = sum(z_q G) + a codebook_loss + c commitment, with the assignment and the
    stop-gradient values held fixed: FD over z_e and the codebook equals vq_backward."""
    B, S, E, M = shape
    a, c = weights
    z_e, codebook = _inputs(rng, B, S, E, M)
    assert _margin(z_e, codebook).min() > 1e-3  # away from assignment boundaries
    beta = 0.25
    _, _, cache = vq_forward(z_e, codebook, beta)
    frozen = VQFrozen(z_e.copy(), codebook.copy())
    G = rng.standard_normal(z_e.shape) / math.sqrt(z_e.size)

    def loss():
        z_q, losses, _ = vq_forward(z_e, codebook, beta, index=cache.index, frozen=frozen)
        return float((z_q * G).sum()) + a * losses.codebook + c * losses.commitment

    dz_e, dcodebook = vq_backward(G, cache, dcodebook_loss=a, dcommit=c)
    gradcheck(loss, {"z_e": z_e, "codebook": codebook}, {"z_e": dz_e, "codebook": dcodebook})


def test_codebook_loss_gradient_is_the_true_gradient_in_the_codebook(rng):
    """Without any surrogate: the codebook loss as a function of the codebook alone."""
    z_e, codebook = _inputs(rng, B=4, S=3, E=3, M=4)
    _, _, cache = vq_forward(z_e, codebook, 0.25)
    _, dcodebook = vq_backward(np.zeros_like(z_e), cache, dcodebook_loss=1.0, dcommit=0.0)
    gradcheck(
        lambda: vq_forward(z_e, codebook, 0.25, index=cache.index)[1].codebook,
        {"codebook": codebook},
        {"codebook": dcodebook},
    )


def test_commitment_gradient_is_the_true_gradient_in_z_e(rng):
    """Without any surrogate: the commitment loss as a function of z_e alone."""
    z_e, codebook = _inputs(rng, B=4, S=3, E=3, M=4)
    _, _, cache = vq_forward(z_e, codebook, 0.4)
    dz_e, _ = vq_backward(np.zeros_like(z_e), cache, dcodebook_loss=0.0, dcommit=1.0)
    gradcheck(
        lambda: vq_forward(z_e, codebook, 0.4, index=cache.index)[1].commitment,
        {"z_e": z_e},
        {"z_e": dz_e},
    )


def test_gradient_flow_follows_the_documented_rule(rng):
    """dz_e = dz_q (straight-through); the decoder's gradient never reaches the codebook; the
    codebook loss moves e only; the commitment loss moves z_e only."""
    z_e, codebook = _inputs(rng)
    _, _, cache = vq_forward(z_e, codebook, 0.25)
    G = rng.standard_normal(z_e.shape)
    dz_e, dcb = vq_backward(G, cache, dcodebook_loss=0.0, dcommit=0.0)
    np.testing.assert_array_equal(dz_e, G)
    np.testing.assert_array_equal(dcb, 0.0)
    dz_e, _ = vq_backward(np.zeros_like(G), cache, dcodebook_loss=1.0, dcommit=0.0)
    np.testing.assert_array_equal(dz_e, 0.0)
    _, dcb = vq_backward(np.zeros_like(G), cache, dcodebook_loss=0.0, dcommit=1.0)
    np.testing.assert_array_equal(dcb, 0.0)
    # unused codes get no gradient
    _, dcb = vq_backward(G, cache)
    unused = np.setdiff1d(np.arange(codebook.shape[0]), cache.index)
    np.testing.assert_array_equal(dcb[unused], 0.0)


@pytest.mark.oracle
def test_matches_torch_detach_formulation(rng):
    import torch

    z_e, codebook = _inputs(rng, B=3, S=2, E=4, M=6)
    beta = 0.25
    z_q, losses, cache = vq_forward(z_e, codebook, beta)
    G = rng.standard_normal(z_e.shape)
    dz_e, dcb = vq_backward(G, cache)
    tz = torch.tensor(z_e, requires_grad=True)
    te = torch.tensor(codebook, requires_grad=True)
    ek = te[torch.tensor(cache.index)].reshape(z_e.shape)
    tq = tz + (ek - tz).detach()
    cb = ((tz.detach() - ek) ** 2).sum() / z_e.shape[0]
    cm = beta * ((tz - ek.detach()) ** 2).sum() / z_e.shape[0]
    ((tq * torch.tensor(G)).sum() + cb + cm).backward()
    np.testing.assert_allclose(z_q, tq.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert losses.codebook == pytest.approx(cb.item(), rel=1e-12)
    assert losses.commitment == pytest.approx(cm.item(), rel=1e-12)
    np.testing.assert_allclose(dz_e, tz.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dcb, te.grad.numpy(), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------ backends


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backends_agree(rng, dtype):
    z_e, codebook = _inputs(rng, B=50, S=4, E=8, M=64, dtype=dtype)
    out = {}
    for name in ("numpy", "numba"):
        with use_backend(name):
            out[name] = vq_forward(z_e, codebook, 0.25)
    np.testing.assert_array_equal(out["numpy"][2].index, out["numba"][2].index)
    np.testing.assert_array_equal(out["numpy"][0], out["numba"][0])
    assert out["numpy"][0].dtype == dtype


# ------------------------------------------------------------------------------------ reductions


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_code_sums_and_counts_match_add_at(rng, dtype):
    M, N, E = 7, 200, 3
    index = rng.integers(0, M - 2, size=N)  # the last two codes stay unused
    rows = rng.standard_normal((N, E)).astype(dtype)
    want = np.zeros((M, E), dtype=dtype)
    np.add.at(want, index, rows)
    got = code_sums(index, rows, M)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_array_equal(code_counts(index, M), np.bincount(index, minlength=M))
    # serial and ordered: the same bits on every call
    np.testing.assert_array_equal(code_sums(index, rows, M), got)
    assert code_sums(np.zeros(0, np.int64), np.zeros((0, E), dtype), M).shape == (M, E)


def test_perplexity():
    assert perplexity(np.array([5, 5, 5, 5])) == pytest.approx(4.0)
    assert perplexity(np.array([0, 9, 0])) == pytest.approx(1.0)
    assert perplexity(np.array([1, 3])) == pytest.approx(
        math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    )
    assert perplexity(np.zeros(3)) == 1.0


# ------------------------------------------------------------------------------------ EMA


def test_ema_update_matches_the_formula(rng):
    M, E, N, g, eps = 4, 3, 10, 0.9, 1e-5
    size = rng.random(M) + 0.5
    total = rng.standard_normal((M, E))
    z = rng.standard_normal((N, E))
    index = rng.integers(0, M - 1, size=N)  # code M-1 unused
    new_size, new_sum, codebook = ema_codebook_update(size, total, z, index, g, eps)
    n = np.bincount(index, minlength=M)
    s = np.stack([z[index == m].sum(0) for m in range(M)])
    np.testing.assert_allclose(new_size, g * size + (1 - g) * n, rtol=1e-14)
    np.testing.assert_allclose(new_sum, g * total + (1 - g) * s, rtol=1e-14, atol=1e-15)
    Nt = new_size.sum()
    smoothed = (new_size + eps) / (Nt + M * eps) * Nt  # Laplace
    np.testing.assert_allclose(codebook, new_sum / smoothed[:, None], rtol=1e-13)


def test_ema_converges_to_cluster_means_and_smoothing_keeps_unused_codes_finite(rng):
    M, E = 3, 2
    centres = np.array([[2.0, 0.0], [-2.0, 1.0]])
    size, total = np.ones(M), np.zeros((M, E))
    size[2] = 0.0  # a code that never gets a row
    for _ in range(2000):
        index = rng.integers(0, 2, size=64)
        z = centres[index] + 0.01 * rng.standard_normal((64, E))
        size, total, codebook = ema_codebook_update(size, total, z, index, 0.99)
    np.testing.assert_allclose(codebook[:2], centres, atol=0.01)
    assert np.isfinite(codebook).all() and np.all(codebook[2] == 0)


# ------------------------------------------------------------------------------------ k-means


def test_kmeans_recovers_separated_clusters(rng):
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    z = np.repeat(centres, 50, axis=0) + 0.1 * rng.standard_normal((200, 2))
    got = kmeans_codebook(z, 4, rng, iters=20)
    order = np.lexsort(np.round(got).T[::-1])  # rows sorted by (x, y)
    np.testing.assert_allclose(got[order], centres[np.lexsort(centres.T[::-1])], atol=0.1)
    # one code: the mean of all rows
    np.testing.assert_allclose(kmeans_codebook(z, 1, rng, iters=3)[0], z.mean(0), rtol=1e-12)


def test_kmeans_needs_as_many_rows_as_codes(rng):
    with pytest.raises(
        ValueError,
        match=r"kmeans_codebook: expected at least as many rows as "
        r"codes \(8\), got z of shape \(5, 2\)",
    ):
        kmeans_codebook(rng.standard_normal((5, 2)), 8, rng)


# ------------------------------------------------------------------------------------ dead codes


def test_reseed_replaces_only_dead_codes_with_distinct_rows(rng):
    codebook = rng.standard_normal((6, 3))
    z = rng.standard_normal((10, 3))
    dead = np.array([False, True, False, True, True, False])
    new, reseeded = reseed_codes(codebook, dead, z, rng)
    np.testing.assert_array_equal(reseeded, [1, 3, 4])
    np.testing.assert_array_equal(new[~dead], codebook[~dead])
    for m in reseeded:
        assert any(np.array_equal(new[m], row) for row in z)
    assert len({tuple(new[m]) for m in reseeded}) == 3
    assert codebook[1] is not new[1]  # the input is not modified
    same, none = reseed_codes(codebook, np.zeros(6, bool), z, rng)
    assert none.size == 0 and np.array_equal(same, codebook)


# ------------------------------------------------------------------------------------ edges


def test_one_code(rng):
    z_e = rng.standard_normal((3, 2, 4))
    codebook = rng.standard_normal((1, 4))
    z_q, losses, cache = vq_forward(z_e, codebook)
    np.testing.assert_array_equal(cache.index, 0)
    np.testing.assert_array_equal(z_q, np.broadcast_to(codebook[0], z_e.shape))
    _, dcb = vq_backward(np.zeros_like(z_e), cache)
    np.testing.assert_allclose(dcb[0], -2 / 3 * (z_e - codebook[0]).reshape(-1, 4).sum(0))


def test_duplicate_codes_tie_to_the_lowest_index(rng):
    """Exact duplicate codes: every row goes to the first copy; later copies get no rows and
    no gradient."""
    codebook = rng.standard_normal((6, 5))
    codebook[[2, 4, 5]] = codebook[1]
    z_e = codebook[1] + 0.01 * rng.standard_normal((4, 3, 5))
    for name in ("numpy", "numba"):
        with use_backend(name):
            _, _, cache = vq_forward(z_e, codebook)
        np.testing.assert_array_equal(cache.index, 1)
    _, dcb = vq_backward(np.zeros_like(z_e), cache)
    np.testing.assert_array_equal(dcb[[2, 4, 5]], 0.0)


def test_nan_in_z_e_is_a_clear_error(rng):
    z_e, codebook = _inputs(rng)
    z_e[1, 0, 2] = np.nan
    with pytest.raises(
        ValueError,
        match=r"vq_forward: expected z_e to contain no NaN or Inf "
        r"values, got 1 of 24",
    ):
        vq_forward(z_e, codebook)


def test_codebook_of_the_wrong_width(rng):
    z_e, _ = _inputs(rng, E=4)
    with pytest.raises(
        ValueError,
        match=r"vq_forward: expected codebook.shape\[1\] == "
        r"z_e.shape\[2\] \(4\), got codebook of shape \(5, 3\) "
        r"and z_e of shape \(3, 2, 4\)",
    ):
        vq_forward(z_e, rng.standard_normal((5, 3)))


@pytest.mark.parametrize(
    "make, err, message",
    [
        (
            lambda z, c: vq_forward(z[0], c),
            ValueError,
            r"vq_forward: expected z_e to have 3 dimensions, got an array of shape \(2, 4\)",
        ),
        (
            lambda z, c: vq_forward(z, c[:0]),
            ValueError,
            r"vq_forward: expected codebook to have at least one row \(M >= 1\)",
        ),
        (
            lambda z, c: vq_forward(z, c.astype(np.float32)),
            TypeError,
            r"vq_forward: expected z_e, codebook to share one dtype",
        ),
        (
            lambda z, c: vq_forward(z, c, index=np.full(6, 5)),
            ValueError,
            r"vq_forward: expected every index in \[0, 5\), got values in \[5, 5\]",
        ),
        (
            lambda z, c: vq_forward(z, c, index=np.zeros(5, np.int64)),
            ValueError,
            r"vq_forward: expected index of shape \(6,\) or \(3, 2\), got \(5,\)",
        ),
        (
            lambda z, c: vq_forward(z, c, index=np.zeros(6)),
            TypeError,
            r"vq_forward: expected index to be an integer array, got float64",
        ),
    ],
)
def test_bad_arrays(rng, make, err, message):
    z_e, codebook = _inputs(rng)
    with pytest.raises(err, match=message):
        make(z_e, codebook)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda z, c: vq_forward(z, c, beta=-0.1),
            r"The 'beta' parameter of vq_forward must be a float in \[0, inf\). Got -0.1 instead.",
        ),
        (
            lambda z, c: vq_forward(z, c, beta=float("nan")),
            r"The 'beta' parameter of vq_forward must be a float",
        ),
        (
            lambda z, c: ema_codebook_update(
                np.ones(5), c, z.reshape(-1, 4), np.zeros(6, np.int64), decay=1.0
            ),
            r"The 'decay' parameter of ema_codebook_update must be a float in \(0, 1\). Got 1.0",
        ),
        (
            lambda z, c: kmeans_codebook(z.reshape(-1, 4), 0, np.random.default_rng(0)),
            r"The 'n_codes' parameter of kmeans_codebook must be an int in \[1, inf\). Got 0",
        ),
    ],
)
def test_bad_hyper_parameters(rng, call, message):
    z_e, codebook = _inputs(rng)
    with pytest.raises(InvalidParameterError, match=message):
        call(z_e, codebook)
