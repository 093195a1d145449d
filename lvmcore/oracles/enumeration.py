"""Alias of :mod:`lvmcore.testing.oracles.enumeration`, where this oracle lives."""

from ..testing.oracles.enumeration import *  # noqa: F403
