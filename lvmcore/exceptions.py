"""Exceptions and warnings raised by lvmcore."""


class InvalidParameterError(ValueError, TypeError):
    """A hyper-parameter has a value or type outside its declared constraint.

    Subclasses both ValueError and TypeError (as scikit-learn's does), so callers
    catching either keep working.
    """


class BackendUnavailableError(RuntimeError):
    """A backend was requested that cannot run here; the message says why."""


class TrainingDivergedError(RuntimeError):
    """Training met a non-finite loss or gradient and stopped.

    The last good checkpoint, if any, is left in place; its path is in ``checkpoint``.
    """

    def __init__(self, message, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint


class PerformanceWarning(UserWarning):
    """A slower code path was taken; the message says why and how to avoid it."""


class RuntimeDifferenceWarning(UserWarning):
    """A checkpoint was written under another runtime (BLAS library or thread count, NumPy
    version, device, ...) than the one resuming or evaluating it: results may differ in the
    last digits. The message lists each difference."""
