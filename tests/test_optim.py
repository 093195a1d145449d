import numpy as np
import pytest

from lvmcore import InvalidParameterError
from lvmcore.optim import SGD, Adam, clip_grad_norm


def _textbook_adam(p, grads, lr, b1, b2, eps):
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p


@pytest.mark.parametrize("eps", [1e-8, 1e-4])
def test_adam_matches_kingma_ba_algorithm_1(rng, eps):
    p0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) * 10**-k for k in range(6)]
    params, g = {"w": p0.copy()}, {"w": np.zeros(5)}
    opt = Adam(params, g, lr=0.01, eps=eps)
    for gi in grads:
        g["w"][...] = gi
        opt.step()
    np.testing.assert_allclose(
        params["w"], _textbook_adam(p0, grads, 0.01, 0.9, 0.999, eps), rtol=1e-13
    )


@pytest.mark.oracle
def test_adam_and_sgd_match_torch(rng):
    import torch

    p0 = rng.standard_normal(4)
    grads = [rng.standard_normal(4) for _ in range(5)]
    for make, tmake in [
        (lambda P, G: Adam(P, G, lr=0.01, eps=1e-4), lambda t: torch.optim.Adam(t, 0.01, eps=1e-4)),
        (
            lambda P, G: SGD(P, G, lr=0.1, momentum=0.9),
            lambda t: torch.optim.SGD(t, 0.1, momentum=0.9),
        ),
        (
            lambda P, G: SGD(P, G, lr=0.1, momentum=0.9, nesterov=True),
            lambda t: torch.optim.SGD(t, 0.1, momentum=0.9, nesterov=True),
        ),
    ]:
        P, G = {"w": p0.copy()}, {"w": np.zeros(4)}
        opt = make(P, G)
        tp = torch.tensor(p0.copy(), requires_grad=True)
        topt = tmake([tp])
        for g in grads:
            G["w"][...] = g
            opt.step()
            tp.grad = torch.tensor(g)
            topt.step()
        np.testing.assert_allclose(P["w"], tp.detach().numpy(), rtol=1e-12)


def test_sgd_momentum(rng):
    P, G = {"w": np.array([1.0])}, {"w": np.array([2.0])}
    opt = SGD(P, G, lr=0.5, momentum=0.5)
    opt.step()  # v = 2, w = 0
    opt.step()  # v = 3, w = -1.5
    assert P["w"][0] == pytest.approx(-1.5)


def test_clip_grad_norm_scales_jointly():
    grads = {"a": np.array([3.0]), "b": np.array([4.0])}
    assert clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose([grads["a"][0], grads["b"][0]], [0.6, 0.8])
    grads = {"a": np.array([0.3])}
    clip_grad_norm(grads, 1.0)
    assert grads["a"][0] == 0.3


def test_optimizer_with_clipping_and_state_round_trip(rng):
    P, G = {"w": rng.standard_normal(3)}, {"w": rng.standard_normal(3) * 100}
    opt = Adam(P, G, lr=0.1, clip_norm=1.0)
    assert opt.step() > 1.0
    P2 = {"w": P["w"].copy()}
    opt2 = Adam(P2, G, lr=0.1, clip_norm=1.0)
    opt2.load_state_dict(opt.state_dict())
    opt.step()
    opt2.step()
    np.testing.assert_array_equal(P["w"], P2["w"])


def test_bad_hyper_parameters():
    P, G = {"w": np.zeros(2)}, {"w": np.zeros(2)}
    with pytest.raises(InvalidParameterError, match="'lr' parameter of Adam must be a float in"):
        Adam(P, G, lr=0.0)
    with pytest.raises(InvalidParameterError, match="'momentum' parameter of SGD"):
        SGD(P, G, lr=0.1, momentum=1.5)
    with pytest.raises(InvalidParameterError, match="'eps' parameter of Adam"):
        Adam(P, G, eps=-1e-8)
    with pytest.raises(ValueError, match="same keys"):
        Adam(P, {"v": np.zeros(2)})


