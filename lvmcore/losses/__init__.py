"""Loss terms with their backward: likelihoods, the KL term, and the bounds built from them."""

from .adversarial import (
    DiscriminatorLossCache,
    GeneratorLossCache,
    discriminator_loss_backward,
    discriminator_loss_forward,
    generator_loss_backward,
    generator_loss_forward,
)
from .kl_term import KLTermCache, kl_term_backward, kl_term_forward
from .likelihoods import (
    BernoulliNLLCache,
    GaussianNLLCache,
    LogisticNLLCache,
    bernoulli_nll_backward,
    bernoulli_nll_forward,
    gaussian_nll_backward,
    gaussian_nll_forward,
    logistic_nll_backward,
    logistic_nll_forward,
)
