"""Hostile input at every public entry point of ops, losses, distributions, optim, the blocks
(priors, decoders, flows, MADE, stochastic layers, ...: ``bad_input_blocks.py``) and every
model class of the registry.

Each entry point is described once (a valid call built from drawn sizes); every array
argument of it is then replaced, one at a time, by a probe: an integer, float16, complex or
object array, a list, a Python float, a strided copy, an array with a NaN, an empty array and
arrays of wrong shapes; caches by a plain tuple, generators by an int, sample shapes by -1,
and the integer and dtype arguments a call lists (``Call.hyper``) by -1, 1.5, "2", None and
integer or half-precision dtypes.
The entry point must answer each probe with a ValueError or TypeError whose message names
the argument, or with a correct result: the same values as for a contiguous copy (strided
probes), finite (shape and empty probes), NaN where a NaN went in (element-wise math). Never
a crash, another exception, a NaN from finite input, or an out-of-bounds read.

Sizes, dtypes and where probes change shapes are drawn by hypothesis (a few examples per
entry point: the whole file runs in seconds). ``python tests/test_bad_input.py`` prints the
count of entry points and of those that pass every probe.
"""

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvmcore import ops
from lvmcore import optim as optim_module
from lvmcore.distributions import (
    Bernoulli,
    Categorical,
    DiagNormal,
    ExpRelaxedCategorical,
    Gumbel,
    RelaxedCategorical,
    StandardNormal,
    UniformCategorical,
    gumbel_max,
    gumbel_max_sample,
    kl_divergence,
    kl_divergence_backward,
    kl_normal_std_per_dim,
    kl_normal_std_per_dim_backward,
    kl_normal_std_per_dim_forward,
    standard_gumbel,
)
from lvmcore.distributions.relaxed import relaxed_softmax, relaxed_softmax_backward
from lvmcore.losses import (
    bernoulli_nll_backward,
    bernoulli_nll_forward,
    gaussian_nll_backward,
    gaussian_nll_forward,
    kl_term_backward,
    kl_term_forward,
)
from lvmcore.losses.iwae import (
    bound_forward,
    importance_weights_backward,
    importance_weights_forward,
)
from lvmcore.ops.codebook import ema_codebook_update, kmeans_codebook, reseed_codes
from lvmcore.ops.vq import code_counts, code_sums, perplexity, vq_backward, vq_forward

# Entry points known not to validate at their boundary yet: probed for crashes only, and counted
# as not clear (none today).
NOT_YET_VALIDATED = set()


@dataclass
class Sizes:
    B: int
    D: int
    K: int
    C: int
    dtype: type

    def r(self, *shape, scale=1.0):
        """Deterministic standard normals of ``shape`` in the drawn dtype."""
        rng = np.random.default_rng(sum(shape) + 7 * len(shape))
        return (rng.standard_normal(shape) * scale).astype(self.dtype)

    def binary(self, *shape):
        return (self.r(*shape) > 0).astype(self.dtype)


@dataclass
class Call:
    fn: object  # called as fn(**args)
    args: dict
    nan_propagates: bool = False  # a NaN in a float argument must reach the output
    no_probe: tuple = ()  # arguments not probed (flags, backends)
    hyper: tuple = ()  # integer (counts, sizes) and dtype arguments, probed with bad values


ENTRIES = {}


def entry(name):
    def register(build):
        ENTRIES[name] = build
        return build

    return register


def rng():
    return np.random.default_rng(0)


# --- ops -------------------------------------------------------------------------------------

for _name in ("softplus", "sigmoid", "log_sigmoid"):
    _f = getattr(ops, _name)
    entry(f"ops.{_name}")(lambda s, f=_f: Call(lambda x: f(x), dict(x=s.r(s.B, s.D)), True))

for _name in ("tanh", "relu", "softplus", "sigmoid", "log_sigmoid"):
    _fwd, _bwd = ops.ACTIVATIONS[_name]
    entry(f"ops.{_name}_forward")(
        lambda s, f=_fwd: Call(lambda x: f(x), dict(x=s.r(s.B, s.D) + 0.1), True)
    )
    entry(f"ops.{_name}_backward")(
        lambda s, f=_fwd, b=_bwd: Call(
            lambda dy, cache: b(dy, cache),
            dict(dy=s.r(s.B, s.D), cache=f(s.r(s.B, s.D) + 0.1)[1]),
            True,
        )
    )


