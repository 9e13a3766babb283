"""MSE objective: each query is linearly projected to one target token (BLIP3-o's CLIP+MSE).

``L = ||X - W Q||^2`` with ``Q`` the ``h*w`` query states and ``X`` the target grid read in
row-major order (token ``i`` is grid cell ``(i // w, i % w)``). Deterministic at inference:
the same prompt always gives the same features, which is the paper's point about MSE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ablate.objectives import Objective
from ablate.registry import register


@register("objective", "mse")
class MSE(Objective):
    @dataclass
    class Config:
        bias: bool = True  # W q + b; the paper writes W Q, a bias costs nothing

    def __init__(self, cfg: Config, *, cond_dim: int, num_queries: int,
                 target_shape: tuple[int, int, int]):
        super().__init__(cfg, cond_dim=cond_dim, num_queries=num_queries, target_shape=target_shape)
        c, h, w = self.target_shape
        needed = self.required_queries(cfg, self.target_shape)
        if num_queries != needed:
            raise ValueError(
                f"objective 'mse' maps each query to one target token, so it needs "
                f"num_queries = h*w = {needed} for the {h}x{w} target grid, but got "
                f"num_queries = {num_queries}; set backbone.num_queries: {needed} or leave it "
                f"unset so it is derived from the target")
        self.proj = nn.Linear(cond_dim, c, bias=cfg.bias)

    @classmethod
    def required_queries(cls, cfg, target_shape: tuple[int, int, int]) -> int:
        _, h, w = target_shape
        return h * w

    @classmethod
    def tiny_config(cls) -> Config:
        return cls.Config()

    def predict(self, cond: torch.Tensor) -> torch.Tensor:
        """[B, h*w, cond_dim] -> [B, C, h, w]."""
        c, h, w = self.target_shape
        tokens = self.proj(cond)  # [B, h*w, C]
        return tokens.transpose(1, 2).reshape(cond.shape[0], c, h, w)

    def loss(self, cond: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = self.predict(cond).float()
        target = target.float()
        loss = F.mse_loss(pred, target)
        # Cosine similarity per token: for CLIP targets the direction matters more than norm.
        cos = F.cosine_similarity(pred.flatten(2), target.flatten(2), dim=1).mean()
        return {"loss": loss, "cosine": cos.detach(), "pred_std": pred.detach().std()}

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None,
               steps: int | None = None, guidance: float | None = None,
               sampler: str | None = None) -> torch.Tensor:
        # Deterministic regression: generator, steps, guidance and sampler do not apply.
        return self.predict(cond)
