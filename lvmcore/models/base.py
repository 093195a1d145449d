"""What every model shares: named modules, flat parameter and gradient dicts, and the device.

A model's arrays all live on one device, the one of its parameters: NumPy arrays on the CPU,
CuPy arrays on a GPU. ``to(xp)`` moves them (an explicit copy, before an optimizer is made
over them); every method then takes and returns arrays of that module, and an array of the
other library is a TypeError, never a silent copy.
"""

from .._validation import check_array, check_binary, check_same_device, get_xp


class Model:
    """Base of the models: subclasses define ``modules()`` (name -> ``nn.Module``)."""

    def modules(self):
        raise NotImplementedError

    def parameters(self):
        """Dict ``"<module>.<name>" -> array``; the arrays are the live parameters."""
        return {f"{m}.{k}": v for m, mod in self.modules().items() for k, v in mod.params.items()}

    def gradients(self):
        """Dict with the same keys as ``parameters()``: the accumulated gradients."""
        return {f"{m}.{k}": v for m, mod in self.modules().items() for k, v in mod.grads.items()}

    def zero_grad(self):
        for mod in self.modules().values():
            mod.zero_grad()

    @property
    def xp(self):
        """The array module of the parameters: ``numpy`` or ``cupy``."""
        return get_xp(self._like())

    def _like(self):
        """One parameter array: on the model's device, to dispatch noise and kernels by."""
        return next(iter(self.parameters().values()))

    def to(self, xp):
        """Move every parameter, gradient and state array to the array module ``xp`` (``numpy``
        or ``cupy``, see ``lvmcore.backend.array_module``); returns the model. Optimizers hold
        the arrays they were made with: make them after the move."""
        if getattr(xp, "__name__", None) not in ("numpy", "cupy"):
            raise TypeError(
                f"{type(self).__name__}.to: expected xp to be the numpy or cupy "
                f"module, got {xp!r}. Pass lvmcore.backend.array_module('cuda')."
            )
        for mod in self.modules().values():
            mod.to(xp)
        return self

    def _check_x(self, x, func):
        """Data ``x`` (B, D): the model's dtype, on its device, binary for a Bernoulli
        decoder (every model's but a VAE's with ``likelihood="gaussian"``)."""
        check_array(x, "x", func, ndim=2, shape=(None, self.data_dim))
        check_same_device((x, self._like()), ("x", "the model's parameters"), func)
        if x.dtype != self.dtype:
            raise TypeError(
                f"{func}: expected x to have the model's dtype {self.dtype}, got "
                f"{x.dtype}. Cast it with x.astype(numpy.{self.dtype})."
            )
        if getattr(self, "likelihood", "bernoulli") == "bernoulli":
            check_binary(x, "x", func)
        return x