@entry("ops.linear_forward")
def _(s):
    return Call(
        lambda x, W, b: ops.linear_forward(x, W, b),
        dict(x=s.r(s.B, s.D), W=s.r(s.D, s.C), b=s.r(s.C)),
        True,
    )


@entry("ops.linear_backward")
def _(s):
    _, cache = ops.linear_forward(s.r(s.B, s.D), s.r(s.D, s.C), s.r(s.C))
    return Call(
        lambda dy, cache: ops.linear_backward(dy, cache), dict(dy=s.r(s.B, s.C), cache=cache), True
    )


@entry("ops.reparam_forward")
def _(s):
    return Call(
        lambda mu, logvar, eps: ops.reparam_forward(mu, logvar, eps),
        dict(mu=s.r(s.B, s.D), logvar=s.r(s.B, s.D), eps=s.r(s.K, s.B, s.D)),
        True,
    )


@entry("ops.reparam_backward")
def _(s):
    _, cache = ops.reparam_forward(s.r(s.B, s.D), s.r(s.B, s.D), s.r(s.K, s.B, s.D))
    return Call(
        lambda dz, cache: ops.reparam_backward(dz, cache),
        dict(dz=s.r(s.K, s.B, s.D), cache=cache),
        True,
    )


for _name in ("logsumexp", "softmax"):
    _f = getattr(ops, _name)
    entry(f"ops.{_name}")(
        lambda s, f=_f: Call(lambda x, axis: f(x, axis), dict(x=s.r(s.B, s.C), axis=-1), True)
    )
for _name in ("logsumexp", "softmax", "log_softmax"):
    _fwd, _bwd = getattr(ops, f"{_name}_forward"), getattr(ops, f"{_name}_backward")
    entry(f"ops.{_name}_forward")(
        lambda s, f=_fwd: Call(lambda x, axis: f(x, axis), dict(x=s.r(s.B, s.C), axis=0), True)
    )
    entry(f"ops.{_name}_backward")(
        lambda s, f=_fwd, b=_bwd, n=_name: Call(
            lambda d, cache: b(d, cache),
            dict(d=s.r(s.C) if n == "logsumexp" else s.r(s.B, s.C), cache=f(s.r(s.B, s.C), 0)[1]),
            True,
        )
    )


def _vq(s):
    z_e = s.r(s.B, 2, s.D)
    codebook = s.r(s.C + 1, s.D)
    return z_e, codebook


@entry("ops.vq_forward")
def _(s):
    z_e, codebook = _vq(s)
    return Call(
        lambda z_e, codebook, beta: vq_forward(z_e, codebook, beta),
        dict(z_e=z_e, codebook=codebook, beta=0.25),
    )


@entry("ops.vq_backward")
def _(s):
    z_e, codebook = _vq(s)
    _, _, cache = vq_forward(z_e, codebook)
    return Call(
        lambda dz_q, cache: vq_backward(dz_q, cache), dict(dz_q=s.r(s.B, 2, s.D), cache=cache), True
    )


@entry("ops.code_counts")
def _(s):
    return Call(
        lambda index, n_codes: code_counts(index, n_codes),
        dict(index=np.arange(s.B) % s.C, n_codes=s.C),
    )


@entry("ops.code_sums")
def _(s):
    return Call(
        lambda index, rows, n_codes: code_sums(index, rows, n_codes),
        dict(index=np.arange(s.B) % s.C, rows=s.r(s.B, s.D), n_codes=s.C),
        True,
    )


@entry("ops.perplexity")
def _(s):
    return Call(lambda counts: perplexity(counts), dict(counts=np.abs(s.r(s.C)) + 1))


