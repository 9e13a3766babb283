"""The target feature cache: each image encoded once per encoder, corrupt units rebuilt,
a changed config keyed apart, cached targets train as the encoder's own."""

import pandas as pd
import pytest
import torch
from conftest import tiny_run_spec, write_shards

from ablate.config import parse_run
from ablate.data.cache import CacheError, FeatureCache, LazyEncoder, ensure_cache
from ablate.encoders.clip import CLIPEncoder
from ablate.encoders.vae import VAEEncoder
from ablate.study.grid import run_grid
from ablate.study.spec import parse_study
from ablate.train import fit

GOOD_IMAGES = 22  # tiny_shards: 2 x 12 records, one corrupt image and one empty caption


def count_encoded(monkeypatch) -> dict:
    """Images through each encoder class's ``encode``, wherever it is called from."""
    counts = {"clip": 0, "vae": 0}
    for name, cls in (("clip", CLIPEncoder), ("vae", VAEEncoder)):
        original = cls.encode

        def encode(self, pixels, _original=original, _name=name):
            counts[_name] += pixels.shape[0]
            return _original(self, pixels)

        monkeypatch.setattr(cls, "encode", encode)
    return counts


def test_grid_encodes_each_image_once_per_encoder(tiny_models, tiny_shards, tmp_path, monkeypatch):
    base = tiny_run_spec(tiny_models, tiny_shards, tmp_path, max_steps=4)
    clip, vae = base["encoder"], {"name": "vae", "model": str(tiny_models["vae"]), "resolution": 16}
    fm = base["objective"]
    for key in ("name", "study", "encoder", "objective"):
        base.pop(key)
    base["backbone"]["num_queries"] = None
    base["data"]["batch_size"] = 8  # 4 steps x 8 > 22 images: every image is read, some twice
    cells = {"clip+mse": {"encoder": clip, "objective": {"name": "mse"}},
             "clip+fm": {"encoder": clip, "objective": fm, "backbone.num_queries": 8},
             "vae+fm": {"encoder": vae, "objective": fm, "backbone.num_queries": 8}}
    study = parse_study({"study": "cached", "base": base, "cells": cells}, "cached.yaml")
    counts = count_encoded(monkeypatch)
    outcomes = run_grid(study)
    assert [o.result for o in outcomes] == ["finished"] * 3
    assert counts == {"clip": GOOD_IMAGES, "vae": GOOD_IMAGES}
    assert len(list((tmp_path / ".cache" / "features").glob("*/key.json"))) == 2


def test_corrupt_truncated_or_unfinished_units_are_rebuilt(tiny_models, tmp_path, monkeypatch):
    shards = write_shards(tmp_path / "shards", n_shards=3, per_shard=4, bad=False)
    run = parse_run(tiny_run_spec(tiny_models, shards, tmp_path, "vae", "mse"))
    counts = count_encoded(monkeypatch)
    cache = ensure_cache(run, device="cpu")
    assert counts["vae"] == 12
    units = sorted(cache.units_dir.glob("*.safetensors"))
    first = next(iter(cache.records(run.data.train["urls"].replace("{000000..000002}", "000000"))))
    assert first["features"].shape == (4, 8, 8) and first["caption"]

    # a flipped byte: same size, so only the checksum read catches it
    data = bytearray(units[0].read_bytes())
    data[-1] ^= 0xFF
    units[0].write_bytes(bytes(data))
    bad = [u for u in _units(run) if not cache.verify(u)]
    assert len(bad) == 1
    with pytest.raises(CacheError, match="checksum"):
        list(cache.records(bad[0]))
    assert cache.fill(run, _units(run), device="cpu", verify=True) == 1 and counts["vae"] == 16
    assert all(cache.verify(u) for u in _units(run))

    units[1].write_bytes(units[1].read_bytes()[:100])  # truncated: the manifest's size differs
    next(cache.units_dir.glob("*.json")).unlink()  # a crash before the manifest was written
    ensure_cache(run, device="cpu")
    assert counts["vae"] in (20, 24)  # one or two units rebuilt (the two may be the same unit)
    assert all(cache.verify(u) for u in _units(run))


def _units(run):
    from ablate.registry import get_registry

    return get_registry("dataset").build(run.data.train).units()


def test_a_changed_config_gets_a_new_key(tiny_models, tiny_shards, tmp_path):
    spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path, "clip", "mse")
    key = FeatureCache(parse_run(spec)).dir

    def changed(edit) -> bool:
        import copy

        other = copy.deepcopy(spec)
        edit(other)
        return FeatureCache(parse_run(other)).dir != key

    assert changed(lambda s: s["encoder"].update(grid=2))
    assert changed(lambda s: s["encoder"].update(layer=-2))
    assert changed(lambda s: s["data"]["train"].update(urls=tiny_shards.replace("000001", "000000")))
    assert not changed(lambda s: s["encoder"].update(decoder_steps=7))  # decoding only
    assert not changed(lambda s: s["train"].update(lr=0.5))
    # the same spec with other weights in the model folder
    weights = next(tiny_models["clip"].glob("*.safetensors"))
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        assert FeatureCache(parse_run(spec)).dir != key
    finally:
        weights.write_bytes(original)
    assert FeatureCache(parse_run(spec)).dir == key


def test_cached_targets_train_as_encoded_ones_and_the_encoder_stays_unloaded(tiny_models, tiny_shards,
                                                                              tmp_path):
    import lightning as L

    class Probe(L.Callback):
        def on_train_end(self, trainer, module):
            self.encoder = module.encoder

    losses = {}
    for cache in (False, True):
        spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path / str(cache), "clip", "flow_matching",
                             max_steps=3)
        spec["data"]["cache"] = cache
        probe = Probe()
        run_dir = fit(parse_run(spec), extra_callbacks=(probe,))
        losses[cache] = torch.tensor(pd.read_csv(run_dir / "metrics.csv")["train/loss"].values)
        assert isinstance(probe.encoder, LazyEncoder) == cache
    assert not probe.encoder.loaded  # training never built the image tower
    torch.testing.assert_close(losses[True], losses[False], atol=1e-5, rtol=1e-4)


def test_cache_cli_fills_a_study_in_shards_and_resumes(tiny_models, tmp_path, monkeypatch, capsys):
    from conftest import write_spec

    from ablate.cli import main

    shards = write_shards(tmp_path / "shards", n_shards=3, per_shard=4, bad=False)
    base = tiny_run_spec(tiny_models, shards, tmp_path, "vae", "mse")
    encoder = base.pop("encoder")
    for key in ("name", "study", "objective"):
        base.pop(key)
    study = {"study": "c", "base": base, "cells": {"a": {"encoder": encoder, "objective": {"name": "mse"}},
                                                   "b": {"encoder": encoder, "objective": {"name": "mse"},
                                                         "train.lr": 0.1}}}
    path = write_spec(study, tmp_path / "study.yaml")
    counts = count_encoded(monkeypatch)
    assert main(["cache", str(path), "--shard", "0/2", "--device", "cpu"]) == 0
    assert "2 of 2 units encoded" in capsys.readouterr().out  # units 0 and 2, once for both cells
    assert counts["vae"] == 8
    assert main(["cache", str(path), "--shard", "1/2", "--device", "cpu"]) == 0
    assert main(["cache", str(path), "--device", "cpu"]) == 0  # all complete: nothing to do
    assert "0 of 3 units encoded, 3 already complete" in capsys.readouterr().out
    assert counts["vae"] == 12
