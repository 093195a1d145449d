"""The noise of a step as its Philox key: what a fused sampling kernel consumes.

A model's ``draw_noise(rng, ...)`` returns the noise as an array (``lvmcore.noise``: one Philox
key taken from ``rng``, then the stream filled). The fused kernels (``reparam_sample``,
``gumbel_softmax``) draw the same stream themselves, element by element as they use it, from the
key alone. :class:`NoiseKey` is that key with the shape of the array it stands for, so a model's
``forward`` accepts either form of the same noise:

    draw_key(kind, rng, shape).fill(dtype, like)  ==  draw_noise(rng, ...)       (bit for bit)

``draw_key`` consumes ``rng`` exactly as ``draw_noise`` does (one ``noise.philox_key``), so a
training step through a fused kernel and a step through the readable path with
``draw_noise(rng, ...)`` follow the same Philox stream: the uniforms are identical bit for bit,
and normals and Gumbels agree to the fused generators' few ulp.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from .. import noise

__all__ = ["NoiseKey", "draw_key"]

_KINDS = ("normal", "gumbel")


class NoiseKey(NamedTuple):
    """The Philox key of one noise array: ``kind`` ("normal" or "gumbel"), ``seed``,
    ``stream`` and the ``shape`` of the array; element i of the C-ordered array is element i
    of the (seed, stream) stream (offset 0)."""

    kind: str
    seed: int
    stream: int
    shape: tuple

    def fill(self, dtype, like):
        """The noise as an array of ``shape`` and ``dtype`` on ``like``'s device: what
        ``draw_noise`` returns for the generator this key was taken from."""
        return noise.philox_fill(self.kind, (self.seed, self.stream), self.shape, dtype, like)


def draw_key(kind: str, rng: np.random.Generator, shape) -> NoiseKey:
    """The key of the noise ``draw_noise`` would draw from ``rng``: one ``noise.philox_key``.

    Raises
    ------
    ValueError
        ``kind`` not "normal" or "gumbel", or ``shape`` not non-negative integers.
    TypeError
        ``rng`` not a ``numpy.random.Generator``.
    """
    if kind not in _KINDS:
        raise ValueError(f"draw_key: expected kind to be one of {_KINDS}, got {kind!r}.")
    shape = tuple(shape)
    if not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise ValueError(f"draw_key: expected shape to be non-negative integers, got {shape!r}.")
    seed, stream = noise.philox_key(rng)
    return NoiseKey(kind, seed, stream, tuple(int(s) for s in shape))
