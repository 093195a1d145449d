"""Alias of :mod:`lvmcore.testing.oracles`, where the exact oracles live.

Kept so that ``lvmcore.oracles`` (named in the README) and its submodules
``lvmcore.oracles.ppca``, ``.gmm`` and ``.enumeration`` keep importing; new code imports
from ``lvmcore.testing.oracles``.
"""

import sys

from ..testing.oracles import *  # noqa: F403
from ..testing.oracles import __all__, enumeration, gmm, ppca

for _name in ("enumeration", "gmm", "ppca"):
    sys.modules[f"{__name__}.{_name}"] = sys.modules[f"lvmcore.testing.oracles.{_name}"]
del _name
