"""Target feature cache: the frozen encoder's features of a dataset, computed once.

Every cell, seed and epoch that trains on the same (encoder, dataset) reads the same
features instead of running the encoder's image tower each step. Layout::

    <cache_dir>/<encoder>-<key>/key.json                  what the key hashes + grid shape
    <cache_dir>/<encoder>-<key>/units/<unit>.safetensors  one dataset unit (shard / file group)
    <cache_dir>/<encoder>-<key>/units/<unit>.json         its manifest: counts, sha256, source stat

The key hashes the encoder spec (without decode-only arguments), a fingerprint of its
weights, the dataset spec, the resolution and the preprocessing, so a change of any of them
is a new key. A unit counts only when its manifest exists (written atomically, last), the
source unit is unchanged (size, mtime) and, when read, the file's sha256 matches: anything
else is rebuilt, never trusted. Each unit holds every record of its source unit in reading
order (unreadable ones as their error), so the seeded stream, its shuffle buffer and the
batch skipping of an exact resume see the same sequence with or without the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ablate.config import RunConfig, to_dict
from ablate.registry import get_registry

log = logging.getLogger("ablate.cache")

# Bump when ablate.data.stream.preprocess changes: old features then get a new key.
PREPROCESS = "resize-shorter-bicubic-antialias/center-crop/[-1,1]/v1"
# Arguments that only change how features are decoded to pixels, not the features.
DECODE_ONLY_KEYS = ("decoder", "decoder_steps", "decoder_guidance", "decode_size")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json")


class CacheError(RuntimeError):
    """A cache unit that was valid when training started is not any more."""


# ---- the key -------------------------------------------------------------------------------


def _file_digest(path: Path) -> str:
    """Name, size and the sha256 of the first and last MiB: changes with the weights, and
    costs the same for a 10 GB checkpoint as for a 10 kB one."""
    size = path.stat().st_size
    h = hashlib.sha256(f"{path.name}:{size}".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()


def weights_fingerprint(model: str | None) -> str:
    """A fingerprint of a local model folder / file, or of a hub id's cached snapshot."""
    if not model:
        return "none"
    path = Path(model)
    if not path.exists():
        try:  # a hub id: the snapshot commit pins the weights
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(model, allow_patterns=["*.json"]))
        except Exception:  # noqa: BLE001 - offline and not downloaded: the id is all we know
            log.warning("cache key of %s: weights not found locally, keyed on the name only", model)
            return f"hub:{model}"
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(path) if f != path else f.name}={_file_digest(f)}\n".encode())
    return h.hexdigest()


def encoder_spec(run: RunConfig) -> dict:
    spec = {"name": run.encoder} if isinstance(run.encoder, str) else dict(run.encoder)
    return {k: v for k, v in spec.items() if k not in DECODE_ONLY_KEYS}


def cacheable(run: RunConfig) -> bool:
    """Off by ``data.cache: false``, and for encoders whose targets are random draws
    (a VAE's ``sample_posterior``): one cached draw would replace a fresh one per step."""
    return run.data.cache and not encoder_spec(run).get("sample_posterior", False)


def cache_key(run: RunConfig) -> dict:
    enc = encoder_spec(run)
    return {"encoder": enc, "weights": weights_fingerprint(enc.get("model")),
            "dataset": to_dict(run.data.train), "preprocess": PREPROCESS}


def cache_root(run: RunConfig) -> Path:
    """``data.cache_dir``, by default ``<results_dir>/.cache/features``: shared by every
    study writing to that results folder, on the disk already sized for results."""
    return Path(run.data.cache_dir or Path(run.results_dir) / ".cache" / "features")


# ---- one cache (an encoder on a dataset) ----------------------------------------------------


def _unit_id(unit) -> str:
    return hashlib.sha256(repr(unit).encode()).hexdigest()[:20]