@entry("ops.ema_codebook_update")
def _(s):
    return Call(
        lambda cluster_size, code_sum, z, index: ema_codebook_update(
            cluster_size, code_sum, z, index
        ),
        dict(
            cluster_size=np.ones(s.C, s.dtype),
            code_sum=s.r(s.C, s.D),
            z=s.r(s.B, s.D),
            index=np.arange(s.B) % s.C,
        ),
    )


@entry("ops.kmeans_codebook")
def _(s):
    return Call(
        lambda z, n_codes, rng, iters: kmeans_codebook(z, n_codes, rng, iters),
        dict(z=s.r(s.B + s.C, s.D), n_codes=s.C, rng=rng(), iters=2),
    )


@entry("ops.reseed_codes")
def _(s):
    dead = np.zeros(s.C, bool)
    dead[0] = True
    return Call(
        lambda codebook, dead, z, rng: reseed_codes(codebook, dead, z, rng),
        dict(codebook=s.r(s.C, s.D), dead=dead, z=s.r(s.B, s.D), rng=rng()),
    )


# --- losses ------------------------------------------------------------------------------------


@entry("losses.bernoulli_nll_forward")
def _(s):
    return Call(
        lambda logits, x: bernoulli_nll_forward(logits, x),
        dict(logits=s.r(s.K * s.B, s.D), x=s.binary(s.B, s.D)),
        True,
    )


@entry("losses.bernoulli_nll_backward")
def _(s):
    _, cache = bernoulli_nll_forward(s.r(s.K * s.B, s.D), s.binary(s.B, s.D))
    return Call(
        lambda dnll, cache: bernoulli_nll_backward(dnll, cache),
        dict(dnll=s.r(s.K * s.B), cache=cache),
        True,
    )


@entry("losses.gaussian_nll_forward")
def _(s):
    return Call(
        lambda mean, logvar, x: gaussian_nll_forward(mean, logvar, x),
        dict(mean=s.r(s.B, s.D), logvar=s.r(s.D), x=s.r(s.B, s.D)),
        True,
    )


@entry("losses.gaussian_nll_backward")
def _(s):
    _, cache = gaussian_nll_forward(s.r(s.B, s.D), s.r(s.D), s.r(s.B, s.D))
    return Call(
        lambda dnll, cache: gaussian_nll_backward(dnll, cache),
        dict(dnll=s.r(s.B), cache=cache),
        True,
    )


@entry("losses.kl_term_forward")
def _(s):
    return Call(
        lambda kl_per_dim, free_bits: kl_term_forward(kl_per_dim, free_bits),
        dict(kl_per_dim=np.abs(s.r(s.B, s.D)), free_bits=0.0),
        True,
    )


@entry("losses.kl_term_backward")
def _(s):
    _, cache = kl_term_forward(np.abs(s.r(s.B, s.D)), 0.1)
    return Call(lambda dterm, cache: kl_term_backward(dterm, cache), dict(dterm=1.0, cache=cache))


@entry("losses.importance_weights_forward")
def _(s):
    return Call(lambda log_w: importance_weights_forward(log_w), dict(log_w=s.r(s.K, s.B)), True)


@entry("losses.importance_weights_backward")
def _(s):
    _, cache = importance_weights_forward(s.r(s.K, s.B))
    return Call(
        lambda dbound, cache: importance_weights_backward(dbound, cache),
        dict(dbound=s.r(s.B), cache=cache),
        True,
    )


@entry("losses.bound_forward")
def _(s):
    return Call(
        lambda log_w, objective, groups: bound_forward(log_w, objective, groups),
        dict(log_w=s.r(2 * s.K, s.B), objective="miwae", groups=2),
        True,
    )


# --- distributions -----------------------------------------------------------------------------


def _normal(s):
    return DiagNormal(s.r(s.B, s.D), s.r(s.B, s.D) * 0.3)


@entry("distributions.DiagNormal")
def _(s):
    return Call(
        lambda loc, logvar: DiagNormal(loc, logvar), dict(loc=s.r(s.B, s.D), logvar=s.r(s.B, s.D))
    )


@entry("distributions.DiagNormal.reparameterize")
def _(s):
    return Call(lambda eps: _normal(s).reparameterize(eps), dict(eps=s.r(s.K, s.B, s.D)), True)


