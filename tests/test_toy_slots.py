"""The toy world setting (``world: free | slots``): the slots world's geometry, and the setting
read and recorded by every writer (scenes, shards, benchmarks, toy data, build)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from ablate.toy import benchmarks as B
from ablate.toy.judges import validate
from ablate.toy.scenes import (
    SLOT_LAYOUTS,
    SLOT_SIDES,
    WORLDS,
    Scene,
    clear_pairs,
    make_dataset,
    render,
    sample_rng,
    sample_scene,
)

CLIP_GRID, VAE_GRID = 8, 16  # the shipped toy CLIP's token grid and toy VAE's latent grid (64 px)


def _slots_scenes(n=300):
    return [sample_scene(sample_rng(i, 0, "train"), world="slots") for i in range(n)]


def test_slots_objects_are_large_and_sit_in_slots():
    scenes = _slots_scenes()
    layouts = Counter()
    for scene in scenes:
        n = len(scene.objects)
        centres = sorted((o.x, o.y) for o in scene.objects)
        assert centres in [sorted(layout) for layout in SLOT_LAYOUTS[n]], scene
        layouts[(n, tuple(centres))] += 1
        for o in scene.objects:
            assert o.side == SLOT_SIDES["alone" if n == 1 else "shared"][o.size]
            x0, y0, x1, y1 = o.box(1)
            assert 0.02 <= x0 and x1 <= 0.98 and 0.02 <= y0 and y1 <= 0.98  # a background border
        if n == 1:  # the aim: >= 4x4 tokens of the CLIP grid and >= 8x8 cells of the VAE grid
            assert scene.objects[0].side * CLIP_GRID >= 4 and scene.objects[0].side * VAE_GRID >= 8
        else:
            assert min(o.side for o in scene.objects) * VAE_GRID >= 6
    assert len(layouts) == sum(len(v) for v in SLOT_LAYOUTS.values())  # every layout occurs


def test_slots_pairs_on_one_axis_have_exactly_one_relation():
    for scene in _slots_scenes(200):
        pairs = clear_pairs(scene)
        for a, rel, b in pairs:
            assert (a.y == b.y) == (rel in ("left of", "right of"))
        if len(scene.objects) == 2:
            assert len(pairs) == 1  # left / right or above / below, never diagonal
        if len(scene.objects) == 4:
            assert len(pairs) == 4  # the four row / column neighbours; diagonals are ambiguous


def test_free_world_scene_json_is_unchanged_and_slots_json_records_the_world():
    free = sample_scene(np.random.default_rng(7), world="free")
    assert set(free.to_dict()) == {"background", "objects"}  # as before worlds were named
    assert all(set(o) == {"shape", "color", "size", "x", "y"} for o in free.to_dict()["objects"])
    slots = sample_scene(np.random.default_rng(7), world="slots")
    d = json.loads(slots.to_json())
    assert d["world"] == "slots" and all("side" in o for o in d["objects"])
    again = Scene.from_dict(d)
    assert again == slots and np.array_equal(np.asarray(render(again)), np.asarray(render(slots)))


def test_unknown_world_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"world 'grid' is not valid; choose one of \['free', 'slots'\]"):
        sample_scene(np.random.default_rng(0), world="grid")
    with pytest.raises(ValueError, match="world 'grid'"):
        next(make_dataset(1, world="grid"))
    from ablate.toy.build import build

    with pytest.raises(ValueError, match="world 'grid'"):
        build(tmp_path / "assets", scale=0.005, world="grid")
    assert not any(tmp_path.iterdir())


def test_shards_and_benchmarks_record_their_world(tmp_path):
    import webdataset as wds

    from ablate.toy.shards import shard_urls, write_shards

    shards = write_shards(tmp_path / "shards", n_train=6, n_validation=2, shard_size=10, world="slots")
    assert json.loads((tmp_path / "shards" / "toy_world.json").read_text())["world"] == "slots"
    for sample in wds.WebDataset(shard_urls(shards["train"]), shardshuffle=False).decode("pil"):
        assert Scene.from_dict(sample["json"]).world == "slots"
    files = B.write_benchmarks(tmp_path / "bench", n_geneval=6, n_dpg=3, n_mjhq=3, world="slots")
    assert json.loads(files["record"].read_text())["world"] == "slots"
    free = B.write_benchmarks(tmp_path / "bench_free", n_geneval=6, n_dpg=3, n_mjhq=3, world="free")
    assert json.loads(free["record"].read_text())["world"] == "free"
    # The same GenEval prompts in both worlds; DPG prompts describe the world's own scenes.
    assert files["geneval"].read_text() == free["geneval"].read_text()
    assert "in the center" in " ".join(it["text"] for it in B.dpg_items(20, 0, "slots"))


def test_toy_data_follows_the_assets_world(tmp_path, monkeypatch):
    from ablate.toy import build, demo

    assets = tmp_path / "assets"
    assets.mkdir()
    assert build.assets_world(assets) == "free"  # assets from before worlds were named
    (assets / "build_info.json").write_text(json.dumps({"world": "slots"}))
    assert build.assets_world(assets) == "slots"
    monkeypatch.setattr(build, "assets_dir", lambda: assets)
    sizes = {"n_train": 8, "n_validation": 8, "n_geneval": 8, "n_dpg": 8, "n_mjhq": 8}
    out = demo.prepare_toy_data(tmp_path / "toy", **sizes)
    assert json.loads((out / "toy_data.json").read_text())["world"] == "slots"
    assert json.loads((out / "shards" / "toy_world.json").read_text())["world"] == "slots"
    assert json.loads((out / "benchmarks" / "toy_world.json").read_text())["world"] == "slots"
    demo.prepare_toy_data(tmp_path / "toy", world="free", **sizes)  # another world: rewritten
    assert json.loads((out / "shards" / "toy_world.json").read_text())["world"] == "free"


def test_toy_data_short_fraction_sets_the_caption_mix_and_is_recorded(tmp_path, capsys):
    import tarfile

    from ablate.cli import main

    main(["toy", "data", "--out", str(tmp_path / "short"), "--scale", "0.004", "--short-fraction", "1"])
    record = json.loads((tmp_path / "short" / "toy_data.json").read_text())
    assert record["short_fraction"] == 1.0
    assert json.loads((tmp_path / "short" / "shards" / "toy_world.json").read_text())["short_fraction"] == 1.0
    with tarfile.open(next((tmp_path / "short" / "shards" / "train").glob("*.tar"))) as tar:
        captions = [tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt")]
    assert captions and all(len(c.split()) <= 30 for c in captions)  # no detailed caption (40-120 words)
    with pytest.raises(SystemExit, match="--short-fraction: 1.5"):
        main(["toy", "data", "--out", str(tmp_path / "bad"), "--short-fraction", "1.5"])


@pytest.mark.parametrize("world", WORLDS)
def test_judges_on_clean_renders_of_each_world(world):
    acc = validate(n=60, seed=1, corrupt="none", world=world)
    print(f"toy judges, {world} world, clean:", acc)
    assert all(v >= 0.98 for v in acc.values()), acc


@pytest.mark.parametrize("kind", ["blur+noise", "jpeg"])
def test_judges_on_corrupted_renders_of_the_slots_world(kind):
    acc = validate(n=30, seed=2, corrupt=kind, world="slots")
    assert all(v >= 0.9 for v in acc.values()), acc


def test_the_default_world_is_the_shipped_assets_world():
    from ablate.toy import build, scenes

    assert scenes.DEFAULT_WORLD == "slots" == build.assets_world()  # what `ablate demo` renders
    info = json.loads((build.assets_dir() / "build_info.json").read_text())
    assert info["options"]["lm_answers"] == "restatement"  # the build's default, so a rebuild reproduces it
    assert sample_scene(np.random.default_rng(0)).world == "slots"
