"""GenEval: metadata validation, the official layout, every rule of ``evaluate``, scores,
and the judge / metric runners on hand-made detections (no models)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from ablate.config import ConfigError, check_plugin_spec
from ablate.eval.scorers import geneval as G
from ablate.registry import get_registry

REAL = Path("/work/shared/data/geneval/evaluation_metadata.jsonl")
needs_real = pytest.mark.skipif(not REAL.is_file(), reason="the real GenEval file is not here")


def det(box, score=0.95, color=None):
    d = {"box": list(box), "score": score}
    if color:
        d["color"] = color
    return d


def meta(tag, include, exclude=None, prompt="a photo"):
    m = {"tag": tag, "include": include, "prompt": prompt}
    if exclude is not None:
        m["exclude"] = exclude
    return m


ONE_DOG = meta("single_object", [{"class": "dog", "count": 1}])
TWO_CLOCKS = meta("counting", [{"class": "clock", "count": 2}], [{"class": "clock", "count": 3}])
DOG_RIGHT_OF_BEAR = meta("position", [{"class": "teddy bear", "count": 1},
                                      {"class": "dog", "count": 1, "position": ["right of", 0]}])


# ---- thresholds, cap, top-count ------------------------------------------------------


def test_single_object_threshold_is_strict_0_3():
    assert G.evaluate(ONE_DOG, {"dog": [det((0, 0, 5, 5), 0.31)]}) == (True, "")
    ok, reason = G.evaluate(ONE_DOG, {"dog": [det((0, 0, 5, 5), 0.3)]})
    assert not ok and reason == "expected dog>=1, found 0"
    assert not G.evaluate(ONE_DOG, {"cat": [det((0, 0, 5, 5))]})[0]


def test_two_object_needs_both():
    m = meta("two_object", [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}])
    assert G.evaluate(m, {"dog": [det((0, 0, 5, 5))], "cat": [det((9, 9, 12, 12))]})[0]
    ok, reason = G.evaluate(m, {"dog": [det((0, 0, 5, 5))]})
    assert not ok and reason == "expected cat>=1, found 0"


def test_counting_uses_0_9_threshold_and_exclude():
    clocks = lambda *scores: {"clock": [det((i, 0, i + 1, 1), s) for i, s in enumerate(scores)]}  # noqa: E731
    assert G.evaluate(TWO_CLOCKS, clocks(0.95, 0.91))[0]
    ok, reason = G.evaluate(TWO_CLOCKS, clocks(0.95, 0.85))  # 0.85 passes 0.3, not 0.9
    assert not ok and reason == "expected clock>=2, found 1"
    as_two_object = dict(TWO_CLOCKS, tag="two_object")  # same clauses, the 0.3 threshold
    assert G.evaluate(as_two_object, clocks(0.95, 0.85))[0]
    ok, reason = G.evaluate(TWO_CLOCKS, clocks(0.95, 0.93, 0.92))  # a third clock: excluded
    assert not ok and reason == "expected clock<3, found 3"
    assert G.evaluate(TWO_CLOCKS, clocks(0.95, 0.93, 0.5))[0]  # third below 0.9 is ignored


def test_at_most_16_per_class_highest_first():
    dets = {"cup": [det((i, 0, i + 1, 1), 0.4 + i / 100) for i in range(20)]}
    kept = G.filter_detections(dets, "two_object")
    assert len(kept["cup"]) == 16
    assert [d["score"] for d in kept["cup"]] == sorted((d["score"] for d in dets["cup"]), reverse=True)[:16]
    m = meta("counting", [{"class": "cup", "count": 1}], [{"class": "cup", "count": 17}])
    assert G.evaluate(dict(m, tag="two_object"), dets)[0]  # 20 detected, 16 survive the cap
    assert G.filter_detections({"cup": [det((0, 0, 1, 1), 0.2)]}, None) == {}


def test_detection_without_box_is_a_clear_error():
    with pytest.raises(ValueError, match="needs 'box'"):
        G.evaluate(ONE_DOG, {"dog": [{"score": 0.9}]})


# ---- colour --------------------------------------------------------------------------


def test_colour_uses_only_the_top_count():
    m = meta("colors", [{"class": "car", "count": 1, "color": "blue"}])
    # Unsorted input: the red car has the higher score, so it is the one checked.
    dets = {"car": [det((0, 0, 5, 5), 0.6, "blue"), det((5, 5, 9, 9), 0.8, "red")]}
    ok, reason = G.evaluate(m, dets)
    assert not ok and reason == "expected blue car>=1, found 0 blue; and 1 red"
    assert G.evaluate(dict(m, include=[{"class": "car", "count": 1, "color": "red"}]), dets)[0]


def test_colour_all_of_count_must_match_and_missing_colour_fails():
    m = meta("color_attr", [{"class": "car", "count": 2, "color": "green"}])
    good = {"car": [det((0, 0, 1, 1), 0.9, "green"), det((2, 0, 3, 1), 0.8, "green")]}
    assert G.evaluate(m, good)[0]
    mixed = {"car": [det((0, 0, 1, 1), 0.9, "green"), det((2, 0, 3, 1), 0.8, "white")]}
    assert G.evaluate(m, mixed) == (False, "expected green car>=2, found 1 green; and 1 green, 1 white")
    unknown = {"car": [det((0, 0, 1, 1), 0.9, "green"), det((2, 0, 3, 1), 0.8)]}
    assert "1 unknown" in G.evaluate(m, unknown)[1]


# ---- position ------------------------------------------------------------------------

B = (40, 40, 60, 60)  # the target box (a teddy bear), centre (50, 50), 20 x 20


@pytest.mark.parametrize("box, relation", [
    ((0, 40, 20, 60), "left of"), ((80, 40, 100, 60), "right of"),
    ((40, 0, 60, 20), "above"), ((40, 80, 60, 100), "below"),  # y grows downward
])
def test_each_relation(box, relation):
    assert G.relative_position(box, B) == {relation}
    m = meta("position", [{"class": "teddy bear", "count": 1},
                          {"class": "dog", "count": 1, "position": [relation, 0]}])
    assert G.evaluate(m, {"teddy bear": [det(B)], "dog": [det(box)]})[0]
    right_of = G.evaluate(DOG_RIGHT_OF_BEAR, {"teddy bear": [det(B)], "dog": [det(box)]})[0]
    assert right_of == (relation == "right of")


def test_margin_of_a_tenth_of_the_summed_sizes():
    # Centre offset (-4, -2) between two 10x10 boxes: margin 0.1 * 20 = 2 per axis leaves
    # (-2, 0) / |(-4, -2)| = (-0.45, 0): no relation; without the margin (-0.89, -0.45): left.
    a, b = (0, 0, 10, 10), (4, 2, 14, 12)
    assert G.relative_position(a, b) == set()
    assert G.relative_position(a, b, margin=0.0) == {"left of"}
    # Diagonal and far: both relations.
    assert G.relative_position((0, 0, 10, 10), (90, 90, 100, 100)) == {"left of", "above"}


def test_overlapping_boxes_have_no_relation():
    assert G.relative_position((0, 0, 10, 10), (0, 0, 10, 10)) == set()
    assert G.relative_position((0, 0, 20, 20), (1, 0, 21, 20)) == set()  # offset 1 < margin 4
    ok, reason = G.evaluate(DOG_RIGHT_OF_BEAR, {"teddy bear": [det(B)], "dog": [det((42, 40, 62, 60))]})
    assert not ok and reason == "expected dog right of target, found no relation to target"
    ok, reason = G.evaluate(DOG_RIGHT_OF_BEAR, {"teddy bear": [det(B)], "dog": [det((0, 40, 20, 60))]})
    assert reason == "expected dog right of target, found left of target"


def test_position_checks_every_target_object():
    m = meta("position", [{"class": "teddy bear", "count": 2},
                          {"class": "dog", "count": 1, "position": ["right of", 0]}])
    dog = det((50, 40, 60, 50))
    bears = [det((0, 40, 10, 50), 0.9), det((80, 40, 90, 50), 0.8)]  # dog is left of the 2nd
    assert not G.evaluate(m, {"teddy bear": bears, "dog": [dog]})[0]
    assert G.evaluate(m, {"teddy bear": [bears[0], det((0, 0, 10, 10))], "dog": [dog]})[0]


def test_failed_target_group_fails_the_clause():
    ok, reason = G.evaluate(DOG_RIGHT_OF_BEAR, {"dog": [det((80, 40, 100, 60))]})
    assert not ok
    assert reason == "expected teddy bear>=1, found 0\nno target for dog to be right of"
    # A target that fails its colour is no target either.
    m = meta("position", [{"class": "teddy bear", "count": 1, "color": "red"},
                          {"class": "dog", "count": 1, "position": ["right of", 0]}])
    dets = {"teddy bear": [det(B, color="blue")], "dog": [det((80, 40, 100, 60))]}
    assert G.evaluate(m, dets)[1].endswith("no target for dog to be right of")


def test_position_is_skipped_when_the_clause_already_failed():
    m = meta("position", [{"class": "teddy bear", "count": 1},
                          {"class": "dog", "count": 1, "color": "red", "position": ["right of", 0]}])
    ok, reason = G.evaluate(m, {"teddy bear": [det(B)], "dog": [det((0, 40, 20, 60), color="blue")]})
    assert not ok and reason == "expected red dog>=1, found 0 red; and 1 blue"


# ---- scores --------------------------------------------------------------------------


def test_score_is_the_unweighted_mean_of_tags():
    results = ([{"tag": "single_object", "correct": True}] * 3
               + [{"tag": "counting", "correct": c} for c in (True, False, False, False)])
    s = G.score(results)
    assert s["tags"] == {"single_object": 1.0, "counting": 0.25}
    assert s["overall"] == pytest.approx(0.625)  # not 4/7: tags weigh equally
    assert s["image_accuracy"] == pytest.approx(4 / 7)
    assert s["counts"] == {"single_object": 3, "counting": 4} and s["num_images"] == 7
    with pytest.raises(ValueError, match="unknown tag"):
        G.score([{"tag": "spatial", "correct": True}])
    with pytest.raises(ValueError, match="no GenEval results"):
        G.score([])


def test_prompt_accuracy_groups_by_metadata():
    a, b = json.dumps(ONE_DOG), json.dumps(TWO_CLOCKS)
    results = [{"tag": "single_object", "correct": False, "metadata": a},
               {"tag": "single_object", "correct": True, "metadata": a},
               {"tag": "counting", "correct": False, "metadata": b}]
    assert G.score(results)["prompt_accuracy"] == 0.5


# ---- the metadata file ---------------------------------------------------------------


@needs_real
def test_real_metadata_loads():
    entries = G.load_metadata(REAL)
    assert len(entries) == 553
    assert Counter(e["tag"] for e in entries) == {"single_object": 80, "two_object": 99,
                                                  "counting": 80, "colors": 94,
                                                  "position": 100, "color_attr": 100}
    assert G.load_class_names(REAL.parent / "object_names.txt") == list(G.COCO_CLASSES)


@pytest.mark.parametrize("line, expected", [
    ("{not json", "not valid JSON"),
    ('{"tag": "spatial", "prompt": "x", "include": [{"class": "dog", "count": 1}]}', "tag: 'spatial'"),
    ('{"tag": "single_object", "prompt": "x"}', "include: expected a non-empty list"),
    ('{"tag": "single_object", "prompt": "", "include": [{"class": "dog", "count": 1}]}', "prompt:"),
    ('{"tag": "single_object", "prompt": "x", "include": [{"class": "dog", "count": 0}]}',
     "include[0].count: expected an integer >= 1"),
    ('{"tag": "colors", "prompt": "x", "include": [{"class": "dog", "count": 1, "color": "teal"}]}',
     "include[0].color: 'teal'"),
    ('{"tag": "position", "prompt": "x", "include": [{"class": "dog", "count": 1}, '
     '{"class": "cat", "count": 1, "position": ["behind", 0]}]}', "include[1].position: relation 'behind'"),
    ('{"tag": "position", "prompt": "x", "include": [{"class": "dog", "count": 1}, '
     '{"class": "cat", "count": 1, "position": ["above", 1]}]}', "must name an earlier include clause"),
    ('{"tag": "single_object", "prompt": "x", "include": [{"class": "dragon", "count": 1}]}',
     "include[0].class: 'dragon' is not one of the 80"),
    ('{"tag": "counting", "prompt": "x", "include": [{"class": "dog", "count": 2}], '
     '"exclude": [{"class": "dog", "count": 3, "color": "red"}]}', "exclude[0]: unknown key 'color'"),
    ('{"tag": "single_object", "prompt": "x", "include": [{"class": "dog", "count": 1}], "inclde": []}',
     "unknown key 'inclde'"),
])
def test_bad_lines_name_file_line_and_problem(tmp_path, line, expected):
    (tmp_path / "object_names.txt").write_text("\n".join(G.COCO_CLASSES) + "\n")
    path = tmp_path / "meta.jsonl"
    path.write_text(json.dumps(ONE_DOG) + "\n\n" + line + "\n")  # line 3 (a blank line 2)
    with pytest.raises(ValueError) as info:
        G.load_metadata(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and expected in message, message


def test_any_class_name_without_object_names_file(tmp_path):
    path = tmp_path / "toy.jsonl"
    path.write_text(json.dumps(meta("single_object", [{"class": "triangle", "count": 1}])) + "\n")
    assert G.load_metadata(path)[0]["include"][0]["class"] == "triangle"


def test_subset_is_fixed_and_stratified():
    entries = [meta(t, [{"class": "dog", "count": 1}]) for t in G.TAGS for _ in range(10)]
    chosen = G.subset_indices(entries, 12)
    assert chosen == G.subset_indices(entries, 12) and len(set(chosen)) == 12
    assert Counter(entries[i]["tag"] for i in chosen) == {t: 2 for t in G.TAGS}
    assert G.subset_indices(entries, None) == list(range(60))
    assert sorted({entries[i]["tag"] for i in G.subset_indices(entries[::-1], 6)}) == sorted(G.TAGS)


def test_sample_seed_is_stable_and_distinct():
    seeds = {G.sample_seed(p, s) for p in range(553) for s in range(4)}
    assert len(seeds) == 553 * 4 and G.sample_seed(2, 3) == 2003 and G.sample_seed(2, 3, base=7) == 2010


# ---- layout and runners --------------------------------------------------------------


def _images(n, size=(16, 12)):
    return [Image.new("RGB", size, (40 * i, 0, 0)) for i in range(n)]


def test_layout_round_trip(tmp_path):
    metas = [ONE_DOG, TWO_CLOCKS]
    G.write_layout(tmp_path, metas, [_images(4), _images(4)], indices=[7, 123])
    assert (tmp_path / "00123" / "samples" / "0003.png").is_file()
    assert json.loads((tmp_path / "00007" / "metadata.jsonl").read_text()) == ONE_DOG
    (tmp_path / "00007" / "samples" / "grid.png").write_bytes(b"")  # ignored, as officially
    (tmp_path / "logs").mkdir()
    entries = G.read_layout(tmp_path)
    assert [e.index for e in entries] == [7, 123]
    assert [e.metadata for e in entries] == metas
    assert [p.name for p in entries[0].images] == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert G.load_image(entries[1].images[2]).getpixel((0, 0)) == (80, 0, 0)
    with pytest.raises(ValueError, match="3 image lists"):
        G.write_layout(tmp_path, metas, [_images(1)] * 3)


class BoxJudge:
    """A stand-in detector: one 'dog' per image whose score is read from the red channel."""

    def __init__(self):
        self.calls = []

    def detect(self, images, metadata):
        self.calls.append(len(images))
        return [{"dog": [det((0, 0, 4, 4), im.getpixel((0, 0))[0] / 255)]} for im in images]


def test_judge_layout_writes_official_style_results(tmp_path):
    G.write_layout(tmp_path / "img", [ONE_DOG], [_images(4)])  # red 0, 40, 80, 120
    judge = BoxJudge()
    summary = G.judge_layout(judge, tmp_path / "img", tmp_path / "results.jsonl", batch_size=3)
    assert judge.calls == [3, 1]
    records = G.read_results(tmp_path / "results.jsonl")
    assert [r["correct"] for r in records] == [False, False, True, True]  # 80/255 > 0.3
    assert set(records[0]) >= {"filename", "tag", "prompt", "correct", "reason", "metadata"}
    assert json.loads(records[0]["metadata"]) == ONE_DOG
    assert summary["overall"] == 0.5 and summary["tags"] == {"single_object": 0.5}


class FolderJudge:
    scores_folders = True

    def evaluate_folder(self, image_dir, results_path):
        records = [G.result_record(p, e.metadata, True, "") for e in G.read_layout(image_dir)
                   for p in e.images]
        G.write_results(results_path, records)
        return records


def test_judge_layout_hands_folders_to_folder_judges(tmp_path):
    G.write_layout(tmp_path / "img", [ONE_DOG, TWO_CLOCKS], [_images(1), _images(2)])
    summary = G.judge_layout(FolderJudge(), tmp_path / "img", tmp_path / "r.jsonl")
    assert summary["tags"] == {"single_object": 1.0, "counting": 1.0}


class RecordingGenerator:
    def __init__(self):
        self.seeds, self.prompts = [], []

    def images(self, prompts, seeds):
        self.prompts += prompts
        self.seeds += seeds
        return [Image.new("RGB", (8, 8), (255 if s % 2 else 0, 0, 0)) for s in seeds]


def test_metric_generates_judges_and_scores(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in [ONE_DOG, TWO_CLOCKS, ONE_DOG]))
    metric = get_registry("metric").build({"name": "geneval", "prompts": str(prompts),
                                           "max_prompts": 2, "batch_size": 3}, judge=BoxJudge())
    gen = RecordingGenerator()
    values = metric.compute(gen, tmp_path / "out")
    chosen = G.subset_indices(G.load_metadata(prompts), 2)
    assert gen.seeds == [G.sample_seed(i, s) for i in chosen for s in range(4)]
    # odd seeds give score 1.0 dogs: half of each prompt's images are correct.
    assert values == {"geneval/overall": 0.25, "geneval/single_object": 0.5, "geneval/counting": 0.0}
    root = tmp_path / "out" / "geneval"
    assert len(G.read_results(root / "results.jsonl")) == 8
    assert json.loads((root / "summary.json").read_text())["overall"] == 0.25


def test_metric_config_is_validated_early():
    check_plugin_spec("metric", {"name": "geneval", "prompts": "p.jsonl"}, "eval.metrics[0]")
    with pytest.raises(ConfigError, match="unknown judge 'mask2formr'"):
        check_plugin_spec("metric", {"name": "geneval", "prompts": "p.jsonl",
                                     "judge": {"name": "mask2formr"}}, "eval.metrics[0]")
    with pytest.raises(ConfigError, match="images_per_prompt must be >= 1"):
        check_plugin_spec("metric", {"name": "geneval", "prompts": "p", "images_per_prompt": 0}, "m")
