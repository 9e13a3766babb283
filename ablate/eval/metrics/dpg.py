"""DPG-Bench metric: generate 4 images per prompt, tile 2x2, ask a VQA judge.

Keys: ``dpg/overall`` and ``dpg/<broad category>``, ``dpg/<broad>/<detailed>`` (x 100, as
published). Per-prompt answers and the summary are written under ``<out_dir>/dpg/``.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ablate.eval.metrics import Metric
from ablate.eval.sampling import sample_seed
from ablate.eval.scorers.dpg import IMAGES_PER_PROMPT, evaluate_folder, read_dpg_bench, tile_2x2
from ablate.registry import get_registry, register


@register("metric", "dpg")
class DPGMetric(Metric):
    @dataclass
    class Config:
        bench_dir: str = "data/dpg_bench"  # holds dpg_bench.csv and prompts/<item_id>.txt
        judge: dict = field(default_factory=lambda: {"name": "blip-vqa"})  # a VQA judge plugin
        max_prompts: int | None = None  # a fixed random subset (by subset_seed); None: all
        subset_seed: int = 0
        skip_first_row: bool = False  # reproduce the reference script's quirk (see eval/dpg.py)
        category_crops: Literal["all", "last"] = "all"  # "last": the reference's breakdown
        batch_size: int = 4  # prompts per generator call (x 4 images each)
        keep_images: bool = True  # keep the 2x2 tiles under <out_dir>/dpg/images

    def __init__(self, cfg: Config | None = None):
        super().__init__(cfg or self.Config())
        self._items = None
        self._judge = None

    def items(self):
        if self._items is None:
            items = read_dpg_bench(self.cfg.bench_dir, skip_first_row=self.cfg.skip_first_row)
            if self.cfg.max_prompts is not None and self.cfg.max_prompts < len(items):
                # Chosen once by seed, so every step and run scores the same prompts.
                keep = set(random.Random(self.cfg.subset_seed).sample(range(len(items)),
                                                                      self.cfg.max_prompts))
                items = [it for i, it in enumerate(items) if i in keep]
            self._items = items
        return self._items

    def judge(self):
        if self._judge is None:  # heavy: built once, on first use
            self._judge = get_registry("judge").build(self.cfg.judge, where="dpg.judge")
        return self._judge

    def compute(self, generator, out_dir: Path) -> dict[str, float]:
        items = self.items()
        out = Path(out_dir) / "dpg"
        image_dir = out / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        n = IMAGES_PER_PROMPT
        for start in range(0, len(items), self.cfg.batch_size):
            batch = items[start:start + self.cfg.batch_size]
            prompts = [it.prompt for it in batch for _ in range(n)]
            seeds = [sample_seed(it.prompt, i) for it in batch for i in range(n)]
            images = generator.images(prompts, seeds)
            for k, item in enumerate(batch):
                tile_2x2(images[k * n:(k + 1) * n]).save(image_dir / f"{item.item_id}.png")
        summary = evaluate_folder(items, self.judge(), image_dir, out,
                                  category_crops=self.cfg.category_crops)
        if not self.cfg.keep_images:
            shutil.rmtree(image_dir)
        values = {"dpg/overall": summary["overall"]}
        values.update({f"dpg/{k}": v for k, v in summary["broad"].items()})
        values.update({f"dpg/{k}": v for k, v in summary["detailed"].items()})
        return values
