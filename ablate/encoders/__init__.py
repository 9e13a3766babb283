"""Image representations a backbone can be taught to generate (one plugin per file).

An encoder maps pixels to the target grid ``X`` and back:

- ``encode(pixels)``: pixels in [-1, 1], ``[B, 3, R, R]`` with ``R = self.resolution`` ->
  features ``[B, C, h, w]`` (``self.grid_shape == (C, h, w)``, known before any data);
- ``decode(features, generator=None)`` -> pixels in [-1, 1] through its decoder.

Encoders are frozen: they never train inside a run. ``decode``'s ``generator`` is, as for
objectives, None, one generator or a list of one per row (evaluation passes the list).
``tiny_config(root)`` returns a CPU-sized ``Config`` (building tiny weights under ``root``)
so the generic tests and ``ablate check-plugin`` can fit and evaluate the encoder.
"""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    Config = None  # a dataclass of the plugin's YAML arguments
    plugin_name: str = "?"

    resolution: int
    grid_shape: tuple[int, int, int]

    @classmethod
    def tiny_config(cls, root):
        """A CPU-sized ``Config`` whose weights are built under ``root``; None: not checkable."""
        return None

    @property
    def num_tokens(self) -> int:
        _, h, w = self.grid_shape
        return h * w

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, features: torch.Tensor, generator: torch.Generator | None = None,
               **kwargs) -> torch.Tensor:
        raise NotImplementedError

    def freeze(self) -> Encoder:
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True):
        # Frozen for good: Lightning's ``.train()`` on the parent must not flip dropout or
        # batch-norm statistics back on.
        return super().train(False)
