"""Categorical VAE: N discrete latents of C classes each, five gradient estimators.

Shapes: B batch, D data, H hidden, N latent variables, C categories, K samples per data point
(1, or K >= 2 for VIMCO).

Forward, for fixed standard-Gumbel noise g (K, B, N, C):
    logits = encoder(x).reshape(B, N, C)                       q(z_n|x) = softmax(logits[:, n])
    y = softmax((logits + g)/tau)        estimator "gumbel"    (K, B, N, C), relaxed
    y = one_hot(argmax(logits + g))      every other one       (K, B, N, C), exact z ~ q
    out = decoder(y.reshape(K*B, N*C))                          (K*B, D) Bernoulli logits
    log p(x|z)                                                  (K, B)
    KL(q(z|x) || uniform) = sum_n (log C - H(q_n))              (B,) analytic
    loss = -mean_{K,B} log p(x|y) + w mean_B KL
    VIMCO: loss = -mean_B log (1/K) sum_k w_kb, log w = log p(x|z) + log p(z) - log q(z|x)

Estimators of the encoder gradient (the decoder gradient is the exact one of the fixed-noise
loss for all five):

- ``gumbel``: the pathwise gradient of the relaxed objective (Jang et al. 2017; Maddison et
  al. 2017). The loss is a smooth function of every parameter for fixed g, and backward is its
  exact gradient (finite-difference tested); as an estimator of the ELBO gradient it is biased.
- ``st-gumbel``: straight-through Gumbel (Jang et al. 2017, sec. 2.2). The decoder sees the
  exact sample one_hot(argmax); the gradient with respect to y is passed to the soft sample
  (see :class:`lvmcore.distributions.RelaxedCategorical`, "Gradient flow"). Biased.
- ``reinforce``: the score function with a moving-average baseline c,
  :math:`(\\log p(x|z) - c)\\,\\nabla \\log q(z|x)`, plus the analytic KL gradient.
- ``nvil``: the same with an input-dependent baseline b(x) (an MLP trained by regression of
  the learning signal) and optional variance normalisation (Mnih & Gregor 2014).
- ``vimco``: K samples, the K-sample bound, and a leave-one-out baseline per sample
  (Mnih & Rezende 2016).

The score-function estimators use the analytic KL, so their learning signal is
log p(x|z) alone: E_q[log p(x|z)] is the only term of the ELBO whose gradient needs the score
function (the KL's gradient is exact). All of them are unbiased for the gradient of the ELBO
(VIMCO: of the K-sample bound); ``tests/test_models_catvae.py`` checks that against exact
enumeration over a small latent space.

The noise, and the kernels that draw it
---------------------------------------
``forward(x, g)`` takes the Gumbel noise as an array (K, B, N, C) (``draw_noise``: the
readable path, ``relaxed_softmax`` and ``relaxed_softmax_backward``, argmax for exact samples)
or as its :class:`~lvmcore.models.noise_key.NoiseKey` of kind "gumbel" (the fused path: the
kernels of ``kernels/gumbel_softmax.py`` of the data's backend draw g from the key as they use
it). On the fused path the relaxed sample is ``gumbel_softmax``, the straight-through sample is
its ``hard=True`` form with the soft sample kept for backward, both backpropagated by
``gumbel_softmax_backward`` from the soft sample alone; the score-function estimators take
their exact samples from ``gumbel_max``. A training step (``loss_and_grads``), ``elbo`` and
``bound`` take the fused path. Keying: the step's generator gives one seed
(``lvmcore.noise.philox_key``, stream 0) and g[k, b, n, c] is element
``((k*B + b)*N + n)*C + c`` of its Gumbel stream, exactly the array ``draw_noise`` draws from a
generator in the same state (the fused kernels' Gumbels agree with it to a few ulp, the
uniforms behind them bit for bit), so the two paths agree to float rounding (tested).

Gradient flow
-------------
``backward`` accumulates the gradient of the *surrogate*

    dloss * [ sum_{k,b} a_kb (-log p(x_b|y_kb))  -  sum_{k,b} c_kb log q(z_kb|x_b)
              + w/B sum_b KL_b ] * (encoder part scaled by 1/sigma for NVIL)
    + dloss * (1/2B) sum_b mean_k (l_kb - c - b(x_b))^2                           (NVIL only)

with a_kb = 1/(KB) (VIMCO: the normalized weights / B) and c_kb the learning signals, which are
constants (stop-gradient): A_kb/(KB) for REINFORCE and NVIL, (L - L_{-k} - w~_k)/B for VIMCO.
The relaxed and straight-through estimators have c = 0 and get their encoder gradient through
y instead. The decoder gradient is that of the loss, exactly.

Running state
-------------
The moving-average statistics of the learning signal (``state.signal_mean``,
``state.signal_var``) and the step counter of the temperature schedule (``state.step``) are the
model's ``state_arrays()``: entries of ``parameters()`` whose gradients are always zero, so
every optimizer leaves them alone, checkpoints save them, and a resumed run continues exactly.
They are updated by ``loss_and_grads`` only, *after* the step's backward: the baseline of a step
never depends on that step's samples, which keeps the score-function estimators exactly
unbiased. The signal's mean and variance span the batch: they are taken over ``_batch_rows``
(see :mod:`lvmcore.models.base`).

References
----------
Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
Maddison, Mnih & Teh, "The Concrete Distribution", ICLR 2017.
Mnih & Gregor, "Neural Variational Inference and Learning in Belief Networks", ICML 2014
(Algorithm 1: centring, variance normalisation, input-dependent baseline).
Mnih & Rezende, "Variational Inference for Monte Carlo Objectives", ICML 2016 (eq. 8-10).
"""

