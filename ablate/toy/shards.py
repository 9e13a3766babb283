"""Write the toy dataset as webdataset ``.tar`` shards, the BLIP3o-Pretrain layout:

    <out>/train/shards-00000.tar, ...        <out>/validation/shards-00000.tar, ...
    <out>/toy_world.json                     the world, seed, size and counts they hold

each sample ``<key>.jpg`` (or ``.png``) + ``<key>.txt`` (caption) + ``<key>.json`` (the scene,
ground truth for checks), so the ``webdataset`` dataset plugin reads them like real data.
Tar members get mtime 0, so the same arguments give byte-identical shards.

    ablate toy data [--out data/toy] [--scale S]     # shards + the benchmark files
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import webdataset as wds

from ablate.toy.scenes import DEFAULT_WORLD, check_world, make_dataset

SHARD_PATTERN = "shards-%05d.tar"


def _encode(image, image_format: str) -> bytes:
    buf = io.BytesIO()
    if image_format == "jpg":
        image.save(buf, "JPEG", quality=95)  # near-lossless: the toy objects stay crisp
    else:
        image.save(buf, "PNG")
    return buf.getvalue()


def write_split(out_dir: str | Path, split: str, n: int, seed: int = 0, size: int = 64,
                shard_size: int = 2000, image_format: str = "jpg", short_fraction: float = 0.2,
                world: str = DEFAULT_WORLD) -> list[Path]:
    """Write ``n`` samples of ``split`` of ``world`` into ``<out_dir>/<split>/``; returns the shard paths."""
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    folder = Path(out_dir) / split
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("shards-*.tar"):  # a rewrite with fewer samples leaves no stale shard
        old.unlink()
    paths: list[Path] = []
    writer = wds.ShardWriter(str(folder / SHARD_PATTERN), maxcount=shard_size, verbose=0, mtime=0,
                             post=lambda name: paths.append(Path(name)))
    try:
        samples = make_dataset(n, seed, split, size, short_fraction, world=world)
        for i, (image, text, scene) in enumerate(samples):
            writer.write({"__key__": f"{split}_{i:08d}", image_format: _encode(image, image_format),
                          "txt": text.encode("utf-8"), "json": json.dumps(scene).encode("utf-8")})
    finally:
        writer.close()
    return paths


def shard_urls(paths: list[Path]) -> str:
    """A brace pattern naming exactly ``paths`` (for the webdataset plugin's ``urls``)."""
    if len(paths) == 1:
        return str(paths[0])
    return str(paths[0].parent / f"shards-{{{0:05d}..{len(paths) - 1:05d}}}.tar")


def write_shards(out_dir: str | Path, n_train: int, n_validation: int, seed: int = 0, size: int = 64,
                 shard_size: int = 2000, image_format: str = "jpg",
                 short_fraction: float = 0.2, world: str = DEFAULT_WORLD) -> dict[str, list[Path]]:
    """Train and validation shards of ``world`` (disjoint seed streams) under ``out_dir``,
    recorded in ``<out_dir>/toy_world.json``."""
    check_world(world)
    out = {split: write_split(out_dir, split, n, seed, size, shard_size, image_format, short_fraction, world)
           for split, n in (("train", n_train), ("validation", n_validation))}
    record = {"world": world, "seed": seed, "size": size, "n_train": n_train, "n_validation": n_validation,
              "short_fraction": short_fraction, "image_format": image_format}
    (Path(out_dir) / "toy_world.json").write_text(json.dumps(record, indent=1))
    return out
