"""`ablate toy build` at a tiny scale: every asset is trained, saved and loads back through
the same from_pretrained paths the study uses; the shipped assets too, when present."""

import json

import numpy as np
import pytest
import torch

from ablate.cli import main
from ablate.config import BackboneConfig
from ablate.registry import get_registry
from ablate.toy.build import ASSETS, assets_dir, check_assets


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "assets"
    assert main(["toy", "build", "--out", str(out), "--scale", "0.005", "--threads", "2", "--world", "slots"]) == 0
    return out


def _load_and_run(root):
    """Every asset through the harness's own loaders (what a run spec names), run once."""
    from ablate.backbone import Backbone

    paths = check_assets(root)
    assert set(paths) == set(ASSETS)
    backbone = Backbone(BackboneConfig(model=str(paths["lm"]), dtype="float32"), num_queries=3)
    assert backbone.format_prompt("a red circle").startswith("<s><|user|>")  # the chat template path
    q = backbone(["a red circle on a gray background", "two blue squares"])
    assert q.shape == (2, 3, backbone.hidden_size) and torch.isfinite(q).all()

    clip = get_registry("encoder").build({"name": "clip", "model": str(paths["clip"]), "grid": 8,
                                          "decoder": str(paths["clip_decoder"]), "decoder_steps": 2})
    assert clip.grid_shape == (128, 8, 8) and clip.resolution == 64
    assert torch.allclose(clip.mean.flatten(), torch.tensor([0.5] * 3))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    feats = clip.encode(x)
    assert feats.shape == (2, 128, 8, 8)
    y = clip.decode(feats, generator=torch.Generator().manual_seed(0))
    assert y.shape == (2, 3, 64, 64) and torch.isfinite(y).all()

    vae = get_registry("encoder").build({"name": "vae", "model": str(paths["vae"]), "subfolder": None,
                                         "resolution": 64})
    assert vae.grid_shape == (4, 16, 16)
    z = vae.encode(x)
    assert z.shape == (2, 4, 16, 16) and vae.decode(z).shape == (2, 3, 64, 64)


def test_toy_build_tiny_scale(tiny_assets):
    out = tiny_assets
    assert {p.name for p in out.iterdir()} >= set(ASSETS) | {"build_info.json", "README.md", "preview.png"}
    assert not out.with_name("assets.building").exists()  # built aside, then swapped in
    info = json.loads((out / "build_info.json").read_text())
    assert set(info["assets"]) == set(ASSETS) and info["provenance"]["packages"]["torch"]
    assert info["seed"] == 0 and info["scale"] == 0.005 and info["wall_s"] > 0
    assert info["world"] == "slots" and "`slots` world" in (out / "README.md").read_text()
    for name in ("lm", "clip", "vae", "clip_decoder"):
        assert info["assets"][name]["steps"] >= 1
    q = info["quality"]
    assert 0.0 <= q["clip_retrieval"]["image_to_text_top1"] <= 1.0 and q["vae"]["mse"] >= 0
    assert set(q["clip_decoder"]["judge"]) >= {"shapes", "colors", "exact"}
    assert q["judge_on_originals"]["exact"] == 1.0  # the detector itself sees the true renders
    assert q["lm_restatement"]["captions"] == 8 and 0.0 <= q["lm_restatement"]["words"] <= 1.0
    vae_cfg = json.loads((out / "vae" / "config.json").read_text())
    assert vae_cfg["scaling_factor"] == pytest.approx(info["assets"]["vae"]["scaling_factor"])
    assert "ablate toy build" in (out / "README.md").read_text()
    _load_and_run(out)


def test_check_assets_says_how_to_rebuild(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"run `ablate toy build --out .*`"):
        check_assets(tmp_path)
    assert main(["toy", "check", str(tmp_path)]) == 2
    assert "ablate toy build" in capsys.readouterr().err


def test_shipped_assets_load_and_stay_small():
    root = assets_dir()
    if not (root / "build_info.json").is_file():
        pytest.skip("no shipped toy assets: run `ablate toy build`")
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert total < 20 * 2**20
    _load_and_run(root)


