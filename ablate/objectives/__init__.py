"""Training objectives: how the backbone's query states become target features.

An objective owns its trainable head, its noise/time sampling and its loss (the
``training_losses`` shape of DiT / SiT):

- ``loss(cond, target) -> {"loss": scalar, **logs}`` with ``cond`` the query hidden states
  ``[B, N, D]`` and ``target`` the encoder's features ``[B, C, h, w]``;
- ``sample(cond, generator=None, steps=None, guidance=None, sampler=None)`` -> features
  shaped like the target.

Adding one is a new file in this folder (or a dotted class path in YAML): it registers
itself with ``@register("objective", "name")`` and every generic test runs on it.
"""

from __future__ import annotations

import torch
from torch import nn


class Objective(nn.Module):
    Config = None  # a dataclass of the plugin's YAML arguments
    plugin_name: str = "?"

    def __init__(self, cfg, *, cond_dim: int, num_queries: int,
                 target_shape: tuple[int, int, int]):
        super().__init__()
        self.cfg = cfg
        self.cond_dim = cond_dim
        self.num_queries = num_queries
        self.target_shape = tuple(target_shape)

    @classmethod
    def tiny_config(cls):
        """A CPU-sized ``Config`` for the generic tests (override when the default is big)."""
        return cls.Config() if cls.Config is not None else None

    @classmethod
    def required_queries(cls, cfg, target_shape: tuple[int, int, int]) -> int | None:
        """Number of queries this objective needs for a target grid, or None for any."""
        return None

    def loss(self, cond: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None,
               steps: int | None = None, guidance: float | None = None,
               sampler: str | None = None) -> torch.Tensor:
        raise NotImplementedError
