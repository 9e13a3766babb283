"""Random draws that are reproducible per sample, whatever the batch or device.

``generator`` may be one ``torch.Generator`` (one stream for the whole batch) or a list of
them, one per batch row: then row ``i`` is drawn from ``generator[i]`` alone, so an image
made for (prompt, sample index) is the same in any batch, run or eval step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def draw(kind: str, shape, device, dtype=torch.float32, generator: Generators = None) -> torch.Tensor:
    """``rand`` or ``randn`` of ``shape``, drawn on the generator's device, then moved."""
    fn = torch.rand if kind == "rand" else torch.randn
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        rows = [fn(tuple(shape[1:]), generator=g, device=g.device, dtype=torch.float32)
                for g in generator]
        return torch.stack(rows).to(device, dtype)
    where = generator.device if generator is not None else device
    return fn(tuple(shape), generator=generator, device=where, dtype=torch.float32).to(device, dtype)


def generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]
