"""FID on MJHQ-30k (overall and per category) with clean-fid's maths and pluggable features.

Pipeline, the same for reference and generated images:

1. ``preprocess``: bring every image to ``resolution`` x ``resolution`` with ``resize``:
   - ``"bicubic_center_crop"``: torchvision bicubic resize of the short side + centre crop,
     quantised to uint8 (MetaQuery's 256 px protocol with torchmetrics);
   - ``"clean"``: clean-fid's own resizer (PIL bicubic on float channels, no quantisation,
     straight to R x R). ``resolution=299`` + ``"clean"`` + Inception is clean-fid's "clean"
     mode exactly.
2. a feature extractor: any ``nn.Module`` taking float ``[B, 3, R, R]`` in [0, 255] (clean-fid's
   convention) and returning ``[B, D]``. Built from a spec (:func:`build_feature_extractor`):
   ``{name: inception, path: FILE}`` clean-fid's Inception from a local torchscript file;
   ``{name: clip, path: HUB_ID_OR_FOLDER}`` a ``from_pretrained`` CLIP/SigLIP image tower;
   ``{name: pixels, size: 64}`` downsampled pixels (needs no weights);
   ``{name: pkg.module.Class, ...kwargs}`` any module of your own.
3. ``cleanfid.fid.frechet_distance`` on the mean / covariance (``np.cov``, n - 1), as
   ``cleanfid.fid.fid_from_feats`` does.

The resolution, resize and feature extractor are recorded next to every number
(:meth:`FIDSettings.describe`), because published MJHQ FIDs differ mostly by them.
Reference features are computed once per (dataset, subset, settings, extractor) and cached.
Under ``torch.distributed`` every rank extracts the features of its share of the images
(:func:`split_features`); rank 0 alone writes the cache.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ablate.data.stream import rank_and_world
from ablate.eval.sampling import gather, split_map

MJHQ_CATEGORIES = ("animals", "art", "fashion", "food", "indoor", "landscape", "logo", "people",
                   "plants", "vehicles")
INCEPTION_FILE = "inception-2015-12-05.pt"
CACHE_VERSION = 1


# --------------------------------------------------------------------------------------
# MJHQ-30k
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MJHQItem:
    id: str
    category: str
    prompt: str
    path: Path


def read_mjhq(root: str | Path, meta_name: str = "meta_data.json",
              check_files: bool = True) -> list[MJHQItem]:
    """``meta_data.json`` (id -> {category, prompt}) + ``<category>/<id>.jpg``, sorted by id."""
    root = Path(root)
    meta_path = root / meta_name
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no such file (expected MJHQ-30k's meta_data.json)")
    meta = json.loads(meta_path.read_text())
    items = []
    for key in sorted(meta):
        entry = meta[key]
        if not isinstance(entry, dict) or "category" not in entry or "prompt" not in entry:
            raise ValueError(f"{meta_path}: entry {key!r} needs 'category' and 'prompt', got {entry!r}")
        path = root / entry["category"] / f"{key}.jpg"
        if check_files and not path.is_file():
            raise FileNotFoundError(f"{path}: image listed in {meta_path} is missing")
        items.append(MJHQItem(key, entry["category"], entry["prompt"], path))
    return items


def select_subset(items: list[MJHQItem], size: int | None, seed: int = 0) -> list[MJHQItem]:
    """A stratified sample: ``size // n_categories`` per category (the remainder goes to the
    first categories in name order), drawn with ``seed``; ``None`` keeps everything."""
    if size is None or size >= len(items):
        return list(items)
    by_cat: dict[str, list[MJHQItem]] = defaultdict(list)
    for item in items:
        by_cat[item.category].append(item)
    cats = sorted(by_cat)
    quota = {c: size // len(cats) + (i < size % len(cats)) for i, c in enumerate(cats)}
    rng = random.Random(seed)
    chosen = []
    for c in cats:  # sorted ids + one Random: the subset depends only on (ids, size, seed)
        pool = sorted(by_cat[c], key=lambda it: it.id)
        chosen += rng.sample(pool, min(quota[c], len(pool)))
    return sorted(chosen, key=lambda it: it.id)


# --------------------------------------------------------------------------------------
# Preprocessing and feature extractors
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FIDSettings:
    resolution: int = 256
    resize: Literal["bicubic_center_crop", "clean"] = "bicubic_center_crop"

    def describe(self, extractor: nn.Module) -> dict:
        return {**asdict(self), "features": feature_id(extractor)}


def preprocess(image: Image.Image | np.ndarray, settings: FIDSettings) -> np.ndarray:
    """``[R, R, 3]`` float32 in [0, 255]."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    r = settings.resolution
    if settings.resize == "bicubic_center_crop":
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        image = TF.center_crop(TF.resize(image, r, interpolation=InterpolationMode.BICUBIC), r)
        return np.asarray(image, dtype=np.float32)
    if settings.resize == "clean":
        from cleanfid.resize import make_resizer

        return make_resizer("PIL", False, "bicubic", (r, r))(np.asarray(image))
    raise ValueError(f"unknown resize {settings.resize!r}; use bicubic_center_crop or clean")


