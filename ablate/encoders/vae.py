"""VAE latents as the generation target (any diffusers ``AutoencoderKL``: SD, SDXL, FLUX).

Latents are the posterior mean, shifted and scaled by the VAE's own ``shift_factor`` and
``scaling_factor`` so the target has roughly unit variance; ``decode`` undoes both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ablate.encoders import Encoder
from ablate.nets import diffusers_load_kwargs
from ablate.registry import register


@register("encoder", "vae")
class VAEEncoder(Encoder):
    @dataclass
    class Config:
        model: str = "black-forest-labs/FLUX.1-dev"  # hub id or folder
        subfolder: str | None = "vae"  # where the VAE sits inside a pipeline repo
        resolution: int = 256  # input pixels; the grid is resolution / downsampling factor
        sample_posterior: bool = False  # False: the posterior mean (deterministic targets)
        dtype: str = "float32"

    @classmethod
    def tiny_config(cls, root) -> Config:
        from ablate.testing import tiny_vae

        return cls.Config(model=str(tiny_vae(root)), subfolder=None, resolution=16)

    def __init__(self, cfg: Config):
        super().__init__()
        from diffusers import AutoencoderKL

        self.cfg = cfg
        kwargs = {"dtype": getattr(torch, cfg.dtype), **diffusers_load_kwargs()}
        try:
            self.vae = AutoencoderKL.from_pretrained(cfg.model, subfolder=cfg.subfolder, **kwargs)
        except OSError:
            if not cfg.subfolder:
                raise
            self.vae = AutoencoderKL.from_pretrained(cfg.model, **kwargs)  # a bare VAE folder
        config = self.vae.config
        self.scaling_factor = config.scaling_factor
        self.shift_factor = config.shift_factor or 0.0
        down = 2 ** (len(config.block_out_channels) - 1)
        if cfg.resolution % down:
            raise ValueError(f"encoder.resolution={cfg.resolution} must be a multiple of the "
                             f"VAE's downsampling factor {down}")
        self.resolution = cfg.resolution
        self.grid_shape = (config.latent_channels, cfg.resolution // down, cfg.resolution // down)
        self.freeze()

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        z = dist.sample() if self.cfg.sample_posterior else dist.mode()
        return ((z - self.shift_factor) * self.scaling_factor).float()

    @torch.no_grad()
    def decode(self, features: torch.Tensor, generator: torch.Generator | None = None,
               **kwargs) -> torch.Tensor:
        z = features / self.scaling_factor + self.shift_factor
        return self.vae.decode(z.to(self.vae.dtype)).sample.clamp(-1, 1).float()
