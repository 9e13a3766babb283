"""GenEval (Ghosh et al. 2023, github.com/djghosh13/geneval, MIT): prompts, layout, rules, score.

The pieces, each usable on its own:

- ``load_metadata``: the prompt file (one JSON object per line), strictly validated.
- ``write_layout`` / ``read_layout``: the official folder layout ``<dir>/<NNNNN>/metadata.jsonl``
  + ``<dir>/<NNNNN>/samples/<MMMM>.png``, so the official evaluator can run on our images too.
- ``evaluate``: the per-image rule function on detections (thresholds, top-k, colour,
  position, exclude), a re-implementation of the official ``evaluate_images.py`` semantics.
- ``score``: per-tag accuracy and the overall score (unweighted mean over tags).
- ``generate_layout`` / ``judge_layout``: images from a generator into a layout; a judge over
  a layout into a results jsonl (same fields as the official ``results.jsonl``) + summary.

Detections are ``{class name: [{"box": [x0, y0, x1, y1], "score": float, "color": str?}]}``
with boxes in pixels, y growing downward.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
# The 80 COCO names as GenEval spells them (its object_names.txt, in its order).
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


@dataclass(frozen=True)
class Rules:
    """The official evaluator's knobs; the defaults are the published protocol."""

    threshold: float = 0.3  # keep detections with score > this ...
    counting_threshold: float = 0.9  # ... or > this for the "counting" tag
    max_objects: int = 16  # per class, highest score first
    position_margin: float = 0.1  # centre offsets shrink by margin * (dimA + dimB)

    def threshold_for(self, tag: str | None) -> float:
        return self.counting_threshold if tag == "counting" else self.threshold


DEFAULT_RULES = Rules()

# --------------------------------------------------------------------------------------
# Prompt metadata
# --------------------------------------------------------------------------------------

_TOP_KEYS = {"tag", "prompt", "include", "exclude"}
_INCLUDE_KEYS = {"class", "count", "color", "position"}
_EXCLUDE_KEYS = {"class", "count"}