def _unit_stat(unit) -> list:
    """Size and mtime of a unit's local files: a rewritten shard invalidates its features."""
    items = unit if isinstance(unit, list) else [unit[0] if isinstance(unit, tuple) else unit]
    out = []
    for item in items:
        p = Path(str(item))
        out.append([p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else None)
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class FeatureCache:
    def __init__(self, run: RunConfig):
        self.key = cache_key(run)
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = cache_root(run) / f"{self.key['encoder']['name']}-{digest}"
        self.units_dir = self.dir / "units"

    # ---- metadata ----

    def info(self) -> dict | None:
        """key.json: the key and the encoder's grid shape / resolution (after a fill)."""
        path = self.dir / "key.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _write_info(self, encoder) -> None:
        self.units_dir.mkdir(parents=True, exist_ok=True)
        info = {**self.key, "grid_shape": list(encoder.grid_shape), "resolution": encoder.resolution}
        _write_atomic(self.dir / "key.json", json.dumps(info, indent=2).encode())

    def manifest(self, unit) -> dict | None:
        """The unit's manifest if it exists and its source is unchanged, else None."""
        path = self.units_dir / f"{_unit_id(unit)}.json"
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
        except ValueError:
            return None
        data = self.units_dir / f"{_unit_id(unit)}.safetensors"
        if (manifest.get("unit") != repr(unit) or manifest.get("source") != _unit_stat(unit)
                or not data.is_file() or data.stat().st_size != manifest.get("bytes")):
            return None
        return manifest

    def missing(self, units: list) -> list:
        return [u for u in units if self.manifest(u) is None]

    # ---- reading ----

    def records(self, unit):
        """The cached records of ``unit`` in reading order: ``{"features", "caption"}`` or
        ``{"error", "key"}``. Raises CacheError when the unit is missing or corrupt."""
        manifest = self.manifest(unit)
        path = self.units_dir / f"{_unit_id(unit)}.safetensors"
        if manifest is None:
            raise CacheError(f"feature cache unit {path} (of {unit!r}) is missing or stale: run "
                             "again (it is rebuilt before training) or `ablate cache`")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
            raise CacheError(f"feature cache unit {path} (of {unit!r}) fails its checksum: run again "
                             "(it is rebuilt before training) or `ablate cache --verify`")
        features = load_safetensors(data)["features"]
        row = 0
        for key, caption, error in manifest["records"]:
            if error:
                yield {"error": error, "key": key}
            else:
                yield {"features": features[row], "caption": caption}
                row += 1

    def verify(self, unit) -> bool:
        """Read the whole unit (checksum included): False if it is not to be trusted."""
        try:
            for _ in self.records(unit):
                pass
        except CacheError as err:
            log.warning("%s", err)
            return False
        return True

    # ---- writing ----

    def write_unit(self, unit, records: list[tuple[str, str, str | None]], features: torch.Tensor) -> None:
        """Features first, manifest last (both atomic): a crash leaves no manifest."""
        self.units_dir.mkdir(parents=True, exist_ok=True)
        uid = _unit_id(unit)
        data = save_safetensors({"features": features.contiguous()})
        _write_atomic(self.units_dir / f"{uid}.safetensors", data)
        manifest = {"unit": repr(unit), "source": _unit_stat(unit), "count": len(records),
                    "good": int(features.shape[0]), "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(), "records": records}
        _write_atomic(self.units_dir / f"{uid}.json", json.dumps(manifest).encode())

    def fill(self, run: RunConfig, units: list, device: str | None = None,
             batch_size: int | None = None, verify: bool = False) -> int:
        """Encode every unit in ``units`` that is missing, stale or (with ``verify``) fails
        its checksum; returns how many were written. Loads the encoder only if there is work."""
        from ablate.data.stream import preprocess, to_sample

        todo = [u for u in units if not (self.verify(u) if verify else self.manifest(u))]
        if not todo and self.info() is not None:
            return 0
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        encoder = get_registry("encoder").build(run.encoder, where="encoder").to(dev)
        self._write_info(encoder)
        source = get_registry("dataset").build(run.data.train, where="data.train")
        transform = preprocess(encoder.resolution)
        size = batch_size or run.data.batch_size
        for n, unit in enumerate(todo):
            records, pixels, feats = [], [], []
            for record in source.read(unit):
                sample = to_sample(record, transform)
                if "error" in sample:
                    records.append((record.get("key", ""), "", sample["error"]))
                    continue
                records.append((record.get("key", ""), sample["caption"], None))
                pixels.append(sample["pixels"])
                if len(pixels) == size:
                    feats.append(encoder.encode(torch.stack(pixels).to(dev)).float().cpu())
                    pixels = []
            if pixels:
                feats.append(encoder.encode(torch.stack(pixels).to(dev)).float().cpu())
            shape = (0, *encoder.grid_shape)
            self.write_unit(unit, records, torch.cat(feats) if feats else torch.empty(shape))
            log.info("feature cache %s: unit %d/%d (%d records)", self.dir.name, n + 1, len(todo), len(records))
        return len(todo)


def cache_for_run(run: RunConfig) -> FeatureCache | None:
    return FeatureCache(run) if cacheable(run) else None


def ensure_cache(run: RunConfig, device: str | None = None) -> FeatureCache | None:
    """The run's cache, filled where a unit is missing or stale (training's lazy fill);
    None when the cache is off for this run."""
    cache = cache_for_run(run)
    if cache is None:
        return None
    units = get_registry("dataset").build(run.data.train, where="data.train").units()
    written = cache.fill(run, units, device=device)
    if written:
        log.info("feature cache %s: encoded %d of %d units", cache.dir, written, len(units))
    return cache


# ---- the encoder, loaded only when something needs it -------------------------------------


class LazyEncoder(torch.nn.Module):
    """Stands in for the encoder while its features come from the cache: grid shape and
    resolution from ``key.json``; the real encoder (``.inner``) is built on the first
    ``encode`` / ``decode`` (evaluation decodes), on this module's device. It is not a
    submodule, so it never enters a state dict or a DDP / FSDP wrapper."""

    def __init__(self, spec, info: dict):
        super().__init__()
        self.spec = spec
        self.grid_shape = tuple(info["grid_shape"])
        self.resolution = info["resolution"]
        self.register_buffer("device_probe", torch.empty(0), persistent=False)
        object.__setattr__(self, "_inner", None)  # not a submodule: never in a state dict

    @property
    def loaded(self) -> bool:
        return self._inner is not None

    @property
    def inner(self):
        if self._inner is None:
            encoder = get_registry("encoder").build(self.spec, where="encoder")
            object.__setattr__(self, "_inner", encoder.to(self.device_probe.device))
        return self._inner

    def unload(self) -> None:
        """Drop the real encoder (``ablate bench`` after timing the uncached step)."""
        object.__setattr__(self, "_inner", None)

    @property
    def num_tokens(self) -> int:
        return self.grid_shape[1] * self.grid_shape[2]

    def encode(self, pixels):
        return self.inner.encode(pixels)

    def decode(self, features, generator=None, **kwargs):
        return self.inner.decode(features, generator=generator, **kwargs)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen, like every encoder


def build_encoder(run: RunConfig):
    """The encoder for a module: lazy when the run's cache already knows its grid shape."""
    cache = cache_for_run(run)
    info = cache.info() if cache is not None else None
    if info is not None:
        return LazyEncoder(run.encoder, info)
    return get_registry("encoder").build(run.encoder, where="encoder")
