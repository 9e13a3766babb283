"""Regression from the pooled query state, one map per grid position: an out-of-tree objective plugin.

A diagnostic for "why does the CLIP+MSE cell draw the training mean for every prompt, when a
closed-form ridge from the mean query state reads the prompt (``ridge_readout.py``)?". The
paper's MSE head is one ``Linear`` shared by all tokens (query i -> grid cell i), so the
frozen LM must make each query's state position-specific; this head instead averages the
query states and maps the average to the whole grid with a separate weight per cell (the
ridge's form), trained by the same loop, loss and optimiser. Chosen by dotted path:

    PYTHONPATH=research/toy_diagnostics ablate grid experiments/demo.yaml --only clip+mse \\
        --set cells.clip+mse.objective.name=pooled_regression.PooledRegression

Not a design the paper tested; it isolates the head's form from everything else.

With ``ridge_init: <out>/<cell>/ridge.pt`` (written by ``ridge_readout.py``) the head starts
from the closed-form solution instead (the pooled state standardised with the ridge's fixed
statistics, then its weights): does training keep a head that already follows the prompts?

    PYTHONPATH=research/toy_diagnostics ablate grid experiments/demo.yaml --only clip+mse \
        --set cells.clip+mse.objective="{name: pooled_regression.PooledRegression, ridge_init: results/ridge_readout/clip+mse/ridge.pt}"
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ablate.objectives.mse import MSE


class PooledRegression(MSE):
    @dataclass
    class Config(MSE.Config):
        ridge_init: str | None = None  # a ridge_readout.py solution to start from

    def __init__(self, cfg: Config, *, cond_dim: int, num_queries: int,
                 target_shape: tuple[int, int, int]):
        super().__init__(cfg, cond_dim=cond_dim, num_queries=num_queries, target_shape=target_shape)
        c, h, w = self.target_shape
        linear = nn.Linear(cond_dim, c * h * w, bias=cfg.bias)
        if cfg.ridge_init is None:
            self.proj = nn.Sequential(nn.LayerNorm(cond_dim), linear)
            return
        solution = torch.load(cfg.ridge_init, map_location="cpu")
        self.register_buffer("mean_x", solution["mean_x"])
        self.register_buffer("std_x", solution["std_x"])
        with torch.no_grad():
            linear.weight.copy_(solution["weight"])
            linear.bias.copy_(solution["bias"])
        self.proj = linear

    def predict(self, cond: torch.Tensor) -> torch.Tensor:
        """[B, N, cond_dim] -> mean over the N queries -> [B, C, h, w]."""
        pooled = cond.mean(1)
        if self.cfg.ridge_init is not None:
            pooled = (pooled - self.mean_x) / self.std_x
        return self.proj(pooled).reshape(cond.shape[0], *self.target_shape)


__all__ = ["PooledRegression"]