for _m in ("rsample", "sample"):
    entry(f"distributions.DiagNormal.{_m}")(
        lambda s, m=_m: Call(
            lambda rng, shape: getattr(_normal(s), m)(rng, shape), dict(rng=rng(), shape=(s.K,))
        )
    )


@entry("distributions.DiagNormal.rsample_backward")
def _(s):
    return Call(
        lambda dz, eps: _normal(s).rsample_backward(dz, eps),
        dict(dz=s.r(s.K, s.B, s.D), eps=s.r(s.K, s.B, s.D)),
        True,
    )


@entry("distributions.DiagNormal.log_prob")
def _(s):
    return Call(lambda value: _normal(s).log_prob(value), dict(value=s.r(s.K, s.B, s.D)), True)


@entry("distributions.DiagNormal.log_prob_backward")
def _(s):
    return Call(
        lambda dout, value: _normal(s).log_prob_backward(dout, value),
        dict(dout=s.r(s.K, s.B), value=s.r(s.K, s.B, s.D)),
        True,
    )


@entry("distributions.DiagNormal.entropy_backward")
def _(s):
    return Call(lambda dout: _normal(s).entropy_backward(dout), dict(dout=s.r(s.B)), True)


@entry("distributions.StandardNormal")
def _(s):
    return Call(
        lambda event_size, dtype: StandardNormal(event_size, dtype),
        dict(event_size=s.D, dtype=s.dtype),
    )


@entry("distributions.StandardNormal.sample")
def _(s):
    return Call(
        lambda rng, shape: StandardNormal(s.D, s.dtype).sample(rng, shape),
        dict(rng=rng(), shape=(s.B,)),
    )


@entry("distributions.StandardNormal.log_prob")
def _(s):
    return Call(
        lambda value: StandardNormal(s.D, s.dtype).log_prob(value), dict(value=s.r(s.B, s.D)), True
    )


@entry("distributions.StandardNormal.log_prob_backward")
def _(s):
    return Call(
        lambda dout, value: StandardNormal(s.D, s.dtype).log_prob_backward(dout, value),
        dict(dout=s.r(s.B), value=s.r(s.B, s.D)),
        True,
    )


def _bern(s):
    return Bernoulli(s.r(s.B, s.D), event_ndim=1)


@entry("distributions.Bernoulli")
def _(s):
    return Call(
        lambda logits, event_ndim: Bernoulli(logits, event_ndim=event_ndim),
        dict(logits=s.r(s.B, s.D), event_ndim=1),
    )


@entry("distributions.Bernoulli.sample")
def _(s):
    return Call(lambda rng, shape: _bern(s).sample(rng, shape), dict(rng=rng(), shape=(s.K,)))


@entry("distributions.Bernoulli.log_prob")
def _(s):
    return Call(lambda value: _bern(s).log_prob(value), dict(value=s.binary(s.B, s.D)), True)


@entry("distributions.Bernoulli.log_prob_backward")
def _(s):
    return Call(
        lambda dout, value: _bern(s).log_prob_backward(dout, value),
        dict(dout=s.r(s.B), value=s.binary(s.B, s.D)),
        True,
    )


@entry("distributions.Bernoulli.entropy_backward")
def _(s):
    return Call(lambda dout: _bern(s).entropy_backward(dout), dict(dout=s.r(s.B)), True)


def _cat(s):
    return Categorical(s.r(s.B, s.C))


@entry("distributions.Categorical")
def _(s):
    return Call(lambda logits: Categorical(logits), dict(logits=s.r(s.B, s.C)))


@entry("distributions.Categorical.sample")
def _(s):
    return Call(lambda rng, shape: _cat(s).sample(rng, shape), dict(rng=rng(), shape=(s.K,)))


@entry("distributions.Categorical.log_prob")
def _(s):
    return Call(lambda value: _cat(s).log_prob(value), dict(value=np.arange(s.B) % s.C))


@entry("distributions.Categorical.log_prob_backward")
def _(s):
    return Call(
        lambda dout, value: _cat(s).log_prob_backward(dout, value),
        dict(dout=s.r(s.B), value=np.arange(s.B) % s.C),
        True,
    )


