"""VAE and IWAE with a learned prior, an autoregressive or categorical decoder, or dequantized
discrete data: the third and fourth limits of the plain VAE, as models.

``lvmcore train --model vae --prior vamp --prior-components 500`` (or ``--model iwae``,
``--prior mog|flow``, ``--decoder made|categorical``, ``--dequantize uniform|variational``)
builds these models: variants of the registered names (:func:`lvmcore.models.register_variant`);
left at ``--prior standard --decoder factorized --dequantize none`` the flags build
:class:`lvmcore.models.VAE` and :class:`lvmcore.models.IWAE` themselves. The posterior is the
diagonal Gaussian; the full-covariance, flow and hierarchical posteriors keep the standard prior
and the factorized Bernoulli decoder (they refuse these flags).

Shapes: S samples per data point, B batch, D data, H hidden, Z latent, C prior components,
L levels (categorical and dequantized data).

Forward, for fixed noise eps (S, B, Z) or (S, B, Z + D) (the D columns below)::

    mu, logvar = encoder(x_in)          x_in = x, or x / (L - 1) for levels      (B, Z)
    z = mu + exp(logvar / 2) eps_z,  log q(z|x)                                   (S, B, Z)
    log p(z) = prior.log_prob(z)        standard, mog, vamp (through the encoder)  (S, B)
    log p(x|z) =
      factorized: Bernoulli / Gaussian / logistic of decoder(z)                   (S, B)
      made:       sum_i log Bernoulli(x_i | MADE(x_<i, context z)), teacher-forced (S, B)
                  (training forward only: inputs dropped where u < ar_dropout, u the D
                  uniform columns of the noise)
      categorical: sum_d log softmax(decoder(z)_d)[x_d] over L levels             (S, B)
      dequantized: y = (x + u) / L, u uniform (the D uniform columns) or
                  u ~ q(u|x) logit-normal (the D normal columns);
                  log p_y(y|z) - D log L - log q(u|x)                             (S, B)
    log w = log p(x|z) + log p(z) - log q(z|x)

Estimators. IWAE's plain, STL and DReG estimators see the prior as a generative term: its
parameters (the mixture's, the flow's, the VampPrior's pseudo-inputs and, through them, the
encoder) take the decoder's weights, and its :math:`\\partial \\log p(z)/\\partial z` joins the
decoder's in the gradient of the sample (the prior blocks' ``log_prob_backward``). The
dequantizer's :math:`\\log q(u|x)` is part of the likelihood term, so its network takes the plain
gradient of every objective; STL and DReG apply to q(z|x).

The ELBO's KL is :math:`\\log q(z|x) - \\log p(z)` sampled; with the standard prior the
closed form (``kl="analytic"``, the default there) and free bits (``free_bits``, a floor per
latent unit) apply, as in :class:`lvmcore.models.VAE`: the KL of a mixture, VampPrior or flow
prior does not split into units.

The decoder's input dropout (``ar_dropout``, Bowman et al. 2016) is part of the training loss:
``forward`` applies it; ``log_weights``, and so every bound, the ELBO and the K-sample
log-likelihood, evaluate the model without it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import noise
from .._validation import check_levels, check_param, get_xp, to_numpy
from ..cli._types import int_list, positive_int, unit_float
from ..decoders import CategoricalDecoder, MADEDecoder
from ..dequantize import VariationalDequantizer, bits_per_dim, uniform_dequantize
from ..distributions.kl import (
    KLNormalStdCache,
    kl_normal_std_per_dim,
    kl_normal_std_per_dim_backward,
)
from ..losses import (
    bernoulli_nll_backward,
    bernoulli_nll_forward,
    gaussian_nll_backward,
    gaussian_nll_forward,
    logistic_nll_backward,
    logistic_nll_forward,
)
from ..nn import MLP, GaussianLayer
from ..nn.stochastic import (
    gaussian_rsample_backward,
    gaussian_rsample_dlogq_dz,
    gaussian_rsample_forward,
)
from ..ops import sigmoid
from ..ops.softmax import softmax
from ..priors import FlowPrior, MixturePrior, StandardNormalPrior, VampPrior
from ..priors.mixture import mixture_log_prob_forward
from .base import Flag
from .hvae import EVAL_DRAWS, EVAL_STREAM
from .iwae import IWAE
from .logweight import ELBOTraining, IWAETraining, LogTerms, LogWeightModel
from .vae import VAE

__all__ = [
    "PriorDecoderVAE",
    "PriorDecoderIWAE",
    "PriorDecoderCache",
    "PRIORS",
    "DECODERS",
    "DEQUANTIZERS",
    "aggregate_mutual_information",
]

PRIORS = ("standard", "mog", "vamp", "flow")
DECODERS = ("factorized", "made", "categorical")
DEQUANTIZERS = ("none", "uniform", "variational")
LIKELIHOODS = ("bernoulli", "gaussian", "logistic")
# Rows of the evaluation set whose posteriors form the aggregate posterior of the I(x; z)
# estimate (eval_report): the mixture has one component per row, so its cost is quadratic.
MI_ROWS = 1000


class PriorDecoderCache(NamedTuple):
    """What the backward needs.

    x : (B, D) the data; enc : the encoder's GaussianLayerCache; mu, logvar : (B, Z);
    rs : GaussianSampleCache (eps (S, B, Z), std); z : (S, B, Z); prior : the prior's cache;
    dec : the decoder's cache (MLPCache, MADEDecoderCache or CategoricalDecoderCache);
    lik : the likelihood's cache (factorized decoders), else None; deq : the variational
    dequantizer's cache, else None.
    """

    x: object
    enc: object
    mu: object
    logvar: object
    rs: object
    z: object
    prior: object
    dec: object
    lik: object
    deq: object


def aggregate_mutual_information(mu, logvar, eps):
    """Estimate of I(x; z) under q(x, z) = p_data(x) q(z|x) from the posteriors of N rows.

    Parameters
    ----------
    mu, logvar : ndarray of shape (N, Z)
        The posterior moments of N data rows.
    eps : ndarray of shape (S, N, Z)
        Standard normals: S samples z ~ q(z | x_n) per row.

    Returns
    -------
    float
        :math:`\\hat I = \\frac1{SN}\\sum_{s,n}[\\log q(z_{sn}|x_n) - \\log \\hat q(z_{sn})]`
        in nats, with the aggregate posterior :math:`\\hat q(z) = \\frac1N\\sum_m q(z|x_m)`
        evaluated exactly over the N rows (a mixture of N Gaussians).

    Notes
    -----
    :math:`I(x;z) = E_x[\\mathrm{KL}(q(z|x) \\| q(z))]` (Hoffman and Johnson 2016, the "ELBO
    surgery"); the estimator of He et al. (2019, "Lagging inference networks", eq. 6) with the
    whole evaluation set as the mixture instead of a minibatch. It lies in [0, log N]: the
    mixture includes x_n's own posterior, so a latent code that identifies every row reads
    log N, and one equal for every row (collapse) reads 0. The mixture's log-density is the
    mixture kernel of the priors (:func:`lvmcore.priors.mixture_log_prob_forward`).
    """
    xp = get_xp(mu)
    N = mu.shape[0]
    (z, log_q), _ = gaussian_rsample_forward(mu, logvar, eps)  # (S, N, Z), (S, N)
    log_w = xp.full(N, -math.log(N), dtype=mu.dtype)
    log_agg, _ = mixture_log_prob_forward(z, mu, logvar, log_w)  # (S, N)
    return float((log_q - log_agg).astype(np.float64).mean())


class _PriorDecoder(LogWeightModel):
    """The prior, decoder and dequantizer of one model, its terms and their backward (module
    docstring).

    Parameters (shared by :class:`PriorDecoderVAE` and :class:`PriorDecoderIWAE`)
    ----------------------------------------------------------------------------
    data_dim : int
        D.
    latent_dim : int
        Z.
    hidden : sequence of int
        The encoder's hidden widths; the factorized and categorical decoders mirror them.
    activation : {"tanh", "relu", "softplus"}
    likelihood : {"bernoulli", "gaussian", "logistic"}
        The factorized decoder's: Bernoulli for binary data, a Gaussian or logistic density
        (learned log-variance or log-scale per dimension) for real data and for dequantized
        levels. ``made`` is Bernoulli, ``categorical`` is its own.
    prior : {"standard", "mog", "vamp", "flow"}
    prior_components : int, optional
        C >= 1 for ``mog`` and ``vamp`` (default 10).
    prior_flow_steps : int, optional
        T >= 1 MAF steps of the ``flow`` prior (default 2).
    prior_flow_hidden : sequence of int, optional
        Hidden widths of each MAF step's MADE, each >= Z - 1 (default (2Z, 2Z)).
    decoder : {"factorized", "made", "categorical"}
    ar_hidden : sequence of int, optional
        ``made``: the MADE's hidden widths, each >= D - 1 (default (D,)).
    ar_context : int, optional
        ``made``: each pixel sees only the previous N >= 1 pixels (default: all of them).
    ar_dropout : float in [0, 1), optional
        ``made``: the probability of dropping each autoregressive input in training (default 0).
    levels : int, optional
        L >= 2 for ``categorical`` and dequantized data (default 17, the digits-levels data).
    dequantize : {"none", "uniform", "variational"}
    dequantizer_hidden : sequence of int, optional
        ``variational``: the hidden widths of q(u|x)'s network (default: ``hidden``).
    seed : int
        Seeds the initialisation: encoder, prior, decoder, dequantizer, in that order.
    dtype : float32 or float64

    Notes
    -----
    Parameters: ``encoder.*`` (last layer ``[mu | logvar]``), ``prior.*`` (``mu``, ``logvar``,
    ``logits`` of the mixture; ``u`` the VampPrior's pseudo-inputs (C, D) in the encoder's
    input scale; ``step<t>.*`` of the flow), ``decoder.*`` (and ``decoder.logvar`` or
    ``decoder.log_scale`` (D,) of a Gaussian or logistic one), ``dequantizer.*``. The VampPrior
    holds no copy of the encoder: its gradient adds into ``encoder.*``, listed once.
    """

    selectors = ("prior", "decoder", "dequantize")
    graph_flags = (
        Flag(
            "--prior",
            "prior",
            "standard",
            "prior p(z): standard (N(0, I)), mog (a learned mixture of Gaussians), vamp (the "
            "VampPrior: the posterior's mixture at learned pseudo-inputs) or flow (a MAF over z)",
            dict(choices=PRIORS),
        ),
        Flag(
            "--prior-components",
            "prior_components",
            10,
            "C, components of the mog prior or pseudo-inputs of the vamp prior",
            dict(type=positive_int, metavar="C"),
        ),
        Flag(
            "--prior-flow-steps",
            "prior_flow_steps",
            2,
            "T, MAF steps of the flow prior",
            dict(type=positive_int, metavar="T"),
        ),
        Flag(
            "--prior-flow-hidden",
            "prior_flow_hidden",
            None,
            "hidden widths of each flow-prior step's MADE (default: 2Z,2Z)",
            dict(type=int_list, metavar="H1,H2,..."),
        ),
        Flag(
            "--decoder",
            "decoder",
            "factorized",
            "decoder p(x|z): factorized (per --likelihood), made (autoregressive over the "
            "pixels, z as context) or categorical (a softmax over --levels per dimension)",
            dict(choices=DECODERS),
        ),
        Flag(
            "--ar-hidden",
            "ar_hidden",
            None,
            "hidden widths of the made decoder, each >= D - 1 (default: D)",
            dict(type=int_list, metavar="H1,H2,..."),
        ),
        Flag(
            "--ar-context",
            "ar_context",
            None,
            "made decoder: each pixel sees only the previous N pixels (default: all)",
            dict(type=positive_int, metavar="N"),
        ),
        Flag(
            "--ar-dropout",
            "ar_dropout",
            0.0,
            "made decoder: drop each autoregressive input with probability P in training",
            dict(type=unit_float, metavar="P"),
        ),
        Flag(
            "--levels",
            "levels",
            17,
            "L, levels of the data for the categorical decoder and --dequantize",
            dict(type=positive_int, metavar="L"),
        ),
        Flag(
            "--dequantize",
            "dequantize",
            "none",
            "model levels by a continuous density of (x + u) / L: u uniform, or variational "
            "(a learned logit-normal q(u|x)); with --likelihood gaussian or logistic",
            dict(choices=DEQUANTIZERS),
        ),
        Flag(
            "--dequantizer-hidden",
            "dequantizer_hidden",
            None,
            "hidden widths of the variational dequantizer (default: --hidden)",
            dict(type=int_list, metavar="H1,H2,..."),
        ),
        Flag(
            "--likelihood",
            "likelihood",
            "bernoulli",
            "logistic for a factorized logistic density",
            dict(choices=LIKELIHOODS),
        ),
    )

    @classmethod
    def selects(cls, settings):
        """A prior, decoder or dequantizer other than the plain VAE's (a flag or a config)."""
        return (
            (settings.get("prior") or "standard") != "standard"
            or (settings.get("decoder") or "factorized") != "factorized"
            or (settings.get("dequantize") or "none") != "none"
        )

    # ------------------------------------------------------------------ construction
    def _build(
        self,
        data_dim,
        latent_dim,
        hidden,
        activation,
        likelihood,
        prior,
        prior_components,
        prior_flow_steps,
        prior_flow_hidden,
        decoder,
        ar_hidden,
        ar_context,
        ar_dropout,
        levels,
        dequantize,
        dequantizer_hidden,
        seed,
        dtype,
        func,
    ):
        pos = dict(kind="int", low=1, low_inclusive=True)
        self.data_dim = D = check_param(data_dim, "data_dim", func, **pos)
        self.latent_dim = Z = check_param(latent_dim, "latent_dim", func, **pos)
        self.hidden = H = tuple(check_param(h, "hidden", func, **pos) for h in hidden)
        self.activation = check_param(
            activation, "activation", func, kind="choice", choices=("tanh", "relu", "softplus")
        )
        self.prior = check_param(prior, "prior", func, kind="choice", choices=PRIORS)
        self.decoder_kind = check_param(decoder, "decoder", func, kind="choice", choices=DECODERS)
        self.dequantize = check_param(
            dequantize, "dequantize", func, kind="choice", choices=DEQUANTIZERS
        )
        self.seed = check_param(seed, "seed", func, kind="int", low=0, low_inclusive=True)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"{func}: expected dtype float32 or float64, got {self.dtype}.")

        def applies(name, value, ok, where):
            if value is not None and not ok:
                raise ValueError(
                    f"{func}: expected {name}=None (it applies to {where}), got {value!r}."
                )

        mix = self.prior in ("mog", "vamp")
        made = self.decoder_kind == "made"
        applies("prior_components", prior_components, mix, "the mog and vamp priors")
        applies("prior_flow_steps", prior_flow_steps, self.prior == "flow", "the flow prior")
        applies("prior_flow_hidden", prior_flow_hidden, self.prior == "flow", "the flow prior")
        applies("ar_hidden", ar_hidden, made, "the made decoder")
        applies("ar_context", ar_context, made, "the made decoder")
        applies("ar_dropout", ar_dropout, made, "the made decoder")
        uses_levels = self.decoder_kind == "categorical" or self.dequantize != "none"
        applies("levels", levels, uses_levels, "the categorical decoder and dequantized data")
        applies(
            "dequantizer_hidden",
            dequantizer_hidden,
            self.dequantize == "variational",
            "the variational dequantizer",
        )
        # the likelihood follows from the decoder where only one applies
        if self.decoder_kind != "factorized":
            want = "bernoulli" if made else "categorical"
            if likelihood not in (None, want):
                raise ValueError(
                    f"{func}: expected likelihood {want!r} (or None) with the {decoder} "
                    f"decoder, got {likelihood!r}."
                )
            likelihood = want
        else:
            likelihood = check_param(
                "bernoulli" if likelihood is None else likelihood,
                "likelihood",
                func,
                kind="choice",
                choices=LIKELIHOODS,
            )
        if self.dequantize != "none":
            if self.decoder_kind != "factorized" or likelihood == "bernoulli":
                raise ValueError(
                    f"{func}: expected a continuous decoder with dequantize="
                    f"{self.dequantize!r} (decoder 'factorized' with likelihood 'gaussian' or "
                    f"'logistic'), got decoder {self.decoder_kind!r} with likelihood "
                    f"{likelihood!r}."
                )
        self.likelihood = likelihood
        self.levels = self.prior_components = None
        if uses_levels:
            self.levels = check_param(
                17 if levels is None else levels,
                "levels",
                func,
                kind="int",
                low=2,
                low_inclusive=True,
            )
        if mix:
            self.prior_components = check_param(
                10 if prior_components is None else prior_components,
                "prior_components",
                func,
                **pos,
            )
        self.prior_flow_steps = self.prior_flow_hidden = None
        if self.prior == "flow":
            self.prior_flow_steps = check_param(
                2 if prior_flow_steps is None else prior_flow_steps, "prior_flow_steps", func, **pos
            )
            self.prior_flow_hidden = tuple(
                check_param(h, "prior_flow_hidden", func, **pos)
                for h in ((2 * Z, 2 * Z) if prior_flow_hidden is None else prior_flow_hidden)
            )
        self.ar_hidden = self.ar_context = self.ar_dropout = None
        if made:
            self.ar_hidden = tuple(
                check_param(h, "ar_hidden", func, **pos)
                for h in ((D,) if ar_hidden is None else ar_hidden)
            )
            if ar_context is not None:
                ar_context = check_param(ar_context, "ar_context", func, **pos)
            self.ar_context = ar_context
            self.ar_dropout = check_param(
                0.0 if ar_dropout is None else ar_dropout,
                "ar_dropout",
                func,
                low=0,
                high=1,
                low_inclusive=True,
                high_inclusive=False,
            )
        self.dequantizer_hidden = None
        if self.dequantize == "variational":
            self.dequantizer_hidden = tuple(
                check_param(h, "dequantizer_hidden", func, **pos)
                for h in (H if dequantizer_hidden is None else dequantizer_hidden)
            )
        # the noise: eps_z, then D columns for dropout (uniforms) or dequantization
        self._extra = (made and self.ar_dropout > 0) or self.dequantize != "none"
        self.noise_dim = Z + (D if self._extra else 0)
        self.has_gaussian_latents = self.prior == "standard"

        rng = np.random.default_rng(self.seed)
        act, dt = self.activation, self.dtype
        self.encoder = GaussianLayer((D, *H, Z), act, rng, dt)
        if self.prior == "standard":
            self.prior_block = StandardNormalPrior(Z, dtype=dt)
        elif self.prior == "mog":
            self.prior_block = MixturePrior(Z, self.prior_components, rng, dtype=dt)
        elif self.prior == "vamp":
            self.prior_block = VampPrior(
                (self.encoder.forward, self.encoder.backward),
                self.prior_components,
                D,
                Z,
                rng,
                dtype=dt,
            )
        else:
            self.prior_block = FlowPrior(
                Z,
                self.prior_flow_hidden,
                rng,
                n_steps=self.prior_flow_steps,
                activation=act,
                dtype=dt,
            )
        if made:
            self.decoder = MADEDecoder(
                D,
                Z,
                self.ar_hidden,
                rng,
                ar_context=self.ar_context,
                input_dropout=self.ar_dropout,
                activation=act,
                dtype=dt,
            )
        elif self.decoder_kind == "categorical":
            self.decoder = CategoricalDecoder((Z, *H[::-1], D), self.levels, act, rng, dt)
        else:
            self.decoder = MLP((Z, *H[::-1], D), act, rng, dt)
            if likelihood == "gaussian":
                self.decoder._add_param("logvar", np.zeros(D, dtype=dt))
            elif likelihood == "logistic":
                self.decoder._add_param("log_scale", np.zeros(D, dtype=dt))
        self.dequantizer = None
        if self.dequantize == "variational":
            self.dequantizer = VariationalDequantizer(
                (D, *self.dequantizer_hidden, D), self.levels, act, rng, dt
            )

    def _graph_config(self):
        def listed(v):
            return None if v is None else list(v)

        return dict(
            data_dim=self.data_dim,
            latent_dim=self.latent_dim,
            hidden=list(self.hidden),
            activation=self.activation,
            likelihood=self.likelihood if self.decoder_kind == "factorized" else None,
            prior=self.prior,
            prior_components=self.prior_components,
            prior_flow_steps=self.prior_flow_steps,
            prior_flow_hidden=listed(self.prior_flow_hidden),
            decoder=self.decoder_kind,
            ar_hidden=listed(self.ar_hidden),
            ar_context=self.ar_context,
            ar_dropout=self.ar_dropout,
            levels=self.levels,
            dequantize=self.dequantize,
            dequantizer_hidden=listed(self.dequantizer_hidden),
        )

    @staticmethod
    def _graph_args(args, data_dim):
        """The prior, decoder and dequantizer of the flags; flags that do not apply to them are
        refused, as are the posteriors and hierarchies these models do not combine with."""
        given = args.given
        posterior = getattr(args, "posterior", None)
        if posterior not in (None, "diag"):
            raise ValueError(
                f"expected --posterior diag with --prior {args.prior} --decoder {args.decoder} "
                f"--dequantize {args.dequantize}, got --posterior {posterior}: the learned "
                f"priors, the made and categorical decoders and dequantization take the diagonal "
                f"posterior."
            )
        layers = getattr(args, "stochastic_layers", None) or 1
        if layers > 1:
            raise ValueError(
                f"expected --stochastic-layers 1 with --prior {args.prior} --decoder "
                f"{args.decoder} --dequantize {args.dequantize}, got {layers}: these models have "
                f"one stochastic layer."
            )
        mix, made = args.prior in ("mog", "vamp"), args.decoder == "made"
        levels = args.decoder == "categorical" or args.dequantize != "none"
        for dest, ok, where in (
            ("prior_components", mix, "--prior mog and vamp"),
            ("prior_flow_steps", args.prior == "flow", "--prior flow"),
            ("prior_flow_hidden", args.prior == "flow", "--prior flow"),
            ("ar_hidden", made, "--decoder made"),
            ("ar_context", made, "--decoder made"),
            ("ar_dropout", made, "--decoder made"),
            ("levels", levels, "--decoder categorical and --dequantize"),
            ("dequantizer_hidden", args.dequantize == "variational", "--dequantize variational"),
            ("likelihood", args.decoder == "factorized", "--decoder factorized"),
        ):
            if dest in given and not ok:
                flag = "--" + dest.replace("_", "-")
                raise ValueError(f"expected no {flag} here: it applies to {where}.")
        return dict(
            latent_dim=args.latent,
            hidden=args.hidden,
            activation=args.activation,
            likelihood=args.likelihood if args.decoder == "factorized" else None,
            prior=args.prior,
            prior_components=args.prior_components if mix else None,
            prior_flow_steps=args.prior_flow_steps if args.prior == "flow" else None,
            prior_flow_hidden=args.prior_flow_hidden if args.prior == "flow" else None,
            decoder=args.decoder,
            ar_hidden=args.ar_hidden if made else None,
            ar_context=args.ar_context if made else None,
            ar_dropout=args.ar_dropout if made else None,
            levels=args.levels if levels else None,
            dequantize=args.dequantize,
            dequantizer_hidden=(
                args.dequantizer_hidden if args.dequantize == "variational" else None
            ),
        )

    def modules(self):
        out = {"encoder": self.encoder, "prior": self.prior_block, "decoder": self.decoder}
        if self.dequantizer is not None:
            out["dequantizer"] = self.dequantizer
        return out

    # ------------------------------------------------------------------ data
    @property
    def _levels_data(self):
        return self.levels is not None

    def _check_x(self, x, func):
        x = super()._check_x(x, func)
        if self._levels_data:
            check_levels(x, self.levels, "x", func)
        return x

    def _encoder_input(self, x):
        """The encoder reads binary or real data as it is and levels scaled to [0, 1]."""
        if self._levels_data:
            return x * x.dtype.type(1.0 / (self.levels - 1))
        return x

    def init_output_bias(self, x_train):
        """Start the decoder at the data's marginals: the logit of the pixel means (Bernoulli,
        factorized or MADE), the mean and the variance (Gaussian) or scale (logistic) of each
        dimension (of (x + u) / L for dequantized levels), or the log-frequency of each level
        (categorical, with one pseudo-count)."""
        xp = get_xp(x_train)
        if self.decoder_kind == "made":
            mean = xp.clip(x_train.mean(axis=0).astype(np.float64), 1e-3, 1 - 1e-3)
            b = self.decoder.output_bias
            b[...] = (xp.log(mean) - xp.log1p(-mean)).astype(self.dtype)
        elif self.decoder_kind == "categorical":
            L = self.levels
            lv = check_levels(x_train, L, "x_train", f"{type(self).__name__}.init_output_bias")
            counts = (lv[..., None] == xp.arange(L)).sum(axis=0) + 1.0  # (D, L)
            logp = xp.log(counts / counts.sum(axis=1, keepdims=True))
            b = self.decoder.output_bias
            b[...] = logp.reshape(-1).astype(self.dtype)
        elif self.likelihood in ("gaussian", "logistic"):
            # the mean, and the scale of each dimension's marginal: of y = (x + u) / L for
            # dequantized levels (u adds 1 / (12 L^2) to the variance), of x otherwise
            x64 = x_train.astype(np.float64)
            if self.dequantize != "none":
                x64 = (x64 + 0.5) / self.levels
            var = x64.var(axis=0) + (1 / (12 * self.levels**2) if self.levels else 0.0) + 1e-4
            b = self.decoder.output_bias
            b[...] = x64.mean(axis=0).astype(self.dtype)
            if self.likelihood == "gaussian":
                self.decoder.params["logvar"][...] = xp.log(var).astype(self.dtype)
            else:  # a logistic of scale s has variance s^2 pi^2 / 3
                s = xp.sqrt(3 * var) / math.pi
                self.decoder.params["log_scale"][...] = xp.log(s).astype(self.dtype)
        else:
            self._init_output_bias_to_data_mean(x_train, self.decoder)

    # ------------------------------------------------------------------ pictures
    def _decoder_mean(self, z, x=None):
        """The decoder's mean at z (N, Z), in the data's units: probabilities, means, the mean
        level (categorical), or L E[y] - 1/2 clipped to [0, L - 1] (dequantized)."""
        xp = get_xp(z)
        if self.decoder_kind == "made":  # teacher-forced conditionals given x
            _, c = self.decoder.log_prob(x, z)
            return (x - c.grad.reshape(x.shape)).astype(self.dtype)  # grad = x - sigmoid(l)
        if self.decoder_kind == "categorical":
            logits, _ = self.decoder._logits(z)  # (N, D, L)
            probs = softmax(logits, axis=-1)
            return (probs * xp.arange(self.levels, dtype=self.dtype)).sum(axis=-1)
        out, _ = self.decoder.forward(z)
        if self.likelihood == "bernoulli":
            return sigmoid(out)
        if self.dequantize != "none":
            L = self.levels
            return xp.clip(L * out - 0.5, 0, L - 1).astype(self.dtype)
        return out

    def sample(self, rng, n):
        """n samples, (n, D): z from the prior, then the decoder's mean; for the MADE decoder
        an exact ancestral draw of the pixels (D passes), which has no cheap mean."""
        z = self.prior_block.sample(rng, n)  # (n, Z)
        if self.decoder_kind == "made":
            return self.decoder.sample(z, rng)
        return self._decoder_mean(z)

    def reconstruct(self, x):
        """The decoder's mean at the posterior mean, (B, D); for the MADE decoder each pixel's
        probability given the true pixels before it."""
        x = self._check_x(x, f"{type(self).__name__}.reconstruct")
        (mu, _), _ = self.encoder.forward(self._encoder_input(x))
        return self._decoder_mean(mu, x)

    def encode(self, x):
        """Gaussian posterior moments (mu, logvar), each (B, Z).

        Declared (``has_gaussian_latents``) for the standard prior only: the evaluation reads
        them as the KL per unit to N(0, I), which a learned prior's KL is not; its
        ``eval_report`` gives the sampled KL and the active units instead.
        """
        if not self.has_gaussian_latents:
            return super().encode(x)
        x = self._check_x(x, f"{type(self).__name__}.encode")
        (mu, logvar), _ = self.encoder.forward(self._encoder_input(x))
        return mu, logvar

    # ------------------------------------------------------------------ the noise
    def draw_noise(self, rng, batch_size, n_samples=None):
        """The noise (S, B, noise_dim) on the model's device, keyed by ``rng``: standard normals
        eps_z (S, B, Z), then for a MADE decoder with input dropout or for dequantized data D
        columns of uniforms in (0, 1) (dropout, uniform dequantization) or standard normals
        (the variational dequantizer's logit-normal). S is ``n_samples`` (the model's own
        when None)."""
        eps = super().draw_noise(rng, batch_size, n_samples)  # all normal
        if not self._extra or self.dequantize == "variational":
            return eps
        S, B = eps.shape[:2]
        u = noise.uniform(rng, (S, B, self.data_dim), self.dtype, eps)  # (S, B, D)
        eps[..., self.latent_dim :] = u
        return eps

    # ------------------------------------------------------------------ the terms
    def _terms_forward(self, x, eps, need_grad=True):
        """The terms of log w for fixed noise; see the module docstring.

        ``need_grad`` True is the training forward (its cache serves ``_terms_backward`` and
        the MADE decoder's input dropout applies); False evaluates the model.

        Returns
        -------
        terms : LogTerms
            Each (S, B).
        cache : PriorDecoderCache
        """
        xp = get_xp(x)
        S, B, _ = eps.shape
        Z, D = self.latent_dim, self.data_dim
        e = xp.ascontiguousarray(eps[..., :Z]) if self._extra else eps  # (S, B, Z)
        extra = xp.ascontiguousarray(eps[..., Z:]) if self._extra else None  # (S, B, D)
        (mu, logvar), enc = self.encoder.forward(self._encoder_input(x))  # (B, Z) each
        (z, log_q), rs = gaussian_rsample_forward(mu, logvar, e)  # (S, B, Z), (S, B)
        log_pz, pc = self.prior_block.log_prob(z)  # (S, B)
        lik = deq = None
        if self.decoder_kind == "made":
            drop = extra if need_grad else None
            log_px, dec = self.decoder.log_prob(x, z, dropout_noise=drop)  # (S, B)
        elif self.decoder_kind == "categorical":
            log_px, dec = self.decoder.log_prob(x, z)  # (S, B)
        else:
            out, dec = self.decoder.forward(z.reshape(S * B, Z))  # (S*B, D)
            log_q_u = None
            if self.dequantize == "uniform":
                y, log_det = uniform_dequantize(x, extra, self.levels)  # (S, B, D)
            elif self.dequantize == "variational":
                (y, log_q_u), deq = self.dequantizer.forward(x, extra)  # (S, B, D), (S, B)
                log_det = -D * math.log(self.levels)
            else:
                y, log_det = x, 0.0
            if self.likelihood == "bernoulli":
                # row r of out is scored against x[r % B]; the logits are a temporary
                nll, lik = bernoulli_nll_forward(out, x, need_grad=need_grad, overwrite_logits=True)
            else:
                ys = xp.broadcast_to(y, (S, B, D)).reshape(S * B, D)
                if self.likelihood == "gaussian":
                    nll, lik = gaussian_nll_forward(out, self.decoder.params["logvar"], ys)
                else:
                    nll, lik = logistic_nll_forward(out, self.decoder.params["log_scale"], ys)
            log_px = -nll.reshape(S, B) + x.dtype.type(log_det)  # (S, B)
            if log_q_u is not None:
                log_px = log_px - log_q_u
        terms = LogTerms(log_px, log_pz, log_q)
        return terms, PriorDecoderCache(x, enc, mu, logvar, rs, z, pc, dec, lik, deq)

    def _terms_backward(self, c, g):
        """Accumulate the parameter gradients of the terms, walking the forward in reverse.

        Parameters
        ----------
        c : PriorDecoderCache
        g : TermGrads

        Notes
        -----
        Decoder (weights ``g.px``): its backward gives dz (and, dequantized, dy for the
        variational dequantizer: :math:`\\partial \\log p_y/\\partial y`, with
        :math:`dlog\\,q(u|x) = -g_{px}`). Prior (weights ``g.pz``): ``log_prob_backward`` adds
        its parameters' gradients (the VampPrior's through the encoder into the
        pseudo-inputs) and returns its dz. Their sum enters the posterior multiplied by
        ``g.ratio``; STL and DReG add ``g.qz`` times the held-fixed
        :math:`-\\varepsilon/\\sigma`, the plain estimator passes ``g.qz`` to log q's direct
        dependence on logvar; a KL taken by dimension (``g.kl``) adds its closed-form or
        sampled gradient. The encoder's backward takes (dmu, dlogvar).
        """
        xp = get_xp(c.z)
        S, B, Z = c.z.shape
        D = self.data_dim
        if self.decoder_kind in ("made", "categorical"):
            dz = self.decoder.log_prob_backward(g.px, c.dec)  # (S, B, Z)
        else:
            dnll = -g.px.reshape(S * B)  # nll = -log p
            if self.likelihood == "bernoulli":
                dout = bernoulli_nll_backward(dnll, c.lik)
            elif self.likelihood == "gaussian":
                dout, dlv = gaussian_nll_backward(dnll, c.lik)
                self.decoder.grads["logvar"] += dlv
                dy = -dout  # d nll / dy = -d nll / d mean, row by row
            else:
                dout, dls, dy = logistic_nll_backward(dnll, c.lik)
                self.decoder.grads["log_scale"] += dls
            if c.deq is not None:
                # -log q(u|x) sits in the likelihood term: its weight is that of log p(x|z)
                self.dequantizer.backward((dy.reshape(S, B, D), -g.px), c.deq)
            dz = self.decoder.backward(dout, c.dec).reshape(S, B, Z)  # (S, B, Z)
        dz = dz + self.prior_block.log_prob_backward(g.pz, c.prior)
        dz *= g.ratio[..., None]
        if g.kl is not None and self.kl != "analytic":
            # sampled KL of unit j, mean over S of 1/2 (z^2 - eps^2) - 1/2 logvar: d/dz = z / S
            dz += (g.kl / S) * c.z
        if g.path:
            dz += g.qz[..., None] * gaussian_rsample_dlogq_dz(c.rs)
        dlog_q = None if g.path else g.qz
        dmu, dlogvar = gaussian_rsample_backward((dz, dlog_q), c.rs)  # (B, Z) each
        if g.kl is not None:
            if self.kl == "analytic":
                dmu_kl, dlogvar_kl = kl_normal_std_per_dim_backward(
                    xp.broadcast_to(g.kl, c.mu.shape), KLNormalStdCache(c.mu, c.logvar)
                )
                dmu, dlogvar = dmu + dmu_kl, dlogvar + dlogvar_kl
            else:
                dlogvar = dlogvar - 0.5 * g.kl
        self.encoder.backward((dmu, dlogvar), c.enc, need_dh=False)

    def _kl_per_dim(self, c):
        """The KL of each row and unit (B, Z) for the ELBO's by-dimension KL (standard prior):
        closed form, or the sampled :math:`\\log q(z_j|x) - \\log p(z_j)` averaged over S."""
        if self.kl == "analytic":
            return kl_normal_std_per_dim(c.mu, c.logvar)
        eps, _ = c.rs.reparam
        return (0.5 * (c.z * c.z - eps * eps) - 0.5 * c.logvar).mean(axis=0)

    # ------------------------------------------------------------------ evaluation
    def eval_report(self, x, batch_size=1000):
        """Active units, the KL, I(x; z) and, for levels, bits per dimension, for
        ``lvmcore eval``.

        Returns
        -------
        info : dict
            ``active_units``, ``latent_dims``, ``posterior_mean_variance`` (per unit, of the
            posterior means over the rows), ``kl`` (nats, :math:`E_q[\\log q(z|x) - \\log
            p(z)]`, sampled), ``mutual_information`` (nats, over the first ``MI_ROWS`` rows,
            :func:`aggregate_mutual_information`) with ``mutual_information_rows``; for
            categorical and dequantized data ``elbo_bits_per_dim`` and ``nats_to_bits_per_dim``
            (the factor 1 / (D ln 2) that turns a log-likelihood in nats into bits per
            dimension).
        lines : list of str

        Notes
        -----
        Noise from ``default_rng([seed, 0, 0, EVAL_STREAM])``, batch by batch: EVAL_DRAWS samples
        per row for the KL (and, for levels, one for the ELBO), then one per row for I(x; z).
        """
        f = f"{type(self).__name__}.eval_report"
        self._check_x(x, f)
        batch_size = check_param(batch_size, "batch_size", f, kind="int", low=1, low_inclusive=True)
        rng = np.random.default_rng([self.seed, 0, 0, EVAL_STREAM])
        mus, logvars, kl, elbo = [], [], 0.0, 0.0
        Z = self.latent_dim
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            # the KL needs the encoder and the prior only (no decoder pass: a MADE decoder's
            # would cost D times more than the rest)
            (mu, logvar), _ = self.encoder.forward(self._encoder_input(xb))  # (B, Z) each
            eps = noise.standard_normal(rng, (EVAL_DRAWS, xb.shape[0], Z), self.dtype, mu)
            (z, log_q), _ = gaussian_rsample_forward(mu, logvar, eps)  # (S, B, Z), (S, B)
            log_p, _ = self.prior_block.log_prob(z)
            mus.append(to_numpy(mu, np.float64))
            logvars.append(logvar)
            kl += float((log_q - log_p).astype(np.float64).mean(axis=0).sum())
            if self._levels_data:  # one draw per row for the ELBO in bits per dimension
                lw = self.log_weights(xb, self.draw_noise(rng, xb.shape[0], 1))
                elbo += float(lw.astype(np.float64).sum())
        N = max(x.shape[0], 1)
        kl, elbo = kl / N, elbo / N
        var = np.concatenate(mus).var(axis=0) if mus else np.zeros(self.latent_dim)
        active = int((var > 0.01).sum())
        info = dict(
            active_units=active,
            latent_dims=[self.latent_dim],
            posterior_mean_variance=var.tolist(),
            kl=kl,
        )
        lines = [
            f"active units {active} of {self.latent_dim} ({self.prior} prior); KL {kl:.2f} nats"
        ]
        if x.shape[0]:
            xp = get_xp(x)
            n = min(x.shape[0], MI_ROWS)
            mu = xp.asarray(np.concatenate(mus)[:n].astype(self.dtype))
            logvar = xp.concatenate(logvars)[:n]
            e = noise.standard_normal(rng, (1, n, self.latent_dim), self.dtype, mu)
            mi = aggregate_mutual_information(mu, logvar, e)
            info.update(mutual_information=mi, mutual_information_rows=n)
            lines.append(
                f"I(x; z) {mi:.3f} nats over {n} rows (aggregate-posterior estimate, at most "
                f"log {n} = {math.log(n):.2f})"
            )
        if self._levels_data:
            factor = 1.0 / (self.data_dim * math.log(2.0))
            info.update(
                elbo_bits_per_dim=float(
                    bits_per_dim(np.asarray([elbo], np.float64), self.data_dim)[0]
                ),
                nats_to_bits_per_dim=factor,
            )
            lines.append(
                f"ELBO {info['elbo_bits_per_dim']:.4f} bits per dimension (an NLL in nats times "
                f"{factor:.6f} gives bits per dimension)"
            )
        return info, lines