import math
from typing import NamedTuple

import numpy as np

from .. import noise
from .._validation import check_float_dtype, check_param, check_sizes, get_xp
from ..backend import get_backend
from ..cli._types import nonneg_float, positive_float, positive_int
from ..distributions.categorical import Categorical, UniformCategorical
from ..distributions.kl import deviation_from_mean, kl_divergence, kl_divergence_backward
from ..distributions.relaxed import relaxed_softmax, relaxed_softmax_backward
from ..exceptions import InvalidParameterError
from ..losses import bernoulli_nll_backward, bernoulli_nll_forward
from ..nn import MLP, BufferedMLPCache, Module
from ..ops import sigmoid
from ..ops.softmax import log_softmax_forward, logsumexp_forward
from ..schedules import temperature_schedule
from .base import Flag, Model
from .noise_key import NoiseKey, draw_key

__all__ = [
    "CatVAE",
    "CatVAECache",
    "CATVAE_ESTIMATORS",
    "CategoricalKLTerms",
    "categorical_kl_terms",
    "vimco_signals",
]

CATVAE_ESTIMATORS = ("gumbel", "st-gumbel", "reinforce", "nvil", "vimco")
_SCORE = ("reinforce", "nvil", "vimco")


class RunningState(Module):
    """Arrays updated by the training step, not by the optimizer (their grads stay 0).

    ``step`` (1,): steps taken; ``signal_mean`` (1,) and ``signal_var`` (1,): the moving
    averages of the learning signal (c and v of Mnih & Gregor 2014).
    """

    def __init__(self, dtype):
        super().__init__()
        for name in ("step", "signal_mean", "signal_var"):
            self._add_param(name, np.zeros(1, dtype=dtype))


class CatVAECache(NamedTuple):
    """What backward needs, each field with its shape."""

    x: object  # (B, D)
    enc: object  # encoder MLPCache
    logits: object  # (B, N, C)
    g: object  # (K, B, N, C) Gumbel noise, or its NoiseKey (the fused kernels)
    tau: float
    y: object  # (K, B, N, C) decoder input: relaxed or one-hot
    dec: object  # decoder MLPCache over (K*B, N*C)
    lik: object  # BernoulliNLLCache over (K*B, D)
    w_rec: object  # (K, B) weight of -log p(x|y_kb) in the loss
    w_score: object  # (K, B) coefficient c_kb of -log q(z_kb|x) in the surrogate, or None
    kl_weight: float  # w (0 for VIMCO: its KL is inside the bound)
    enc_scale: float  # 1/sigma (NVIL normalisation) or 1
    base: object  # REINFORCE, NVIL: (baseline MLPCache or None, residual (K, B)); else None
    stats: dict  # per-example quantities for reporting
    y_soft: object = None  # (K*B*N, C) the kernel's soft sample (fused gumbel, st-gumbel)
    kl_terms: object = None  # CategoricalKLTerms of the fused path (None: the readable one)


class CategoricalKLTerms(NamedTuple):
    """The analytic KL(q(z|x) || uniform) of the fused path and what its backward and the
    score estimators read, formed once per step from the logits (B, N, C)."""

    logp: object  # (B, N, C) log q(z_n = c|x)
    p: object  # (B, N, C) q(z_n = c|x)
    diff: object  # (B, N, C) log p + log C (0 where p = 0)
    kl: object  # (B, N, 1) sum_c p diff


def categorical_kl_terms(logits, dtype):
    """KL(softmax(logits) || uniform) per latent with its terms, in a few array passes.

    The arithmetic of ``kl_divergence(Categorical(logits), UniformCategorical(C))``
    (``log_softmax_forward``, then ``_categorical_terms``), written out for the training step,
    where the general path's dispatch and checks cost more than the work on (B, N, C) arrays.
    ``logits`` must be finite (the fused path's are: it falls back to the readable path
    otherwise), so log p is finite and a p that underflows to 0 contributes exactly 0 to KL
    and to its gradient without the readable path's mask. Tests prove both equal in float32
    and float64.
    """
    xp = get_xp(logits)
    dt = dtype.type
    C = logits.shape[-1]
    rows = logits.reshape(-1, C)  # (B*N, C)
    m = _row_reduce(xp.maximum, rows)  # (B*N, 1)
    e = xp.exp(rows - m)
    s = _row_reduce(xp.add, e)
    logp = rows - (xp.log(s) + m)  # (B*N, C)
    p = e / s
    diff = logp - dt(-math.log(C))
    kl = _row_reduce(xp.add, p * diff)  # (B*N, 1)
    shape = logits.shape
    return CategoricalKLTerms(
        logp.reshape(shape), p.reshape(shape), diff.reshape(shape), kl.reshape(shape[:-1] + (1,))
    )


def _onehot_minus(y, p):
    """d log p_y / d logits = onehot(y) - p for one-hot samples y (K, B, N, C) and p (B, N, C),
    with 1 - p_y formed as the sum of the other categories' p: at a saturated q (p_y within
    eps of 1) the difference would cancel to rounding noise."""
    xp = get_xp(p)
    others = (p * (1 - y)).sum(axis=-1, keepdims=True)  # (K, B, N, 1)
    return xp.where(y == 1, others, -p)