@entry("distributions.Categorical.entropy_backward")
def _(s):
    return Call(lambda dout: _cat(s).entropy_backward(dout), dict(dout=s.r(s.B)), True)


@entry("distributions.UniformCategorical")
def _(s):
    return Call(
        lambda num_categories, dtype: UniformCategorical(num_categories, dtype),
        dict(num_categories=s.C, dtype=s.dtype),
    )


@entry("distributions.UniformCategorical.sample")
def _(s):
    return Call(
        lambda rng, shape: UniformCategorical(s.C, s.dtype).sample(rng, shape),
        dict(rng=rng(), shape=(s.B,)),
    )


@entry("distributions.UniformCategorical.log_prob")
def _(s):
    return Call(
        lambda value: UniformCategorical(s.C, s.dtype).log_prob(value),
        dict(value=np.arange(s.B) % s.C),
    )


def _gumbel(s):
    return Gumbel(s.r(s.B, s.D), np.abs(s.r(s.B, s.D)) + 0.5)


@entry("distributions.Gumbel")
def _(s):
    return Call(
        lambda loc, scale: Gumbel(loc, scale),
        dict(loc=s.r(s.B, s.D), scale=np.abs(s.r(s.B, s.D)) + 0.5),
    )


for _m, _arg in (
    ("reparameterize", "g"),
    ("log_prob", "value"),
    ("cdf", "value"),
    ("log_cdf", "value"),
):
    entry(f"distributions.Gumbel.{_m}")(
        lambda s, m=_m, a=_arg: Call(
            lambda **kw: getattr(_gumbel(s), m)(**kw), {a: s.r(s.K, s.B, s.D)}, True
        )
    )


@entry("distributions.Gumbel.icdf")
def _(s):
    u = (np.abs(s.r(s.B, s.D)) % 0.9 + 0.05).astype(s.dtype)
    return Call(lambda u: _gumbel(s).icdf(u), dict(u=u), True)


@entry("distributions.Gumbel.rsample")
def _(s):
    return Call(lambda rng, shape: _gumbel(s).rsample(rng, shape), dict(rng=rng(), shape=(s.K,)))


@entry("distributions.Gumbel.rsample_backward")
def _(s):
    return Call(
        lambda dx, g: _gumbel(s).rsample_backward(dx, g),
        dict(dx=s.r(s.K, s.B, s.D), g=s.r(s.K, s.B, s.D)),
        True,
    )


@entry("distributions.Gumbel.log_prob_backward")
def _(s):
    return Call(
        lambda dout, value: _gumbel(s).log_prob_backward(dout, value),
        dict(dout=s.r(s.K, s.B, s.D), value=s.r(s.K, s.B, s.D)),
        True,
    )


@entry("distributions.Gumbel.entropy_backward")
def _(s):
    return Call(lambda dout: _gumbel(s).entropy_backward(dout), dict(dout=s.r(s.B, s.D)), True)


@entry("distributions.standard_gumbel")
def _(s):
    return Call(
        lambda rng, shape, dtype: standard_gumbel(rng, shape, dtype),
        dict(rng=rng(), shape=(s.B, s.C), dtype=s.dtype),
    )


@entry("distributions.gumbel_max")
def _(s):
    return Call(
        lambda logits, g: gumbel_max(logits, g), dict(logits=s.r(s.B, s.C), g=s.r(s.K, s.B, s.C))
    )


@entry("distributions.gumbel_max_sample")
def _(s):
    return Call(
        lambda rng, logits, shape: gumbel_max_sample(rng, logits, shape),
        dict(rng=rng(), logits=s.r(s.B, s.C), shape=(s.K,)),
    )


