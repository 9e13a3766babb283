"""Parquet files with image bytes and a caption column (the Hugging Face datasets layout:
an image column holds raw bytes or ``{"bytes": ..., "path": ...}``)."""

from __future__ import annotations

import glob
from dataclasses import dataclass

from ablate.data.datasets import ImageCaptionSource
from ablate.registry import register


@register("dataset", "parquet")
class ParquetFiles(ImageCaptionSource):
    @dataclass
    class Config:
        path: str | list[str] = "data/*.parquet"  # file, glob or list
        image_column: str = "image"
        caption_column: str = "caption"

    def units(self) -> list[tuple[str, int]]:
        import pyarrow.parquet as pq

        patterns = [self.cfg.path] if isinstance(self.cfg.path, str) else self.cfg.path
        files = sorted(f for p in patterns for f in glob.glob(p))
        if not files:
            raise FileNotFoundError(f"data.train.path: {self.cfg.path!r} matches no parquet file")
        units = []
        for f in files:
            meta = pq.ParquetFile(f)
            names = meta.schema_arrow.names
            for col in (self.cfg.image_column, self.cfg.caption_column):
                if col not in names:
                    raise ValueError(f"{f}: no column {col!r}; columns: {names}")
            units += [(f, g) for g in range(meta.num_row_groups)]
        return units

    def read(self, unit: tuple[str, int]):
        import pyarrow.parquet as pq

        path, group = unit
        table = pq.ParquetFile(path).read_row_group(
            group, columns=[self.cfg.image_column, self.cfg.caption_column])
        images = table.column(self.cfg.image_column).to_pylist()
        captions = table.column(self.cfg.caption_column).to_pylist()
        for i, (image, caption) in enumerate(zip(images, captions)):
            key = f"{path}#{group}/{i}"
            if isinstance(image, dict):
                image = image.get("bytes")
            if not image:
                yield {"error": "no image bytes", "key": key}
                continue
            yield {"image": image, "caption": caption or "", "key": key}
