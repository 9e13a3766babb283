"""Diversity metric: mean pairwise distance between seeds of the same prompt.

Keys: ``diversity/feature`` (target space, before decoding) and ``diversity/image`` (a
feature module on decoded images; spec as for FID, default downsampled pixels). See
``ablate.eval.scorers.diversity``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ablate.eval.metrics import Metric
from ablate.eval.scorers.diversity import diversity
from ablate.eval.scorers.fid import FIDSettings, build_feature_extractor
from ablate.registry import register

DEFAULT_PROMPTS = [
    "a red apple on a wooden table",
    "a photo of a dog running on the beach",
    "a blue car parked in front of a house",
    "a bowl of soup next to a loaf of bread",
]


@register("metric", "diversity")
class DiversityMetric(Metric):
    @dataclass
    class Config:
        prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
        prompts_file: str | None = None  # one prompt per line; replaces ``prompts``
        num_prompts: int | None = None  # the first K prompts; None: all
        num_seeds: int = 4  # M samples per prompt
        distance: Literal["l2", "cosine"] = "l2"
        image_space: bool = True  # also measure on decoded images
        feature_extractor: dict = field(default_factory=lambda: {"name": "pixels", "size": 32})
        resolution: int = 64  # images are brought to this size before the feature module
        resize: Literal["bicubic_center_crop", "clean"] = "clean"
        batch_size: int = 16
        device: str = "auto"

    def __init__(self, cfg: Config | None = None):
        super().__init__(cfg or self.Config())
        self._extractor = None

    def prompts(self) -> list[str]:
        prompts = self.cfg.prompts
        if self.cfg.prompts_file:
            lines = Path(self.cfg.prompts_file).read_text(encoding="utf-8").splitlines()
            prompts = [line.strip() for line in lines if line.strip()]
        prompts = prompts[:self.cfg.num_prompts] if self.cfg.num_prompts else prompts
        if not prompts:
            raise ValueError("diversity: no prompts (set prompts or prompts_file)")
        return prompts

    def extractor(self):
        if self._extractor is None and self.cfg.image_space:
            device = self.cfg.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self._extractor = build_feature_extractor(self.cfg.feature_extractor, device)
        return self._extractor

    def compute(self, generator, out_dir: Path) -> dict[str, float]:
        settings = FIDSettings(self.cfg.resolution, self.cfg.resize)
        result = diversity(generator, self.prompts(), self.cfg.num_seeds, self.extractor(),
                           settings, self.cfg.batch_size, self.cfg.distance)
        values = {f"diversity/{k}": v for k, v in result.items()}
        out = Path(out_dir) / "diversity"
        out.mkdir(parents=True, exist_ok=True)
        (out / "diversity.json").write_text(json.dumps({"values": values, "settings": {
            "num_prompts": len(self.prompts()), "num_seeds": self.cfg.num_seeds,
            "distance": self.cfg.distance,
            **(settings.describe(self.extractor()) if self.cfg.image_space else {})}}, indent=2))
        return values
