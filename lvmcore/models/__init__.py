"""Models: each owns its modules and writes its whole backward by hand."""
from .vae import VAE, VAECache, kl_std_normal_per_dim
