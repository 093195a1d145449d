"""The kernel registry's record type and the per-module views derived from it.

Each kernel module declares its variants once, as a tuple ``RECORDS`` of ``KernelRecord``;
``kernels.get`` and ``kernels.records`` read those tuples, and the dicts a module also offers
(``VARIANTS``, ``IMPLEMENTATIONS``, ``DEFAULT``, ...) are computed from them here, never
written by hand.
"""

from collections.abc import Callable
from typing import NamedTuple

__all__ = ["KernelRecord", "STATUSES", "variants", "implementations", "default_variant"]

# The status of a variant: "reference", the plain NumPy oracle, which the "numpy" backend runs;
# "default", what the "numba" or "cupy" backend runs; "alternative", shipped and tested but run
# by no backend (e.g. a size regime another variant delegates to).
STATUSES = ("reference", "default", "alternative")


class KernelRecord(NamedTuple):
    """One variant of one kernel.

    Attributes
    ----------
    op : str
        The kernel's name, e.g. "gumbel_softmax" or "gumbel_softmax_backward".
    backend : {"numpy", "numba", "cupy"}
        The backend whose arrays (and machinery) the variant runs on.
    variant : str
        "ref", "numba_v<N>" or "cupy_v<N>".
    func : callable
        The variant: a public function that checks its arguments, then runs.
    status : {"reference", "default", "alternative"}
        Exactly one record per (op, backend) is not an alternative: the one that backend runs.
    """

    op: str
    backend: str
    variant: str
    func: Callable
    status: str


def variants(records, op):
    """{variant name: func} of ``op``, in declaration order."""
    return {r.variant: r.func for r in records if r.op == op}


def implementations(records, op):
    """{backend: func} that the backends dispatch ``op`` to."""
    return {r.backend: r.func for r in records if r.op == op and r.status != "alternative"}


def default_variant(records, op, backend="numba"):
    """The name of the variant ``backend`` runs for ``op``."""
    (name,) = (
        r.variant
        for r in records
        if r.op == op and r.backend == backend and r.status != "alternative"
    )
    return name