def _check_clause(clause, where: str, allowed: set, index: int, class_names) -> None:
    if not isinstance(clause, dict):
        raise ValueError(f"{where}: expected an object, got {clause!r}")
    unknown = sorted(set(clause) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed: {sorted(allowed)}")
    cls = clause.get("class")
    if not isinstance(cls, str) or not cls:
        raise ValueError(f"{where}.class: expected a class name, got {cls!r}")
    if class_names is not None and cls not in class_names:
        raise ValueError(f"{where}.class: {cls!r} is not one of the {len(class_names)} class names")
    count = clause.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{where}.count: expected an integer >= 1, got {count!r}")
    if "color" in clause and clause["color"] not in COLORS:
        raise ValueError(f"{where}.color: {clause['color']!r} is not one of {list(COLORS)}")
    if "position" in clause:
        pos = clause["position"]
        if not (isinstance(pos, list) and len(pos) == 2):
            raise ValueError(f"{where}.position: expected [relation, group index], got {pos!r}")
        relation, group = pos
        if relation not in RELATIONS:
            raise ValueError(f"{where}.position: relation {relation!r} is not one of {list(RELATIONS)}")
        # The target must be an earlier include clause: it is matched before this one.
        if isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < index:
            raise ValueError(f"{where}.position: group index {group!r} must name an earlier "
                             f"include clause (0..{index - 1})")


def validate_metadata(entry, class_names=None) -> None:
    """Raise ValueError saying what is wrong with one prompt's metadata (no file position)."""
    if not isinstance(entry, dict):
        raise ValueError(f"expected a JSON object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; allowed: {sorted(_TOP_KEYS)}")
    if entry.get("tag") not in TAGS:
        raise ValueError(f"tag: {entry.get('tag')!r} is not one of {list(TAGS)}")
    if not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
        raise ValueError(f"prompt: expected a non-empty string, got {entry.get('prompt')!r}")
    include = entry.get("include")
    if not isinstance(include, list) or not include:
        raise ValueError(f"include: expected a non-empty list of clauses, got {include!r}")
    for i, clause in enumerate(include):
        _check_clause(clause, f"include[{i}]", _INCLUDE_KEYS, i, class_names)
    exclude = entry.get("exclude", [])
    if not isinstance(exclude, list):
        raise ValueError(f"exclude: expected a list of clauses, got {exclude!r}")
    for i, clause in enumerate(exclude):
        _check_clause(clause, f"exclude[{i}]", _EXCLUDE_KEYS, i, class_names)


def load_class_names(path: str | Path) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def load_metadata(path: str | Path, class_names: list[str] | None = None) -> list[dict]:
    """Read a GenEval prompt file; every line is validated.

    ``class_names``: allowed classes. By default ``object_names.txt`` next to the file is
    used when it exists (as in the official repo), else any class name is accepted.
    Raises ValueError naming the file, the 1-based line number and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GenEval metadata file")
    if class_names is None and (path.parent / "object_names.txt").is_file():
        class_names = load_class_names(path.parent / "object_names.txt")
    names = set(class_names) if class_names is not None else None
    entries = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            validate_metadata(entry, names)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not valid JSON: {err}") from None
        except ValueError as err:
            raise ValueError(f"{path}:{lineno}: {err}") from None
        entries.append(entry)
    if not entries:
        raise ValueError(f"{path}: no prompts in the file")
    return entries


def subset_indices(metadata: list[dict], max_prompts: int | None) -> list[int]:
    """A fixed subset of prompt indices (all when ``max_prompts`` is None), stratified by tag.

    Each tag gets a share proportional to its size (largest remainder, every tag at least
    one while the budget allows: the overall score averages tags), taken evenly spaced in
    file order. No seed is involved, so a subset is the same in every run.
    """
    total = len(metadata)
    if max_prompts is None or max_prompts >= total:
        return list(range(total))
    if max_prompts < 1:
        raise ValueError(f"max_prompts must be >= 1, got {max_prompts}")
    by_tag: dict[str, list[int]] = {}
    for i, meta in enumerate(metadata):
        by_tag.setdefault(meta["tag"], []).append(i)
    exact = {t: max_prompts * len(idx) / total for t, idx in by_tag.items()}
    quota = {t: int(x) for t, x in exact.items()}
    # Hand out what flooring left over: tags with nothing yet first, then largest remainder.
    for t in sorted(by_tag, key=lambda t: (quota[t] > 0, quota[t] - exact[t])):
        if sum(quota.values()) >= max_prompts:
            break
        quota[t] += 1
    chosen = [idx[(j * len(idx)) // quota[t]] for t, idx in by_tag.items() for j in range(quota[t])]
    return sorted(chosen)


def sample_seed(prompt_index: int, sample_index: int, base: int = 0) -> int:
    """Seed of image ``sample_index`` of prompt ``prompt_index`` (index in the full file).

    Plain arithmetic, so it is stable across processes and Python versions, and a subset
    run gives the same images as the full run for the prompts they share.
    """
    if not 0 <= sample_index < 1000:
        raise ValueError(f"sample_index must be in 0..999, got {sample_index}")
    return base + prompt_index * 1000 + sample_index


# --------------------------------------------------------------------------------------
# Official folder layout
# --------------------------------------------------------------------------------------


@dataclass
class LayoutEntry:
    index: int  # the prompt's folder number (its line index in the full prompt file)
    metadata: dict
    images: list[Path]  # samples/<MMMM>.png, in sample order


def prompt_dir(root: str | Path, index: int) -> Path:
    return Path(root) / f"{index:05d}"


def write_prompt(root, index: int, metadata: dict, images, start: int = 0) -> list[Path]:
    """Write one prompt's folder (``metadata.jsonl`` + ``samples/<start+i>.png``)."""
    folder = prompt_dir(root, index)
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    (folder / "metadata.jsonl").write_text(json.dumps(metadata) + "\n")
    paths = []
    for i, image in enumerate(images, start=start):
        paths.append(folder / "samples" / f"{i:04d}.png")
        image.save(paths[-1])
    return paths


def write_layout(out_dir, metadata: list[dict], images_per_prompt, indices=None) -> Path:
    """Write prompts and their images in the official layout. ``indices``: folder numbers
    (default 0..n-1; pass the prompts' indices in the full file when writing a subset)."""
    if len(images_per_prompt) != len(metadata):
        raise ValueError(f"{len(metadata)} prompts but {len(images_per_prompt)} image lists")
    indices = list(range(len(metadata))) if indices is None else list(indices)
    for index, meta, images in zip(indices, metadata, images_per_prompt):
        write_prompt(out_dir, index, meta, images)
    return Path(out_dir)


def read_layout(root: str | Path) -> list[LayoutEntry]:
    """Read a layout folder: entries sorted by folder number, images by sample number.
    Like the official evaluator, non-numeric folders and non-``<digits>.png`` files are
    ignored."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such GenEval image folder")
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        meta_path = folder / "metadata.jsonl"
        if not meta_path.is_file():
            raise ValueError(f"{folder}: missing metadata.jsonl")
        try:
            metadata = json.loads(meta_path.read_text())
            validate_metadata(metadata)
        except ValueError as err:  # JSONDecodeError is a ValueError
            raise ValueError(f"{meta_path}: {err}") from None
        samples = folder / "samples"
        images = sorted((p for p in samples.glob("*.png") if re.fullmatch(r"\d+\.png", p.name)),
                        key=lambda p: int(p.stem)) if samples.is_dir() else []
        entries.append(LayoutEntry(int(folder.name), metadata, images))
    return entries


def load_image(path) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


# --------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------


def filter_detections(detections: dict, tag: str | None, rules: Rules = DEFAULT_RULES) -> dict:
    """Per class: score > threshold (tag dependent), highest first, at most ``max_objects``.
    No NMS (the official default). Classes left empty are dropped."""
    threshold = rules.threshold_for(tag)
    kept = {}
    for cls, dets in (detections or {}).items():
        for d in dets:
            if not isinstance(d, dict) or "score" not in d or len(d.get("box", ())) != 4:
                raise ValueError(f"detection of {cls!r} needs 'box' [x0, y0, x1, y1] and "
                                 f"'score', got {d!r}")
        good = sorted((d for d in dets if d["score"] > threshold), key=lambda d: -d["score"])
        if good:
            kept[cls] = good[: rules.max_objects]
    return kept


def relative_position(box_a, box_b, margin: float = DEFAULT_RULES.position_margin) -> set[str]:
    """Relations of box A to box B, e.g. {"left of", "above"}; empty when they overlap
    too much (offsets within ``margin`` * the summed box sizes on both axes)."""
    offset, revised = [], []
    for axis in (0, 1):
        centre_a = (box_a[axis] + box_a[axis + 2]) / 2
        centre_b = (box_b[axis] + box_b[axis + 2]) / 2
        dims = abs(box_a[axis + 2] - box_a[axis]) + abs(box_b[axis + 2] - box_b[axis])
        off = centre_a - centre_b
        offset.append(off)
        revised.append(max(abs(off) - margin * dims, 0.0) * math.copysign(1.0, off) if off else 0.0)
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    norm = math.hypot(*offset)
    dx, dy = revised[0] / norm, revised[1] / norm
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def evaluate(metadata: dict, detections: dict, rules: Rules = DEFAULT_RULES) -> tuple[bool, str]:
    """Is one image correct for its prompt? -> (correct, reason; reasons joined by newlines).

    ``detections`` are raw (this function thresholds, sorts and caps them). Include clauses
    are ANDed, exclude clauses ORed; colour and position look only at the top-``count``
    detections of the clause's class, as in the official evaluator.
    """
    objects = filter_detections(detections, metadata.get("tag"), rules)
    correct, reasons, groups = True, [], []
    for clause in metadata.get("include", []):
        cls, count = clause["class"], clause["count"]
        found = objects.get(cls, [])[:count]
        matched = len(found) >= count
        if not matched:
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        if matched and "color" in clause:
            want = clause["color"]
            colors = [d.get("color") or "unknown" for d in found]
            if colors.count(want) < count:
                matched = False
                tally = ", ".join(f"{colors.count(c)} {c}" for c in (*COLORS, "unknown") if c in colors)
                reasons.append(f"expected {want} {cls}>={count}, found {colors.count(want)} {want}; "
                               f"and {tally}")
        if matched and "position" in clause:
            relation, group = clause["position"]
            targets = groups[group] if 0 <= group < len(groups) else None
            if targets is None:
                matched = False
                reasons.append(f"no target for {cls} to be {relation}")
            else:
                failure = _position_failure(found, targets, relation, rules.position_margin)
                if failure is not None:
                    matched = False
                    found_rel = " and ".join(sorted(failure)) or "no relation to"
                    reasons.append(f"expected {cls} {relation} target, found {found_rel} target")
        correct = correct and matched
        groups.append(found if matched else None)  # a failed clause cannot be a target
    for clause in metadata.get("exclude", []):
        n = len(objects.get(clause["class"], []))
        if n >= clause["count"]:
            correct = False
            reasons.append(f"expected {clause['class']}<{clause['count']}, found {n}")
    return correct, "\n".join(reasons)


def _position_failure(found, targets, relation, margin):
    """The relations of the first (object, target) pair lacking ``relation``, else None."""
    for obj in found:
        for target in targets:
            relations = relative_position(obj["box"], target["box"], margin)
            if relation not in relations:
                return relations
    return None


# --------------------------------------------------------------------------------------
# Scores, and running a judge over a layout
# --------------------------------------------------------------------------------------


def score(results: list[dict]) -> dict:
    """Aggregate per-image results (each with ``tag`` and ``correct``).

    ``overall`` is the unweighted mean of the per-tag accuracies, as in the paper and the
    official ``summary_scores.py``; tags with no images (e.g. a subset) are left out of the
    mean rather than counted as 0. Also reports the plain image accuracy and, when results
    carry ``metadata``, the fraction of prompts with at least one correct image.
    """
    if not results:
        raise ValueError("no GenEval results to score")
    per_tag: dict[str, list[bool]] = {}
    prompts: dict[str, bool] = {}
    for r in results:
        if r.get("tag") not in TAGS:
            raise ValueError(f"result for {r.get('filename', '?')}: unknown tag {r.get('tag')!r}")
        per_tag.setdefault(r["tag"], []).append(bool(r["correct"]))
        if "metadata" in r:
            key = r["metadata"] if isinstance(r["metadata"], str) else json.dumps(r["metadata"])
            prompts[key] = prompts.get(key, False) or bool(r["correct"])
    tags = {t: sum(v) / len(v) for t in TAGS if (v := per_tag.get(t))}
    summary = {
        "overall": sum(tags.values()) / len(tags),
        "tags": tags,
        "counts": {t: len(per_tag[t]) for t in tags},
        "num_images": len(results),
        "image_accuracy": sum(bool(r["correct"]) for r in results) / len(results),
    }
    if prompts:
        summary["prompt_accuracy"] = sum(prompts.values()) / len(prompts)
    return summary


def result_record(filename, metadata: dict, correct: bool, reason: str, detections=None) -> dict:
    """One line of results.jsonl, with the official evaluator's field names."""
    return {"filename": str(filename), "tag": metadata["tag"], "prompt": metadata["prompt"],
            "correct": bool(correct), "reason": reason, "metadata": json.dumps(metadata),
            "details": json.dumps(detections or {})}


def write_results(path, records: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fp:
        for r in records:
            fp.write(json.dumps(r) + "\n")
    return path


def read_results(path) -> list[dict]:
    records = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not valid JSON: {err}") from None
        if not isinstance(record, dict) or "tag" not in record or "correct" not in record:
            raise ValueError(f"{path}:{lineno}: a result needs 'tag' and 'correct', got {line[:200]}")
        records.append(record)
    return records


def judge_layout(judge, layout_dir, results_path, batch_size: int = 8,
                 rules: Rules = DEFAULT_RULES) -> dict:
    """Score every image of a layout folder with a judge; write results jsonl; summary.

    A detector judge (``detect(images, metadata)``) is run in batches and its detections
    go through ``evaluate``; with several ranks each detects its share of the images
    (``ablate.eval.sampling.split_map``). A judge with ``scores_folders = True`` (e.g. the
    external official evaluator) gets the whole folder via ``evaluate_folder(dir,
    results_path)``, writes ``results_path`` and returns the result records itself; with
    several ranks it runs once, on rank 0, and every rank gets its records.
    """
    from ablate.eval.sampling import split_map  # torch: only when judging, not for the rules

    if getattr(judge, "scores_folders", False):
        # one item split across ranks is rank 0's: the evaluator runs once (and writes
        # results_path), every rank gets its records
        [records] = split_map(lambda folders: [judge.evaluate_folder(Path(f), Path(results_path))
                                               for f in folders], [layout_dir])
        return score(records)
    items = [(path, e.metadata) for e in read_layout(layout_dir) for path in e.images]
    if not items:
        raise ValueError(f"{layout_dir}: no images in the GenEval layout")
    detections = split_map(lambda share: detect_in_batches(judge, share, batch_size), items)
    records = []
    for (path, meta), dets in zip(items, detections):
        correct, reason = evaluate(meta, dets, rules)
        kept = filter_detections(dets, meta["tag"], rules)  # what the rules looked at
        records.append(result_record(path, meta, correct, reason, kept))
    write_results(results_path, records)
    return score(records)


def detect_in_batches(judge, items: list[tuple[Path, dict]], batch_size: int = 8) -> list[dict]:
    """A detector judge's raw detections of each (image file, metadata), ``batch_size``
    images per ``judge.detect`` call."""
    detections = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        found = judge.detect([load_image(path) for path, _ in batch], [meta for _, meta in batch])
        if len(found) != len(batch):
            raise ValueError(f"judge {type(judge).__name__} returned {len(found)} detections "
                             f"for {len(batch)} images")
        detections.extend(found)
    return detections


def generate_layout(generator, metadata: list[dict], out_dir, indices=None,
                    images_per_prompt: int = 4, batch_size: int = 8, base_seed: int = 0) -> Path:
    """Generate ``images_per_prompt`` images per prompt with ``generator.images(prompts,
    seeds)`` and write them in the official layout, batch by batch (nothing accumulates)."""
    indices = list(range(len(metadata))) if indices is None else list(indices)
    jobs = [(i, s) for i in indices for s in range(images_per_prompt)]
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        images = generator.images([metadata[i]["prompt"] for i, _ in batch],
                                  [sample_seed(i, s, base_seed) for i, s in batch])
        if len(images) != len(batch):
            raise ValueError(f"generator returned {len(images)} images for {len(batch)} prompts")
        for (i, s), image in zip(batch, images):
            write_prompt(out_dir, i, metadata[i], [image], start=s)
    return Path(out_dir)
