"""Models: each owns its modules and writes its whole backward by hand."""

from .catvae import CATVAE_ESTIMATORS, CatVAE, CatVAECache
from .iwae import ESTIMATORS, IWAE
from .vae import VAE, VAECache
from .vqvae import VQVAE

MODELS = {"vae": VAE, "iwae": IWAE, "vqvae": VQVAE, "catvae": CatVAE}


def build_model(config):
    """Rebuild a model from its ``config()`` dict (the ``"model"`` key picks the class)."""
    name = config.get("model")
    if name not in MODELS:
        raise ValueError(
            f"build_model: expected config['model'] to be one of {sorted(MODELS)}, got {name!r}."
        )
    return MODELS[name].from_config(config)
