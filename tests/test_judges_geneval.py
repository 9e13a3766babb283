"""GenEval judges: Mask2Former + CLIP colours on tiny random models saved with
``save_pretrained`` and loaded through the judge's own config (the real-weights path), and
the external-command judge in its three modes and its failures."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from ablate.config import ConfigError
from ablate.eval.scorers import geneval as G
from ablate.registry import get_registry

LABELS = ["person", "dog", "car", "mouse", "teddy bear"]  # "mouse": the COCO/detectron2 name


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    root = tmp_path_factory.mktemp("tiny")
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 2, 2], window_size=4,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32,
                               hidden_dim=32, encoder_feedforward_dim=64, encoder_layers=1,
                               decoder_layers=2, num_attention_heads=2, dim_feedforward=64,
                               num_queries=10, id2label=dict(enumerate(LABELS)),
                               label2id={n: i for i, n in enumerate(LABELS)})
    Mask2FormerForUniversalSegmentation(config).save_pretrained(root / "m2f")
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 96},
                              size_divisor=32).save_pretrained(root / "m2f")

    # A character-level CLIP tokenizer: byte-level BPE with an empty merge list.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz-":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                           crop_size={"height": 32, "width": 32}),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=[]))
    clip = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2),
        projection_dim=16)
    CLIPModel(clip).save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    return root


@pytest.fixture(scope="module")
def judge(tiny_dirs):
    # score_threshold 0: random weights give low scores; keep them to see the structure.
    return get_registry("judge").build({
        "name": "mask2former", "model": str(tiny_dirs / "m2f"), "clip_model": str(tiny_dirs / "clip"),
        "size": {"shortest_edge": 64, "longest_edge": 96}, "device": "cpu", "score_threshold": 0.0,
        "batch_size": 2})


def _noise(size, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8))


COLOR_META = {"tag": "color_attr", "prompt": "a photo of a red dog and a blue car",
              "include": [{"class": "dog", "count": 1, "color": "red"},
                          {"class": "car", "count": 1, "color": "blue"}]}


def test_mask2former_detections_structure(judge):
    assert judge.names[3] == "computer mouse"  # label mapped to GenEval's name
    images = [_noise((100, 70), 0), _noise((64, 64), 1), _noise((50, 90), 2)]
    metas = [COLOR_META, {"tag": "single_object", "prompt": "x", "include": [{"class": "dog", "count": 1}]},
             COLOR_META]
    out = judge.detect(images, metas)
    assert len(out) == 3
    assert any(out), "with threshold 0 the random model should return something"
    for image, meta, dets in zip(images, metas, out):
        w, h = image.size
        for cls, items in dets.items():
            assert cls in G.COCO_CLASSES and 1 <= len(items) <= 16
            scores = [d["score"] for d in items]
            assert scores == sorted(scores, reverse=True)
            for d in items:
                assert set(d) <= {"box", "score", "color"} and isinstance(d["score"], float)
                x0, y0, x1, y1 = d["box"]
                assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and 0 <= d["score"] <= 1
                asked = any(c["class"] == cls and "color" in c for c in meta["include"])
                assert ("color" in d) == asked and d.get("color", "red") in G.COLORS
        G.evaluate(meta, dets)  # the output is what the rules take
    json.dumps(out)  # plain floats / strings only: it goes into results.jsonl


def test_mask2former_masks_map_back_through_padding(judge):
    import torch

    # One query, surely a "dog"; its mask (at 1/4 of the padded 64x96 input) covers rows
    # 4..7 and columns 5..9 of the valid 16x20 part, i.e. input pixels rows 16..32 and
    # columns 20..40 of the valid 64x80 part; the original image is twice that size.
    class_logits = torch.full((1, len(LABELS) + 1), -10.0)
    class_logits[0, 1] = 10.0
    mask_logits = torch.full((1, 16, 24), -20.0)
    mask_logits[0, 4:8, 5:10] = 20.0
    dets = judge._instances(class_logits, mask_logits, (64, 96), (64, 80), (128, 160), 0.3)
    (dog,) = dets["dog"]
    assert dog["box"] == pytest.approx([40, 32, 80, 64], abs=4)
    assert dog["score"] == pytest.approx(1.0, abs=0.03)  # soft mask edges and dog["_mask"].shape == (128, 160)
    assert judge._instances(class_logits, mask_logits, (64, 96), (64, 80), (128, 160), 0.99999) == {}


def test_mask2former_default_threshold_follows_the_tag(judge, tiny_dirs):
    strict = get_registry("judge").build({
        "name": "mask2former", "model": str(tiny_dirs / "m2f"), "clip_model": str(tiny_dirs / "clip"),
        "size": None, "device": "cpu"})
    assert strict._threshold({"tag": "counting"}) == 0.9 and strict._threshold({"tag": "colors"}) == 0.3
    out = strict.detect([_noise((64, 64), 3)], [COLOR_META])
    assert all(d["score"] > 0.3 for dets in out[0].values() for d in dets)


def test_mask2former_runs_over_a_layout(judge, tmp_path):
    G.write_layout(tmp_path / "img", [COLOR_META], [[_noise((64, 48), 4), _noise((64, 48), 5)]])
    summary = G.judge_layout(judge, tmp_path / "img", tmp_path / "results.jsonl", batch_size=2)
    assert summary["num_images"] == 2 and set(summary["tags"]) == {"color_attr"}


def test_missing_weights_say_what_to_do(tmp_path):
    with pytest.raises(OSError, match="local folder"):
        get_registry("judge").build({"name": "mask2former", "model": str(tmp_path / "nope")})


def test_label_names_mapping():
    from ablate.eval.judges.mask2former import geneval_label_names

    names = geneval_label_names({0: "tvmonitor", 1: "Dining_Table", 2: "wall-other-merged", 3: "dog"},
                                {"dog": "cat"})
    assert names == {0: "tv", 1: "dining table", 2: "wall other merged", 3: "cat"}


def test_color_classifier_structure(tiny_dirs):
    from ablate.eval.judges.mask2former import ColorClassifier, masked_crop

    clf = ColorClassifier.from_pretrained(str(tiny_dirs / "clip"), batch_size=2)
    weights = clf.text_weights("teddy bear")
    assert weights.shape == (10, 16) and np.allclose(weights.norm(dim=-1).numpy(), 1, atol=1e-5)
    assert clf.text_weights("teddy bear") is weights  # cached per class
    crops = [_noise((20, 30), i) for i in range(3)]
    colors = clf.classify(crops, "teddy bear")
    assert len(colors) == 3 and all(c in G.COLORS for c in colors)

    image = Image.new("RGB", (10, 8), (255, 0, 0))
    mask = np.zeros((8, 10), dtype=bool)
    mask[2:6, 3:7] = True
    mask[2, 3] = False
    crop = masked_crop(image, mask, [3, 2, 7, 6])
    assert crop.size == (4, 4)
    assert crop.getpixel((1, 1)) == (255, 0, 0) and crop.getpixel((0, 0)) == (153, 153, 153)


# ---- the external judge --------------------------------------------------------------


def _script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def external(command, **kw):
    return get_registry("judge").build({"name": "external", "command": command, **kw})


def test_external_geneval_mode_reads_the_official_results(tmp_path):
    # A stand-in for evaluate_images.py: walks the layout, calls every odd sample correct.
    script = _script(tmp_path, "fake_eval.py", """
        import json, os, sys
        image_dir, out = sys.argv[1], sys.argv[sys.argv.index("--outfile") + 1]
        with open(out, "w") as fp:
            for folder in sorted(os.listdir(image_dir)):
                meta = json.load(open(os.path.join(image_dir, folder, "metadata.jsonl")))
                for name in sorted(os.listdir(os.path.join(image_dir, folder, "samples"))):
                    fp.write(json.dumps({"filename": name, "tag": meta["tag"], "prompt": meta["prompt"],
                                         "correct": int(name[:-4]) % 2 == 1, "reason": "",
                                         "metadata": json.dumps(meta)}) + "\\n")
        """)
    judge = external(f"{{python}} {script} {{image_dir}} --outfile {{out}}")
    assert judge.scores_folders
    metas = [{"tag": "colors", "prompt": "a red car",
              "include": [{"class": "car", "count": 1, "color": "red"}]}]
    G.write_layout(tmp_path / "img", metas, [[Image.new("RGB", (4, 4))] * 4])
    summary = G.judge_layout(judge, tmp_path / "img", tmp_path / "out" / "results.jsonl")
    assert summary["tags"] == {"colors": 0.5} and summary["prompt_accuracy"] == 1.0


def test_external_detect_mode_feeds_the_rules(tmp_path):
    script = _script(tmp_path, "fake_detect.py", """
        import json, sys
        rows = [json.loads(line) for line in open(sys.argv[1])]
        with open(sys.argv[2], "w") as fp:
            for row in reversed(rows):  # any order: matched by id
                dets = {"dog": [{"box": [0, 0, 2, 2], "score": 0.9 if row["id"] == 0 else 0.1}]}
                fp.write(json.dumps({"id": row["id"], "detections": dets}) + "\\n")
        """)
    judge = external(f"{{python}} {script} {{input}} {{out}}", mode="detect")
    assert not judge.scores_folders
    meta = {"tag": "single_object", "prompt": "a dog", "include": [{"class": "dog", "count": 1}]}
    G.write_layout(tmp_path / "img", [meta], [[Image.new("RGB", (4, 4))] * 2])
    summary = G.judge_layout(judge, tmp_path / "img", tmp_path / "results.jsonl")
    assert summary["tags"] == {"single_object": 0.5}


def test_external_vqa_mode_answers(tmp_path):
    script = _script(tmp_path, "fake_vqa.py", """
        import json, os, sys
        with open(sys.argv[2], "w") as fp:
            for line in open(sys.argv[1]):
                row = json.loads(line)
                assert os.path.isfile(row["image"])
                answers = [" Yes\\n"] + ["no"] * (len(row["questions"]) - 1)
                fp.write(json.dumps({"id": row["id"], "answers": answers}) + "\\n")
        """)
    judge = external(f"{{python}} {script} {{input}} {{out}}", mode="vqa")
    answers = judge.answer([Image.new("RGB", (4, 4))] * 2, [["is it red?", "is it big?"], ["q?"]])
    assert answers == [["yes", "no"], ["yes"]]
    with pytest.raises(RuntimeError, match="mode 'vqa'"):
        judge.detect([], [])


def test_external_failure_quotes_stderr(tmp_path):
    from ablate.eval.judges.external import ExternalJudgeError

    script = _script(tmp_path, "boom.py", """
        import sys
        print("loading detector...", file=sys.stderr)
        print("RuntimeError: CUDA is required", file=sys.stderr)
        sys.exit(3)
        """)
    judge = external(f"{sys.executable} {script} {{image_dir}} {{out}}")
    with pytest.raises(ExternalJudgeError) as info:
        judge.evaluate_folder(tmp_path, tmp_path / "r.jsonl")
    assert "exit code 3" in str(info.value) and "CUDA is required" in str(info.value)

    silent = external(f"{sys.executable} -c pass {{image_dir}} {{out}}")
    with pytest.raises(ExternalJudgeError, match="wrote no"):
        silent.evaluate_folder(tmp_path, tmp_path / "r.jsonl")
    with pytest.raises(ExternalJudgeError, match="cannot start"):
        external("/no/such/binary {image_dir} {out}").evaluate_folder(tmp_path, tmp_path / "r.jsonl")

    bad = _script(tmp_path, "bad.py", "import sys; open(sys.argv[2], 'w').write('{\"tag\": 1}\\n')\n")
    with pytest.raises(ExternalJudgeError, match="missing 'correct'"):
        external(f"{{python}} {bad} {{image_dir}} {{out}}").evaluate_folder(tmp_path, tmp_path / "r.jsonl")


def test_external_shell_mode_and_config_errors(tmp_path):
    # Literal braces are doubled, as in str.format.
    judge = external("test -d {image_dir} && echo '{{\"tag\": \"colors\", \"correct\": true}}' > {out}",
                     shell=True)
    assert judge.evaluate_folder(tmp_path, tmp_path / "a dir" / "r.jsonl")[0]["correct"] is True
    with pytest.raises(ConfigError, match="placeholder {img}"):
        get_registry("judge").config({"name": "external", "command": "x {img} {out}"})
    with pytest.raises(ConfigError, match="needs {out}: where the command writes"):
        get_registry("judge").config({"name": "external", "command": "x {image_dir}"})
    with pytest.raises(ConfigError, match="not available in mode 'geneval'"):
        get_registry("judge").config({"name": "external", "command": "x {input} {image_dir} {out}"})
