"""The toy world as an ``ablate`` plugin: its judges, its dataset and its commands.

The core does not know the toy world exists: this module is the ``ablate.plugins`` entry
point of the package (``pyproject.toml``), loaded like any third-party plugin. It stays
light to import (``ablate --help`` loads it): the renderer, the judges and torch are
imported when a plugin is built or a command runs.

- judges ``toy-detector`` (GenEval's Mask2Former role) and ``toy-vqa`` (DPG-Bench's mPLUG
  role), from ``ablate.toy.judges``: no weights (the shape classifier fits itself on renders
  at first use, ~2 s), only the toy grammar; ``ablate.toy.judges.validate`` measures them;
- dataset ``toy``: renders of the toy world as image-caption records;
- commands ``ablate toy build|data|check``, ``ablate train-decoder`` and ``ablate demo``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ablate.data.datasets import ImageCaptionSource
from ablate.registry import register


@register("judge", "toy-detector")
class ToyDetectorJudge:
    """Toy GenEval detector: shapes and colours of the toy world (``ablate.toy.judges``)."""

    @dataclass
    class Config:
        # Detections scoring below this are not returned at all; GenEval's own thresholds
        # (0.3, 0.9 for counting) are applied later by the scorer.
        min_score: float = 0.05

        def __post_init__(self):
            if not 0 <= self.min_score < 1:
                raise ValueError("min_score must be in [0, 1)")

    def __init__(self, cfg: Config | None = None, **_context):
        from ablate.toy.judges import ToyDetector

        self.cfg = cfg or self.Config()
        self.detector = ToyDetector(threshold=self.cfg.min_score)

    def detect(self, images, metadata: list[dict] | None = None) -> list[dict[str, list[dict]]]:
        # The metadata could restrict classes; the toy detector always reports every shape,
        # as Mask2Former reports every COCO class, and the rules pick what the prompt asks.
        return self.detector.detect(images, metadata)


@register("judge", "toy-vqa")
class ToyVQAJudge:
    """Toy DPG-Bench answerer: yes/no questions on the toy detector's findings."""

    @dataclass
    class Config:
        # Detections above it count as present; None: the answerer's own (GenEval's 0.3,
        # ablate.toy.judges.SCORE_THRESHOLD).
        threshold: float | None = None

        def __post_init__(self):
            if self.threshold is not None and not 0 <= self.threshold < 1:
                raise ValueError("threshold must be in [0, 1)")

    def __init__(self, cfg: Config | None = None, **_context):
        from ablate.toy.judges import ToyDetector, ToyVQA

        self.cfg = cfg or self.Config()
        given = {} if self.cfg.threshold is None else {"threshold": self.cfg.threshold}
        self.vqa = ToyVQA(ToyDetector(), **given)

    def answer(self, images, questions: list[list[str]]) -> list[list[str]]:
        if len(images) != len(questions):
            raise ValueError(f"toy-vqa: {len(images)} images but {len(questions)} question lists")
        return self.vqa.answer(images, questions)


@register("dataset", "toy")
class ToyScenes(ImageCaptionSource):
    """Toy-world renders (``ablate.toy.scenes``) as image-caption records.

    ``data.train: {name: toy, n: 5000}``. Renders are memoised, so later epochs cost nothing."""

    @dataclass
    class Config:
        n: int = 10000
        seed: int = 0
        split: str = "train"
        size: int = 64
        short_fraction: float = 0.2
        per_unit: int = 500

    def __init__(self, cfg):
        super().__init__(cfg)
        self._memo: dict[int, tuple] = {}

    def units(self) -> list[range]:
        n, k = self.cfg.n, self.cfg.per_unit
        return [range(i, min(n, i + k)) for i in range(0, n, k)]

    def read(self, unit: range):
        from ablate.toy.scenes import make_sample

        c = self.cfg
        for i in unit:
            if i not in self._memo:
                image, caption, _ = make_sample(i, c.seed, c.split, c.size, c.short_fraction)
                self._memo[i] = (image, caption)
            image, caption = self._memo[i]
            yield {"image": image, "caption": caption, "key": f"toy/{c.split}/{i}"}


def add_commands(sub) -> None:
    from ablate.toy import cli, demo

    cli.add_commands(sub)
    demo.add_commands(sub)