for _cls in (RelaxedCategorical, ExpRelaxedCategorical):
    _n = _cls.__name__
    entry(f"distributions.{_n}")(
        lambda s, c=_cls: Call(
            lambda logits, temperature: c(logits, temperature),
            dict(logits=s.r(s.B, s.C), temperature=0.7),
        )
    )
    entry(f"distributions.{_n}.reparameterize")(
        lambda s, c=_cls: Call(
            lambda g: c(s.r(s.B, s.C), 0.7).reparameterize(g), dict(g=s.r(s.K, s.B, s.C)), True
        )
    )
    entry(f"distributions.{_n}.rsample")(
        lambda s, c=_cls: Call(
            lambda rng, shape: c(s.r(s.B, s.C), 0.7).rsample(rng, shape),
            dict(rng=rng(), shape=(s.K,)),
        )
    )
    _d = "dy" if _cls is RelaxedCategorical else "dx"
    entry(f"distributions.{_n}.rsample_backward")(
        lambda s, c=_cls, d=_d: Call(
            lambda **kw: c(s.r(s.B, s.C), 0.7).rsample_backward(**kw),
            {d: s.r(s.K, s.B, s.C), "g": s.r(s.K, s.B, s.C)},
            True,
        )
    )
    entry(f"distributions.{_n}.log_prob")(
        lambda s, c=_cls: Call(
            lambda value: c(s.r(s.B, s.C), 0.7).log_prob(value),
            dict(value=c(s.r(s.B, s.C), 0.7).rsample(rng(), (s.K,))[0]),
            True,
        )
    )
    entry(f"distributions.{_n}.log_prob_backward")(
        lambda s, c=_cls: Call(
            lambda dout, value: c(s.r(s.B, s.C), 0.7).log_prob_backward(dout, value),
            dict(dout=s.r(s.K, s.B), value=c(s.r(s.B, s.C), 0.7).rsample(rng(), (s.K,))[0]),
            True,
        )
    )


@entry("distributions.relaxed_softmax")
def _(s):
    return Call(
        lambda logits, tau, g: relaxed_softmax(logits, tau, g),
        dict(logits=s.r(s.B, s.C), tau=0.7, g=s.r(s.K, s.B, s.C)),
        True,
    )


@entry("distributions.relaxed_softmax_backward")
def _(s):
    return Call(
        lambda dy, logits, tau, g: relaxed_softmax_backward(dy, logits, tau, g),
        dict(dy=s.r(s.K, s.B, s.C), logits=s.r(s.B, s.C), tau=0.7, g=s.r(s.K, s.B, s.C)),
        True,
    )


@entry("distributions.kl_divergence")
def _(s):
    return Call(
        lambda p, q: kl_divergence(p, q), dict(p=_normal(s), q=StandardNormal(s.D, s.dtype))
    )


@entry("distributions.kl_divergence_backward")
def _(s):
    return Call(
        lambda p, q, dkl: kl_divergence_backward(p, q, dkl),
        dict(p=_normal(s), q=_normal(s), dkl=s.r(s.B)),
        True,
    )


for _f in (kl_normal_std_per_dim, kl_normal_std_per_dim_forward):
    entry(f"distributions.{_f.__name__}")(
        lambda s, f=_f: Call(
            lambda loc, logvar: f(loc, logvar), dict(loc=s.r(s.B, s.D), logvar=s.r(s.B, s.D)), True
        )
    )


@entry("distributions.kl_normal_std_per_dim_backward")
def _(s):
    _, cache = kl_normal_std_per_dim_forward(s.r(s.B, s.D), s.r(s.B, s.D))
    return Call(
        lambda dkl, cache: kl_normal_std_per_dim_backward(dkl, cache),
        dict(dkl=s.r(s.B, s.D), cache=cache),
        True,
    )


# --- optim -----------------------------------------------------------------------------------


def _pg(s):
    return {"w": s.r(s.B, s.D), "b": s.r(s.D)}, {"w": s.r(s.B, s.D), "b": s.r(s.D)}


@entry("optim.clip_grad_norm")
def _(s):
    return Call(
        lambda grads, max_norm: optim_module.clip_grad_norm(grads, max_norm),
        dict(grads=_pg(s)[1], max_norm=0.5),
    )