class InceptionFeatures(nn.Module):
    """clean-fid's torchscript Inception (2048-d pool3), loaded from a local file.

    299 px inputs go straight to the layers (clean-fid "clean" mode); other sizes use the
    network's own TF-style resize (clean-fid "legacy_tensorflow", torchmetrics' behaviour).
    """

    def __init__(self, path: str | None = None):
        super().__init__()
        path = _inception_file(path)
        self.base = torch.jit.load(path, map_location="cpu").eval()
        self.feature_id = f"inception:{fingerprint(path)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (299, 299):
            return self.base.layers.forward((x - 128) / 128).view(x.shape[0], 2048)
        return self.base(x, return_features=True).view(x.shape[0], 2048)


def _inception_file(path: str | None) -> str:
    if path:
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"feature_extractor.path: {path} is not a file; give the local "
                                    f"path of clean-fid's {INCEPTION_FILE}")
        return path
    # No path: clean-fid's own location, downloading there if it can (it cannot offline).
    from cleanfid import downloads_helper

    folder = "/tmp"
    try:
        return downloads_helper.check_download_inception(fpath=folder)
    except Exception as err:  # URLError, socket errors, HTTP errors ...
        raise RuntimeError(
            f"Inception weights are not available: clean-fid could not download them to "
            f"{folder}/{INCEPTION_FILE} ({err}). Download {downloads_helper.inception_url} on a "
            f"machine with network and set feature_extractor: {{name: inception, path: "
            f"/local/path/{INCEPTION_FILE}}}") from None


class HFImageFeatures(nn.Module):
    """A ``from_pretrained`` CLIP-family image tower: its pooled / projected image embedding.

    Like clean-fid's CLIP mode, images are resized (bicubic) to the tower's input size and
    normalised with the model's own mean / std.
    """

    def __init__(self, path: str):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        cfg = AutoConfig.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        vision = getattr(cfg, "vision_config", cfg)
        self.size = int(vision.image_size)
        mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
        try:  # the model's own normalisation when it ships an image processor
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(path)
            mean, std = proc.image_mean, proc.image_std
        except (OSError, ValueError, AttributeError):
            pass
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.feature_id = f"hf:{fingerprint(path)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x / 255.0, size=(self.size, self.size), mode="bicubic",
                          align_corners=False, antialias=True)
        x = ((x - self.mean) / self.std).to(next(self.model.parameters()).dtype)
        if hasattr(self.model, "get_image_features"):
            out = self.model.get_image_features(pixel_values=x)
        else:
            out = self.model(pixel_values=x)
        if isinstance(out, torch.Tensor):
            return out.float()
        for name in ("image_embeds", "pooler_output"):
            if getattr(out, name, None) is not None:
                return getattr(out, name).float()
        return out.last_hidden_state.mean(dim=1).float()


class PixelFeatures(nn.Module):
    """Downsampled pixels in [0, 1], flattened: a weight-free image space."""

    def __init__(self, size: int = 32):
        super().__init__()
        self.size = size
        self.feature_id = f"pixels:{size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x / 255.0, size=(self.size, self.size), mode="area")
        return x.flatten(1)


def build_feature_extractor(spec: dict | str | nn.Module | None = None, device: str = "cpu") -> nn.Module:
    """An extractor from a spec (see the module docstring); a module passes through."""
    if isinstance(spec, nn.Module):
        return spec.to(device).eval()
    spec = {"name": spec} if isinstance(spec, str) else dict(spec or {"name": "inception"})
    name = spec.pop("name", "inception")
    if name == "inception":
        module = InceptionFeatures(spec.pop("path", None))
    elif name in ("clip", "hf"):
        if "path" not in spec:
            raise ValueError(f"feature_extractor {name}: give path (hub id or local folder)")
        module = HFImageFeatures(spec.pop("path"))
    elif name == "pixels":
        module = PixelFeatures(spec.pop("size", 32))
    elif "." in name:
        mod, _, attr = name.rpartition(".")
        module = getattr(importlib.import_module(mod), attr)(**spec)
        if not getattr(module, "feature_id", None):
            module.feature_id = f"{name}:{json.dumps(spec, sort_keys=True, default=str)}"
        spec = {}
    else:
        raise ValueError(f"feature_extractor: unknown name {name!r}; use inception, clip, pixels "
                         f"or a dotted class path")
    if spec:
        raise ValueError(f"feature_extractor {name}: unknown key(s) {sorted(spec)}")
    return module.to(device).eval()


def feature_id(extractor: nn.Module) -> str:
    """What identifies an extractor in cache keys: its ``feature_id`` or its class name."""
    return getattr(extractor, "feature_id", None) or type(extractor).__qualname__


