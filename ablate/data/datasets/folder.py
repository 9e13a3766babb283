"""An image folder with caption sidecars: ``a/b/img001.jpg`` + ``a/b/img001.txt``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ablate.data.datasets import ImageCaptionSource
from ablate.registry import register


@register("dataset", "folder")
class ImageFolder(ImageCaptionSource):
    @dataclass
    class Config:
        root: str = "data/images"
        extensions: list[str] = field(default_factory=lambda: [".jpg", ".jpeg", ".png", ".webp"])
        caption_extension: str = ".txt"
        files_per_unit: int = 256  # how many images a worker takes at a time

    def _files(self) -> list[Path]:
        root = Path(self.cfg.root)
        if not root.is_dir():
            raise FileNotFoundError(f"data.train.root: {root} is not a folder")
        exts = {e.lower() for e in self.cfg.extensions}
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in exts)
        if not files:
            raise FileNotFoundError(f"data.train.root: no {sorted(exts)} images under {root}")
        return files

    def units(self) -> list[list[Path]]:
        files, n = self._files(), self.cfg.files_per_unit
        return [files[i:i + n] for i in range(0, len(files), n)]

    def read(self, unit: list[Path]):
        for path in unit:
            sidecar = path.with_suffix(self.cfg.caption_extension)
            if not sidecar.is_file():
                yield {"error": "missing caption file", "key": str(path)}
                continue
            yield {"image": path.read_bytes(), "caption": sidecar.read_text().strip(), "key": str(path)}