class PriorDecoderVAE(_PriorDecoder, ELBOTraining):
    """A VAE with a learned prior, a MADE or categorical decoder, or dequantized data, trained
    by the ELBO.

    Parameters
    ----------
    data_dim, latent_dim, hidden, activation, likelihood, prior, prior_components,
    prior_flow_steps, prior_flow_hidden, decoder, ar_hidden, ar_context, ar_dropout, levels,
    dequantize, dequantizer_hidden, seed, dtype
        See :class:`_PriorDecoder`.
    kl : {"analytic", "sampled"}, optional
        The standard prior's KL: closed form (its default) or sampled; the other priors take
        the sampled KL only.
    n_samples : int
        L, samples per data point.
    beta : float
        Weight of the KL (the trainer's KL warm-up ends at it).
    free_bits : float
        Standard prior only: floor, in nats per latent unit, on the batch-mean KL.
    """

    name = "vae"
    help = "VAE with a learned prior, a made/categorical decoder or dequantized levels"
    flags = (
        _PriorDecoder.graph_flags
        + ELBOTraining.training_flags
        + tuple(f for f in VAE.flags if f.dest in ("kl", "free_bits"))
    )

    def __init__(
        self,
        data_dim,
        latent_dim=50,
        hidden=(200, 200),
        activation="tanh",
        likelihood=None,
        prior="standard",
        prior_components=None,
        prior_flow_steps=None,
        prior_flow_hidden=None,
        decoder="factorized",
        ar_hidden=None,
        ar_context=None,
        ar_dropout=None,
        levels=None,
        dequantize="none",
        dequantizer_hidden=None,
        kl=None,
        n_samples=1,
        beta=1.0,
        free_bits=0.0,
        seed=0,
        dtype=np.float32,
    ):
        super().__init__()
        f = "PriorDecoderVAE"
        self._init_training(n_samples, beta, f)
        self._build(
            data_dim,
            latent_dim,
            hidden,
            activation,
            likelihood,
            prior,
            prior_components,
            prior_flow_steps,
            prior_flow_hidden,
            decoder,
            ar_hidden,
            ar_context,
            ar_dropout,
            levels,
            dequantize,
            dequantizer_hidden,
            seed,
            dtype,
            f,
        )
        standard = self.prior == "standard"
        if kl is None:
            kl = "analytic" if standard else "sampled"
        self.kl = check_param(kl, "kl", f, kind="choice", choices=("analytic", "sampled"))
        self.free_bits = check_param(free_bits, "free_bits", f, low=0, low_inclusive=True)
        if not standard and (self.kl == "analytic" or self.free_bits > 0):
            what = "kl='analytic'" if self.kl == "analytic" else f"free_bits={self.free_bits}"
            raise ValueError(
                f"{f}: expected kl='sampled' and free_bits=0 with prior={self.prior!r}, got "
                f"{what}: the closed-form KL and the floor per latent unit need the standard "
                f"prior, whose KL splits into units."
            )

    def _training_config(self):
        return dict(super()._training_config(), kl=self.kl, free_bits=self.free_bits)

    @staticmethod
    def _training_args(args):
        standard = args.prior == "standard"
        if not standard and "kl" in args.given and args.kl == "analytic":
            raise ValueError(
                f"expected --kl sampled with --prior {args.prior}, got --kl analytic: the "
                f"closed-form KL needs the standard prior."
            )
        if not standard and args.free_bits:
            raise ValueError(
                f"expected --free-bits 0 with --prior {args.prior}, got {args.free_bits}: free "
                f"bits floors the KL of each latent unit, and a learned prior does not split it "
                f"into units."
            )
        kl = args.kl if "kl" in args.given else ("analytic" if standard else "sampled")
        return dict(ELBOTraining._training_args(args), kl=kl, free_bits=args.free_bits)