def _row_reduce(ufunc, a):
    """``ufunc.reduce(a, axis=1, keepdims=True)`` for a (R, C) array. For few columns, one
    pass per column over all rows: a reduction along a short last axis pays a loop per row
    (90 against 25 us for the max of (2000, 10) float32, measured)."""
    C = a.shape[1]
    if C > 16:
        return ufunc.reduce(a, axis=1, keepdims=True)
    out = a[:, :1].copy()
    for c in range(1, C):
        ufunc(out, a[:, c : c + 1], out=out)
    return out


def vimco_signals(log_w):
    """VIMCO's per-sample learning signals :math:`\\hat L - \\hat L_{-k}`, shape (K, B).

    Parameters
    ----------
    log_w : ndarray of shape (K, B), K >= 2
        Log importance weights log p(x, z_k) - log q(z_k|x).

    Returns
    -------
    ndarray of shape (K, B)
        :math:`\\hat L - \\log\\tfrac1K\\big(\\sum_{i \\ne k} w_i + \\hat w_{-k}\\big)`, with
        :math:`\\hat L = \\log\\tfrac1K\\sum_i w_i` and :math:`\\hat w_{-k}` the geometric
        mean of the other K-1 weights (Mnih & Rezende 2016, eq. 9-10), all in log space.
    """
    xp = get_xp(log_w)
    K = log_w.shape[0]
    lse, _ = logsumexp_forward(log_w, axis=0)  # (B,)
    loo_mean = (log_w.sum(axis=0) - log_w) / (K - 1)  # (K, B)
    # row k of M: log_w with entry k replaced by the mean of the others
    M = xp.broadcast_to(log_w, (K,) + log_w.shape).copy()  # (K, K, B)
    idx = xp.arange(K)
    M[idx, idx] = loo_mean
    lse_loo, _ = logsumexp_forward(M, axis=1)  # (K, B)
    return lse[None] - lse_loo