def fingerprint(path: str | Path) -> str:
    """A local file or folder as ``path@size:mtime`` (so retrained weights at the same place
    do not reuse stale cached features); a hub id stays as it is."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        return str(path)
    files = [p] if p.is_file() else [f for f in sorted(p.rglob("*")) if f.is_file()]
    stats = [f.stat() for f in files]
    return f"{p.resolve()}@{sum(s.st_size for s in stats)}:{max((s.st_mtime_ns for s in stats), default=0)}"


def _device_of(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def extract_features(images: Iterable[Image.Image | str | Path], extractor: nn.Module,
                     settings: FIDSettings, batch_size: int = 32) -> np.ndarray:
    """``[N, D]`` float32 features of images (PIL or paths) through the shared pipeline."""
    device = _device_of(extractor)
    feats, batch = [], []

    def flush():
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous().to(device)
        feats.append(extractor(x).float().flatten(1).cpu().numpy())
        batch.clear()

    for image in images:
        if isinstance(image, (str, Path)):
            with Image.open(image) as im:
                batch.append(preprocess(im, settings))
        else:
            batch.append(preprocess(image, settings))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not feats:
        raise ValueError("extract_features: no images")
    return np.concatenate(feats)


def split_features(images: list[Image.Image | str | Path], extractor: nn.Module,
                   settings: FIDSettings, batch_size: int = 32) -> np.ndarray:
    """:func:`extract_features` of ``images``, each rank extracting its share of them
    (``ablate.eval.sampling.split_map``): the same ``[N, D]`` on every rank."""
    rows = split_map(lambda share: extract_features(share, extractor, settings, batch_size), images)
    return np.stack(rows)


# --------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, dtype=np.float64)
    if len(feats) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(feats)}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """``cleanfid.fid.fid_from_feats``, with the mean / covariance always in float64 (clean-fid
    keeps the features' dtype: ~1e-6 relative difference on float32 features)."""
    from cleanfid.fid import frechet_distance

    stats = (*feature_stats(feats1), *feature_stats(feats2))
    try:
        return float(frechet_distance(*stats))
    except TypeError as err:
        if "disp" not in str(err):
            raise
        return float(_frechet_distance_new_scipy(*stats))


def _frechet_distance_new_scipy(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """clean-fid 0.1.35's ``frechet_distance`` for SciPy releases whose ``linalg.sqrtm`` no
    longer takes ``disp`` (clean-fid passes it; the project's pinned SciPy still accepts it).
    Same formula and the same eps fallback for a singular product."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean) and not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
        raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))}")
    covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def fid_by_category(gen: np.ndarray, gen_cats: list[str], ref: np.ndarray, ref_cats: list[str],
                    per_category: bool = True) -> dict[str, float]:
    """``{"overall": ..., <category>: ...}``; categories with < 2 images either side are left out."""
    out = {"overall": fid_from_features(gen, ref)}
    if per_category:
        gen_cats, ref_cats = np.asarray(gen_cats), np.asarray(ref_cats)
        for cat in sorted(set(gen_cats.tolist()) & set(ref_cats.tolist())):
            g, r = gen[gen_cats == cat], ref[ref_cats == cat]
            if len(g) >= 2 and len(r) >= 2:
                out[cat] = fid_from_features(g, r)
    return out


# --------------------------------------------------------------------------------------
# Cached reference features
# --------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "ablate" / "fid"


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def reference_features(items: list[MJHQItem], extractor: nn.Module, settings: FIDSettings,
                       cache_dir: str | Path | None = None, dataset: str = "mjhq-30k",
                       batch_size: int = 32) -> tuple[np.ndarray, list[str]]:
    """Features and categories of ``items``, computed once and cached as an ``.npz``.

    The cache key is (dataset, the exact image files with their sizes and mtimes,
    resolution, resize, extractor id), so regenerated images are never served stale. We
    store the float32 features rather than mu / sigma: the per-category statistics derive
    from them cheaply, and 11 covariances of 2048^2 doubles would outweigh 30k features.
    """
    key = {"version": CACHE_VERSION, "dataset": dataset,
           "files": hashlib.sha1("\n".join(_file_key(it.path) for it in items).encode()).hexdigest(),
           "num": len(items), **settings.describe(extractor)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / f"{dataset}-{digest}.npz"
    cached = _read_cache(path, key)
    # Every rank takes the same branch: the extraction below is split across them, and a
    # rank that found the file (another run just wrote it) would leave the others waiting.
    if all(gather(cached is not None)):
        return cached
    feats = split_features([it.path for it in items], extractor, settings, batch_size)
    cats = [it.category for it in items]
    if rank_and_world()[0] == 0:  # the cache is shared: one writer
        _write_cache(path, key, feats, cats, [it.id for it in items])
    return feats, cats


def _read_cache(path: Path, key: dict) -> tuple[np.ndarray, list[str]] | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        if json.loads(str(data["key"])) != key:
            return None
        return data["features"], data["categories"].tolist()


def _write_cache(path: Path, key: dict, feats: np.ndarray, cats: list[str], ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # write-then-rename: a killed run leaves no half file; the pid keeps runs sharing the
    # cache from writing the same temporary file
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, features=feats, categories=np.asarray(cats), ids=np.asarray(ids),
             key=np.asarray(json.dumps(key, sort_keys=True)))
    os.replace(tmp, path)
