"""The training stream: any dataset plugin -> shuffled, preprocessed, resumable samples.

- Units (shards / files) are shuffled per epoch with a seed, then handed out to distributed
  ranks and loader workers; with fewer units than readers, records are dealt out instead.
- Each record is decoded, resized (shorter side, bicubic) and centre-cropped to the
  encoder's resolution, scaled to [-1, 1]. Unreadable records become ``{"error": ...}``
  items that the collate function drops and counts, so a bad image never stops training.
- With a feature cache (``ablate.data.cache``) units are read from the cache instead: the
  same records in the same order, each carrying its encoder features instead of pixels.
- The stream is endless (epochs follow each other); training length is ``max_steps``. Data
  that yields nothing usable (no records at all, or a whole epoch of unreadable ones) raises
  ``NoReadableSamples`` instead of looping forever or training on nothing.
- Exact resume: every worker's stream is deterministic and the loader takes batches from
  workers in turn, so skipping ``k`` batches means each worker drops its share of them
  (without decoding) and the workers' roles rotate by ``k``.
"""

from __future__ import annotations

import io
import random
from collections import Counter

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import v2 as T


def preprocess(resolution: int):
    return T.Compose([T.ToImage(), T.Resize(resolution, interpolation=T.InterpolationMode.BICUBIC,
                                             antialias=True),
                      T.CenterCrop(resolution), T.ToDtype(torch.float32, scale=True),
                      T.Normalize([0.5] * 3, [0.5] * 3)])


def _open_image(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    img = Image.open(io.BytesIO(image))
    img.load()
    return img.convert("RGB")


def to_sample(record: dict, transform) -> dict:
    """A source record -> ``{"pixels", "caption"}``, or ``{"error", "key"}`` if unusable."""
    if "error" in record or "features" in record:  # already an error, or a cached sample
        return record
    caption = (record.get("caption") or "").strip()
    if not caption:
        return {"error": "empty caption", "key": record["key"]}
    try:
        image = _open_image(record["image"])
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exn:
        return {"error": f"corrupt image ({type(exn).__name__})", "key": record["key"]}
    return {"pixels": transform(image), "caption": caption}


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of ranks); (0, 1) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class NoReadableSamples(RuntimeError):
    """The data holds no usable sample: training would hang or learn nothing."""


class ImageCaptionStream(IterableDataset):
    def __init__(self, source, resolution: int, batch_size: int, seed: int = 0,
                 shuffle_buffer: int = 256, skip_batches: int = 0, cache=None):
        self.source = source
        self.cache = cache  # a FeatureCache holding every unit: read features, not images
        self.units = source.units()  # resolve (and check) the files now, in the main process
        self.transform = preprocess(resolution)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.skip_batches = skip_batches
        self.epoch_records: int | None = None  # records in one pass over this reader's units

    def _no_samples(self, units, attempts: int, reasons: Counter) -> NoReadableSamples:
        shown = ", ".join(str(u) for u in units[:3]) + (f" (+{len(units) - 3} more)" if len(units) > 3 else "")
        counts = dict(reasons) if reasons else "they hold no records at all"
        return NoReadableSamples(f"no readable samples in {shown} after {attempts} attempts: {counts}")

    def _records(self, reader: int, readers: int, rng: random.Random):
        epoch = 0
        while True:
            units = list(self.units)
            random.Random(f"{self.seed}-{epoch}").shuffle(units)
            if len(units) >= readers:  # whole units per reader
                mine, deal = units[reader::readers], False
            else:  # too few units: every reader reads all and keeps its share of records
                mine, deal = units, True
            index = 0
            read = self.cache.records if self.cache is not None else self.source.read
            for unit in mine:
                for record in read(unit):
                    if not deal or index % readers == reader:
                        yield record
                    index += 1
            if index == 0:  # an empty tar, an empty folder: every epoch would be empty too
                raise self._no_samples(mine, 0, Counter())
            if self.epoch_records is None:
                self.epoch_records = index if not deal else -(-index // readers)
            epoch += 1

    def _shuffled(self, records, rng: random.Random):
        buffer = []
        for record in records:
            buffer.append(record)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))

    def _sample(self, record: dict) -> dict:
        return to_sample(record, self.transform)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # The loader takes batch k from worker k % workers and always starts at worker 0.
        # After skipping K batches, loader worker w must therefore continue the stream that
        # worker (w + K) % workers had, dropping its share of the first K batches.
        worker = (worker + self.skip_batches) % workers
        own_skip = max(0, -(-(self.skip_batches - worker) // workers)) * self.batch_size
        rank, world = rank_and_world()
        reader, readers = rank * workers + worker, world * workers
        rng = random.Random(f"{self.seed}-{reader}")
        good, bad = 0, Counter()
        for i, record in enumerate(self._shuffled(self._records(reader, readers, rng), rng)):
            if i < own_skip:
                continue
            sample = self._sample(record)
            if "error" in sample:
                bad[sample["error"]] += 1
                # A whole epoch's worth of records and not one readable: stop, saying why.
                if not good and self.epoch_records and sum(bad.values()) >= self.epoch_records:
                    raise self._no_samples(self.units, sum(bad.values()), bad)
            else:
                good += 1
            yield sample


def collate(items: list[dict]) -> dict:
    """Stack good samples (pixels, or cached ``targets``); count the skipped ones by reason."""
    good = [it for it in items if "error" not in it]
    skipped = Counter(it["error"] for it in items if "error" in it)
    batch = {"captions": [it["caption"] for it in good], "skipped": dict(skipped)}
    cached = bool(good) and "features" in good[0]
    batch["pixels"] = torch.stack([it["pixels"] for it in good]) if good and not cached else None
    if cached:
        batch["targets"] = torch.stack([it["features"] for it in good])
    return batch


def make_loader(stream: ImageCaptionStream, num_workers: int, prefetch_factor: int = 2) -> DataLoader:
    # Pinned host memory lets the batch copy to the GPU overlap the step.
    return DataLoader(stream, batch_size=stream.batch_size, num_workers=num_workers,
                      collate_fn=collate, persistent_workers=num_workers > 0,
                      prefetch_factor=prefetch_factor if num_workers > 0 else None,
                      pin_memory=torch.cuda.is_available())
