"""CLIP-family and VAE encoders on tiny models loaded through from_pretrained."""

import json

import pytest
import torch

from ablate.registry import get_registry

build = get_registry("encoder").build


def pixels(n=2, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_clip_family_grid(tiny_models, kind):
    enc = build({"name": "clip", "model": str(tiny_models[kind]), "grid": 4})
    assert enc.grid_shape == (32, 4, 4) and enc.resolution == 32 and enc.num_tokens == 16
    feats = enc.encode(pixels())
    assert feats.shape == (2, 32, 4, 4) and torch.isfinite(feats).all()
    assert not any(p.requires_grad for p in enc.parameters())


def test_clip_features_are_pooled_patch_tokens_without_cls(tiny_models):
    enc = build({"name": "clip", "model": str(tiny_models["clip"]), "grid": 2, "layer": -2})
    x = pixels()
    normed = ((x + 1) / 2 - enc.mean) / enc.std
    hidden = enc.tower(pixel_values=normed, output_hidden_states=True).hidden_states[-2]
    patches = hidden[:, 1:].transpose(1, 2).reshape(2, 32, 8, 8)  # 32 px / patch 4 = 8x8
    expected = patches.reshape(2, 32, 2, 4, 2, 4).mean((3, 5))
    torch.testing.assert_close(enc.encode(x), expected, atol=1e-5, rtol=1e-5)


def test_mean_std_come_from_the_processor_config(tiny_models, tmp_path):
    enc = build({"name": "clip", "model": str(tiny_models["siglip"]), "grid": 4})
    assert torch.allclose(enc.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    proc = json.loads((tiny_models["clip"] / "preprocessor_config.json").read_text())
    enc = build({"name": "clip", "model": str(tiny_models["clip"]), "grid": 4})
    assert torch.allclose(enc.mean.flatten(), torch.tensor(proc["image_mean"]))


def test_grid_must_divide_patch_grid(tiny_models):
    with pytest.raises(ValueError, match="encoder.grid=3 must divide the 8x8 patch grid"):
        build({"name": "clip", "model": str(tiny_models["clip"]), "grid": 3})


def test_clip_decode_through_diffusion_decoder(tiny_models):
    enc = build({"name": "clip", "model": str(tiny_models["clip"]), "grid": 4,
                 "decoder": str(tiny_models["clip_decoder"]), "decoder_steps": 2})
    feats = enc.encode(pixels())
    a = enc.decode(feats, generator=torch.Generator().manual_seed(0))
    b = enc.decode(feats, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert enc.decoder.unet.config.addition_embed_type == "text_time"


def test_decoder_with_spatial_feature_input(tiny_models, tmp_path):
    from ablate.nets.clip_decoder import CLIPDiffusionDecoder
    from ablate.testing import tiny_clip_decoder

    dec = CLIPDiffusionDecoder.from_pretrained(tiny_clip_decoder(tmp_path / "d", 32, spatial=True))
    assert dec.spatial_channels == 32 and dec.latent_channels == 4
    feats, pixels_ = torch.randn(2, 32, 4, 4), pixels()
    loss = dec.training_loss(feats, pixels_)
    loss.backward()
    assert torch.isfinite(loss) and dec.unet.conv_in.weight.grad[:, 4:].abs().sum() > 0
    out = dec.decode(feats, size=32, steps=2, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert out.shape == (2, 3, 32, 32)


def test_clip_without_decoder_says_how_to_get_one(tiny_models):
    enc = build({"name": "clip", "model": str(tiny_models["clip"]), "grid": 4})
    with pytest.raises(RuntimeError, match="ablate train-decoder"):
        enc.decode(torch.zeros(1, 32, 4, 4))


def test_vae_scaling_and_shift(tiny_models, tmp_path):
    from ablate.testing import tiny_vae

    enc = build({"name": "vae", "model": str(tiny_models["vae"]), "resolution": 32})
    assert enc.grid_shape == (4, 16, 16)
    x = pixels()
    raw = enc.vae.encode(x).latent_dist.mode()
    torch.testing.assert_close(enc.encode(x), raw * 0.5)
    shifted = build({"name": "vae", "model": str(tiny_vae(tmp_path / "v", shift_factor=0.25)),
                     "resolution": 32})
    torch.testing.assert_close(shifted.encode(x), (shifted.vae.encode(x).latent_dist.mode() - 0.25) * 0.5)
    z = enc.encode(x)
    torch.testing.assert_close(enc.decode(z), enc.vae.decode(z / 0.5).sample.clamp(-1, 1))
    with pytest.raises(ValueError, match="multiple of the VAE's downsampling factor 2"):
        build({"name": "vae", "model": str(tiny_models["vae"]), "resolution": 33})
