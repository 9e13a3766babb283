"""`ablate toy build` at a tiny scale: every asset is trained, saved and loads back through
the same from_pretrained paths the study uses."""

import json

from ablate.cli import main
from ablate.registry import get_registry
from ablate.toy.build import ASSETS, check_assets


def test_toy_build_tiny_scale(tmp_path):
    out = tmp_path / "assets"
    assert main(["toy", "build", "--out", str(out), "--scale", "0.005", "--threads", "2"]) == 0
    paths = check_assets(out)
    assert set(paths) == set(ASSETS)
    info = json.loads((out / "build_info.json").read_text())
    assert set(info["assets"]) == set(ASSETS) and info["provenance"]["packages"]["torch"]
    assert 0.0 <= info["quality"]["clip_retrieval"]["image_to_text_top1"] <= 1.0
    enc = get_registry("encoder").build({"name": "clip", "model": str(paths["clip"]), "grid": 8,
                                         "decoder": str(paths["clip_decoder"]), "decoder_steps": 2})
    assert enc.grid_shape[1:] == (8, 8) and enc.resolution == 64
    vae = get_registry("encoder").build({"name": "vae", "model": str(paths["vae"]), "subfolder": None,
                                         "resolution": 64})
    assert vae.grid_shape == (4, 16, 16)


def test_toy_data_command(tmp_path, capsys):
    assert main(["toy", "data", "--out", str(tmp_path / "toy"), "--scale", "0.01"]) == 0
    assert (tmp_path / "toy" / "benchmarks" / "geneval" / "evaluation_metadata.jsonl").is_file()
    assert list((tmp_path / "toy" / "shards" / "train").glob("*.tar"))
