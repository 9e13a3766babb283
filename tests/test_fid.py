"""FID: equality with clean-fid and torchmetrics, MJHQ reader, subsets, cache, extractors."""

from __future__ import annotations

import json
import os
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ablate.eval.scorers import fid
from ablate.eval.scorers.fid import (
    FIDSettings,
    build_feature_extractor,
    extract_features,
    fid_from_features,
    preprocess,
    read_mjhq,
    reference_features,
    select_subset,
)


class TinyConvFeatures(nn.Module):
    """A random conv net: images in [0, 255] (float or uint8) -> 6 features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 6, 5, stride=3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        x = x.float() / 255.0
        return nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 1).flatten(1)


def random_images(n, seed, size=(48, 40), brightness=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        arr = rng.integers(0, 200, size=(size[1], size[0], 3)) + brightness * rng.random()
        out.append(Image.fromarray(arr.clip(0, 255).astype(np.uint8)))
    return out


def save_all(images, folder, ext="png"):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        paths.append(folder / f"{i:03d}.{ext}")
        im.save(paths[-1])
    return paths


def test_fid_equals_clean_fid(tmp_path):
    from cleanfid import fid as cfid
    from cleanfid.resize import make_resizer

    net = TinyConvFeatures().eval()
    paths1 = save_all(random_images(30, 0), tmp_path / "a")
    paths2 = save_all(random_images(30, 1, brightness=50), tmp_path / "b")
    settings = FIDSettings(32, "clean")  # clean-fid's "clean" resize, at 32 px
    f1 = extract_features(paths1, net, settings, batch_size=7)
    f2 = extract_features(paths2, net, settings, batch_size=7)
    kw = dict(model=net, num_workers=0, batch_size=8, device=torch.device("cpu"), mode="clean",
              custom_fn_resize=make_resizer("PIL", False, "bicubic", (32, 32)), verbose=False)
    np.testing.assert_allclose(f1, cfid.get_files_features(paths1, **kw), rtol=1e-5, atol=1e-6)
    ours = fid_from_features(f1, f2)
    assert ours > 0.01
    # Exact on float64 features; on float32 ones clean-fid's statistics are float32 (ours
    # float64), a ~1e-6 relative difference.
    assert ours == pytest.approx(cfid.fid_from_feats(f1.astype(np.float64), f2.astype(np.float64)),
                                 rel=1e-12)
    assert ours == pytest.approx(cfid.fid_from_feats(f1, f2), rel=1e-5)
    theirs = cfid.compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), mode="clean",
                              custom_feat_extractor=net, num_workers=0, batch_size=8,
                              device=torch.device("cpu"), verbose=False,
                              custom_fn_resize=kw["custom_fn_resize"])
    assert ours == pytest.approx(theirs, rel=1e-4)


def test_fid_equals_torchmetrics(tmp_path):
    from torchmetrics.image.fid import FrechetInceptionDistance

    net = TinyConvFeatures().eval()
    real, fake = random_images(30, 2), random_images(30, 3, size=(40, 56), brightness=60)
    settings = FIDSettings(32, "bicubic_center_crop")  # uint8-valued: torchmetrics' input type
    metric = FrechetInceptionDistance(feature=net)
    for images, is_real in ((real, True), (fake, False)):
        batch = np.stack([preprocess(im, settings) for im in images]).astype(np.uint8)
        metric.update(torch.from_numpy(batch).permute(0, 3, 1, 2), real=is_real)
    ours = fid_from_features(extract_features(fake, net, settings), extract_features(real, net, settings))
    assert ours > 0.01
    assert ours == pytest.approx(float(metric.compute()), rel=1e-4)


def test_bicubic_center_crop_matches_torchvision():
    import torchvision.transforms as T

    im = random_images(1, 4, size=(50, 30))[0]
    ref = T.Compose([T.Resize(16, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(16)])(im)
    out = preprocess(im, FIDSettings(16, "bicubic_center_crop"))
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.asarray(ref, dtype=np.float32))
    assert preprocess(im, FIDSettings(16, "clean")).shape == (16, 16, 3)


# ------------------------------------------------------------------ MJHQ folder


def fake_mjhq(root, per_category=4, categories=("animals", "food", "logo")):
    meta = {}
    for c, cat in enumerate(categories):
        (root / cat).mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(random_images(per_category, c, size=(24, 24), brightness=40 * c)):
            key = f"{cat[:2]}{i:04d}"
            meta[key] = {"category": cat, "prompt": f"{cat} number {i}"}
            im.save(root / cat / f"{key}.jpg")
    (root / "meta_data.json").write_text(json.dumps(meta))
    return root


def test_read_mjhq_and_subset(tmp_path):
    items = read_mjhq(fake_mjhq(tmp_path))
    assert len(items) == 12 and items[0].path == tmp_path / items[0].category / f"{items[0].id}.jpg"
    sub = select_subset(items, 7, seed=0)
    counts = {c: sum(it.category == c for it in sub) for c in ("animals", "food", "logo")}
    assert counts == {"animals": 3, "food": 2, "logo": 2}  # stratified; remainder to the first
    assert select_subset(items, 7, seed=0) == sub
    assert any(select_subset(items, 7, seed=s) != sub for s in range(1, 5))
    assert select_subset(items, None) == items
    (tmp_path / "food" / "fo0000.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="fo0000.jpg: image listed in"):
        read_mjhq(tmp_path)
    with pytest.raises(FileNotFoundError, match="meta_data.json"):
        read_mjhq(tmp_path / "nowhere")


def test_reference_features_are_cached(tmp_path):
    items = read_mjhq(fake_mjhq(tmp_path / "mjhq"))
    net = TinyConvFeatures()
    net.feature_id = "tiny-conv"
    settings = FIDSettings(16, "clean")
    feats, cats = reference_features(items, net, settings, tmp_path / "cache", batch_size=5)
    calls = net.calls
    assert calls == 3 and feats.shape == (12, 6) and cats[0] == items[0].category
    again, cats2 = reference_features(items, net, settings, tmp_path / "cache")
    assert net.calls == calls  # loaded, not recomputed
    np.testing.assert_array_equal(feats, again)
    assert cats2 == cats and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    # Any part of the key changing makes a new entry: resolution, subset, extractor.
    reference_features(items, net, FIDSettings(20, "clean"), tmp_path / "cache")
    reference_features(items[:6], net, settings, tmp_path / "cache")
    net.feature_id = "other-weights"
    reference_features(items, net, settings, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 4
    # A reference image rewritten in place (here: touched) is not served from the cache.
    net.feature_id, calls = "tiny-conv", net.calls
    os.utime(items[0].path, ns=(1, 1))
    reference_features(items, net, settings, tmp_path / "cache")
    assert net.calls > calls


# ------------------------------------------------------------------ extractors


def test_inception_without_weights_fails_clearly(tmp_path, monkeypatch):
    from cleanfid import downloads_helper

    with pytest.raises(FileNotFoundError, match="local path of clean-fid's inception"):
        build_feature_extractor({"name": "inception", "path": str(tmp_path / "missing.pt")})

    def offline(fpath):
        raise URLError("no network")

    monkeypatch.setattr(downloads_helper, "check_download_inception", offline)
    with pytest.raises(RuntimeError, match=r"set feature_extractor: \{name: inception, path:"):
        build_feature_extractor("inception")


def test_extractor_specs(tmp_path):
    from ablate.testing import tiny_clip

    clip = build_feature_extractor({"name": "clip", "path": str(tiny_clip(tmp_path / "clip"))})
    images = random_images(3, 5)
    feats = extract_features(images, clip, FIDSettings(24, "clean"))
    assert feats.shape == (3, 16) and np.isfinite(feats).all()  # projection_dim of tiny_clip
    assert fid.feature_id(clip).startswith("hf:")
    pixels = build_feature_extractor({"name": "pixels", "size": 4})
    assert extract_features(images, pixels, FIDSettings(8, "clean")).shape == (3, 48)
    custom = build_feature_extractor({"name": "torch.nn.Flatten"})
    assert fid.feature_id(custom) == "torch.nn.Flatten:{}"
    with pytest.raises(ValueError, match="unknown name 'nope'"):
        build_feature_extractor({"name": "nope"})
    with pytest.raises(ValueError, match="unknown key"):
        build_feature_extractor({"name": "pixels", "colour": 1})


# ------------------------------------------------------------------ metric


class LookupGenerator:
    """Returns the reference image of each prompt: a perfect generator, FID ~ 0."""

    def __init__(self, items):
        self.by_prompt = {it.prompt: it.path for it in items}
        self.seeds = []

    def images(self, prompts, seeds):
        self.seeds += seeds
        return [Image.open(self.by_prompt[p]).convert("RGB") for p in prompts]


def test_fid_metric(tmp_path):
    from ablate.registry import get_registry

    root = fake_mjhq(tmp_path / "mjhq", per_category=6)
    spec = {"name": "fid", "data_dir": str(root), "subset_size": 12, "resolution": 16,
            "resize": "clean", "feature_extractor": {"name": "pixels", "size": 1},
            "cache_dir": str(tmp_path / "cache"), "batch_size": 5, "keep_images": 2}
    metric = get_registry("metric").build(spec)
    gen = LookupGenerator(read_mjhq(root))
    values = metric.compute(gen, tmp_path / "out")
    assert set(values) == {"fid/overall", "fid/animals", "fid/food", "fid/logo"}
    assert all(abs(v) < 1e-3 for v in values.values())
    record = json.loads((tmp_path / "out" / "fid" / "fid.json").read_text())
    assert record["settings"]["resolution"] == 16 and record["settings"]["features"] == "pixels:1"
    assert record["num_images"] == 12 and len(list((tmp_path / "out" / "fid" / "samples").iterdir())) == 2
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    first = list(gen.seeds)
    get_registry("metric").build(spec).compute(gen, tmp_path / "out2")
    assert gen.seeds[len(first):] == first  # same seeds every evaluation


def test_fid_on_scipy_without_sqrtm_disp(monkeypatch):
    """SciPy releases after the pinned one dropped ``sqrtm(disp=...)``, which clean-fid 0.1.35
    passes: the FID must stay the same number there."""
    import scipy.linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)), rng.normal(0.4, 1.2, size=(50, 6))
    expected = fid.fid_from_features(a, b)
    sqrtm = scipy.linalg.sqrtm

    def sqrtm_new(matrix, **kwargs):
        if kwargs:
            raise TypeError(f"sqrtm() got an unexpected keyword argument {next(iter(kwargs))!r}")
        return sqrtm(matrix)

    monkeypatch.setattr(scipy.linalg, "sqrtm", sqrtm_new)
    assert fid.fid_from_features(a, b) == pytest.approx(expected, rel=1e-9)
    assert expected > 0.1
