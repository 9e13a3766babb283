"""The generic CLIP-decoder trainer: any CLIP-family encoder, any dataset plugin, and the
``ablate train-decoder`` command, on tiny models saved and loaded through from_pretrained."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_run_spec, write_spec
from PIL import Image

from ablate.cli import main
from ablate.config import ConfigError
from ablate.decoder_training import build_source, train_decoder
from ablate.registry import get_registry
from ablate.toy.plugins import ToyScenes

NET = {"channels": [16, 32], "head_dim": 8, "norm_groups": 8, "time_embed_dim": 4}
FAST = {"warmup_steps": 1, "log_every": 1, "ema_decay": 0.9}


def _clip(models, kind="clip"):
    return {"name": "clip", "model": str(models[kind]), "grid": 4}


def test_latent_decoder_from_webdataset_loads_in_the_clip_encoder(tiny_models, tiny_shards, tmp_path):
    out = tmp_path / "decoder"
    # batch 12, no shuffle buffer: 3 steps read one whole epoch, bad records included
    record = train_decoder(_clip(tiny_models), {"train": {"name": "webdataset", "urls": tiny_shards},
                                                "batch_size": 12, "num_workers": 0, "shuffle_buffer": 1},
                           out, steps=3, net={**NET, "vae": str(tiny_models["vae"])}, training=FAST)
    assert record["steps"] == 3 and record["images_seen"] >= 3 * 3
    assert record["skipped_records"] >= 1  # the shards hold a corrupt image and an empty caption
    assert np.isfinite(record["final_loss"])
    assert {p.name for p in out.iterdir()} >= {"unet", "scheduler", "vae", "decoder_training.json"}
    unet_cfg = json.loads((out / "unet" / "config.json").read_text())
    assert unet_cfg["cross_attention_dim"] == 32 and unet_cfg["addition_embed_type"] == "text_time"
    assert unet_cfg["in_channels"] == 4 and unet_cfg["sample_size"] == 16  # 32 px / VAE factor 2
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "EulerDiscreteScheduler" and sched["prediction_type"] == "v_prediction"
    saved = json.loads((out / "decoder_training.json").read_text())
    assert saved["encoder"]["model"] == str(tiny_models["clip"]) and len(saved["history"]) == 3

    enc = get_registry("encoder").build({**_clip(tiny_models), "decoder": str(out), "decoder_steps": 2})
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = enc.decode(enc.encode(x), generator=torch.Generator().manual_seed(0))
    assert y.shape == (2, 3, 32, 32) and torch.isfinite(y).all() and y.abs().max() <= 1


def test_pixel_space_decoder_for_siglip_from_an_image_folder(tiny_models, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"picture {i}")
    out = tmp_path / "decoder"
    record = train_decoder(_clip(tiny_models, "siglip"), {"train": {"name": "folder", "root": str(root)},
                                                          "batch_size": 2, "num_workers": 0},
                           out, steps=2, net={**NET, "text_time": False, "prediction_type": "epsilon",
                                              "scheduler": "DDIMScheduler"}, training=FAST)
    assert record["steps"] == 2 and not (out / "vae").exists()
    unet_cfg = json.loads((out / "unet" / "config.json").read_text())
    assert unet_cfg["in_channels"] == 3 and unet_cfg["sample_size"] == 32
    enc = get_registry("encoder").build({**_clip(tiny_models, "siglip"), "decoder": str(out), "decoder_steps": 2})
    assert enc.decode(enc.encode(torch.zeros(1, 3, 32, 32))).shape == (1, 3, 32, 32)


def test_toy_source_renders_scenes_and_memoises():
    source = build_source({"name": "toy", "n": 5, "per_unit": 2, "seed": 3})
    assert isinstance(source, ToyScenes) and [len(u) for u in source.units()] == [2, 2, 1]
    first = list(source.read(source.units()[0]))
    assert first[0]["image"].size == (64, 64) and first[0]["caption"] and first[0]["key"] == "toy/train/0"
    again = list(source.read(source.units()[0]))
    assert again[0]["image"] is first[0]["image"]  # rendered once
    with pytest.raises(ConfigError, match="data.train.nn: unknown key"):
        build_source({"name": "toy", "nn": 5})


def test_rejects_a_vae_encoder(tiny_models, tmp_path):
    with pytest.raises(ConfigError, match="not a CLIP-family encoder"):
        train_decoder({"name": "vae", "model": str(tiny_models["vae"]), "resolution": 16},
                      {"train": {"name": "toy", "n": 4}, "batch_size": 2, "num_workers": 0}, tmp_path, steps=1)


def test_cli_train_decoder_reads_a_whole_run_spec(tiny_models, tiny_shards, tmp_path, capsys):
    spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path / "results")
    spec["data"] = {"train": {"name": "toy", "n": 8}, "batch_size": 2, "num_workers": 0}
    spec["decoder"] = {**NET, "vae": str(tiny_models["vae"])}
    spec["decoder_training"] = FAST
    path = write_spec(spec, tmp_path / "run.yaml")
    out = tmp_path / "decoder"
    assert main(["train-decoder", str(path), "--out", str(out), "--steps", "2",
                 "--set", "decoder_training.lr=0.0005"]) == 0
    assert "use it as encoder.decoder" in capsys.readouterr().out
    saved = json.loads((out / "decoder_training.json").read_text())
    assert saved["steps"] == 2 and saved["decoder_training"]["lr"] == 0.0005
    assert saved["encoder"].get("decoder") is None  # the spec's old decoder is not loaded


def test_cli_train_decoder_needs_encoder_and_data(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("encoder: {name: clip}\n")
    assert main(["train-decoder", str(path), "--out", str(tmp_path / "d")]) == 2
    assert "data: required key is missing" in capsys.readouterr().err


def test_conditioning_augmentation_noises_only_the_features_the_unet_sees():
    from diffusers import DDPMScheduler

    from ablate.decoder_training import DecoderNetConfig, build_decoder

    decoder = build_decoder(8, 16, DecoderNetConfig(**NET, spatial=True))
    decoder.scheduler = DDPMScheduler.from_config(decoder.scheduler.config)  # as the trainer does
    seen = []
    forward = decoder.unet.forward
    decoder.unet.forward = lambda x, t, **kw: seen.append(kw["encoder_hidden_states"]) or forward(x, t, **kw)
    features, pixels = torch.randn(4, 8, 2, 2), torch.rand(4, 3, 16, 16) * 2 - 1
    clean = features.clone()
    for noise in (0.0, 0.5):
        torch.manual_seed(0)
        decoder.training_loss(features, pixels, cond_dropout=0.0, cond_noise=noise)
    assert torch.equal(features, clean)  # the caller's tensor is untouched
    tokens = clean.flatten(2).transpose(1, 2)
    assert torch.equal(seen[0], tokens)  # cond_noise 0: the exact features
    # per-sample level U(0, 0.5) x the features' std: noised, but never by more than ~0.5 std
    rel = (seen[1] - tokens).pow(2).mean(dim=(1, 2)).sqrt() / clean.std()
    assert (rel > 0).all() and (rel < 0.5 * 1.3).all() and rel.std() > 0


@pytest.mark.parametrize("bad", [{"cond_noise": -0.1}, {"cond_dropout": 1.0}])
def test_bad_training_settings_name_the_key(bad):
    from ablate.config import from_dict
    from ablate.decoder_training import DecoderTrainConfig

    key = next(iter(bad))
    with pytest.raises(ConfigError, match=f"decoder_training: {key}"):
        from_dict(DecoderTrainConfig, bad, "decoder_training")
