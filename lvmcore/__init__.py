"""lvmcore: latent-variable generative models with hand-derived, tested gradients."""

from .backend import available_backends, get_backend, use_backend
from .exceptions import (
    BackendUnavailableError,
    InvalidParameterError,
    PerformanceWarning,
    TrainingDivergedError,
)

__version__ = "0.1.0"
