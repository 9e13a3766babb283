"""The toy world: renderer, captions, dataset splits, benchmark files and shards."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ablate.toy import benchmarks as B
from ablate.toy.scenes import (
    BACKGROUND_WORDS,
    BACKGROUNDS,
    COLORS,
    GAP,
    MARGIN,
    SEMANTIC_CHANNELS,
    SHAPES,
    SIZES,
    WORLDS,
    Obj,
    Scene,
    caption,
    ground_truth_detections,
    make_dataset,
    patch_semantics,
    plural,
    relations,
    render,
    restatement,
    sample_scene,
)

# The real GenEval prompt file, next to the repository (see docs/reference.md).
REAL_GENEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "geneval" / "evaluation_metadata.jsonl"


def _pixels(scene, size=64):
    return np.asarray(render(scene, size))


# ----------------------------------------------------------------------------- renderer


def test_same_seed_same_pixels_different_seed_differs():
    a = _pixels(sample_scene(np.random.default_rng(7)))
    b = _pixels(sample_scene(np.random.default_rng(7)))
    c = _pixels(sample_scene(np.random.default_rng(8)))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_render_size_is_configurable_and_antialiased():
    scene = sample_scene(np.random.default_rng(1))
    img = render(scene, 128)
    assert img.size == (128, 128) and img.mode == "RGB"
    # Antialiasing leaves in-between colours on the edges, not just background + palette.
    palette = {tuple(c) for c in COLORS.values()} | {(128, 128, 128)}
    assert len({tuple(p) for p in np.asarray(img).reshape(-1, 3)} - palette) > 10


def test_scenes_are_valid_and_round_trip():
    """The free world's grammar (the slots world's: tests/test_toy_slots.py)."""
    rng = np.random.default_rng(3)
    sizes = Counter()
    for _ in range(300):
        scene = sample_scene(rng, world="free")
        assert 1 <= len(scene.objects) <= 4
        boxes = [o.box(1) for o in scene.objects]
        for i, a in enumerate(boxes):
            assert MARGIN - 1e-9 <= a[0] and a[2] <= 1 - MARGIN + 1e-9
            assert MARGIN - 1e-9 <= a[1] and a[3] <= 1 - MARGIN + 1e-9
            for b in boxes[i + 1:]:  # boxes apart by at least GAP on some axis
                assert a[2] + GAP <= b[0] + 1e-9 or b[2] + GAP <= a[0] + 1e-9 or \
                    a[3] + GAP <= b[1] + 1e-9 or b[3] + GAP <= a[1] + 1e-9
        assert Scene.from_dict(scene.to_json()) == scene
        sizes.update(o.size for o in scene.objects)
    assert set(sizes) == {"small", "medium", "large"}


def test_ground_truth_detections_describe_the_scene():
    scene = sample_scene(np.random.default_rng(5), n_objects=3)
    dets = ground_truth_detections(scene, 64)
    assert sum(len(v) for v in dets.values()) == 3
    for o in scene.objects:
        (d,) = [d for d in dets[o.shape] if d["box"] == o.box(64)]
        assert d["score"] == 1.0 and d["color"] == o.color


def test_relations_follow_geneval_rule():
    left, right = [0, 0, 10, 10], [20, 0, 30, 10]
    assert relations(left, right) == ["left of"] and relations(right, left) == ["right of"]
    assert relations([0, 0, 10, 10], [0, 20, 10, 30]) == ["above"]
    assert relations([0, 0, 10, 10], [1, 1, 11, 11]) == []  # offset within the 10 % margin


# ----------------------------------------------------------------------------- captions, splits


def _mentions_all_shapes(text, scene):
    return all(re.search(rf"\b({s}|{plural(s)})\b", text) for s in scene.counts())


def test_captions_mention_objects_and_have_the_right_length():
    rng = np.random.default_rng(11)
    short_len, long_len = [], []
    for _ in range(200):
        scene = sample_scene(rng)
        short, long = caption(scene, rng, "short"), caption(scene, rng, "detailed")
        assert _mentions_all_shapes(short, scene) and _mentions_all_shapes(long, scene), (short, long)
        assert all(o.color in long for o in scene.objects)
        assert BACKGROUND_WORDS[scene.background] in long
        short_len.append(len(short.split()))
        long_len.append(len(long.split()))
    assert 4 <= min(short_len) and max(short_len) <= 30 and np.mean(short_len) >= 8
    assert 30 <= min(long_len) and max(long_len) <= 130
    with pytest.raises(ValueError):
        caption(scene, rng, "poem")


def test_restatement_says_what_the_caption_says():
    scene = Scene([Obj("circle", "red", "small", 0.25, 0.5), Obj("square", "blue", "large", 0.75, 0.5)], "sky")
    rng = np.random.default_rng(0)
    detailed = caption(scene, rng, "detailed")
    said = restatement(scene, detailed)
    assert said.startswith("a small red circle and a large blue square")
    assert "red circle left of blue square" in said and said.endswith("light blue background")
    # no colour in the caption -> none in the restatement ("light blue" is the background)
    assert restatement(scene, "a photo of a circle and a square") == "a circle and a square"
    one = Scene([Obj("star", "green", "medium", 0.5, 0.5)], "sky")
    assert restatement(one, "a star on a light blue background") == "a star; light blue background"
    assert restatement(one, "a photo of a green star") == "a green star"
    assert restatement(one.to_dict(), "two stars") == "a star"  # the scene's counts, not the text's


def test_patch_semantics_give_each_object_one_code():
    obj = Obj("triangle", "purple", "large", 0.3, 0.7)
    sem = patch_semantics(Scene([obj], "mint"), side=8).reshape(8, 8, SEMANTIC_CHANNELS)
    assert sem.shape == (8, 8, SEMANTIC_CHANNELS)
    bg = sem[..., -len(BACKGROUNDS):]
    assert (bg[..., list(BACKGROUNDS).index("mint")] == 1).all() and bg.sum() == 64
    weight = sem[..., SHAPES.index("triangle")]
    assert weight[int(0.7 * 8), int(0.3 * 8)] == 1.0  # the patch under the centre is covered
    assert (weight > 0).sum() >= 4 and weight[0, 7] == 0  # the object's patches only
    covered = weight > 0
    code = sem[covered][:, :-len(BACKGROUNDS)] / weight[covered][:, None]  # the same vector everywhere
    assert np.allclose(code, code[0], atol=1e-5)
    color_at, size_at = len(SHAPES), len(SHAPES) + len(COLORS)
    assert code[0, color_at + list(COLORS).index("purple")] == 1
    assert code[0, size_at + list(SIZES).index("large")] == 1
    assert np.allclose(code[0, size_at + len(SIZES):], [2 * 0.3 - 1, 2 * 0.7 - 1])
    assert code[0, :len(SHAPES)].sum() == 1 and code[0, color_at:size_at].sum() == 1
    empty = patch_semantics(Scene([], "gray"), side=4)
    assert empty.shape == (16, SEMANTIC_CHANNELS) and empty[:, :-len(BACKGROUNDS)].sum() == 0


def test_dataset_is_deterministic_and_splits_are_disjoint():
    first = list(make_dataset(30, seed=0, split="train"))
    again = list(make_dataset(10, seed=0, split="train", start=20))
    assert [c for _, c, _ in first[20:]] == [c for _, c, _ in again]
    assert np.array_equal(np.asarray(first[25][0]), np.asarray(again[5][0]))
    # free-world positions are continuous, so scenes from disjoint seed streams never repeat
    train = {json.dumps(s, sort_keys=True) for _, _, s in make_dataset(100, 0, "train", world="free")}
    val = {json.dumps(s, sort_keys=True) for _, _, s in make_dataset(100, 0, "validation", world="free")}
    assert len(train) == 100 and not train & val
    # the slots world has finitely many scenes (a one-object scene is one of 840): the streams
    # differ, though a scene may occur in both
    slots = [[json.dumps(s, sort_keys=True) for _, _, s in make_dataset(50, 0, split)] for split in ("train", "validation")]
    assert slots[0] != slots[1] and len(set(slots[0]) & set(slots[1])) < 10
    styles = Counter(len(c.split()) > 30 for _, c, _ in first)
    assert styles[True] and styles[False]  # a mix of detailed and short captions


# ----------------------------------------------------------------------------- benchmarks


@pytest.fixture(scope="module", params=WORLDS)
def bench_dir(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"toybench_{request.param}")
    B.write_benchmarks(out, seed=0, n_geneval=60, n_dpg=24, n_mjhq=24, world=request.param)
    return out


def _world(bench_dir):
    world = json.loads((bench_dir / "toy_world.json").read_text())["world"]
    assert world in WORLDS
    return world


def _structure(item):
    return (item["tag"], tuple(sorted(item)), tuple(tuple(sorted(c)) for c in item["include"]),
            tuple(tuple(sorted(c)) for c in item.get("exclude", [])))


def test_geneval_file_has_the_real_format(bench_dir):
    geneval = pytest.importorskip("ablate.eval.scorers.geneval")
    items = geneval.load_metadata(bench_dir / "geneval" / "evaluation_metadata.jsonl")  # validates
    assert {i["tag"] for i in items} == set(B.GENEVAL_TAGS) and len(items) == 60
    if REAL_GENEVAL.is_file():  # same keys per tag as the real file
        real_shapes = {_structure(json.loads(line)) for line in REAL_GENEVAL.read_text().splitlines()}
        assert all(_structure(item) in real_shapes for item in items)
    for item in items:
        assert item["prompt"].startswith("a photo of ")
        assert all(c["class"] in SHAPES for c in item["include"])
        if item["tag"] == "counting":
            assert item["exclude"] == [{"class": item["include"][0]["class"], "count": item["include"][0]["count"] + 1}]
    assert B._tag_counts(553) == list(B.GENEVAL_REAL_COUNTS)


def _geneval_ok(item, detections):
    try:
        from ablate.eval.scorers.geneval import evaluate
    except ImportError:  # the scorer is not there: check counts and colours directly
        ok = all(len([d for d in detections.get(c["class"], []) if "color" not in c or d["color"] == c["color"]])
                 >= c["count"] for c in item["include"])
        return ok, ""
    return evaluate(item, detections)


def test_geneval_ground_truth_scenes_pass_with_perfect_and_toy_detections(bench_dir):
    from ablate.toy.judges import ToyDetector

    detector, rng, world = ToyDetector(), np.random.default_rng(0), _world(bench_dir)
    for item in B.geneval_items(60, seed=1):
        scene = B.scene_for_geneval(item, rng, world)
        assert scene.world == world
        assert _geneval_ok(item, ground_truth_detections(scene))[0], item
        ok, reason = _geneval_ok(item, detector.detect_one(render(scene)))
        assert ok, (item["prompt"], reason, scene)


def _wrong(item):
    """The item with its colour, count or relation changed: its scene must fail ``item``."""
    wrong = json.loads(json.dumps(item))
    clause = wrong["include"][-1]
    if "color" in clause:
        clause["color"] = next(c for c in COLORS if c != clause["color"])
    elif "position" in clause:
        flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        clause["position"][0] = flip[clause["position"][0]]
    elif item["tag"] == "counting":
        clause["count"] += 1 if clause["count"] < 4 else -1
        wrong["exclude"] = [{"class": clause["class"], "count": clause["count"] + 1}]
    else:
        return None
    return wrong


def test_geneval_wrong_scenes_fail(bench_dir):
    from ablate.toy.judges import ToyDetector

    detector, rng, world = ToyDetector(), np.random.default_rng(2), _world(bench_dir)
    for item in B.geneval_items(40, seed=3):
        wrong = _wrong(item)
        if wrong is not None:
            scene = B.scene_for_geneval(wrong, rng, world)
            assert not _geneval_ok(item, detector.detect_one(render(scene)))[0], (item, scene)


def test_dpg_files_read_back_and_questions_chain(bench_dir):
    dpg = pytest.importorskip("ablate.eval.scorers.dpg")
    items = dpg.read_dpg_bench(bench_dir / "dpg_bench")
    assert len(items) == 24
    broad = Counter()
    for item in items:
        ids = [q.proposition_id for q in item.questions]
        assert ids == list(range(1, len(ids) + 1))
        for q in item.questions:
            assert all(p < q.proposition_id for p in q.parents)  # parents come first (0 = none)
            assert B.parse_question(q.question) is not None, q.question
            broad[q.category_broad] += 1
        assert item.prompt and len(item.prompt.split()) >= 30
    assert set(broad) >= {"entity", "attribute", "relation", "global"}
    assert broad["entity"] and broad["attribute"] and broad["relation"]


def test_dpg_ground_truth_scenes_answer_yes(bench_dir):
    from ablate.toy.judges import ToyVQA

    vqa, rng, world = ToyVQA(), np.random.default_rng(0), _world(bench_dir)
    items = B.read_dpg(bench_dir / "dpg_bench" / "dpg_bench.csv")
    assert any("other" == r["category_broad"] for it in B.dpg_items(40, 0, world) for r in it["rows"])  # counts
    for item in items:
        scene = B.scene_for_dpg(item, rng, world)
        assert scene.world == world
        assert vqa.answer_one(render(scene), item["questions"]) == ["yes"] * len(item["questions"]), item


def test_mjhq_reference_folder(bench_dir):
    meta = json.loads((bench_dir / "mjhq" / "meta_data.json").read_text())
    assert len(meta) == 24
    for image_id, entry in meta.items():
        assert set(entry) == {"category", "prompt"} and entry["prompt"]
        assert (bench_dir / "mjhq" / entry["category"] / f"{image_id}.jpg").is_file()


# ----------------------------------------------------------------------------- shards


def test_shards_are_readable_by_webdataset(tmp_path):
    import webdataset as wds

    from ablate.toy.shards import shard_urls, write_shards

    shards = write_shards(tmp_path, n_train=25, n_validation=7, shard_size=10)
    assert [p.name for p in shards["train"]] == ["shards-00000.tar", "shards-00001.tar", "shards-00002.tar"]
    samples = list(wds.WebDataset(shard_urls(shards["train"]), shardshuffle=False).decode("pil"))
    assert len(samples) == 25
    first = samples[0]
    assert first["jpg"].size == (64, 64) and isinstance(first["txt"], str)
    scene = Scene.from_dict(first["json"])
    assert _mentions_all_shapes(first["txt"], scene)
    # The project's own webdataset reader takes the same files.
    from ablate.registry import get_registry

    source = get_registry("dataset").build({"name": "webdataset", "urls": str(tmp_path / "validation" / "*.tar")})
    records = [r for unit in source.units() for r in source.read(unit)]
    assert len(records) == 7 and not [r for r in records if "error" in r]
    again = write_shards(tmp_path / "again", n_train=25, n_validation=7, shard_size=10)
    assert again["train"][0].read_bytes() == shards["train"][0].read_bytes()  # deterministic
