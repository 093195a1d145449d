"""Stateful layers that own parameters and accumulate gradients."""

from .code_prior import CodePrior, fit_code_prior
from .discriminator import Discriminator
from .init import glorot_uniform
from .made import MADE
from .module import MLP, BufferedMLPCache, Linear, MLPCache, Module
from .stochastic import GaussianLayer
