"""lvmcore: latent-variable generative models with hand-derived, tested gradients."""
from ._blas import tune_openblas_coretype

tune_openblas_coretype()  # before NumPy loads OpenBLAS; see lvmcore/_blas.py

from .backend import available_backends, get_backend, use_backend
from .exceptions import (BackendUnavailableError, InvalidParameterError, PerformanceWarning,
                         TrainingDivergedError)

__version__ = "0.1.0"