for _cls in (optim_module.SGD, optim_module.Adam):
    _n = _cls.__name__
    entry(f"optim.{_n}")(
        lambda s, c=_cls: Call(
            lambda params, grads, lr: c(params, grads, lr=lr),
            dict(zip(("params", "grads"), _pg(s)), lr=0.1),
        )
    )

    def _step(s, c=_cls):
        def run(params, grads):
            opt = c(params, grads, lr=0.1)
            opt.step()
            return params

        return Call(run, dict(zip(("params", "grads"), _pg(s))))

    entry(f"optim.{_n}.step")(_step)

    def _load(s, c=_cls):
        params, grads = _pg(s)
        opt = c(params, grads, lr=0.1)
        opt.step()
        state = {k: np.array(v) for k, v in opt.state_dict().items()}

        def run(state):
            c(*_pg(s), lr=0.1).load_state_dict(state)
            return 0.0

        return Call(run, dict(state=state))

    entry(f"optim.{_n}.load_state_dict")(_load)


# --- blocks and models (bad_input_blocks.py) ----------------------------------------------------

from bad_input_blocks import register  # noqa: E402  (after the helpers it is given)

register(entry, Call, rng)


# --- the probes --------------------------------------------------------------------------------


# Hyper-parameter probes that no correct call accepts (dtype=None is float64 to numpy.dtype,
# a silent default): they must raise.
_MUST_RAISE = {"None dtype", "int dtype", "float16 dtype", "fractional int", "str int"}


def _hyper_probes(name):
    """Bad values for an integer or dtype argument."""
    if name == "dtype":
        return [("None dtype", None), ("int dtype", np.int32), ("float16 dtype", np.float16)]
    return [("negative int", -1), ("fractional int", 1.5), ("str int", "2"), ("None int", None)]


def _arrays(out):
    """Every float array (and Python float) inside an output, recursively."""
    if isinstance(out, np.ndarray):
        return [out] if out.dtype.kind == "f" else []
    if isinstance(out, float):
        return [np.asarray(out)]
    if isinstance(out, dict):
        return [a for v in out.values() for a in _arrays(v)]
    if isinstance(out, (tuple, list)):
        return [a for v in out for a in _arrays(v)]
    return []


def _probes(name, value, s, pick):
    """(kind, probe value) pairs for one argument."""
    if name == "cache":
        return [("plain tuple cache", (None, None))]
    if name == "rng":
        return [("int rng", 7), ("None rng", None)]
    if name == "shape":
        return [("negative shape", -1), ("float shape", (1.5,))]
    if isinstance(value, dict):  # params, grads, state
        # one entry replaced, the others copied (in-place entry points change them)
        def but(k, x):
            x = x.copy(order="K") if isinstance(x, np.ndarray) else x  # no views of value
            return {**{kk: vv.copy() for kk, vv in value.items()}, k: x}

        k = next(iter(value))
        v = value[k]
        out = [("list in dict", but(k, v.tolist())), ("int in dict", but(k, v.astype(np.int64)))]
        if v.ndim:
            out += [("shape in dict", but(k, v[..., :-1] if v.shape[-1] > 1 else v[..., None]))]
            if v.ndim == 2:
                out += [("strided in dict", but(k, np.asfortranarray(v)))]
        return out
    if not isinstance(value, np.ndarray):
        return []
    out = [
        ("list", value.tolist()),
        ("python float", 0.5),
        ("object", value.astype(object)),
        ("complex", value.astype(np.complex128)),
    ]
    if value.dtype.kind == "f":
        out += [("int", value.astype(np.int64)), ("float16", value.astype(np.float16))]
    else:
        out += [("float", value.astype(s.dtype))]
    if value.ndim:
        strided = np.empty(value.shape + (2,), value.dtype)[..., 0]
        strided[...] = value
        out.append(("strided", strided))
        axis = pick(0, value.ndim - 1)
        out.append(("empty", np.take(value, np.arange(0), axis=axis)))
        grown = np.concatenate([value, np.take(value, [0], axis=axis)], axis=axis)
        out.append(("one more along an axis", grown))
        out.append(("extra axis", value[None]))
        if value.ndim > 1:
            out.append(("one axis less", value.reshape(-1) if value.size else value[0]))
        if value.dtype.kind == "f" and value.size:
            nan = value.copy()
            nan.reshape(-1)[pick(0, value.size - 1)] = np.nan
            out.append(("nan", nan))
    else:
        out.append(("extra axis", value[None]))
    return out


