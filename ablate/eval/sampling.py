"""Prompts -> features -> images, batched, with one fixed seed per (prompt, sample index).

``ImageGenerator`` wraps a trained (or training) ``AblationModule``; metric plugins only see
its two methods, so a metric never needs to know the encoder or objective:

    gen.features(prompts, seeds) -> [N, C, h, w]   what the objective samples
    gen.images(prompts, seeds)   -> [PIL.Image]    the same, decoded by the encoder

Under ``torch.distributed`` (DDP / FSDP training, several ranks) each rank samples and
decodes every ``world``-th item and the parts are gathered, in order, on every rank: an
eval on N ranks samples 1/N of the images each. The seeds are per item, so the images do
not depend on the split. The scorers split their per-item work (judging an image,
extracting its features) the same way with :func:`split_map`, and aggregate the gathered
results on every rank.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ablate.data.stream import rank_and_world
from ablate.rng import generators


def sample_seed(prompt: str, index: int = 0) -> int:
    """A stable 31-bit seed for sample ``index`` of ``prompt``: the same in every run, eval
    step, machine and process (crc32, unlike ``hash``)."""
    return zlib.crc32(f"{index}\x00{prompt}".encode()) & 0x7FFFFFFF


class RankFailed(RuntimeError):
    """Another rank failed its share of a split computation."""


def gather(value) -> list:
    """``value`` of every rank, in rank order, on every rank (``[value]`` with one rank)."""
    rank, world = rank_and_world()
    if world == 1:
        return [value]
    import torch.distributed as dist

    parts = [None] * world
    dist.all_gather_object(parts, value)
    return parts


def split_map(fn, items: list) -> list:
    """``fn(share) -> one result per item of share``, run on this rank's share of ``items``
    (every ``world``-th, from ``rank``), the results of all ranks gathered back into the
    items' order on every rank. Call it on every rank with the same items.

    A rank whose share fails still takes part in the gather, sending the error, so the
    other ranks raise ``RankFailed`` instead of waiting for it forever.
    """
    rank, world = rank_and_world()
    if world == 1:
        return list(fn(items))
    share = list(items)[rank::world]
    try:
        part = list(fn(share)) if share else []
        if len(part) != len(share):
            raise ValueError(f"split_map: {len(part)} results for {len(share)} items")
    except Exception as exn:
        gather(RankFailed(f"rank {rank}: {type(exn).__name__}: {exn}"))
        raise
    parts = gather(part)
    failed = [p for p in parts if isinstance(p, RankFailed)]
    if failed:
        raise failed[0]
    out = [None] * len(items)
    for r, results in enumerate(parts):
        out[r::world] = results
    return out


def split_gather(fn, prompts: list[str], seeds: list[int]) -> list:
    """``fn(prompts, seeds) -> list`` run on this rank's share of the items, gathered from
    all ranks back into the items' order (:func:`split_map` over (prompt, seed) pairs)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    return split_map(lambda share: fn([p for p, _ in share], [s for _, s in share]),
                     list(zip(prompts, seeds)))


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] ``[B, 3, H, W]`` -> RGB images."""
    arr = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


class ImageGenerator:
    def __init__(self, module, steps: int | None = None, guidance: float | None = None,
                 sampler: str | None = None, batch_size: int = 16):
        self.module = module
        self.steps = steps
        self.guidance = guidance
        self.sampler = sampler
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return self.module.backbone.queries.device

    def _chunks(self, prompts: list[str], seeds: list[int]):
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        for i in range(0, len(prompts), self.batch_size):
            yield prompts[i:i + self.batch_size], seeds[i:i + self.batch_size]

    def features(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        rows = split_gather(self._features, list(prompts), list(seeds))
        return torch.stack(rows) if rows else torch.empty(0)

    def images(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        return split_gather(self._images, list(prompts), list(seeds))

    @torch.no_grad()
    def _features(self, prompts: list[str], seeds: list[int]) -> list[torch.Tensor]:
        out = []
        for p, s in self._chunks(prompts, seeds):
            out.extend(self.module.generate_features(p, generator=generators(s), steps=self.steps,
                                                     guidance=self.guidance, sampler=self.sampler).cpu())
        return out

    @torch.no_grad()
    def _images(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        images = []
        for p, s in self._chunks(prompts, seeds):
            feats = self.module.generate_features(p, generator=generators(s), steps=self.steps,
                                                  guidance=self.guidance, sampler=self.sampler)
            # the decoder's own noise gets its own per-sample streams
            pixels = self.module.encoder.decode(feats, generator=generators([x + 1 for x in s]))
            images.extend(to_pil(pixels))
        return images


def save_samples(images: list[Image.Image], prompts: list[str], out_dir: Path) -> None:
    """Images as ``<i>.png`` plus ``prompts.txt`` and a ``grid.png`` contact sheet."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        img.save(out_dir / f"{i:04d}.png")
    (out_dir / "prompts.txt").write_text("".join(f"{i:04d}\t{p}\n" for i, p in enumerate(prompts)))
    if images:
        contact_sheet(images, columns=min(len(images), 4)).save(out_dir / "grid.png")


def contact_sheet(images: list[Image.Image], columns: int) -> Image.Image:
    """Equal-size images pasted row by row, ``columns`` to a row, on white."""
    w, h = images[0].size
    sheet = Image.new("RGB", (columns * w, -(-len(images) // columns) * h), "white")
    for i, img in enumerate(images):
        sheet.paste(img, ((i % columns) * w, (i // columns) * h))
    return sheet
