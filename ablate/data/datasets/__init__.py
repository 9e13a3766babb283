"""Dataset plugins: sources of image-caption records (one plugin per file).

A source is split into *units* (shards, files, row groups) so the stream can hand whole
units to distributed ranks and loader workers. ``read(unit)`` yields records

    {"image": bytes | PIL.Image, "caption": str, "key": str}

or, for something unreadable (a corrupt image, an empty caption, a truncated shard),
``{"error": "<reason>", "key": str}``: the stream counts those and training goes on.
"""

from __future__ import annotations

from collections.abc import Iterator


class ImageCaptionSource:
    Config = None
    plugin_name: str = "?"

    def __init__(self, cfg):
        self.cfg = cfg

    def units(self) -> list:
        raise NotImplementedError

    def read(self, unit) -> Iterator[dict]:
        raise NotImplementedError
