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
