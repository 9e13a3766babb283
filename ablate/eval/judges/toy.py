"""Toy-world judges: the classical shape/colour detector (GenEval's Mask2Former role) and the
question answerer built on it (DPG-Bench's mPLUG role), from ``ablate.toy.judges``.

They need no weights (the shape classifier fits itself on renders at first use, ~2 s) and
know only the toy grammar: shape names as classes, GenEval's ten colours, the toy DPG
question forms. ``ablate.toy.judges.validate`` measures them against the renderer.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from ablate.registry import register
from ablate.toy.judges import SCORE_THRESHOLD, ToyDetector, ToyVQA


@register("judge", "toy-detector")
class ToyDetectorJudge:
    @dataclass
    class Config:
        # Detections scoring below this are not returned at all; GenEval's own thresholds
        # (0.3, 0.9 for counting) are applied later by the scorer.
        min_score: float = 0.05

        def __post_init__(self):
            if not 0 <= self.min_score < 1:
                raise ValueError("min_score must be in [0, 1)")

    def __init__(self, cfg: Config | None = None, **_context):
        self.cfg = cfg or self.Config()
        self.detector = ToyDetector(threshold=self.cfg.min_score)

    def detect(self, images: list[Image.Image], metadata: list[dict] | None = None) -> list[dict[str, list[dict]]]:
        # The metadata could restrict classes; the toy detector always reports every shape,
        # as Mask2Former reports every COCO class, and the rules pick what the prompt asks.
        return self.detector.detect(images, metadata)


@register("judge", "toy-vqa")
class ToyVQAJudge:
    @dataclass
    class Config:
        threshold: float = SCORE_THRESHOLD  # detections above it count as present

        def __post_init__(self):
            if not 0 <= self.threshold < 1:
                raise ValueError("threshold must be in [0, 1)")

    def __init__(self, cfg: Config | None = None, **_context):
        self.cfg = cfg or self.Config()
        self.vqa = ToyVQA(ToyDetector(), threshold=self.cfg.threshold)

    def answer(self, images: list[Image.Image], questions: list[list[str]]) -> list[list[str]]:
        if len(images) != len(questions):
            raise ValueError(f"toy-vqa: {len(images)} images but {len(questions)} question lists")
        return self.vqa.answer(images, questions)
