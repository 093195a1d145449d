"""Models: each owns its modules and writes its whole backward by hand.

Every model implements the contract of :mod:`lvmcore.models.base` and is registered here by
name: ``MODELS`` is the one registry the trainer, the checkpoints and the command line read
(``lvmcore train --model NAME``, ``build_model(config)``). A new model registers itself with
:func:`register_model`.

A registered name may also serve *variants*: classes chosen by a flag of that name's family,
registered with :func:`register_variant`. ``lvmcore train --model iwae --stochastic-layers 2``
builds :class:`HierarchicalIWAE`, ``--model vae --posterior iaf`` builds :class:`FlowVAE`,
``--model vae --prior vamp`` (or ``--decoder made``, ``--dequantize uniform``) builds
:class:`PriorDecoderVAE`;
their checkpoints keep ``"model": "iwae"`` (or ``"vae"``) and :func:`build_model` picks the
variant from the config in the same way (:func:`model_class`). Left at their defaults, the
selecting flags build the registered class itself.
"""

from __future__ import annotations

from .aae import AAE
from .base import Flag, Model
from .catvae import CATVAE_ESTIMATORS, CatVAE, CatVAECache
from .cvae import CVAE
from .flowvae import FlowIWAE, FlowVAE
from .hvae import HierarchicalIWAE, HierarchicalVAE
from .iwae import ESTIMATORS, IWAE
from .mvae import MVAE
from .priordecoder import PriorDecoderIWAE, PriorDecoderVAE
from .vae import VAE, VAECache
from .vqvae import VQVAE

__all__ = [
    "MODELS",
    "Model",
    "Flag",
    "VARIANTS",
    "register_model",
    "register_variant",
    "get_model_class",
    "model_class",
    "family_flags",
    "family_selectors",
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
    "HierarchicalVAE",
    "HierarchicalIWAE",
    "FlowVAE",
    "FlowIWAE",
    "PriorDecoderVAE",
    "PriorDecoderIWAE",
]

MODELS: dict[str, type[Model]] = {}
VARIANTS: dict[str, list[type[Model]]] = {}


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


def register_variant(cls: type[Model]) -> type[Model]:
    """Serve a model class under the registered name ``cls.name`` when its flags ask for it.

    ``cls.selectors`` names the flags (and config keys) that choose it and
    ``cls.selects(settings)`` says whether given settings do (:class:`lvmcore.models.Model`);
    variants are tried in the order registered. Returns ``cls``.

    Raises
    ------
    TypeError
        When ``cls`` is not a subclass of :class:`lvmcore.models.Model`.
    ValueError
        When ``cls.name`` is not a registered name, or ``cls`` declares no selector.
    """
    f = "register_variant"
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise TypeError(
            f"{f}: expected cls to be a subclass of lvmcore.models.Model, got {cls!r}. "
            f"Derive the model from Model."
        )
    if cls.name not in MODELS:
        raise ValueError(
            f"{f}: expected cls.name to be a registered name, one of {sorted(MODELS)}, got "
            f"{cls.name!r} on {cls.__name__}. Register the model itself with register_model."
        )
    if not cls.selectors:
        raise ValueError(
            f"{f}: expected {cls.__name__}.selectors to name the flags that select it, got ()."
        )
    family = VARIANTS.setdefault(cls.name, [])
    if cls not in family:
        family.append(cls)
    return cls


def model_class(name: str, settings: dict | None = None) -> type[Model]:
    """The class that builds ``name`` with ``settings``: a config dict, or the parsed flags as
    a dict (``vars(args)``, None for a flag left out). The first variant whose ``selects``
    accepts them, else the registered class."""
    cls = get_model_class(name)
    if settings is not None and not isinstance(settings, dict):
        raise TypeError(
            f"model_class: expected settings to be a dict (a config, or vars(args)), got "
            f"{type(settings).__name__}."
        )
    for variant in VARIANTS.get(name, ()):
        if variant.selects(settings or {}):
            return variant
    return cls


def family_flags(name: str) -> tuple:
    """The flags of the registered class ``name`` and then of its variants, each once."""
    flags, seen = [], set()
    for cls in (get_model_class(name), *VARIANTS.get(name, ())):
        for flag in cls.flags:
            if flag.dest not in seen:
                seen.add(flag.dest)
                flags.append(flag)
    return tuple(flags)


def family_selectors(name: str) -> tuple:
    """The destinations of the flags that choose among ``name``'s variants."""
    return tuple(dict.fromkeys(d for cls in VARIANTS.get(name, ()) for d in cls.selectors))


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
    return model_class(name, config).from_config(config)


for _cls in (VAE, IWAE, VQVAE, CatVAE, CVAE, MVAE, AAE):
    register_model(_cls)
# The prior/decoder variants first: given with --posterior or --stochastic-layers, they are
# chosen and refuse the combination by name, instead of a posterior variant ignoring --prior.
for _cls in (
    PriorDecoderVAE,
    PriorDecoderIWAE,
    HierarchicalVAE,
    HierarchicalIWAE,
    FlowVAE,
    FlowIWAE,
):
    register_variant(_cls)
del _cls
