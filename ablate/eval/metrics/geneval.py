"""GenEval metric: generate images for the prompt file, judge them, score by tag.

YAML::

    eval:
      metrics:
        - name: geneval
          prompts: ../shared/data/geneval/evaluation_metadata.jsonl
          judge: {name: mask2former, model: /models/mask2former-swin-s-coco}
          max_prompts: 100      # optional fixed subset, stratified by tag

Writes ``<out_dir>/geneval/images/`` (official layout, so the official evaluator can be run
on it later), ``results.jsonl`` (one line per image) and ``summary.json``. Returns
``geneval/overall`` (unweighted mean over the tags present) and ``geneval/<tag>``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ablate.eval.metrics import Metric
from ablate.eval.scorers.geneval import generate_layout, judge_layout, load_metadata, subset_indices
from ablate.registry import get_registry, register


@register("metric", "geneval")
class GenEvalMetric(Metric):
    @dataclass
    class Config:
        prompts: str  # GenEval metadata jsonl (the official evaluation_metadata.jsonl)
        judge: dict = field(default_factory=lambda: {"name": "mask2former"})  # {name, **kwargs}
        images_per_prompt: int = 4
        max_prompts: int | None = None  # None: all; else a fixed subset, stratified by tag
        batch_size: int = 8  # prompts per generator call
        judge_batch_size: int = 8  # images per judge call
        seed: int = 0  # added to every sample seed (prompt_index * 1000 + sample_index)

        def __post_init__(self):
            for name in ("images_per_prompt", "batch_size", "judge_batch_size"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
            if self.max_prompts is not None and self.max_prompts < 1:
                raise ValueError(f"max_prompts must be >= 1 or null, got {self.max_prompts}")
            # Validate the judge spec now, so a typo fails before any training starts.
            get_registry("judge").config(self.judge, where="judge")

    def __init__(self, cfg: Config, judge=None):
        super().__init__(cfg)
        self._judge = judge  # built on first use (loading detectors is slow); tests inject one
        self._metadata: list[dict] | None = None

    @property
    def judge(self):
        if self._judge is None:
            self._judge = get_registry("judge").build(self.cfg.judge, where="geneval.judge")
        return self._judge

    @property
    def metadata(self) -> list[dict]:
        if self._metadata is None:
            self._metadata = load_metadata(self.cfg.prompts)
        return self._metadata

    def compute(self, generator, out_dir: Path) -> dict[str, float]:
        cfg = self.cfg
        root = Path(out_dir) / "geneval"
        indices = subset_indices(self.metadata, cfg.max_prompts)
        if (root / "images").is_dir():  # a re-run: stale prompt folders would be scored too
            shutil.rmtree(root / "images")
        image_dir = generate_layout(generator, self.metadata, root / "images", indices,
                                    cfg.images_per_prompt, cfg.batch_size, cfg.seed)
        summary = judge_layout(self.judge, image_dir, root / "results.jsonl", cfg.judge_batch_size)
        summary["judge"] = cfg.judge
        summary["prompts"] = {"file": str(cfg.prompts), "indices": len(indices),
                              "images_per_prompt": cfg.images_per_prompt}
        (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return {"geneval/overall": summary["overall"],
                **{f"geneval/{tag}": value for tag, value in summary["tags"].items()}}
