"""CLIP-family vision features as the generation target (CLIP, SigLIP, EVA-style towers).

Features are the hidden states of one layer of the vision tower (the last block by default,
as BLIP3-o), the CLS token dropped where the tower has one, the patch grid average-pooled to
``grid x grid`` tokens: ``[B, C, grid, grid]``. Pixels go back through a configured
CLIP-conditioned diffusion decoder (``ablate.nets.clip_decoder``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ablate.encoders import Encoder
from ablate.registry import register

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_vision_tower(path: str, dtype: torch.dtype = torch.float32):
    """The vision tower of a CLIP-family checkpoint (hub id or folder)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=dtype)
    tower = getattr(model, "vision_model", model)  # CLIPModel / SiglipModel hold it inside
    vision_config = getattr(config, "vision_config", config)
    return tower, vision_config


def load_mean_std(path: str) -> tuple[tuple, tuple]:
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(path)
        return tuple(proc.image_mean), tuple(proc.image_std)
    except OSError:  # no preprocessor_config.json: OpenAI CLIP's statistics
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


@register("encoder", "clip")
class CLIPEncoder(Encoder):
    @dataclass
    class Config:
        model: str = "openai/clip-vit-large-patch14"  # hub id or folder (CLIP, SigLIP, ...)
        layer: int = -1  # index into the tower's hidden states; -1 = last block
        grid: int = 8  # pooled grid side: 8 -> 64 tokens
        resolution: int | None = None  # input size; default from the model's config
        decoder: str | None = None  # CLIP-conditioned diffusion decoder folder / hub id
        decoder_steps: int = 50
        decoder_guidance: float = 3.0
        decode_size: int | None = None  # output pixels; default: ``resolution``
        dtype: str = "float32"

    @classmethod
    def tiny_config(cls, root) -> Config:
        from pathlib import Path

        from ablate.testing import tiny_clip, tiny_clip_decoder

        root = Path(root)
        return cls.Config(model=str(tiny_clip(root / "clip", image_size=32, patch=4, hidden=32)), grid=4,
                          decoder=str(tiny_clip_decoder(root / "decoder", cross_attention_dim=32)),
                          decoder_steps=2)

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        self.tower, vision_config = load_vision_tower(cfg.model, dtype)
        mean, std = load_mean_std(cfg.model)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.native_resolution = vision_config.image_size
        self.resolution = cfg.resolution or self.native_resolution
        self.patches_per_side = self.resolution // vision_config.patch_size
        if self.patches_per_side % cfg.grid:
            raise ValueError(f"encoder.grid={cfg.grid} must divide the {self.patches_per_side}x"
                             f"{self.patches_per_side} patch grid of {cfg.model}")
        self.grid_shape = (vision_config.hidden_size, cfg.grid, cfg.grid)
        self.decoder = None
        if cfg.decoder:
            from ablate.nets.clip_decoder import CLIPDiffusionDecoder

            self.decoder = CLIPDiffusionDecoder.from_pretrained(cfg.decoder, dtype=dtype)
        self.freeze()

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        x = ((pixels + 1) / 2 - self.mean) / self.std
        x = x.to(next(self.tower.parameters()).dtype)
        kwargs = {}
        if self.resolution != self.native_resolution:
            kwargs["interpolate_pos_encoding"] = True
        out = self.tower(pixel_values=x, output_hidden_states=True, **kwargs)
        hidden = out.hidden_states[self.cfg.layer]  # [B, T, C]
        n = self.patches_per_side
        if hidden.shape[1] == n * n + 1:  # CLIP / EVA: drop the CLS token
            hidden = hidden[:, 1:]
        side = int(math.isqrt(hidden.shape[1]))
        grid = hidden.transpose(1, 2).reshape(hidden.shape[0], -1, side, side)
        return F.adaptive_avg_pool2d(grid.float(), self.cfg.grid)

    @torch.no_grad()
    def decode(self, features: torch.Tensor, generator: torch.Generator | None = None,
               steps: int | None = None, guidance: float | None = None) -> torch.Tensor:
        if self.decoder is None:
            raise RuntimeError(f"encoder {self.cfg.model!r} has no decoder: set encoder.decoder to "
                               "a CLIP-conditioned diffusion decoder folder (or train one with "
                               "`ablate train-decoder`) to turn CLIP features into pixels")
        return self.decoder.decode(features, size=self.cfg.decode_size or self.resolution,
                                   steps=steps or self.cfg.decoder_steps,
                                   guidance=self.cfg.decoder_guidance if guidance is None else guidance,
                                   generator=generator)