class PriorDecoderIWAE(_PriorDecoder, IWAETraining):
    """An IWAE with a learned prior, a MADE or categorical decoder, or dequantized data.

    Parameters
    ----------
    data_dim, latent_dim, hidden, activation, likelihood, prior, prior_components,
    prior_flow_steps, prior_flow_hidden, decoder, ar_hidden, ar_context, ar_dropout, levels,
    dequantize, dequantizer_hidden, seed, dtype
        See :class:`_PriorDecoder`.
    k, estimator, objective, groups, ciwae_beta
        As for :class:`lvmcore.models.IWAE`.
    """

    name = "iwae"
    help = "IWAE with a learned prior, a made/categorical decoder or dequantized levels"
    flags = _PriorDecoder.graph_flags + IWAE.flags

    def __init__(
        self,
        data_dim,
        latent_dim=50,
        hidden=(200, 200),
        activation="tanh",
        likelihood=None,
        prior="standard",
        prior_components=None,
        prior_flow_steps=None,
        prior_flow_hidden=None,
        decoder="factorized",
        ar_hidden=None,
        ar_context=None,
        ar_dropout=None,
        levels=None,
        dequantize="none",
        dequantizer_hidden=None,
        k=50,
        estimator="iwae",
        objective="iwae",
        groups=1,
        ciwae_beta=0.5,
        seed=0,
        dtype=np.float32,
    ):
        super().__init__()
        f = "PriorDecoderIWAE"
        self._init_training(k, estimator, objective, groups, ciwae_beta, f)
        self._build(
            data_dim,
            latent_dim,
            hidden,
            activation,
            likelihood,
            prior,
            prior_components,
            prior_flow_steps,
            prior_flow_hidden,
            decoder,
            ar_hidden,
            ar_context,
            ar_dropout,
            levels,
            dequantize,
            dequantizer_hidden,
            seed,
            dtype,
            f,
        )
