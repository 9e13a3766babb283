"""CLIP tokens -> pixels: a diffusion decoder conditioned on a CLIP feature grid.

The Emu2-Gen / BLIP3-o layout: a diffusers ``UNet2DConditionModel`` (``unet/``), a scheduler
(``scheduler/``) and, for latent diffusion, an ``AutoencoderKL`` (``vae/``; without one the
UNet works in pixel space). The ``[B, C, h, w]`` CLIP grid goes in as ``h*w`` tokens of
dimension ``C`` (``encoder_hidden_states``); with ``text_time`` conditioning their mean is
the pooled text embedding and the SDXL size/crop ids are the output resolution.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ablate.nets import diffusers_load_kwargs
from ablate.rng import draw


def _load_scheduler(folder: Path):
    import diffusers

    config = json.loads((folder / "scheduler_config.json").read_text())
    return getattr(diffusers, config["_class_name"]).from_pretrained(folder)


class CLIPDiffusionDecoder(nn.Module):
    def __init__(self, unet, scheduler, vae=None):
        super().__init__()
        self.unet = unet
        self.scheduler = scheduler
        self.vae = vae

    # ---- loading / saving ------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from huggingface_hub import snapshot_download

        folder = Path(path)
        if not folder.is_dir():  # a hub id: fetch the repo (fails at once when offline)
            folder = Path(snapshot_download(str(path)))
        missing = [p for p in ("unet", "scheduler") if not (folder / p).is_dir()]
        if missing:
            raise FileNotFoundError(f"{folder}: a CLIP decoder folder needs unet/ and scheduler/ "
                                    f"(and optionally vae/); missing {missing}")
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=dtype, **diffusers_load_kwargs())
        vae = AutoencoderKL.from_pretrained(folder / "vae", dtype=dtype, **diffusers_load_kwargs()) if (folder / "vae").is_dir() else None
        return cls(unet, _load_scheduler(folder / "scheduler"), vae)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.unet.save_pretrained(path / "unet")
        self.scheduler.save_pretrained(path / "scheduler")
        if self.vae is not None:
            self.vae.save_pretrained(path / "vae")

    # ---- conditioning ----------------------------------------------------------------

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels if self.vae is not None else 3

    @property
    def spatial_channels(self) -> int:
        """Feature channels concatenated to the UNet input (0: cross-attention only)."""
        return self.unet.config.in_channels - self.latent_channels

    def unet_input(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if not self.spatial_channels:
            return latents
        if features.shape[1] != self.spatial_channels:
            raise ValueError(f"decoder expects {self.spatial_channels} feature channels, got "
                             f"{features.shape[1]}")
        grid = F.interpolate(features.to(latents.dtype), size=latents.shape[-2:], mode="nearest")
        return torch.cat([latents, grid], dim=1)

    @property
    def latent_scale(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def conditioning(self, features: torch.Tensor, height: int, width: int) -> dict:
        """UNet keyword arguments for a ``[B, C, h, w]`` feature grid."""
        tokens = features.flatten(2).transpose(1, 2).to(self.unet.dtype)  # [B, h*w, C]
        kwargs = {"encoder_hidden_states": tokens}
        if self.unet.config.addition_embed_type == "text_time":
            time_ids = torch.tensor([height, width, 0, 0, height, width], dtype=tokens.dtype,
                                    device=tokens.device).expand(tokens.shape[0], -1)
            kwargs["added_cond_kwargs"] = {"text_embeds": tokens.mean(1), "time_ids": time_ids}
        return kwargs

    # ---- training (decoder trainer) and decoding -------------------------------------

    def to_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return pixels
        z = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.sample()
        shift = self.vae.config.shift_factor or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return latents.clamp(-1, 1)
        shift = self.vae.config.shift_factor or 0.0
        z = latents / self.vae.config.scaling_factor + shift
        return self.vae.decode(z.to(self.vae.dtype)).sample.clamp(-1, 1)

    def training_loss(self, features: torch.Tensor, pixels: torch.Tensor,
                      cond_dropout: float = 0.1, cond_noise: float = 0.0) -> torch.Tensor:
        """Denoising loss for reconstructing ``pixels`` from their CLIP ``features``
        (the Emu2 recipe: the CLIP encoder frozen, the decoder trained).

        ``cond_noise`` > 0 adds Gaussian noise of a per-sample level ``U(0, cond_noise)`` times
        the features' std to the conditioning (the conditioning augmentation of cascaded
        diffusion models): generated features are never exact, and a decoder that only saw
        clean ones renders their errors as clutter."""
        with torch.no_grad():
            latents = self.to_latents(pixels)
            if cond_noise > 0:
                level = torch.rand(features.shape[0], 1, 1, 1, device=features.device) * cond_noise
                features = features + level * features.std() * torch.randn_like(features)
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],),
                          device=latents.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        drop = torch.rand(features.shape[0], device=features.device) < cond_dropout
        features = features.masked_fill(drop[:, None, None, None], 0.0)
        cond = self.conditioning(features, pixels.shape[-2], pixels.shape[-1])
        pred = self.unet(self.unet_input(noisy, features), t, **cond).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        return torch.nn.functional.mse_loss(pred.float(), target.float())

    @torch.no_grad()
    def decode(self, features: torch.Tensor, size: int, steps: int = 50, guidance: float = 3.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample pixels in [-1, 1] ``[B, 3, size, size]`` for a CLIP feature grid."""
        batch, device = features.shape[0], features.device
        side = size // self.latent_scale
        channels = self.latent_channels
        latents = draw("randn", (batch, channels, side, side), device, self.unet.dtype, generator)
        if isinstance(generator, (list, tuple)):
            generator = generator[0]  # the scheduler's own (rare) draws: one stream
        self.scheduler.set_timesteps(steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        use_cfg = guidance is not None and guidance != 1.0
        both = torch.cat([features, torch.zeros_like(features)]) if use_cfg else features
        cond = self.conditioning(both, size, size)
        for t in self.scheduler.timesteps:
            model_in = torch.cat([latents] * 2) if use_cfg else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            pred = self.unet(self.unet_input(model_in, both), t, **cond).sample
            if use_cfg:
                pred_cond, pred_null = pred.chunk(2)
                pred = pred_null + guidance * (pred_cond - pred_null)
            latents = self.scheduler.step(pred, t, latents, generator=generator).prev_sample
        return self.from_latents(latents).float()
