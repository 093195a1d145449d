"""Gradient checking by central finite differences, and parity tolerances.

The probe: a backward function is checked through the scalar L = sum(out * G) with a
fixed random G ~ N(0, 1/n), so every output entry contributes. Each input entry x_i
is perturbed in place by +-eps and dL/dx_i is estimated as
(L(x_i + eps) - L(x_i - eps)) / (2 eps). In float64 with eps = 1e-6 the truncation
error is O(eps^2) and the rounding error O(1e-16 / eps), both far below the rtol of
1e-5 used here on O(1) inputs; torch.autograd.gradcheck uses a looser 1e-3.
"""

import numpy as np

__all__ = ["gradcheck", "check_vjp", "numerical_gradient", "PARITY_TOLERANCES"]

# Kernel-versus-reference tolerances, keyed by dtype. float32 kernels reorder sums
# and use their own exp/log, so they agree to a few ulps times the reduction length.
PARITY_TOLERANCES = {
    np.dtype(np.float32): dict(rtol=2e-5, atol=2e-6),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13),
}


def numerical_gradient(loss, x, *, eps=1e-6, coords=None):
    """Central-difference gradient of the scalar ``loss()`` with respect to array ``x``.

    ``x`` is perturbed in place (and restored), so ``loss`` must read it afresh on
    every call. ``coords``: flat indices to probe (all when None); other entries are NaN.
    """
    if x.dtype != np.float64:
        raise TypeError(
            f"numerical_gradient: expected x to be float64, got {x.dtype}. "
            "Finite differences in float32 are too noisy to check gradients."
        )
    grad = np.full(x.shape, np.nan)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError(
            "numerical_gradient: expected x to be contiguous so it can be perturbed in place."
        )
    for i in range(x.size) if coords is None else coords:
        old = flat[i]
        flat[i] = old + eps
        lp = float(loss())
        flat[i] = old - eps
        lm = float(loss())
        flat[i] = old
        gflat[i] = (lp - lm) / (2 * eps)
    return grad


def gradcheck(loss, inputs, analytic, *, eps=1e-6, rtol=1e-5, atol=1e-7, max_coords=None, seed=0):
    """Assert that analytic gradients match central differences of ``loss``.

    Parameters
    ----------
    loss : callable () -> float
        Recomputes the scalar from the arrays in ``inputs`` (which are perturbed in place).
    inputs : dict of str -> float64 ndarray
        The arrays to differentiate with respect to (inputs and parameters).
    analytic : dict of str -> ndarray
        The claimed gradients, same keys and shapes.
    max_coords : int, optional
        For arrays larger than this, check a random subset of ``max_coords``
        coordinates plus one random directional derivative instead of every entry.

    Returns
    -------
    dict of str -> float
        The largest relative error seen for each input (for reporting).
    """
    missing = set(inputs) - set(analytic)
    if missing:
        raise AssertionError(f"gradcheck: no analytic gradient for {sorted(missing)}")
    rng = np.random.default_rng(seed)
    report = {}
    for name, x in inputs.items():
        g = np.asarray(analytic[name], dtype=np.float64)
        if g.shape != x.shape:
            raise AssertionError(
                f"gradcheck: gradient of {name!r} has shape {g.shape}, expected {x.shape}"
            )
        if max_coords is not None and x.size > max_coords:
            coords = rng.choice(x.size, size=max_coords, replace=False)
            num = numerical_gradient(loss, x, eps=eps, coords=coords)
            got, want = g.reshape(-1)[coords], num.reshape(-1)[coords]
            # one directional derivative covers every coordinate at once
            v = rng.standard_normal(x.shape)
            x0 = x.copy()
            x[...] = x0 + eps * v
            lp = float(loss())
            x[...] = x0 - eps * v
            lm = float(loss())
            x[...] = x0
            got = np.append(got, np.sum(g * v))
            want = np.append(want, (lp - lm) / (2 * eps))
        else:
            got, want = g.reshape(-1), numerical_gradient(loss, x, eps=eps).reshape(-1)
        np.testing.assert_allclose(
            got, want, rtol=rtol, atol=atol, err_msg=f"gradcheck: gradient of {name!r}"
        )
        denom = np.maximum(np.abs(want), atol / rtol)
        report[name] = float(np.max(np.abs(got - want) / denom)) if got.size else 0.0
    return report


def check_vjp(forward, backward, args, *, names=None, wrt=None, seed=0, **kwargs):
    """Gradcheck an op written as ``forward(*args) -> (out, cache)`` and
    ``backward(dout, cache) -> tuple of gradients``, one per differentiable argument.

    ``out`` may be a tuple of arrays; each gets its own probe G. ``wrt`` lists the
    argument positions that backward returns gradients for (all by default), in order.
    """
    args = [np.array(a, dtype=np.float64) if isinstance(a, np.ndarray) else a for a in args]
    wrt = list(range(len(args))) if wrt is None else list(wrt)
    names = names or [f"arg{i}" for i in wrt]
    rng = np.random.default_rng(seed)
    out, cache = forward(*args)
    outs = out if isinstance(out, tuple) else (out,)
    probes = tuple(rng.standard_normal(np.shape(o)) / np.sqrt(max(np.size(o), 1)) for o in outs)

    def loss():
        o, _ = forward(*args)
        o = o if isinstance(o, tuple) else (o,)
        return sum(float(np.sum(oi * G)) for oi, G in zip(o, probes))

    grads = backward(probes if isinstance(out, tuple) else probes[0], cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    if len(grads) != len(wrt):
        raise AssertionError(
            f"check_vjp: backward returned {len(grads)} gradients, expected {len(wrt)}"
        )
    return gradcheck(
        loss, {n: args[i] for n, i in zip(names, wrt)}, dict(zip(names, grads)), seed=seed, **kwargs
    )