# --- bad input: every gradient checked against its parameter, parameters updatable --------


def test_shorter_or_longer_gradient_is_refused_not_read_past():
    # A (3,) gradient for a large parameter used to be read past its end (a segfault for
    # (5 * 10**7,)); a longer one was truncated. Both are ValueErrors, at construction.
    P = {"w": np.zeros(10**6, np.float32)}
    with pytest.raises(ValueError, match=r"Adam: expected grads\['w'\] to have its parameter's"):
        Adam(P, {"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"SGD: expected grads\['w'\] to have its parameter's"):
        SGD(P, {"w": np.zeros(2 * 10**6, np.float32)})
    # and per step, when a gradient array is replaced after construction
    G = {"w": np.zeros(10**6, np.float32)}
    opt = Adam(P, G)
    G["w"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"Adam.step: expected grads\['w'\] .* shape \(1000000,\)"):
        opt.step()
    sgd = SGD({"w": np.zeros(4)}, {"w": np.zeros(4)}, lr=0.1)
    sgd.grads["w"] = np.ones(1)  # would broadcast silently into every entry
    with pytest.raises(ValueError, match=r"SGD.step: expected grads\['w'\]"):
        sgd.step()


def test_gradient_dtype_must_match_parameter():
    P = {"w": np.zeros(4, np.float32)}
    with pytest.raises(
        ValueError,
        match=r"dtype float32 \(those of params\[.w.\]\), got shape \(4,\) and dtype float64",
    ):
        Adam(P, {"w": np.zeros(4)})
    with pytest.raises(TypeError, match=r"Adam: expected grads\['w'\] to have dtype float32 or"):
        Adam(P, {"w": np.zeros(4, np.int64)})


@pytest.mark.parametrize("make", [Adam, SGD])
def test_non_contiguous_or_integer_parameters_are_refused(make):
    # The update of a strided view or of an integer array went to a copy: the parameter
    # stayed unchanged without an error.
    base = np.zeros((4, 6))
    with pytest.raises(ValueError, match=r"expected params\['w'\] to be a writeable C-contig"):
        make({"w": base.T}, {"w": np.zeros((6, 4))}, lr=0.1)
    with pytest.raises(ValueError, match=r"a strided array of shape \(4, 3\)"):
        make({"w": base[:, ::2]}, {"w": np.zeros((4, 3))}, lr=0.1)
    with pytest.raises(TypeError, match=r"expected params\['w'\] to have dtype float32 or .*int"):
        make({"w": np.zeros(3, np.int64)}, {"w": np.zeros(3, np.int64)}, lr=0.1)
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="a read-only array"):
        make({"w": ro}, {"w": np.zeros(3)}, lr=0.1)


def test_bad_optimizer_arguments_give_clear_errors():
    P, G = {"w": np.zeros(2)}, {"w": np.zeros(2)}
    with pytest.raises(InvalidParameterError, match=r"'betas' parameter of Adam must be a pair"):
        Adam(P, G, betas=(0.9,))
    with pytest.raises(InvalidParameterError, match=r"'betas' parameter of Adam must be a pair"):
        Adam(P, G, betas=0.9)
    with pytest.raises(TypeError, match="Adam: expected params to be a dict of name -> array"):
        Adam([np.zeros(2)], [np.zeros(2)])
    with pytest.raises(TypeError, match="SGD: expected grads to be a dict"):
        SGD(P, [np.zeros(2)])
    with pytest.raises(InvalidParameterError, match="'lr' parameter of Adam must be a float in"):
        Adam(P, G, lr=-1e-3)
    with pytest.raises(InvalidParameterError, match="'lr' parameter of SGD"):
        SGD(P, G, lr="0.1")
    with pytest.raises(InvalidParameterError, match="'eps' parameter of Adam"):
        Adam(P, G, eps=-1.0)
    with pytest.raises(ValueError, match="expected at least one parameter"):
        Adam({}, {})
    with pytest.raises(TypeError, match=r"clip_grad_norm: expected grads\['w'\] to be a numpy"):
        clip_grad_norm({"w": [1.0, 2.0]}, 1.0)


def test_load_state_dict_checks_keys_and_shapes(rng):
    P, G = {"w": rng.standard_normal(3)}, {"w": rng.standard_normal(3)}
    opt = Adam(P, G)
    opt.step()
    state = opt.state_dict()
    with pytest.raises(ValueError, match=r"1 missing \(\['v.w'\]\)"):
        Adam(P, G).load_state_dict({k: v for k, v in state.items() if k != "v.w"})
    with pytest.raises(ValueError, match=r"state\['m.w'\] to have shape \(3\), got \(1,\)"):
        Adam(P, G).load_state_dict(dict(state, **{"m.w": np.zeros(1)}))
    with pytest.raises(ValueError, match=r"state\['t'\] to be a non-negative integer"):
        Adam(P, G).load_state_dict(dict(state, t=np.array(-1)))
    with pytest.raises(ValueError, match=r"state\['v.w'\] to contain no NaN"):
        Adam(P, G).load_state_dict(dict(state, **{"v.w": np.full(3, np.nan)}))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_adam_step_is_one_update_per_array_bit_for_bit(rng, backend):
    """The step's single call over every array (kernels.adam_update.AdamGroup) gives the bits
    of updating each array alone, over three steps, float32 and float64 parameters mixed."""
    from kernels import adam_update as K

    shapes = [(5, 3), (3,), (7,), (1,)]
    P = {
        f"w{i}": rng.standard_normal(s).astype(np.float32 if i % 2 else np.float64)
        for i, s in enumerate(shapes)
    }
    G = {k: np.zeros_like(p) for k, p in P.items()}
    alone = {k: (p.copy(), np.zeros_like(p), np.zeros_like(p)) for k, p in P.items()}
    opt = Adam(P, G, lr=0.01, eps=1e-4, backend=backend)
    single = K.adam_update_ref if backend == "numpy" else K.adam_update_numba_v2
    for t in range(1, 4):
        for k in G:
            G[k][...] = rng.standard_normal(G[k].shape)
        opt.step()
        step_size = 0.01 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        for k, (p, m, v) in alone.items():
            single(p, G[k], m, v, step_size, 0.9, 0.999, 1e-4 * np.sqrt(1 - 0.999**t))
    for k, (p, m, v) in alone.items():
        np.testing.assert_array_equal(P[k], p)
        np.testing.assert_array_equal(opt.m[k], m)
        np.testing.assert_array_equal(opt.v[k], v)


def test_adam_updates_the_arrays_it_holds_after_they_are_replaced(rng):
    """A loaded state or a swapped gradient array replaces arrays the step's group held: the
    next step updates the new ones."""
    P, G = {"w": rng.standard_normal(4)}, {"w": rng.standard_normal(4)}
    opt = Adam(P, G, lr=0.1)
    opt.step()
    state = {k: np.array(v, copy=True) for k, v in opt.state_dict().items()}
    opt.load_state_dict(state)
    opt.m["w"] = opt.m["w"].copy()  # a replaced moment buffer
    G["w"] = G["w"] * 2  # a replaced gradient array, same shape
    twin_p = {"w": P["w"].copy()}
    twin = Adam(twin_p, {"w": G["w"].copy()}, lr=0.1)
    twin.load_state_dict(state)
    before = opt.m["w"].copy()
    opt.step()
    twin.step()
    assert not np.array_equal(opt.m["w"], before)  # the new buffer was updated
    np.testing.assert_array_equal(P["w"], twin_p["w"])
    np.testing.assert_array_equal(opt.m["w"], twin.m["w"])
