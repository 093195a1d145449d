"""Alias of :mod:`lvmcore.testing.oracles.gmm`, where this oracle lives."""

from ..testing.oracles.gmm import *  # noqa: F403
