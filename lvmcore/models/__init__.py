"""Models: each owns its modules and writes its whole backward by hand.

Every model implements the contract of :mod:`lvmcore.models.base` and is registered here by
name: ``MODELS`` is the one registry the trainer, the checkpoints and the command line read
(``lvmcore train --model NAME``, ``build_model(config)``). A new model registers itself with
:func:`register_model`.
"""

from .aae import AAE
from .base import Flag, Model
from .catvae import CATVAE_ESTIMATORS, CatVAE, CatVAECache
from .cvae import CVAE
from .iwae import ESTIMATORS, IWAE
from .mvae import MVAE
from .vae import VAE, VAECache
from .vqvae import VQVAE

__all__ = [
    "MODELS",
    "Model",
    "Flag",
    "register_model",
    "get_model_class",
    "build_model",
    "VAE",
    "VAECache",
    "IWAE",
    "ESTIMATORS",
    "VQVAE",
    "CatVAE",
    "CatVAECache",
    "CATVAE_ESTIMATORS",
    "CVAE",
    "MVAE",
    "AAE",
]

MODELS: dict[str, type[Model]] = {}


def register_model(cls: type[Model]) -> type[Model]:
    """Add a model class to ``MODELS`` under ``cls.name``; returns ``cls`` (usable as a class
    decorator).

    Raises
    ------
    TypeError
        When ``cls`` is not a subclass of :class:`lvmcore.models.Model`.
    ValueError
        When its ``name`` is empty or already taken by another class.
    """
    f = "register_model"
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise TypeError(
            f"{f}: expected cls to be a subclass of lvmcore.models.Model, got {cls!r}. "
            f"Derive the model from Model."
        )
    name = cls.name
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"{f}: expected cls.name to be a non-empty string (the registry key), got "
            f"{name!r} on {cls.__name__}. Set the class attribute name = '...'."
        )
    if MODELS.get(name, cls) is not cls:
        raise ValueError(
            f"{f}: expected a new model name, got {name!r}, already taken by "
            f"{MODELS[name].__name__}. Choose another name."
        )
    MODELS[name] = cls
    return cls


def get_model_class(name: str) -> type[Model]:
    """The model class registered as ``name``; ValueError naming the choices otherwise."""
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(
            f"get_model_class: expected a model name, one of {sorted(MODELS)}, got {name!r}."
        )
    return MODELS[name]


def build_model(config: dict) -> Model:
    """Rebuild a model from its ``config()`` dict (the ``"model"`` key picks the class)."""
    if not isinstance(config, dict):
        raise TypeError(
            f"build_model: expected config to be a dict (a model's config()), got "
            f"{type(config).__name__}."
        )
    name = config.get("model")
    if name not in MODELS:
        raise ValueError(
            f"build_model: expected config['model'] to be one of {sorted(MODELS)}, got {name!r}."
        )
    return MODELS[name].from_config(config)


for _cls in (VAE, IWAE, VQVAE, CatVAE, CVAE, MVAE, AAE):
    register_model(_cls)
del _cls
