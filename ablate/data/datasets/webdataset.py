"""WebDataset ``.tar`` shards with an image (``jpg``/``png``/...) and a ``txt`` caption per
sample: the BLIP3o-Pretrain / CC12M layout, read as a stream."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

import braceexpand
import webdataset as wds

from ablate.data.datasets import ImageCaptionSource
from ablate.registry import register


@register("dataset", "webdataset")
class WebDatasetShards(ImageCaptionSource):
    @dataclass
    class Config:
        urls: str | list[str] = "data/{000000..000009}.tar"  # brace pattern, glob or list
        image_keys: list[str] = field(default_factory=lambda: ["jpg", "jpeg", "png", "webp"])
        caption_key: str = "txt"

    def units(self) -> list[str]:
        patterns = [self.cfg.urls] if isinstance(self.cfg.urls, str) else self.cfg.urls
        urls = []
        for pattern in patterns:
            for url in braceexpand.braceexpand(pattern):
                urls.extend(sorted(glob.glob(url)) if glob.has_magic(url) else [url])
        local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
        missing = [u for u in local if not os.path.exists(u)]
        if missing:
            raise FileNotFoundError(f"data.train.urls: {len(missing)} shard(s) not found, "
                                    f"e.g. {missing[0]!r}")
        if not urls:
            raise FileNotFoundError(f"data.train.urls: {self.cfg.urls!r} matches no shard")
        return urls

    def read(self, url: str):
        errors: list[str] = []

        def note(exn: Exception) -> bool:  # a truncated / unreadable tar: record and go on
            errors.append(f"unreadable shard data ({type(exn).__name__})")
            return True

        stream = wds.tarfile_samples([{"url": url}], handler=note)
        it = iter(stream)
        while True:
            try:
                sample = next(it)
            except StopIteration:
                break
            except Exception as exn:  # noqa: BLE001 - any reader failure ends this shard only
                note(exn)
                break
            while errors:
                yield {"error": errors.pop(0), "key": url}
            key = f"{url}/{sample.get('__key__')}"
            image = next((sample[k] for k in self.cfg.image_keys if k in sample), None)
            caption = sample.get(self.cfg.caption_key)
            if image is None:
                yield {"error": "no image in sample", "key": key}
                continue
            caption = caption.decode("utf-8", "replace") if isinstance(caption, bytes) else caption
            yield {"image": image, "caption": caption or "", "key": key}
        while errors:
            yield {"error": errors.pop(0), "key": url}
