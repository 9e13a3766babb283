"""Toy judges: accuracy against the renderer's ground truth, scores, question forms, plugins."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ablate.toy.judges import ToyDetector, ToyVQA, corrupt_image, validate
from ablate.toy.scenes import Obj, Scene, render, sample_scene

METRICS = ("presence", "count", "color", "relation", "vqa_yes", "vqa_no")


def test_clean_accuracy():
    acc = validate(n=60, seed=1, corrupt="none")
    print("toy judges, clean:", acc)
    assert all(acc[k] >= 0.95 for k in METRICS), acc
    assert acc["count@0.9"] >= 0.95  # GenEval's counting threshold


@pytest.mark.parametrize("kind", ["blur", "noise", "blur+noise"])
def test_corrupted_accuracy(kind):
    acc = validate(n=30, seed=2, corrupt=kind)
    print(f"toy judges, {kind}:", acc)
    assert all(acc[k] >= 0.9 for k in METRICS), acc


def test_corrupt_is_deterministic_and_changes_pixels():
    img = render(sample_scene(np.random.default_rng(0)))
    a = corrupt_image(img, "blur+noise", np.random.default_rng(4))
    b = corrupt_image(img, "blur+noise", np.random.default_rng(4))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(img))
    assert np.array_equal(np.asarray(corrupt_image(img, "none")), np.asarray(img))


def test_scores_reflect_confidence():
    det = ToyDetector()
    scene = Scene([Obj("star", "red", "large", 0.3, 0.3), Obj("ring", "white", "medium", 0.7, 0.7)], "gray")
    found = det.detect_one(render(scene))
    assert sorted(found) == ["ring", "star"]
    assert all(d["score"] > 0.95 for v in found.values() for d in v)
    assert found["ring"][0]["color"] == "white" and found["star"][0]["color"] == "red"
    box = found["star"][0]["box"]
    assert abs((box[0] + box[2]) / 2 - 0.3 * 64) < 1.5 and abs((box[1] + box[3]) / 2 - 0.3 * 64) < 1.5
    assert det.detect_one(Image.new("RGB", (64, 64), (128, 128, 128))) == {}
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert not [d for v in det.detect_one(noise).values() for d in v if d["score"] > 0.3]


def test_vqa_question_forms():
    scene = Scene([Obj("triangle", "red", "medium", 0.25, 0.5), Obj("circle", "blue", "medium", 0.75, 0.5),
                   Obj("circle", "blue", "small", 0.75, 0.15)], "sky")
    image = render(scene)
    qa = {
        "Is there a triangle?": "yes", "is there an orange triangle?": "no", "Is there a red triangle?": "yes",
        "Is there a star?": "no", "Are there two circles?": "yes", "Are there three circles?": "no",
        "Is the triangle red?": "yes", "Is the triangle green?": "no",
        "Is the red triangle left of the blue circle?": "yes", "Is the triangle right of the circle?": "no",
        "Is the background light blue?": "yes", "Is the background gray?": "no",
        "Is the sky beautiful?": "no",  # outside the grammar: never "yes"
    }
    assert ToyVQA().answer([image], [list(qa)]) == [list(qa.values())]


def test_judge_plugins():
    from ablate.registry import get_registry

    registry = get_registry("judge")
    assert {"toy-detector", "toy-vqa"} <= set(registry.names())
    detector = registry.build({"name": "toy-detector", "min_score": 0.1})
    vqa = registry.build("toy-vqa")
    assert callable(detector.detect) and callable(vqa.answer)  # the judge protocols
    scene = sample_scene(np.random.default_rng(9), n_objects=2)
    out = detector.detect([render(scene)] * 2, [{}, {}])
    assert len(out) == 2 and sum(len(v) for v in out[0].values()) == 2
    assert vqa.answer([render(scene)], [[f"Is there a {scene.objects[0].shape}?"]]) == [["yes"]]
    with pytest.raises(ValueError):
        vqa.answer([render(scene)], [])
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        registry.build({"name": "toy-detector", "min_score": 2.0})
