"""Entry points of the blocks and models for the hostile-input audit of ``test_bad_input.py``.

The blocks that compose the models (product of experts, full-covariance Gaussians, adversarial
losses, the logistic density, priors, decoders, dequantization, flows, MADE, stochastic
layers, the code prior, the discriminator, latent-space tools) and every model class of the
registry. ``register(entry, Call, rng)`` adds them to the audit's table; each builder gets the
drawn sizes ``s`` (B, D, K, C and a dtype) and returns a valid call whose array, generator,
cache and listed integer or dtype arguments are then probed one at a time.
"""

import numpy as np

from lvmcore import latent
from lvmcore.decoders import (
    CategoricalDecoder,
    MADEDecoder,
    categorical_log_prob_backward,
    categorical_log_prob_forward,
)
from lvmcore.dequantize import (
    VariationalDequantizer,
    bits_per_dim,
    dequantized_log_weight,
    logit_normal_backward,
    logit_normal_forward,
    uniform_dequantize,
)
from lvmcore.flows import IAFStep, MAFStep, PlanarStep
from lvmcore.flows.planar import planar_backward, planar_forward
from lvmcore.flows.posterior import iaf_posterior, planar_posterior
from lvmcore.losses import logistic_nll_backward, logistic_nll_forward
from lvmcore.losses.adversarial import (
    discriminator_loss_backward,
    discriminator_loss_forward,
    generator_loss_backward,
    generator_loss_forward,
)
from lvmcore.models import MODELS
from lvmcore.nn import GaussianLayer
from lvmcore.nn.code_prior import CodePrior, fit_code_prior
from lvmcore.nn.discriminator import (
    Discriminator,
    circle_mixture,
    gaussian_target_sample,
    mixture_target_sample,
)
from lvmcore.nn.made import MADE, made_degrees
from lvmcore.nn.stochastic import (
    gaussian_log_prob_backward,
    gaussian_log_prob_forward,
    gaussian_rsample_backward,
    gaussian_rsample_dlogq_dz,
    gaussian_rsample_forward,
)
from lvmcore.ops.fullcov import (
    fullcov_cholesky_backward,
    fullcov_cholesky_forward,
    fullcov_log_prob_backward,
    fullcov_log_prob_forward,
    fullcov_raw_from_cholesky,
    fullcov_rsample_backward,
    fullcov_rsample_dlogq_dz,
    fullcov_rsample_forward,
    fullcov_tril_size,
)
from lvmcore.ops.poe import poe_backward, poe_forward
from lvmcore.priors import (
    FlowPrior,
    MixtureNoise,
    MixturePrior,
    StandardNormalPrior,
    VampPrior,
    mixture_log_prob_backward,
    mixture_log_prob_forward,
    mixture_sample,
)

# Small instances of every registered model (the audit fails for a model missing here).
MODEL_CONFIGS = {
    "vae": dict(latent_dim=2, hidden=(3,)),
    "iwae": dict(latent_dim=2, hidden=(3,), k=2),
    "vqvae": dict(codes=3, slots=2, code_dim=2, hidden=(3,), reset_dead_codes=True),
    "catvae": dict(n_latents=2, n_categories=3, hidden=(3,)),
    "cvae": dict(n_classes=3, latent_dim=2, hidden=(3,)),
    "mvae": dict(latent_dim=2, hidden=(3,)),
    "aae": dict(latent_dim=2, hidden=(3,)),
}
# The data width each model is probed at: the multimodal VAE splits a row into two halves.
EXTRA_WIDTH = {"mvae": 1}


_OWN = object()  # "the drawn dtype" in the builders below (None is a probe value)


def _gen(seed=0):
    return np.random.default_rng(seed)


