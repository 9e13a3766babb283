"""FID metric on an MJHQ-30k-format folder: overall and per category.

One image per reference item, generated from that item's prompt with the stable seed of
(prompt, 0). Keys: ``fid/overall``, ``fid/<category>``. The settings each number was made
with (resolution, resize, feature extractor, subset) go to ``<out_dir>/fid/fid.json``.

The feature extractor spec (``feature_extractor``) is that of
``ablate.eval.scorers.fid.build_feature_extractor``: ``{name: inception, path: FILE}`` (default:
clean-fid's Inception, which needs the local weights file offline), ``{name: clip, path:
HUB_ID_OR_FOLDER}``, ``{name: pixels, size: 32}`` or ``{name: pkg.module.Class, ...}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ablate.eval.metrics import Key, Metric
from ablate.eval.sampling import sample_seed
from ablate.eval.scorers.fid import (
    FIDSettings,
    build_feature_extractor,
    fid_by_category,
    read_mjhq,
    reference_features,
    select_subset,
    split_features,
)
from ablate.registry import register


@register("metric", "fid")
class FIDMetric(Metric):
    keys = (Key("fid/overall", "FID on {dataset_name}", higher_is_better=False, unit="FID"),
            Key("fid/*", "FID on {dataset_name}: {name}", higher_is_better=False, unit="FID"))

    @dataclass
    class Config:
        data_dir: str = "data/mjhq-30k"  # meta_data.json + <category>/<id>.jpg
        dataset_name: str | None = None  # names the reference cache and the plot; default: data_dir's name
        subset_size: int | None = None  # stratified per category; None: every image
        subset_seed: int = 0
        resolution: int = 256  # MetaQuery: 256; Playground: 1024
        resize: Literal["bicubic_center_crop", "clean"] = "bicubic_center_crop"
        feature_extractor: dict = field(default_factory=lambda: {"name": "inception"})
        cache_dir: str | None = None  # default: $XDG_CACHE_HOME/ablate/fid
        per_category: bool = True
        batch_size: int = 16  # prompts per generator call and images per feature batch
        device: str = "auto"  # for the feature extractor
        keep_images: int = 8  # generated images saved under <out_dir>/fid/samples

        def __post_init__(self):
            if self.dataset_name is None:  # the plot's title names the data actually used
                self.dataset_name = Path(self.data_dir).name

    def __init__(self, cfg: Config | None = None):
        super().__init__(cfg or self.Config())
        self.settings = FIDSettings(self.cfg.resolution, self.cfg.resize)
        self._extractor = None
        self._reference = None

    def extractor(self):
        if self._extractor is None:
            device = self.cfg.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self._extractor = build_feature_extractor(self.cfg.feature_extractor, device)
        return self._extractor

    def reference(self):
        """(items, features, categories) of the reference subset, from the cache after once."""
        if self._reference is None:
            items = select_subset(read_mjhq(self.cfg.data_dir), self.cfg.subset_size,
                                  self.cfg.subset_seed)
            feats, cats = reference_features(items, self.extractor(), self.settings,
                                             self.cfg.cache_dir, self.cfg.dataset_name,
                                             self.cfg.batch_size)
            self._reference = items, feats, cats
        return self._reference

    def compute(self, generator, out_dir: Path) -> dict[str, float]:
        items, ref_feats, ref_cats = self.reference()
        out = Path(out_dir) / "fid"
        samples = out / "samples"
        feats = []
        for start in range(0, len(items), self.cfg.batch_size):
            batch = items[start:start + self.cfg.batch_size]
            images = generator.images([it.prompt for it in batch],
                                      [sample_seed(it.prompt, 0) for it in batch])
            for k, (item, image) in enumerate(zip(batch, images)):
                if start + k < self.cfg.keep_images:
                    samples.mkdir(parents=True, exist_ok=True)
                    image.save(samples / f"{item.category}_{item.id}.png")
            feats.append(split_features(images, self.extractor(), self.settings,
                                        self.cfg.batch_size))
        scores = fid_by_category(np.concatenate(feats), [it.category for it in items],
                                 ref_feats, ref_cats, self.cfg.per_category)
        values = {f"fid/{k}": v for k, v in scores.items()}
        out.mkdir(parents=True, exist_ok=True)
        record = {"values": values, "num_images": len(items),
                  "settings": {**self.settings.describe(self.extractor()),
                               "dataset": self.cfg.dataset_name, "data_dir": self.cfg.data_dir,
                               "subset_size": self.cfg.subset_size,
                               "subset_seed": self.cfg.subset_seed}}
        (out / "fid.json").write_text(json.dumps(record, indent=2))
        return values