def test_toy_data_command(tmp_path, capsys):
    assert main(["toy", "data", "--out", str(tmp_path / "toy"), "--scale", "0.01"]) == 0
    assert (tmp_path / "toy" / "benchmarks" / "geneval" / "evaluation_metadata.jsonl").is_file()
    assert list((tmp_path / "toy" / "shards" / "train").glob("*.tar"))


def test_build_options_are_checked_before_any_work(tmp_path):
    from ablate.toy.build import build

    with pytest.raises(ValueError, match=r"clip_target='words' is not valid; choose one of \['pixels', 'semantics'\]"):
        build(tmp_path / "assets", scale=0.005, clip_target="words")
    with pytest.raises(ValueError, match="lm_answers='yes'"):
        build(tmp_path / "assets", scale=0.005, lm_answers="yes")
    assert not any(tmp_path.iterdir())


def test_lm_answers_follow_the_generation_prompt_only():
    from transformers import AutoTokenizer

    from ablate.toy.components import chat_prompt, lm_texts

    if not (assets_dir() / "tokenizer").exists():
        pytest.skip("no shipped toy assets: run `ablate toy build`")
    tok = AutoTokenizer.from_pretrained(assets_dir() / "tokenizer")
    captions = ["a photo of a red circle", "two blue squares on a gray background"]
    plain = lm_texts(tok, captions)
    answered = lm_texts(tok, captions, ["a red circle", "two blue squares; gray background"])
    assert plain[0] == chat_prompt(tok, captions[0]) + tok.eos_token  # the prompt ends the text
    assert answered[0] == chat_prompt(tok, captions[0]) + "a red circle" + tok.eos_token
    assert answered[1] == plain[1] == tok.bos_token + captions[1] + tok.eos_token  # plain half: no answer
    with pytest.raises(ValueError, match="1 responses for 2 captions"):
        lm_texts(tok, captions, ["a red circle"])


def test_clip_trains_on_patch_semantics(tmp_path):
    from transformers import AutoTokenizer

    from ablate.toy import components as C
    from ablate.toy.scenes import SEMANTIC_CHANNELS, Scene, patch_semantics

    if not (assets_dir() / "tokenizer").exists():
        pytest.skip("no shipped toy assets: run `ablate toy build`")
    tok = AutoTokenizer.from_pretrained(assets_dir() / "tokenizer")
    images, captions, scenes = C.toy_pairs(8, 0, "train")
    sem = torch.from_numpy(np.stack([patch_semantics(Scene.from_dict(x)) for x in scenes]))
    assert sem.shape == (8, 64, SEMANTIC_CHANNELS)
    record = C.train_clip(tok, images, captions, tmp_path / "clip", steps=2, batch_size=4, hidden=32,
                          vision_layers=1, text_layers=1, semantics=sem, log=lambda m: None)
    assert record["dense_target"] == "patch semantics" and record["final_dense_loss"] > 0
    with pytest.raises(ValueError, match=r"semantics must be \[images, patches, channels\] = \[8, 64, C\]"):
        C.train_clip(tok, images, captions, tmp_path / "bad", steps=1, semantics=sem[:, :16], log=lambda m: None)


def test_lm_restatement_scores_the_greedy_answer(tiny_assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ablate.toy.components import _words_in_place, chat_prompt, lm_restatement

    assert _words_in_place("a red circle; gray background", "a red circle; gray background") == 1.0
    assert _words_in_place("a blue circle", "a red circle; gray background") == 2 / 6  # a, circle
    tok = AutoTokenizer.from_pretrained(tiny_assets / "lm")
    model = AutoModelForCausalLM.from_pretrained(tiny_assets / "lm")
    captions = ["a photo of a red circle", "two blue squares on a gray background"]
    # The reference answer is what the model itself says: scored exactly right, whatever it is.
    enc = tok(chat_prompt(tok, captions[0]), return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    own = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    r = lm_restatement(model, tok, captions[:1], [own], max_new_tokens=64)  # as long as the answer above
    assert r["exact"] == r["first_group"] == r["words"] == 1.0 and r["example"]["said"] == own
    side = tok.padding_side
    r = lm_restatement(model, tok, captions, [own + " extra", own + " extra"])
    assert r["exact"] == 0.0 and r["captions"] == 2 and tok.padding_side == side  # left as found
    with pytest.raises(ValueError, match="1 reference answers for 2 captions"):
        lm_restatement(model, tok, captions, [own])
