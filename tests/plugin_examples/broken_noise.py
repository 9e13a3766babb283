"""A plugin that breaks the contract the way new ones do: ``torch.randn(generator=...)`` in
``sample()`` works with one generator and fails on the list of per-row generators that
evaluation passes (what ``ablate check-plugin`` must catch)."""

from __future__ import annotations

import torch

from ablate.objectives.flow_matching import FlowMatching


class BrokenNoise(FlowMatching):
    @torch.no_grad()
    def sample(self, cond, generator=None, steps=None, guidance=None, sampler=None):
        x = torch.randn((cond.shape[0], *self.target_shape), generator=generator)  # not a list!
        return x + 0 * self.velocity(x, torch.zeros(()), cond).mean()
