"""Alias of :mod:`lvmcore.testing.oracles`, where the exact oracles live.

Kept so that ``lvmcore.oracles`` (named in the README) and its modules
``lvmcore.oracles.ppca``, ``.gmm`` and ``.enumeration`` keep importing; new code imports
from ``lvmcore.testing.oracles``.
"""

from ..testing.oracles import *  # noqa: F403
from ..testing.oracles import __all__
