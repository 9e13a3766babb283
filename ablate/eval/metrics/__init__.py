"""Metric plugins run by ``ablate eval`` and the every-N-steps callback (one per file).

A metric is built from its ``Config`` (YAML arguments) and computes on an image generator:

    metric = MyMetric(cfg)
    values = metric.compute(generator, out_dir)   # -> {"geneval/overall": 0.41, ...}

``generator`` is an ``ablate.eval.sampling.ImageGenerator``: ``images(prompts, seeds)`` gives
PIL images, ``features(prompts, seeds)`` the target-space features before decoding.
``out_dir`` is where the metric may write its images / per-item results for this step.

A metric also says how to read what it logs: ``keys`` is a tuple of ``Key`` (a glob over
the logged keys, the first match wins) with a title, a direction and a unit. ``ablate plot``
and the final table take them from here, so a new metric is this one file:

    keys = (Key("mymetric/overall", "My metric on {prompts_file}", higher_is_better=True),
            Key("mymetric/*", "My metric: {name}", higher_is_better=True, unit="%"))

Titles and units are filled from the run's own metric config (any ``Config`` field, e.g.
FID's ``{dataset_name}``), ``{key}`` (the logged key) and ``{name}`` (the key after its
first ``/``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Key:
    """How a study reads one logged key: panel title, which way is better, its unit."""

    pattern: str  # a glob over logged keys, e.g. "fid/*"
    title: str
    higher_is_better: bool | None  # None: not declared (tables then assume higher)
    unit: str = ""
    comparable_across_objectives: bool = True  # False: plotted per objective (losses)


class _Fields(dict):
    """Template fields; an unknown one renders as ``?`` instead of raising."""

    def __missing__(self, name: str) -> str:
        return "?"


def fill(key: Key, logged: str, cfg=None) -> Key:
    """``key`` for the logged column ``logged``, its title and unit filled in."""
    fields = _Fields(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {})
    fields.update(key=logged, name=logged.split("/", 1)[-1])
    return dataclasses.replace(key, pattern=logged, title=key.title.format_map(fields),
                               unit=key.unit.format_map(fields))


class Metric:
    Config = None
    plugin_name: str = "?"
    keys: tuple[Key, ...] = ()

    def __init__(self, cfg=None):
        self.cfg = cfg

    @classmethod
    def describe(cls, logged: str, cfg=None) -> Key | None:
        """The declared ``Key`` of a logged column (filled from ``cfg``), or None."""
        for key in cls.keys:
            if fnmatch.fnmatchcase(logged, key.pattern):
                return fill(key, logged, cfg)
        return None

    def compute(self, generator, out_dir: Path) -> dict[str, float]:
        raise NotImplementedError
