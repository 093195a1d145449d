"""Alias of :mod:`lvmcore.testing.oracles.ppca`, where this oracle lives."""

from ..testing.oracles.ppca import *  # noqa: F403
