"""An out-of-tree objective: an L1 regression head (each query -> one target token).

Check it the way the built-ins are checked:

    PYTHONPATH=examples/plugins ablate check-plugin l1_regression.L1Regression

and use it in a run spec with ``objective: {name: l1_regression.L1Regression}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ablate.objectives import Objective


class L1Regression(Objective):
    @dataclass
    class Config:
        scale: float = 1.0  # multiplies the loss

    def __init__(self, cfg: Config, *, cond_dim: int, num_queries: int, target_shape):
        super().__init__(cfg, cond_dim=cond_dim, num_queries=num_queries, target_shape=target_shape)
        self.proj = nn.Linear(cond_dim, self.target_shape[0])

    @classmethod
    def required_queries(cls, cfg, target_shape) -> int:
        return target_shape[1] * target_shape[2]  # one query per target token

    def predict(self, cond: torch.Tensor) -> torch.Tensor:
        c, h, w = self.target_shape
        return self.proj(cond).transpose(1, 2).reshape(cond.shape[0], c, h, w)

    def loss(self, cond: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = self.predict(cond).float()
        return {"loss": self.cfg.scale * (pred - target.float()).abs().mean(),
                "pred_std": pred.detach().std()}

    @torch.no_grad()
    def sample(self, cond, generator=None, steps=None, guidance=None, sampler=None) -> torch.Tensor:
        return self.predict(cond)  # deterministic: no noise, no sampler