def register(entry, Call, rng):
    """Add every entry point of this module to the audit (``entry(name)(build)``)."""

    def add(name, build):
        entry(name)(build)

    # --- ops.poe ---------------------------------------------------------------------------

    def poe(s):
        return s.r(2, s.B, s.D) * 0.5, s.r(2, s.B, s.D) * 0.3

    add(
        "ops.poe_forward",
        lambda s: Call(
            lambda mu, logvar, mask: poe_forward(mu, logvar, mask),
            dict(zip(("mu", "logvar"), poe(s)), mask=np.ones((2, s.B), bool)),
            True,
        ),
    )
    add(
        "ops.poe_backward",
        lambda s: Call(
            lambda dmu, dlogvar, cache: poe_backward((dmu, dlogvar), cache),
            dict(dmu=s.r(s.B, s.D), dlogvar=s.r(s.B, s.D), cache=poe_forward(*poe(s))[1]),
            True,
        ),
    )

    # --- ops.fullcov ----------------------------------------------------------------------

    def tril(s):
        return s.r(s.B, fullcov_tril_size(s.D)) * 0.3

    add(
        "ops.fullcov_tril_size",
        lambda s: Call(
            lambda n_latent: fullcov_tril_size(n_latent), dict(n_latent=s.D), hyper=("n_latent",)
        ),
    )
    add(
        "ops.fullcov_cholesky_forward",
        lambda s: Call(lambda l_raw: fullcov_cholesky_forward(l_raw), dict(l_raw=tril(s)), True),
    )
    add(
        "ops.fullcov_cholesky_backward",
        lambda s: Call(
            lambda dL, cache: fullcov_cholesky_backward(dL, cache),
            dict(dL=s.r(s.B, s.D, s.D), cache=fullcov_cholesky_forward(tril(s))[1]),
            # no NaN check: L has no upper triangle, so dL's is ignored by design
        ),
    )
    add(
        "ops.fullcov_raw_from_cholesky",
        lambda s: Call(
            lambda L: fullcov_raw_from_cholesky(L),
            dict(L=fullcov_cholesky_forward(tril(s))[0]),
        ),
    )
    add(
        "ops.fullcov_rsample_forward",
        lambda s: Call(
            lambda mu, l_raw, eps: fullcov_rsample_forward(mu, l_raw, eps),
            dict(mu=s.r(s.B, s.D), l_raw=tril(s), eps=s.r(s.K, s.B, s.D)),
            True,
        ),
    )

    def fc_sample(s):
        return fullcov_rsample_forward(s.r(s.B, s.D), tril(s), s.r(s.K, s.B, s.D))[1]

    add(
        "ops.fullcov_rsample_backward",
        lambda s: Call(
            lambda dz, dlog_q, cache: fullcov_rsample_backward((dz, dlog_q), cache),
            dict(dz=s.r(s.K, s.B, s.D), dlog_q=s.r(s.K, s.B), cache=fc_sample(s)),
            True,
        ),
    )
    add(
        "ops.fullcov_rsample_dlogq_dz",
        lambda s: Call(lambda cache: fullcov_rsample_dlogq_dz(cache), dict(cache=fc_sample(s))),
    )
    add(
        "ops.fullcov_log_prob_forward",
        lambda s: Call(
            lambda z, mu, l_raw: fullcov_log_prob_forward(z, mu, l_raw),
            dict(z=s.r(s.K, s.B, s.D), mu=s.r(s.B, s.D), l_raw=tril(s)),
            True,
        ),
    )
    add(
        "ops.fullcov_log_prob_backward",
        lambda s: Call(
            lambda dlog_q, cache: fullcov_log_prob_backward(dlog_q, cache),
            dict(
                dlog_q=s.r(s.K, s.B),
                cache=fullcov_log_prob_forward(s.r(s.K, s.B, s.D), s.r(s.B, s.D), tril(s))[1],
            ),
            True,
        ),
    )

    # --- losses: adversarial and logistic ---------------------------------------------------

    add(
        "losses.discriminator_loss_forward",
        lambda s: Call(
            lambda logits_prior, logits_post: discriminator_loss_forward(logits_prior, logits_post),
            dict(logits_prior=s.r(s.B), logits_post=s.r(s.K)),
            True,
        ),
    )
    add(
        "losses.discriminator_loss_backward",
        lambda s: Call(
            lambda cache, dloss: discriminator_loss_backward(cache, dloss),
            dict(cache=discriminator_loss_forward(s.r(s.B), s.r(s.K))[1], dloss=1.0),
        ),
    )
    add(
        "losses.generator_loss_forward",
        lambda s: Call(
            lambda logits_post: generator_loss_forward(logits_post),
            dict(logits_post=s.r(s.K)),
            True,
        ),
    )
    add(
        "losses.generator_loss_backward",
        lambda s: Call(
            lambda cache, dloss: generator_loss_backward(cache, dloss),
            dict(cache=generator_loss_forward(s.r(s.K))[1], dloss=1.0),
        ),
    )
    add(
        "losses.logistic_nll_forward",
        lambda s: Call(
            lambda mean, log_scale, x: logistic_nll_forward(mean, log_scale, x),
            dict(mean=s.r(s.B, s.D), log_scale=s.r(s.D) * 0.3, x=s.r(s.B, s.D)),
            True,
        ),
    )
    add(
        "losses.logistic_nll_backward",
        lambda s: Call(
            lambda dnll, cache: logistic_nll_backward(dnll, cache),
            dict(
                dnll=s.r(s.B),
                cache=logistic_nll_forward(s.r(s.B, s.D), s.r(s.D) * 0.3, s.r(s.B, s.D))[1],
            ),
            True,
        ),
    )

    # --- priors -----------------------------------------------------------------------------

    def mixture(s):
        return s.r(s.C, s.D), s.r(s.C, s.D) * 0.3, np.log(np.full(s.C, 1 / s.C, s.dtype))

    add(
        "priors.mixture_log_prob_forward",
        lambda s: Call(
            lambda z, mu, logvar, log_weights: mixture_log_prob_forward(z, mu, logvar, log_weights),
            dict(zip(("mu", "logvar", "log_weights"), mixture(s)), z=s.r(s.K, s.B, s.D)),
            True,
        ),
    )
    add(
        "priors.mixture_log_prob_backward",
        lambda s: Call(
            lambda dlog_p, cache: mixture_log_prob_backward(dlog_p, cache),
            dict(
                dlog_p=s.r(s.K, s.B),
                cache=mixture_log_prob_forward(s.r(s.K, s.B, s.D), *mixture(s))[1],
            ),
            True,
        ),
    )
    add(
        "priors.mixture_sample",
        lambda s: Call(
            lambda mu, logvar, log_weights, u, eps: mixture_sample(
                mu, logvar, log_weights, MixtureNoise(u, eps)
            ),
            dict(
                zip(("mu", "logvar", "log_weights"), mixture(s)),
                u=np.linspace(0.1, 0.9, s.B).astype(s.dtype),
                eps=s.r(s.B, s.D),
            ),
            True,
        ),
    )

    def make_prior(kind, s, dtype=_OWN):
        dtype = s.dtype if dtype is _OWN else dtype
        if kind == "StandardNormalPrior":
            return StandardNormalPrior(s.D, dtype=dtype)
        if kind == "MixturePrior":
            return MixturePrior(s.D, s.C, _gen(), dtype=dtype)
        if kind == "VampPrior":
            enc = GaussianLayer((3, 4, s.D), "tanh", _gen(1), dtype=dtype)
            return VampPrior((enc.forward, enc.backward), s.C, 3, s.D, _gen(), dtype=dtype)
        return FlowPrior(s.D, (4,), _gen(), n_steps=2, identity_init=False, dtype=dtype)

    for kind in ("StandardNormalPrior", "MixturePrior", "VampPrior", "FlowPrior"):
        add(
            f"priors.{kind}",
            lambda s, k=kind: Call(
                lambda dtype: make_prior(k, s, dtype), dict(dtype=s.dtype), hyper=("dtype",)
            ),
        )
        add(
            f"priors.{kind}.log_prob",
            lambda s, k=kind: Call(
                lambda z: make_prior(k, s).log_prob(z), dict(z=s.r(s.K, s.B, s.D)), True
            ),
        )
        for method in ("log_prob_backward", "input_vjp"):
            add(
                f"priors.{kind}.{method}",
                lambda s, k=kind, m=method: (
                    lambda p: Call(
                        lambda dlog_p, cache: getattr(p, m)(dlog_p, cache),
                        dict(dlog_p=s.r(s.K, s.B), cache=p.log_prob(s.r(s.K, s.B, s.D))[1]),
                        True,
                    )
                )(make_prior(k, s)),
            )
        add(
            f"priors.{kind}.draw_noise",
            lambda s, k=kind: Call(
                lambda rng, n: make_prior(k, s).draw_noise(rng, n),
                dict(rng=rng(), n=s.B),
                hyper=("n",),
            ),
        )
        add(
            f"priors.{kind}.sample",
            lambda s, k=kind: Call(
                lambda rng, n: make_prior(k, s).sample(rng, n),
                dict(rng=rng(), n=s.B),
                hyper=("n",),
            ),
        )

    # --- decoders ---------------------------------------------------------------------------

    L = 3  # levels of the categorical decoder and the dequantizer

    def levels(s, *lead):
        return (np.arange(int(np.prod(lead + (s.D,)))).reshape(lead + (s.D,)) % L).astype(np.int64)

    add(
        "decoders.categorical_log_prob_forward",
        lambda s: Call(
            lambda logits, x: categorical_log_prob_forward(logits, x),
            dict(logits=s.r(s.K, s.B, s.D, L), x=levels(s, s.B)),
            True,
        ),
    )
    add(
        "decoders.categorical_log_prob_backward",
        lambda s: Call(
            lambda dlog_px, cache: categorical_log_prob_backward(dlog_px, cache),
            dict(
                dlog_px=s.r(s.K, s.B),
                cache=categorical_log_prob_forward(s.r(s.K, s.B, s.D, L), levels(s, s.B))[1],
            ),
            True,
        ),
    )

    def decoder(kind, s, dtype=_OWN):
        dtype = s.dtype if dtype is _OWN else dtype
        if kind == "CategoricalDecoder":
            return CategoricalDecoder((2, 3, s.D), L, "tanh", _gen(), dtype=dtype)
        return MADEDecoder(s.D, 2, (4,), _gen(), input_dropout=0.2, dtype=dtype)

    def dec_x(kind, s):
        return levels(s, s.B) if kind == "CategoricalDecoder" else s.binary(s.B, s.D)

    for kind in ("CategoricalDecoder", "MADEDecoder"):
        add(
            f"decoders.{kind}",
            lambda s, k=kind: Call(
                lambda dtype: decoder(k, s, dtype), dict(dtype=s.dtype), hyper=("dtype",)
            ),
        )
        add(
            f"decoders.{kind}.log_prob",
            lambda s, k=kind: Call(
                lambda x, z: decoder(k, s).log_prob(x, z),
                dict(x=dec_x(k, s), z=s.r(s.K, s.B, 2)),
                True,
            ),
        )
        for method in ("log_prob_backward", "input_vjp"):
            add(
                f"decoders.{kind}.{method}",
                lambda s, k=kind, m=method: (
                    lambda d: Call(
                        lambda dlog_px, cache: getattr(d, m)(dlog_px, cache),
                        dict(
                            dlog_px=s.r(s.K, s.B),
                            cache=d.log_prob(dec_x(k, s), s.r(s.K, s.B, 2))[1],
                        ),
                        True,
                    )
                )(decoder(k, s)),
            )
        add(
            f"decoders.{kind}.draw_noise",
            lambda s, k=kind: Call(
                lambda rng, lead: decoder(k, s).draw_noise(rng, lead),
                dict(rng=rng(), lead=(s.K, s.B)),
            ),
        )
        add(
            f"decoders.{kind}.sample",
            lambda s, k=kind: Call(
                lambda z, rng: decoder(k, s).sample(z, rng), dict(z=s.r(s.B, 2), rng=rng())
            ),
        )
    add(
        "decoders.MADEDecoder.log_prob(dropout_noise)",
        lambda s: Call(
            lambda dropout_noise: decoder("MADEDecoder", s).log_prob(
                s.binary(s.B, s.D), s.r(s.K, s.B, 2), dropout_noise
            ),
            dict(dropout_noise=np.full((s.K, s.B, s.D), 0.5, s.dtype)),
        ),
    )

    # --- dequantization ---------------------------------------------------------------------

    def unit(s, *shape):
        return (np.abs(s.r(*shape)) % 0.9 + 0.05).astype(s.dtype)

    add(
        "dequantize.uniform_dequantize",
        lambda s: Call(
            lambda x, u, levels: uniform_dequantize(x, u, levels),
            dict(x=levels(s, s.B), u=unit(s, s.K, s.B, s.D), levels=L),
            hyper=("levels",),
        ),
    )
    add(
        "dequantize.logit_normal_forward",
        lambda s: Call(
            lambda mu, logvar, eps: logit_normal_forward(mu, logvar, eps),
            dict(mu=s.r(s.B, s.D), logvar=s.r(s.B, s.D) * 0.3, eps=s.r(s.K, s.B, s.D)),
            True,
        ),
    )

    def ln_cache(s):
        return logit_normal_forward(s.r(s.B, s.D), s.r(s.B, s.D) * 0.3, s.r(s.K, s.B, s.D))[1]

    add(
        "dequantize.logit_normal_backward",
        lambda s: Call(
            lambda du, dlog_q, cache: logit_normal_backward((du, dlog_q), cache),
            dict(du=s.r(s.K, s.B, s.D), dlog_q=s.r(s.K, s.B), cache=ln_cache(s)),
            True,
        ),
    )

    def dequantizer(s, dtype=_OWN):
        dtype = s.dtype if dtype is _OWN else dtype
        return VariationalDequantizer((s.D, 3, s.D), L, "tanh", _gen(), dtype=dtype)

    add(
        "dequantize.VariationalDequantizer",
        lambda s: Call(lambda dtype: dequantizer(s, dtype), dict(dtype=s.dtype), hyper=("dtype",)),
    )
    add(
        "dequantize.VariationalDequantizer.forward",
        lambda s: Call(
            lambda x, eps: dequantizer(s).forward(x, eps),
            dict(x=levels(s, s.B), eps=s.r(s.K, s.B, s.D)),
            True,
        ),
    )
    add(
        "dequantize.VariationalDequantizer.backward",
        lambda s: (
            lambda d: Call(
                lambda dy, dlog_q, cache: (d.backward((dy, dlog_q), cache), d.grads)[1],
                dict(
                    dy=s.r(s.K, s.B, s.D),
                    dlog_q=s.r(s.K, s.B),
                    cache=d.forward(levels(s, s.B), s.r(s.K, s.B, s.D))[1],
                ),
                True,
            )
        )(dequantizer(s)),
    )
    add(
        "dequantize.dequantized_log_weight",
        lambda s: Call(
            lambda log_p_y, log_q, n_dims, levels: dequantized_log_weight(
                log_p_y, n_dims, levels, log_q
            ),
            dict(log_p_y=s.r(s.K, s.B), log_q=s.r(s.K, s.B), n_dims=s.D, levels=L),
            True,
            hyper=("n_dims", "levels"),
        ),
    )
    add(
        "dequantize.bits_per_dim",
        lambda s: Call(
            lambda log_px, n_dims: bits_per_dim(log_px, n_dims),
            dict(log_px=s.r(s.B), n_dims=s.D),
            True,
            hyper=("n_dims",),
        ),
    )

    # --- flows ------------------------------------------------------------------------------

    CTX = 2  # context width of the amortized steps

    def step(kind, s, dtype=_OWN):
        dtype = s.dtype if dtype is _OWN else dtype
        if kind == "IAFStep":
            return IAFStep(s.D, (4,), _gen(), context_dim=CTX, direct=True, dtype=dtype)
        if kind == "MAFStep":
            return MAFStep(
                s.D, (4,), _gen(), context_dim=CTX, identity_init=False, direct=True, dtype=dtype
            )
        return PlanarStep(s.D, _gen(), context_dim=CTX, dtype=dtype)

    for kind in ("IAFStep", "MAFStep", "PlanarStep"):
        add(
            f"flows.{kind}",
            lambda s, k=kind: Call(
                lambda dtype: step(k, s, dtype), dict(dtype=s.dtype), hyper=("dtype",)
            ),
        )
        add(
            f"flows.{kind}.forward",
            lambda s, k=kind: Call(
                lambda z, h: step(k, s).forward(z, h),
                dict(z=s.r(s.K, s.B, s.D), h=s.r(s.B, CTX)),
                True,
            ),
        )
        zn = "u" if kind == "MAFStep" else "z_new"
        add(
            f"flows.{kind}.inverse",
            lambda s, k=kind, zn=zn: Call(
                lambda h, **z: step(k, s).inverse(z[zn], h),
                {zn: s.r(s.K, s.B, s.D) * 0.5, "h": s.r(s.B, CTX)},
                True,
            ),
        )
        d = "du" if kind == "MAFStep" else "dz_new"  # the step's own argument names
        for method in ("backward", "input_vjp"):
            add(
                f"flows.{kind}.{method}",
                lambda s, k=kind, m=method, d=d: (
                    lambda st: Call(
                        lambda cache, dlogdet, **g: getattr(st, m)(g[d], dlogdet, cache),
                        {
                            d: s.r(s.K, s.B, s.D),
                            "dlogdet": s.r(s.K, s.B),
                            "cache": st.forward(s.r(s.K, s.B, s.D), s.r(s.B, CTX))[2],
                        },
                        True,
                    )
                )(step(k, s)),
            )
        if kind != "MAFStep":
            add(
                f"flows.{kind}.solve_transpose",
                lambda s, k=kind: (
                    lambda st: Call(
                        lambda r, cache: st.solve_transpose(r, cache),
                        dict(
                            r=s.r(s.K, s.B, s.D),
                            cache=st.forward(s.r(s.K, s.B, s.D), s.r(s.B, CTX))[2],
                        ),
                        True,
                    )
                )(step(k, s)),
            )

    def planar_params(s):
        return s.r(s.D) * 0.5, s.r(s.D) * 0.5, np.asarray(0.1, s.dtype)

    add(
        "flows.planar_forward",
        lambda s: Call(
            lambda z, u, w, b: planar_forward(z, u, w, b),
            dict(zip(("u", "w", "b"), planar_params(s)), z=s.r(s.K, s.B, s.D)),
            True,
        ),
    )
    add(
        "flows.planar_backward",
        lambda s: Call(
            lambda dz_new, dlogdet, cache: planar_backward(dz_new, dlogdet, cache),
            dict(
                dz_new=s.r(s.K, s.B, s.D),
                dlogdet=s.r(s.K, s.B),
                cache=planar_forward(s.r(s.K, s.B, s.D), *planar_params(s))[2],
            ),
            True,
        ),
    )

    def posterior(kind, s, dtype=_OWN):
        dtype = s.dtype if dtype is _OWN else dtype
        if kind == "iaf":
            return iaf_posterior(s.D, 2, (4,), _gen(), context_dim=CTX, direct=True, dtype=dtype)
        return planar_posterior(s.D, 2, _gen(), context_dim=CTX, dtype=dtype)

    for kind in ("iaf", "planar"):
        add(
            f"flows.{kind}_posterior",
            lambda s, k=kind: Call(
                lambda dtype: posterior(k, s, dtype), dict(dtype=s.dtype), hyper=("dtype",)
            ),
        )
        add(
            f"flows.FlowPosterior.forward[{kind}]",
            lambda s, k=kind: Call(
                lambda mu, logvar, eps, h: posterior(k, s).forward(mu, logvar, eps, h),
                dict(
                    mu=s.r(s.B, s.D),
                    logvar=s.r(s.B, s.D) * 0.3,
                    eps=s.r(s.K, s.B, s.D),
                    h=s.r(s.B, CTX),
                ),
                True,
            ),
        )
        add(
            f"flows.FlowPosterior.log_prob[{kind}]",
            lambda s, k=kind: Call(
                lambda z, mu, logvar, h: posterior(k, s).log_prob(z, mu, logvar, h),
                dict(
                    z=s.r(s.K, s.B, s.D) * 0.5,
                    mu=s.r(s.B, s.D),
                    logvar=s.r(s.B, s.D) * 0.3,
                    h=s.r(s.B, CTX),
                ),
                True,
            ),
        )

        def flow_cache(k, s, f):
            return f.forward(s.r(s.B, s.D), s.r(s.B, s.D) * 0.3, s.r(s.K, s.B, s.D), s.r(s.B, CTX))[
                1
            ]

        add(
            f"flows.FlowPosterior.backward[{kind}]",
            lambda s, k=kind: (
                lambda f: Call(
                    lambda dz, dlog_q, cache: f.backward((dz, dlog_q), cache),
                    dict(dz=s.r(s.K, s.B, s.D), dlog_q=s.r(s.K, s.B), cache=flow_cache(k, s, f)),
                    True,
                )
            )(posterior(k, s)),
        )
        add(
            f"flows.FlowPosterior.dlogq_dz[{kind}]",
            lambda s, k=kind: (
                lambda f: Call(lambda cache: f.dlogq_dz(cache), dict(cache=flow_cache(k, s, f)))
            )(posterior(k, s)),
        )

    # --- nn: MADE, stochastic layers, code prior, discriminator ------------------------------

    def made(s, dtype=_OWN):
        dtype = s.dtype if dtype is _OWN else dtype
        return MADE(
            s.D, (4,), _gen(), n_outputs_per_dim=2, context_dim=CTX, direct=True, dtype=dtype
        )

    add(
        "nn.made_degrees",
        lambda s: Call(
            lambda n_in, order: made_degrees(n_in, (4,), order),
            dict(n_in=s.D, order=np.arange(s.D)[::-1].copy()),
            hyper=("n_in",),
        ),
    )
    add(
        "nn.MADE",
        lambda s: Call(lambda dtype: made(s, dtype), dict(dtype=s.dtype), hyper=("dtype",)),
    )
    add(
        "nn.MADE.forward",
        lambda s: Call(
            lambda x, context: made(s).forward(x, context),
            dict(x=s.r(s.K, s.B, s.D), context=s.r(s.B, CTX)),
            True,
        ),
    )
    for method in ("backward", "input_vjp"):
        add(
            f"nn.MADE.{method}",
            lambda s, m=method: (
                lambda net: Call(
                    lambda dy, cache: getattr(net, m)(dy, cache),
                    dict(
                        dy=s.r(s.K, s.B, 2, s.D),
                        cache=net.forward(s.r(s.K, s.B, s.D), s.r(s.B, CTX))[1],
                    ),
                    True,
                )
            )(made(s)),
        )

    def layer(s, dtype=_OWN):
        dtype = s.dtype if dtype is _OWN else dtype
        return GaussianLayer((3, 4, s.D), "tanh", _gen(), dtype=dtype)

    add(
        "nn.GaussianLayer",
        lambda s: Call(lambda dtype: layer(s, dtype), dict(dtype=s.dtype), hyper=("dtype",)),
    )
    add(
        "nn.GaussianLayer.forward",
        lambda s: Call(lambda h: layer(s).forward(h), dict(h=s.r(s.K, s.B, 3)), True),
    )
    add(
        "nn.GaussianLayer.backward",
        lambda s: (
            lambda net: Call(
                lambda dmu, dlogvar, cache: net.backward((dmu, dlogvar), cache),
                dict(
                    dmu=s.r(s.K, s.B, s.D),
                    dlogvar=s.r(s.K, s.B, s.D),
                    cache=net.forward(s.r(s.K, s.B, 3))[1],
                ),
                True,
            )
        )(layer(s)),
    )

    def gauss(s):
        return s.r(s.B, s.D), s.r(s.B, s.D) * 0.3

    add(
        "nn.gaussian_rsample_forward",
        lambda s: Call(
            lambda mu, logvar, eps: gaussian_rsample_forward(mu, logvar, eps),
            dict(zip(("mu", "logvar"), gauss(s)), eps=s.r(s.K, s.B, s.D)),
            True,
        ),
    )

    def gs_cache(s):
        return gaussian_rsample_forward(*gauss(s), s.r(s.K, s.B, s.D))[1]

    add(
        "nn.gaussian_rsample_backward",
        lambda s: Call(
            lambda dz, dlog_q, cache: gaussian_rsample_backward((dz, dlog_q), cache),
            dict(dz=s.r(s.K, s.B, s.D), dlog_q=s.r(s.K, s.B), cache=gs_cache(s)),
            True,
        ),
    )
    add(
        "nn.gaussian_rsample_dlogq_dz",
        lambda s: Call(lambda cache: gaussian_rsample_dlogq_dz(cache), dict(cache=gs_cache(s))),
    )
    add(
        "nn.gaussian_log_prob_forward",
        lambda s: Call(
            lambda z, mu, logvar: gaussian_log_prob_forward(z, mu, logvar),
            dict(zip(("mu", "logvar"), gauss(s)), z=s.r(s.K, s.B, s.D)),
            True,
        ),
    )
    add(
        "nn.gaussian_log_prob_backward",
        lambda s: Call(
            lambda dlog_p, cache: gaussian_log_prob_backward(dlog_p, cache),
            dict(
                dlog_p=s.r(s.K, s.B),
                cache=gaussian_log_prob_forward(s.r(s.K, s.B, s.D), *gauss(s))[1],
            ),
            True,
        ),
    )

    def code_prior(s, dtype=_OWN):
        dtype = s.dtype if dtype is _OWN else dtype
        return CodePrior(s.D, s.C, (4,), _gen(), context_dim=CTX, dtype=dtype)

    def codes(s, n=None):
        n = s.B if n is None else n
        return (np.arange(n * s.D).reshape(n, s.D) % s.C).astype(np.int64)

    add(
        "nn.CodePrior",
        lambda s: Call(lambda dtype: code_prior(s, dtype), dict(dtype=s.dtype), hyper=("dtype",)),
    )
    add(
        "nn.CodePrior.inputs",
        lambda s: Call(lambda codes: code_prior(s).inputs(codes), dict(codes=codes(s))),
    )
    for method in ("forward", "log_prob_forward", "log_prob"):
        add(
            f"nn.CodePrior.{method}",
            lambda s, m=method: Call(
                lambda codes, context: getattr(code_prior(s), m)(codes, context),
                dict(codes=codes(s), context=s.r(s.B, CTX)),
            ),
        )
    add(
        "nn.CodePrior.backward",
        lambda s: (
            lambda p: Call(
                lambda dlogits, cache: p.backward(dlogits, cache),
                dict(dlogits=s.r(s.B, s.D, s.C), cache=p.forward(codes(s), s.r(s.B, CTX))[1]),
                True,
            )
        )(code_prior(s)),
    )
    add(
        "nn.CodePrior.log_prob_backward",
        lambda s: (
            lambda p: Call(
                lambda dlog_p, cache: p.log_prob_backward(dlog_p, cache),
                dict(dlog_p=s.r(s.B), cache=p.log_prob_forward(codes(s), s.r(s.B, CTX))[1]),
                True,
            )
        )(code_prior(s)),
    )
    add(
        "nn.CodePrior.nll_bits",
        lambda s: Call(
            lambda codes, context, batch_size: code_prior(s).nll_bits(codes, context, batch_size),
            dict(codes=codes(s), context=s.r(s.B, CTX), batch_size=2),
            hyper=("batch_size",),
        ),
    )
    add(
        "nn.CodePrior.sample_from_noise",
        lambda s: Call(
            lambda g, context: code_prior(s).sample_from_noise(g, context),
            dict(g=s.r(s.B, s.D, s.C), context=s.r(s.B, CTX)),
        ),
    )
    add(
        "nn.CodePrior.sample",
        lambda s: Call(
            lambda rng, n, context: code_prior(s).sample(rng, n, context),
            dict(rng=rng(), n=s.B, context=s.r(s.B, CTX)),
            hyper=("n",),
        ),
    )
    add(
        "nn.fit_code_prior",
        lambda s: Call(
            lambda codes, rng, context, epochs, batch_size: fit_code_prior(
                code_prior(s), codes, rng, epochs=epochs, batch_size=batch_size, context=context
            ),
            dict(codes=codes(s, 4), rng=rng(), context=s.r(4, CTX), epochs=1, batch_size=2),
            hyper=("epochs", "batch_size"),
        ),
    )

    def disc(s, dtype=_OWN):
        dtype = s.dtype if dtype is _OWN else dtype
        return Discriminator(s.D, (4,), _gen(), activation="tanh", dtype=dtype)

    add(
        "nn.Discriminator",
        lambda s: Call(lambda dtype: disc(s, dtype), dict(dtype=s.dtype), hyper=("dtype",)),
    )
    add(
        "nn.Discriminator.forward",
        lambda s: Call(lambda z: disc(s).forward(z), dict(z=s.r(s.B, s.D)), True),
    )
    add(
        "nn.Discriminator.backward",
        lambda s: (
            lambda d: Call(
                lambda dlogits, cache: d.backward(dlogits, cache),
                dict(dlogits=s.r(s.B), cache=d.forward(s.r(s.B, s.D))[1]),
                True,
            )
        )(disc(s)),
    )
    add(
        "nn.gaussian_target_sample",
        lambda s: Call(
            lambda rng, n, n_latent, dtype: gaussian_target_sample(rng, n, n_latent, dtype),
            dict(rng=rng(), n=s.B, n_latent=s.D, dtype=s.dtype),
            hyper=("n", "n_latent", "dtype"),
        ),
    )
    add(
        "nn.circle_mixture",
        lambda s: Call(
            lambda n_latent, n_components: circle_mixture(n_latent, n_components),
            dict(n_latent=2, n_components=s.C),
            hyper=("n_latent", "n_components"),
        ),
    )
    add(
        "nn.mixture_target_sample",
        lambda s: Call(
            lambda rng, n, log_pi, means, variances, dtype: mixture_target_sample(
                rng, n, (log_pi, means, variances), dtype
            ),
            dict(
                rng=rng(),
                n=s.B,
                log_pi=np.log(np.full(s.C, 1 / s.C)),
                means=np.random.default_rng(1).standard_normal((s.C, s.D)),
                variances=np.full((s.C, s.D), 0.5),
                dtype=s.dtype,
            ),
            hyper=("n", "dtype"),
        ),
    )

    # --- latent-space tools -----------------------------------------------------------------

    for name in ("lerp", "slerp", "interpolate"):
        fn = getattr(latent, name)
        add(
            f"latent.{name}",
            lambda s, f=fn: Call(
                lambda z0, z1, n: f(z0, z1, n),
                dict(z0=s.r(s.B, s.D) + 1, z1=s.r(s.B, s.D) - 1, n=3),
                True,
                hyper=("n",),
            ),
        )
    add(
        "latent.attribute_vector",
        lambda s: Call(
            lambda z, labels: latent.attribute_vector(z, labels, 0, 1),
            dict(z=s.r(2 * s.B, s.D), labels=np.arange(2 * s.B) % 2),
            True,
        ),
    )
    add(
        "latent.attribute_arithmetic",
        lambda s: Call(
            lambda z, labels, z_query: latent.attribute_arithmetic(z, labels, 0, 1, z_query),
            dict(z=s.r(2 * s.B, s.D), labels=np.arange(2 * s.B) % 2, z_query=s.r(s.K, s.D)),
            True,
        ),
    )
    for name in ("prior_quantiles", "quantile_grid"):
        fn = getattr(latent, name)
        add(
            f"latent.{name}",
            lambda s, f=fn: Call(lambda n: f(n), dict(n=s.C), hyper=("n",)),
        )
    add(
        "latent.traverse",
        lambda s: Call(
            lambda z, values: latent.traverse(z, values), dict(z=s.r(s.D), values=s.r(s.C)), True
        ),
    )

    # --- models of the registry -------------------------------------------------------------

    def model(name, s, dtype=_OWN):
        dtype = s.dtype if dtype is _OWN else dtype
        return MODELS[name](_width(name, s), **MODEL_CONFIGS[name], dtype=dtype)

    def _width(name, s):
        return s.D + EXTRA_WIDTH.get(name, 0)

    def given(name, s):
        """Valid labels for a model conditioned on them (its probes vary the other arguments)."""
        return {"labels": np.arange(s.B) % 3} if MODELS[name].needs_labels else {}

    missing = sorted(set(MODELS) - set(MODEL_CONFIGS))
    if missing:  # a registered model the audit does not cover is a failure of its own
        add("models: every registered model", lambda s: Call(lambda: missing[0] / 0, {}))
    for name, cls in MODELS.items():
        if name not in MODEL_CONFIGS:
            continue
        cn = cls.__name__
        add(
            f"models.{cn}",
            lambda s, m=name: Call(
                lambda dtype: model(m, s, dtype), dict(dtype=s.dtype), hyper=("dtype",)
            ),
        )
        add(
            f"models.{cn}.loss_and_grads",
            lambda s, m=name: Call(
                lambda x, rng: model(m, s).loss_and_grads(x, rng, **given(m, s)),
                dict(x=s.binary(s.B, _width(m, s)), rng=rng()),
            ),
        )
        for method in ("bound", "elbo"):
            add(
                f"models.{cn}.{method}",
                lambda s, m=name, f=method: Call(
                    lambda x, rng, batch_size: getattr(model(m, s), f)(
                        x, rng, batch_size, **given(m, s)
                    ),
                    dict(x=s.binary(s.B, _width(m, s)), rng=rng(), batch_size=2),
                    hyper=("batch_size",),
                ),
            )
        if cls.has_log_likelihood:
            add(
                f"models.{cn}.log_likelihood",
                lambda s, m=name: Call(
                    lambda x, rng, k, batch_size: model(m, s).log_likelihood(
                        x, rng, k, batch_size, **given(m, s)
                    ),
                    dict(x=s.binary(s.B, _width(m, s)), rng=rng(), k=3, batch_size=2),
                    hyper=("k", "batch_size"),
                ),
            )
        if cls.has_sample:
            add(
                f"models.{cn}.sample",
                lambda s, m=name: Call(
                    lambda rng, **kw: model(m, s).sample(rng, kw["n"]),
                    dict(rng=rng(), n=s.B),
                    hyper=("n",),
                ),
            )
        if cls.has_reconstruct:
            add(
                f"models.{cn}.reconstruct",
                lambda s, m=name: Call(
                    lambda x: model(m, s).reconstruct(x, **given(m, s)),
                    dict(x=s.binary(s.B, _width(m, s))),
                ),
            )
        add(
            f"models.{cn}.draw_noise",
            lambda s, m=name: Call(
                lambda rng, batch_size: model(m, s).draw_noise(rng, batch_size),
                dict(rng=rng(), batch_size=s.B),
                hyper=("batch_size",),
            ),
        )