class Unclear(AssertionError):
    pass


def _check_probe(entry_name, build, s, arg, kind, probe, want):
    call = build(s)
    args = dict(call.args, **{arg: probe})
    try:
        # NaN arithmetic warns (invalid value); the probe checks that it propagates
        with np.errstate(all="ignore" if kind == "nan" else "warn"):
            out = call.fn(**args)
    except (ValueError, TypeError) as err:
        msg = str(err)
        if arg.split("[")[0] not in msg:
            raise Unclear(
                f"{entry_name}: {kind} {arg}: message does not name {arg}: {msg[:200]}"
            ) from None
        return
    except Exception as err:
        raise Unclear(
            f"{entry_name}: {kind} {arg}: {type(err).__name__}: {str(err)[:200]}"
        ) from None
    if kind in _MUST_RAISE:
        raise Unclear(f"{entry_name}: {kind} {arg}: accepted without an error")
    got = _arrays(out)
    if kind == "nan":
        if call.nan_propagates and not any(np.isnan(a).any() for a in got):
            raise Unclear(f"{entry_name}: nan {arg}: the NaN did not reach the output")
        return
    if any(not np.isfinite(a).all() for a in got):
        raise Unclear(f"{entry_name}: {kind} {arg}: non-finite output from finite input")
    if kind in ("strided", "strided in dict"):
        for a, b in zip(got, want):
            np.testing.assert_allclose(
                a, b, rtol=1e-5, atol=1e-6, err_msg=f"{entry_name}: {kind} {arg}"
            )


def audit(entry_name, s, pick):
    """Run every probe on one entry point; returns the list of unclear answers."""
    build = ENTRIES[entry_name]
    fresh = build(s)  # in-place entry points (optimizers) change their arguments: use copies
    want = _arrays(fresh.fn(**fresh.args))
    problems = []
    if any(not np.isfinite(a).all() for a in want):
        problems.append(f"{entry_name}: non-finite output of the valid call")
    call = build(s)  # never called: the probes are made from its untouched arguments
    for arg, value in call.args.items():
        if arg in call.no_probe:
            continue
        probes = _hyper_probes(arg) if arg in call.hyper else _probes(arg, value, s, pick)
        for kind, probe in probes:
            try:
                _check_probe(entry_name, build, s, arg, kind, probe, want)
            except AssertionError as err:
                problems.append(" ".join(str(err).split())[:300])
    return problems


_SIZES = st.builds(
    Sizes,
    B=st.integers(1, 3),
    D=st.integers(1, 4),
    K=st.integers(1, 3),
    C=st.integers(2, 4),
    dtype=st.sampled_from([np.float32, np.float64]),
)


@pytest.mark.parametrize("name", sorted(ENTRIES))
@settings(max_examples=2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(s=_SIZES, data=st.data())
def test_every_probe_gets_a_clear_error_or_a_correct_result(name, s, data):
    problems = audit(name, s, lambda lo, hi: data.draw(st.integers(lo, hi)))
    if name in NOT_YET_VALIDATED:
        return  # probed for crashes only (a crash would have ended the process)
    assert not problems, "\n".join(problems)


def _count():
    """Entry points, and how many pass every probe, over a few drawn sizes."""
    rng_ = np.random.default_rng(0)
    clear, unclear = [], {}
    for name in sorted(ENTRIES):
        problems = []
        for _ in range(3):
            s = Sizes(
                *(int(v) for v in rng_.integers([1, 1, 1, 2], [4, 5, 4, 5])),
                rng_.choice([np.float32, np.float64]),
            )
            problems += audit(name, s, lambda lo, hi: int(rng_.integers(lo, hi + 1)))
        (
            unclear.__setitem__(name, problems)
            if problems or name in NOT_YET_VALIDATED
            else clear.append(name)
        )
    return clear, unclear


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    clear, unclear = _count()
    for name, problems in unclear.items():
        print(f"UNCLEAR {name}: {problems[:2]}")
    print(
        f"{len(clear)} of {len(clear) + len(unclear)} public entry points give a clear error or a correct result on every probe"
    )