class CatVAE(Model):
    """Categorical VAE with a uniform prior and a Bernoulli decoder.

    Parameters
    ----------
    data_dim : int
        D.
    n_latents : int
        N, categorical latent variables.
    n_categories : int
        C, classes of each (C >= 2).
    hidden : sequence of int
        Encoder hidden widths (D -> H... -> N*C); the decoder mirrors them (N*C -> ... -> D).
    activation : {"tanh", "relu", "softplus"}
    estimator : {"gumbel", "st-gumbel", "reinforce", "nvil", "vimco"}
    tau, tau_min, tau_decay, tau_every
        Temperature schedule of "gumbel" and "st-gumbel"
        (:func:`lvmcore.schedules.temperature_schedule`): constant ``tau`` when
        ``tau_decay`` is 0, else :math:`\\max(\\tau_{min}, \\tau e^{-r t})`, updated every
        ``tau_every`` steps.
    k : int
        K, samples per data point for "vimco" (>= 2); 1 for the other estimators.
    baseline_decay : float in [0, 1)
        :math:`\\alpha` of the moving averages (reinforce, nvil).
    normalize_signal : bool
        NVIL's variance normalisation: divide the encoder gradient by
        :math:`\\max(1, \\sqrt v)`.
    baseline_hidden : int
        Hidden width of NVIL's baseline network b(x) (D -> H -> 1).
    seed : int
    dtype : float32 or float64

    Notes
    -----
    Parameters: ``encoder.*``, ``decoder.*``, ``baseline.*`` (NVIL only, trained by regression,
    not part of the ELBO) and ``state.*`` (running statistics; see "Running state" in the
    module docstring).
    """

    name = "catvae"
    help = "categorical VAE (N x C latents): gumbel, st-gumbel, reinforce, nvil, vimco"
    likelihood = "bernoulli"
    has_log_likelihood = True
    has_sample = True
    has_reconstruct = True
    # The K-sample evaluation keys its Gumbel noise by (batch, chunk) (log_weight_sampler of
    # the base), so the chunk size is part of the estimate's keying: 2**15 decoder rows.
    eval_chunk_rows = 1 << 15
    flags = (
        Flag(
            "--latents",
            "latents",
            20,
            "categorical latent variables",
            dict(type=positive_int, metavar="N"),
        ),
        Flag(
            "--categories",
            "categories",
            10,
            "classes per latent variable",
            dict(type=positive_int, metavar="C"),
        ),
        Flag(
            "--estimator",
            "estimator",
            "gumbel",
            "gradient estimator",
            dict(choices=CATVAE_ESTIMATORS),
        ),
        Flag(
            "--k",
            "k",
            5,
            "samples per example for vimco",
            dict(type=positive_int, metavar="K"),
        ),
        Flag(
            "--tau",
            "tau",
            1.0,
            "Gumbel-Softmax temperature, gumbel and st-gumbel",
            dict(type=positive_float, metavar="T"),
        ),
        Flag(
            "--tau-min",
            "tau_min",
            None,
            "floor of the decaying temperature (needs --tau-decay)",
            dict(type=positive_float, metavar="T"),
        ),
        Flag(
            "--tau-decay",
            "tau_decay",
            0.0,
            "tau = max(tau-min, tau exp(-R step)); 0: constant",
            dict(type=nonneg_float, metavar="R"),
        ),
        Flag(
            "--tau-every",
            "tau_every",
            1,
            "update the decaying temperature every N steps",
            dict(type=positive_int, metavar="N"),
        ),
    )

    def __init__(
        self,
        data_dim,
        n_latents=20,
        n_categories=10,
        hidden=(512, 256),
        activation="tanh",
        estimator="gumbel",
        tau=1.0,
        tau_min=None,
        tau_decay=0.0,
        tau_every=1,
        k=1,
        baseline_decay=0.9,
        normalize_signal=True,
        baseline_hidden=100,
        seed=0,
        dtype=np.float32,
    ):
        super().__init__()
        f = "CatVAE"
        self.data_dim = check_param(data_dim, "data_dim", f, kind="int", low=1, low_inclusive=True)
        self.n_latents = check_param(
            n_latents, "n_latents", f, kind="int", low=1, low_inclusive=True
        )
        self.n_categories = check_param(
            n_categories, "n_categories", f, kind="int", low=2, low_inclusive=True
        )
        self.hidden = check_sizes(hidden, "hidden", f)
        self.activation = check_param(
            activation, "activation", f, kind="choice", choices=("tanh", "relu", "softplus")
        )
        self.estimator = check_param(
            estimator, "estimator", f, kind="choice", choices=CATVAE_ESTIMATORS
        )
        self.schedule = temperature_schedule(tau, tau_min, tau_decay, tau_every)
        self.tau, self.tau_min, self.tau_decay = float(tau), tau_min, float(tau_decay)
        self.tau_every = int(tau_every)
        self.k = check_param(k, "k", f, kind="int", low=1, low_inclusive=True)
        if self.estimator == "vimco" and self.k < 2:
            raise InvalidParameterError(
                f"The 'k' parameter of {f} must be an int in [2, inf) with estimator='vimco' "
                f"(its baseline leaves one of K samples out). Got {k!r} instead."
            )
        if self.estimator != "vimco" and self.k != 1:
            raise InvalidParameterError(
                f"The 'k' parameter of {f} applies to estimator='vimco' only and must be 1 "
                f"with estimator={self.estimator!r}. Got {k!r} instead."
            )
        self.baseline_decay = check_param(
            baseline_decay,
            "baseline_decay",
            f,
            low=0,
            low_inclusive=True,
            high=1,
            high_inclusive=False,
        )
        self.normalize_signal = bool(normalize_signal)
        self.baseline_hidden = check_param(
            baseline_hidden, "baseline_hidden", f, kind="int", low=1, low_inclusive=True
        )
        self.seed = check_param(seed, "seed", f, kind="int", low=0, low_inclusive=True)
        self.dtype = check_float_dtype(dtype, f)
        rng = np.random.default_rng(self.seed)
        N, C, D, H = self.n_latents, self.n_categories, self.data_dim, self.hidden
        self.encoder = MLP((D, *H, N * C), self.activation, rng, self.dtype)
        self.decoder = MLP((N * C, *H[::-1], D), self.activation, rng, self.dtype)
        self.baseline = (
            MLP((D, self.baseline_hidden, 1), "tanh", rng, self.dtype)
            if self.estimator == "nvil"
            else None
        )
        self.state = RunningState(self.dtype)

    @classmethod
    def from_args(cls, args, data_dim):
        """The categorical VAE of ``lvmcore train --model catvae``; flags that do not apply to
        the chosen estimator are refused."""
        cls._refuse_flags(args, ("latent",))
        if args.likelihood != "bernoulli":
            raise ValueError(
                f"expected --likelihood bernoulli with --model catvae (its decoder is "
                f"Bernoulli), got {args.likelihood}."
            )
        est = args.estimator
        if est not in CATVAE_ESTIMATORS:
            raise ValueError(
                f"expected --estimator to be one of {', '.join(CATVAE_ESTIMATORS)} "
                f"with --model catvae, got {est}."
            )
        if est not in ("gumbel", "st-gumbel"):
            cls._refuse_flags(
                args, ("tau", "tau_min", "tau_decay", "tau_every"), f"catvae --estimator {est}"
            )
        if est != "vimco":
            cls._refuse_flags(args, ("k",), f"catvae --estimator {est}")
        elif args.kl_warmup_epochs:
            raise ValueError(
                f"expected --kl-warmup-epochs 0 with --estimator vimco (KL annealing "
                f"does not apply to a K-sample bound), got {args.kl_warmup_epochs}."
            )
        return cls(
            data_dim,
            n_latents=args.latents,
            n_categories=args.categories,
            hidden=args.hidden,
            activation=args.activation,
            estimator=est,
            tau=args.tau,
            tau_min=args.tau_min,
            tau_decay=args.tau_decay,
            tau_every=args.tau_every,
            k=args.k if est == "vimco" else 1,
            seed=args.seed,
            dtype=args.dtype,
        )

    # ------------------------------------------------------------------ parameters
    @property
    def n_samples(self):
        """K, samples of z per data point in a training step."""
        return self.k

    @property
    def bound_name(self):
        """What ``bound`` computes, for reports."""
        return f"VIMCO bound (K={self.k})" if self.estimator == "vimco" else "ELBO"

    def config(self):
        """The constructor arguments, JSON-serialisable."""
        return dict(
            model=self.name,
            data_dim=self.data_dim,
            n_latents=self.n_latents,
            n_categories=self.n_categories,
            hidden=list(self.hidden),
            activation=self.activation,
            estimator=self.estimator,
            tau=self.tau,
            tau_min=self.tau_min,
            tau_decay=self.tau_decay,
            tau_every=self.tau_every,
            k=self.k,
            baseline_decay=self.baseline_decay,
            normalize_signal=self.normalize_signal,
            baseline_hidden=self.baseline_hidden,
            seed=self.seed,
            dtype=self.dtype.name,
        )

    def modules(self):
        mods = {"encoder": self.encoder, "decoder": self.decoder}
        if self.baseline is not None:
            mods["baseline"] = self.baseline
        mods["state"] = self.state
        return mods

    def state_arrays(self):
        """The running state: ``state.step``, ``state.signal_mean``, ``state.signal_var``."""
        return {f"state.{k}": v for k, v in self.state.params.items()}

    def init_output_bias(self, x_train):
        """Set the decoder's output bias to the logit of the pixel means (clipped to
        [1e-3, 1 - 1e-3]), as the VAE does."""
        self._init_output_bias_to_data_mean(x_train, self.decoder)

    @property
    def step(self):
        """Training steps taken so far (``state.step``)."""
        return int(self.state.params["step"][0])

    def temperature(self, step=None):
        """The temperature of the schedule at ``step`` (default: the current step)."""
        return float(self.schedule(self.step if step is None else step))

    # ------------------------------------------------------------------ pieces
    def posterior_logits(self, x):
        """Logits of q(z|x), shape (B, N, C)."""
        h, _ = self.encoder.forward(x)
        return h.reshape(x.shape[0], self.n_latents, self.n_categories)

    def _one_hot(self, idx):
        xp = get_xp(idx)
        return (xp.arange(self.n_categories) == idx[..., None]).astype(self.dtype)

    def decode(self, y):
        """Bernoulli means for decoder inputs y (M, N, C) or (M, N*C): (M, D)."""
        # the width is named: reshape(M, -1) is ambiguous for M = 0 samples
        out, _ = self.decoder.forward(y.reshape(y.shape[0], self.n_latents * self.n_categories))
        return sigmoid(out)

    def sample(self, rng, n):
        """n samples from the model: z uniform, then the decoder's mean (n, D)."""
        n = self._check_sample(rng, n, "CatVAE.sample")
        idx = self.xp.asarray(rng.integers(0, self.n_categories, size=(n, self.n_latents)))
        return self.decode(self._one_hot(idx))

    def reconstruct(self, x):
        """Decoder mean at the posterior mode one_hot(argmax logits): (B, D)."""
        logits = self.posterior_logits(self._check_x(x, "CatVAE.reconstruct"))
        return self.decode(self._one_hot(get_xp(x).argmax(logits, axis=-1)))

    def draw_noise(self, rng, batch_size, n_samples=None):
        """Standard Gumbel noise g (K, B, N, C) on the model's device, keyed by the explicit
        generator ``rng`` (see lvmcore.noise); K = ``n_samples`` (the model's own when None)."""
        batch_size, n_samples = self._check_noise_size(batch_size, n_samples, "CatVAE.draw_noise")
        K = self.n_samples if n_samples is None else n_samples
        return noise.standard_gumbel(
            rng, (K, batch_size, self.n_latents, self.n_categories), self.dtype, self._like()
        )

    def _kl(self, logits):
        """Analytic KL(q(z|x) || uniform) per latent variable, (B, N)."""
        prior = UniformCategorical(self.n_categories, self.dtype, xp=get_xp(logits))
        return kl_divergence(Categorical(logits), prior)

    def latent_diagnostics(self, x, batch_size=1000, threshold=0.01):
        """Active latents and KL per latent, the categorical analogue of ``active_units``.

        Returns
        -------
        count : int
            Latents n whose posterior probabilities vary over the data:
            :math:`\\sum_c \\mathrm{Var}_x\\, q(z_n = c|x) > 0.01`.
        variances : ndarray of shape (N,)
        kl : ndarray of shape (N,)
            Mean over the data of KL(q(z_n|x) || uniform), nats.
        """
        f = "CatVAE.latent_diagnostics"
        batch_size = self._check_eval(x, None, batch_size, f, rng_optional=True)
        if x.shape[0] == 0:
            raise ValueError(
                f"{f}: expected x to hold at least one row (the diagnostics are variances "
                f"over the data), got shape {tuple(x.shape)}."
            )
        threshold = check_param(threshold, "threshold", f, low=0, low_inclusive=True)
        probs, kls = [], []
        for i in range(0, x.shape[0], batch_size):
            logits = self.posterior_logits(x[i : i + batch_size])
            probs.append(log_softmax_forward(logits, axis=-1)[1][0].astype(np.float64))
            kls.append(self._kl(logits).astype(np.float64))
        xp = get_xp(x)
        var = xp.concatenate(probs).var(axis=0).sum(axis=-1)  # (N,)
        kl = xp.concatenate(kls).mean(axis=0)  # (N,)
        return int((var > threshold).sum()), var, kl

    def eval_report(self, x, batch_size=1000):
        """What ``lvmcore eval`` adds for this model: (JSON-able dict, printable lines)."""
        count, var, kl = self.latent_diagnostics(x, batch_size)
        info = dict(
            active_latents=count,
            n_latents=self.n_latents,
            n_categories=self.n_categories,
            posterior_prob_variance=var.tolist(),
            kl_per_latent=kl.tolist(),
        )
        lines = [
            f"active latents {count} of {self.n_latents} (C={self.n_categories}); KL per "
            f"latent (nats, max log C = {math.log(self.n_categories):.2f}): "
            + " ".join(f"{v:.2f}" for v in kl)
        ]
        return info, lines

    # ------------------------------------------------------------------ objective
    def draw_key(self, rng, batch_size, n_samples=None):
        """The NoiseKey of the noise ``draw_noise(rng, batch_size, n_samples)`` would return:
        the fused kernels' form of the same Gumbels (it consumes ``rng`` the same way)."""
        K = self.n_samples if n_samples is None else n_samples
        return draw_key("gumbel", rng, (K, batch_size, self.n_latents, self.n_categories))

    def _step_noise(self, rng, batch_size):
        """A training step's noise as its key: the step runs the fused Gumbel kernels. A
        data-parallel step takes its rows of the global batch's noise as an array instead
        (``Model._step_noise``), the readable path, equal to the fused one to float rounding."""
        if self._shard is not None:
            return super()._step_noise(rng, batch_size)
        return self.draw_key(rng, batch_size)

    def _sample(self, x, logits, g, mode, tau=None):
        """y (K, B, N, C) for noise g (an array or its NoiseKey) and the noise kept for
        backward; ``mode`` "soft" (relaxed), "st" (one-hot, the soft sample kept) or "hard".

        Returns (y, y_soft, g): y_soft the fused kernel's soft sample (K*B*N, C) or None; g the
        noise for backward, an array on the readable path (also when the fused path falls
        back to it because the logits are not finite: the kernels refuse or NaN such rows, and
        a diverging encoder's NaN must reach the loss)."""
        xp = get_xp(x)
        if isinstance(g, NoiseKey):
            self._check_key(g, x)
            if bool(xp.isfinite(logits).all()):
                return self._sample_fused(x, logits, g, mode, tau)
            g = g.fill(self.dtype, x)
        if mode == "soft":
            return relaxed_softmax(logits, tau, g), None, g  # (K, B, N, C)
        return self._one_hot(xp.argmax(logits + g, axis=-1)), None, g  # (K, B, N, C)

    def _sample_fused(self, x, logits, key, mode, tau):
        be = get_backend(x)
        xp = be.xp
        K, B, N, C = key.shape
        # row r = (k*B + b)*N + n of the (K*B*N, C) rows draws elements r*C .. r*C + C-1
        rows = xp.ascontiguousarray(xp.broadcast_to(logits, key.shape).reshape(-1, C))
        y_soft = None
        y_out = self.decoder.input_buffer(K * B).reshape(-1, C)  # the decoder's input rows
        if mode == "soft":
            y = y_soft = be.kernel("gumbel_softmax")(
                rows, tau, key.seed, key.stream, 0, False, y_out
            )
        elif mode == "st":
            y_soft = xp.empty_like(rows)
            y = be.kernel("gumbel_softmax")(
                rows, tau, key.seed, key.stream, 0, True, y_out, y_soft_out=y_soft
            )
        else:
            y = self._one_hot(be.kernel("gumbel_max")(rows, key.seed, key.stream, 0))
        return y.reshape(K, B, N, C), y_soft, key

    def _check_key(self, key, x):
        want = (x.shape[0], self.n_latents, self.n_categories)
        shape = tuple(key.shape)
        if key.kind != "gumbel" or len(shape) != 4 or shape[0] < 1 or shape[1:] != want:
            raise ValueError(
                f"CatVAE.forward: expected a gumbel NoiseKey of shape (K, {', '.join(map(str, want))}) "
                f"with K >= 1, got kind {key.kind!r} and shape {shape}. Draw it with "
                f"model.draw_key(rng, B)."
            )

    def _hard_terms(self, x, g):
        """log p(x|z) (K, B), log q(z|x) (K, B) and KL (B,) for z = argmax(logits + g) (g an
        array or its NoiseKey)."""
        xp = get_xp(x)
        K, B = g.shape[:2]
        logits = self.posterior_logits(x)  # (B, N, C)
        y, _, _ = self._sample(x, logits, g, "hard")  # (K, B, N, C)
        out, _ = self.decoder.forward(y.reshape(K * B, -1))  # (K*B, D)
        xs = x if K == 1 else xp.broadcast_to(x, (K, B, x.shape[1])).reshape(K * B, -1)
        nll, _ = bernoulli_nll_forward(out, xs)
        logp, _ = log_softmax_forward(logits, axis=-1)  # (B, N, C)
        log_q = (y * logp).sum(axis=(-2, -1))  # (K, B)
        return -nll.reshape(K, B), log_q, self._kl(logits).sum(axis=-1)

    def log_weights(self, x, g):
        """log w = log p(x|z) + log p(z) - log q(z|x) for z = argmax(logits + g); (K, B)."""
        log_px_z, log_q, _ = self._hard_terms(x, g)
        return log_px_z - self.dtype.type(self.n_latents * math.log(self.n_categories)) - log_q

    def forward(self, x, g, kl_weight=None, tau=None):
        """The loss for fixed noise, and the cache for backward.

        Parameters
        ----------
        x : ndarray of shape (B, D)
        g : ndarray of shape (K, B, N, C), or its NoiseKey
            Standard Gumbel noise (``draw_noise``; K = 1 but for VIMCO), or its key
            (``draw_key``): the fused kernels (module docstring).
        kl_weight : float, optional
            Weight w of the KL term (1 when None); must be None or 1 for VIMCO.
        tau : float, optional
            Temperature for "gumbel"/"st-gumbel"; the schedule's current value when None.

        Returns
        -------
        loss : float
            :math:`-\\tfrac{1}{KB}\\sum \\log p(x|y) + \\tfrac{w}{B}\\sum_b KL_b`, or for
            VIMCO :math:`-\\tfrac1B\\sum_b \\log\\tfrac1K\\sum_k w_{kb}`. For REINFORCE and
            NVIL the value is the (negative) single-sample ELBO; the learning signals for
            backward use the running state as it is now.
        cache : CatVAECache
        """
        xp = get_xp(x)
        est = self.estimator
        if est == "vimco" and kl_weight not in (None, 1, 1.0):
            raise ValueError(
                f"CatVAE.forward: expected kl_weight None or 1 with estimator "
                f"'vimco' (KL annealing does not apply to a K-sample bound), got "
                f"{kl_weight}."
            )
        w = 1.0 if kl_weight is None else float(kl_weight)
        tau = (
            self.temperature() if tau is None else check_param(tau, "tau", "CatVAE.forward", low=0)
        )
        dt = self.dtype.type
        K, B, N, C = g.shape
        # the fused path runs the MLPs in their buffered form (lvmcore.nn.MLP)
        fused = isinstance(g, NoiseKey)
        h, enc = (self.encoder.forward_buffered if fused else self.encoder.forward)(x)
        logits = h.reshape(B, N, C)  # (B, N, C)
        mode = {"gumbel": "soft", "st-gumbel": "st"}.get(est, "hard")
        y, y_soft, g = self._sample(x, logits, g, mode, tau)  # (K, B, N, C)
        bias = None
        if fused:  # a buffer; the likelihood kernel adds the output bias in its pass
            out, dec = self.decoder.forward_buffered(y.reshape(K * B, N * C), output_bias=False)
            bias = self.decoder.output_bias
        else:
            out, dec = self.decoder.forward(y.reshape(K * B, N * C))  # (K*B, D)
        # row r: x[r % B]
        nll, lik = bernoulli_nll_forward(out, x, bias=bias, overwrite_logits=fused)
        log_px_z = -nll.reshape(K, B)  # (K, B)
        terms = None
        if isinstance(g, NoiseKey):  # the fused kernels ran: the logits are finite
            terms = categorical_kl_terms(logits, self.dtype)
            kl = terms.kl[..., 0].sum(axis=-1)  # (B,)
        else:
            kl = self._kl(logits).sum(axis=-1)  # (B,)
        stats = dict(recon=log_px_z.mean(axis=0), kl=kl)
        w_score, enc_scale, base = None, 1.0, None
        if est == "vimco":
            logp = log_softmax_forward(logits, axis=-1)[0] if terms is None else terms.logp
            log_q = (y * logp).sum(axis=(-2, -1))  # (K, B)
            log_w = log_px_z - dt(N * math.log(C)) - log_q  # (K, B)
            lse, lsec = logsumexp_forward(log_w, axis=0)  # (B,)
            bound = lse - dt(math.log(K))
            wt = lsec.weights  # (K, B) normalized
            w_rec = wt / B
            w_score = (vimco_signals(log_w) - wt) / B
            loss = -float(bound.mean())
            stats.update(bound=bound, elbo=log_w.mean(axis=0))
            w = 0.0
        else:
            w_rec = xp.full((K, B), dt(1.0 / (K * B)), dtype=self.dtype)
            loss = -float(log_px_z.mean()) + w * float(kl.mean())
            if est == "gumbel":
                stats["bound"] = stats["recon"] - kl  # the relaxed objective
            else:
                stats["elbo"] = stats["recon"] - kl
            c = self.state.params["signal_mean"][0]
            if est == "reinforce":
                resid = log_px_z - c  # (K, B)
                w_score = resid / (K * B)
                base = (None, resid)
            elif est == "nvil":
                b, bcache = self.baseline.forward(x)  # (B, 1)
                resid = log_px_z - c - b[:, 0]  # (K, B)
                if self.normalize_signal:
                    v = float(self.state.params["signal_var"][0])
                    enc_scale = 1.0 / max(1.0, math.sqrt(v))
                w_score = resid / (K * B)
                base = (bcache, resid)
        cache = CatVAECache(
            x,
            enc,
            logits,
            g,
            float(tau),
            y,
            dec,
            lik,
            w_rec,
            w_score,
            w,
            enc_scale,
            base,
            stats,
            y_soft,
            terms,
        )
        return loss, cache

    def backward(self, cache, dloss=1.0):
        """Accumulate ``dloss`` times the gradient of the surrogate (module docstring).

        A cache serves one backward (the likelihood's cached gradient is overwritten in place).

        Notes
        -----
        Decoder: each row of -log p(x|y) has weight ``w_rec``; its VJP gives dy (K, B, N, C).
        Encoder, by estimator: "gumbel"/"st-gumbel" send dy through the soft sample
        (``relaxed_softmax_backward``: :math:`v = y_s(dy - \\sum dy\\,y_s)`,
        :math:`dl = v/\\tau`); the score estimators add
        :math:`-c_{kb}(\\mathrm{onehot}(z_{kb}) - \\mathrm{softmax}(l_b))`
        (:math:`\\partial\\log q/\\partial l`); all but VIMCO add the analytic KL's
        :math:`\\tfrac{w}{B}\\,p(\\log p + \\log C - KL_n)`. NVIL scales the encoder gradient
        by 1/sigma and regresses b(x): :math:`db_b = -\\tfrac1B \\mathrm{mean}_k(l_{kb} - c - b_b)`.
        """
        xp = get_xp(cache.logits)
        est = self.estimator
        K, B, N, C = cache.g.shape
        dt = self.dtype.type
        dnll = (dt(dloss) * cache.w_rec).reshape(K * B)
        relaxed = est in ("gumbel", "st-gumbel")
        if isinstance(cache.dec, BufferedMLPCache):
            # the likelihood's gradient x - sigmoid(l) as it is, the weights as its row scale
            dy = self.decoder.backward_buffered(
                cache.lik.grad, cache.dec, row_scale=-dnll, need_dx=relaxed
            )  # (K*B, N*C) or None
        else:
            dout = bernoulli_nll_backward(dnll, cache.lik)  # (K*B, D)
            dy = self.decoder.backward(dout, cache.dec, need_dx=relaxed)  # (K*B, N*C) or None
        if relaxed and cache.y_soft is not None:
            # the kernel's VJP from the soft sample alone, summed over the K samples
            be = get_backend(cache.y_soft)
            dl, _ = be.kernel("gumbel_softmax_backward")(
                dy.reshape(K * B * N, C), cache.y_soft, cache.tau
            )  # (K*B*N, C)
            dlogits = dl.reshape(K, B, N, C).sum(axis=0)  # (B, N, C)
        elif relaxed:
            dlogits, _ = relaxed_softmax_backward(
                dy.reshape(K, B, N, C), cache.logits, cache.tau, cache.g
            )  # (B, N, C)
        else:
            terms = cache.kl_terms
            p = log_softmax_forward(cache.logits, axis=-1)[1][0] if terms is None else terms.p
            dlogq = -dt(dloss) * cache.w_score  # (K, B)
            dlogits = (dlogq[..., None, None] * _onehot_minus(cache.y, p)).sum(axis=0)
        if cache.kl_weight != 0 and cache.kl_terms is not None:
            # d KL_n / d logits = p (log p + log C - KL_n), as the registered KL backward
            t = cache.kl_terms
            dev = deviation_from_mean(t.p, t.diff, t.kl)
            dlogits += dt(dloss * cache.kl_weight / B) * t.p * dev
        elif cache.kl_weight != 0:
            dkl = xp.full((B, N), dt(dloss * cache.kl_weight / B), dtype=self.dtype)
            prior = UniformCategorical(C, self.dtype, xp=xp)
            dlogits += kl_divergence_backward(Categorical(cache.logits), prior, dkl)[0]["logits"]
        if cache.enc_scale != 1.0:
            dlogits *= dt(cache.enc_scale)
        self.encoder.backward(dlogits.reshape(B, N * C), cache.enc, need_dx=False)
        if est == "nvil":
            bcache, resid = cache.base
            db = -dt(dloss / B) * resid.mean(axis=0)  # (B,)
            self.baseline.backward(db[:, None], bcache, need_dx=False)

    def _update_state(self, cache):
        """After a training step: count it, move the signal's moving averages.

        The signal's mean and variance are those of the whole batch (``_batch_rows``).
        """
        st = self.state.params
        st["step"] += 1
        if cache.base is None:
            return
        resid = cache.base[1].astype(np.float64)  # l - c (- b(x)), (K, B)
        c = float(st["signal_mean"][0])
        a = self.baseline_decay
        centred = self._batch_rows(resid + c, axis=1)  # l - b(x): the signal c tracks
        st["signal_mean"][0] = a * c + (1 - a) * float(centred.mean())
        st["signal_var"][0] = a * float(st["signal_var"][0]) + (1 - a) * float(centred.var())

    def _step_forward(self, x, noise, kl_weight):
        # the temperature of the schedule at the current step
        return self.forward(x, noise, kl_weight, self.temperature())

    def _step_end(self, loss, cache, rng):
        """Advance the running state (step counter and baselines); the step statistics:
        ``elbo`` (or ``bound``: the relaxed objective for "gumbel", the K-sample bound for
        "vimco"), ``recon``, ``kl`` (means over the batch) and ``tau``."""
        self._update_state(cache)
        out = {k: float(v.mean()) for k, v in cache.stats.items()}
        out["tau"] = cache.tau
        return out

    # ------------------------------------------------------------------ evaluation
    def elbo(self, x, rng, batch_size=1000):
        """Per-example ELBO (B,) of the discrete model: one exact sample z ~ q, analytic KL."""
        batch_size = self._check_eval(x, rng, batch_size, "CatVAE.elbo")
        xp = get_xp(x)
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            log_px_z, _, kl = self._hard_terms(xb, self.draw_key(rng, xb.shape[0], 1))
            out.append(log_px_z[0] - kl)
        return self._rows(out, xp)

    def bound(self, x, rng, batch_size=1000):
        """The bound the model trains, per example (B,): the ELBO, or for VIMCO the K-sample
        bound :math:`\\log\\tfrac1K\\sum_k w_k` (the relaxed objective of "gumbel" is not a
        bound of the discrete model; its ELBO is reported)."""
        if self.estimator != "vimco":
            return self.elbo(x, rng, batch_size)
        batch_size = self._check_eval(x, rng, batch_size, "CatVAE.bound")
        xp = get_xp(x)
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            lw = self.log_weights(xb, self.draw_key(rng, xb.shape[0]))  # (K, B)
            out.append(logsumexp_forward(lw, axis=0)[0] - self.dtype.type(math.log(self.k)))
        return self._rows(out, xp)
