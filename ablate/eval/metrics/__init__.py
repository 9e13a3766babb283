"""Metric plugins run by ``ablate eval`` and the every-N-steps callback (one per file).

A metric is built from its ``Config`` (YAML arguments) and computes on an image generator:

    metric = MyMetric(cfg)
    values = metric.compute(generator, out_dir)   # -> {"geneval/overall": 0.41, ...}

``generator`` is an ``ablate.eval.sampling.ImageGenerator``: ``images(prompts, seeds)`` gives
PIL images, ``features(prompts, seeds)`` the target-space features before decoding.
``out_dir`` is where the metric may write its images / per-item results for this step.
"""

from __future__ import annotations

from pathlib import Path


class Metric:
    Config = None
    plugin_name: str = "?"

    def __init__(self, cfg=None):
        self.cfg = cfg

    def compute(self, generator, out_dir: Path) -> dict[str, float]:
        raise NotImplementedError
