"""DPG-Bench (ELLA): the question file, 2x2 tiling, dependency-aware scoring, a folder runner.

The benchmark is ``dpg_bench.csv`` (one question per row) plus ``prompts/<item_id>.txt``.
Every prompt gets 4 images tiled 2x2 into ``<item_id>.png``; a VQA judge answers every
question on every crop. Scoring follows ELLA's ``compute_dpg_bench.py``:

- per crop, a question scores 1 when its answer is "yes", else 0; then, in proposition
  order, a question one of whose parents scored 0 is zeroed (a parent zeroed earlier in the
  same pass counts as 0; parent id 0 means "no parent"); crop score = mean over questions;
- prompt score = mean over its crops; DPG score = mean over prompts x 100;
- category breakdowns pool the *raw* (pre-dependency) 0/1 scores of every question, x 100.

Deliberate differences from the reference script, each a documented choice:

- Answers are normalised with ``strip().lower()`` before the comparison with "yes"
  (mPLUG and BLIP already answer in lower case, so this only forgives " Yes\\n"; an answer
  like "yes, it is" still counts 0, as in the reference).
- The reference skips the CSV's first data row (``if i == 0: continue``), which drops the
  first prompt's proposition 1; that prompt's dependants then raise a KeyError that the
  script swallows, so the prompt silently leaves the average. Here the default reads every
  row; ``skip_first_row=True`` reproduces the quirk (a prompt left with a dangling parent is
  dropped with a warning, as the reference effectively does).
- The reference builds its category breakdown from the raw scores of the *last* crop only
  (``qid2scores_orig`` is overwritten per crop). The default here pools all crops (same
  expectation, a quarter of the variance); ``category_crops="last"`` reproduces it.
- Categories come from the ``category_broad`` / ``category_detailed`` columns (the reference
  parses the same names out of ``tuple``, "entity - whole (...)").
- Propositions are visited in ascending id order (the reference uses CSV row order; the
  published CSV is sorted, so the two agree).
"""

from __future__ import annotations

import csv
import json
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

COLUMNS = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
           "category_detailed", "tuple", "question_natural_language")
IMAGES_PER_PROMPT = 4


class DPGFormatError(ValueError):
    """A malformed benchmark file; the message names the file, row and column."""


@dataclass
class DPGQuestion:
    proposition_id: int
    parents: list[int]  # as in the CSV: [0] means no parent
    question: str
    category_broad: str
    category_detailed: str
    tuple: str = ""


@dataclass
class DPGItem:
    item_id: str
    prompt: str
    questions: list[DPGQuestion] = field(default_factory=list)  # ascending proposition id

    @property
    def dependencies(self) -> dict[int, list[int]]:
        return {q.proposition_id: q.parents for q in self.questions}


# --------------------------------------------------------------------------------------
# Reading the benchmark
# --------------------------------------------------------------------------------------


def read_dpg_bench(root: str | Path, csv_name: str = "dpg_bench.csv", prompts_dir: str = "prompts",
                   skip_first_row: bool = False) -> list[DPGItem]:
    """Items in order of first appearance in the CSV, prompts read from ``prompts/<id>.txt``.

    ``skip_first_row`` reproduces the reference script's quirk (see the module docstring).
    """
    root = Path(root)
    path = root / csv_name
    if not path.is_file():
        raise DPGFormatError(f"{path}: no such file (expected DPG-Bench's dpg_bench.csv)")
    items: dict[str, DPGItem] = {}
    first_row: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DPGFormatError(f"{path}: header lacks column(s) {missing}; "
                                 f"found {reader.fieldnames}")
        for row_no, row in enumerate(reader, start=1):
            if skip_first_row and row_no == 1:
                continue
            where = f"{path}: row {row_no} (line {reader.line_num})"
            if None in row or None in row.values():  # DictReader's marks for extra / missing cells
                raise DPGFormatError(f"{where}: expected {len(reader.fieldnames)} columns, got "
                                     f"{len([v for k, v in row.items() if k and v is not None])}"
                                     f"{' or more' if None in row else ''}")
            item_id = (row["item_id"] or "").strip()
            if not item_id:
                raise DPGFormatError(f"{where}, column 'item_id': empty")
            qid = _parse_int(row["proposition_id"], f"{where}, column 'proposition_id'")
            parents = [_parse_int(p, f"{where}, column 'dependency'")
                       for p in (row["dependency"] or "").split(",")]
            item = items.setdefault(item_id, DPGItem(item_id, ""))
            first_row.setdefault(item_id, row_no)
            if any(q.proposition_id == qid for q in item.questions):
                raise DPGFormatError(f"{where}, column 'proposition_id': {qid} repeats within "
                                     f"item {item_id!r}")
            item.questions.append(DPGQuestion(qid, parents, row["question_natural_language"],
                                              row["category_broad"].strip(),
                                              row["category_detailed"].strip(), row["tuple"]))
    out = []
    for item in items.values():
        item.questions.sort(key=lambda q: q.proposition_id)
        known = {q.proposition_id for q in item.questions}
        dangling = sorted({p for q in item.questions for p in q.parents if p != 0 and p not in known})
        if dangling:
            msg = (f"{path}: item {item.item_id!r} (from row {first_row[item.item_id]}), column "
                   f"'dependency': parent proposition(s) {dangling} do not exist in this item")
            if skip_first_row:
                # The reference hits a KeyError on this prompt and leaves it out of the mean.
                warnings.warn(msg + "; dropped, as the reference script does", stacklevel=2)
                continue
            raise DPGFormatError(msg)
        prompt_file = root / prompts_dir / f"{item.item_id}.txt"
        if not prompt_file.is_file():
            raise DPGFormatError(f"{prompt_file}: no such prompt file for item {item.item_id!r} "
                                 f"(row {first_row[item.item_id]} of {path})")
        item.prompt = prompt_file.read_text(encoding="utf-8").strip()
        out.append(item)
    return out


def _parse_int(text: str | None, where: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise DPGFormatError(f"{where}: expected an integer, got {text!r}") from None


# --------------------------------------------------------------------------------------
# 2x2 tiles
# --------------------------------------------------------------------------------------


def tile_2x2(images: list[Image.Image]) -> Image.Image:
    """Four same-sized images as one: top-left, top-right, bottom-left, bottom-right."""
    if len(images) != IMAGES_PER_PROMPT:
        raise ValueError(f"tile_2x2 needs 4 images, got {len(images)}")
    w, h = images[0].size
    if any(im.size != (w, h) for im in images):
        raise ValueError(f"tile_2x2 needs same-sized images, got {[im.size for im in images]}")
    canvas = Image.new("RGB", (2 * w, 2 * h))
    for k, im in enumerate(images):
        canvas.paste(im.convert("RGB"), ((k % 2) * w, (k // 2) * h))
    return canvas


def split_2x2(image: Image.Image) -> list[Image.Image]:
    """The four crops of a 2x2 tile, in the reference's order (TL, TR, BL, BR)."""
    w, h = image.size[0] // 2, image.size[1] // 2
    boxes = [(0, 0, w, h), (w, 0, 2 * w, h), (0, h, w, 2 * h), (w, h, 2 * w, 2 * h)]
    return [image.crop(box) for box in boxes]


# --------------------------------------------------------------------------------------
# Scoring (pure)
# --------------------------------------------------------------------------------------


def is_yes(answer: str) -> bool:
    return str(answer).strip().lower() == "yes"


def raw_scores(dependencies: dict[int, list[int]], answers: dict[int, str]) -> dict[int, float]:
    missing = [qid for qid in dependencies if qid not in answers]
    if missing:
        raise ValueError(f"no answer for proposition(s) {missing}")
    return {qid: float(is_yes(answers[qid])) for qid in dependencies}


def crop_score(dependencies: dict[int, list[int]], answers: dict[int, str]) -> float:
    """One crop: 0/1 per question, zero the children of failed parents in order, mean."""
    scores = raw_scores(dependencies, answers)
    for qid in sorted(dependencies):
        for parent in dependencies[qid]:
            if parent == 0:
                continue
            if parent not in scores:
                raise ValueError(f"proposition {qid} depends on unknown proposition {parent}")
            if scores[parent] == 0:  # reads the in-place updates: zeroing propagates down chains
                scores[qid] = 0.0
                break
    return sum(scores.values()) / len(scores)


def score(dependencies: dict[int, list[int]], answers: list[dict[int, str]]) -> float:
    """A prompt's score in [0, 1]: the mean crop score. ``answers``: one dict per crop."""
    if not answers or not dependencies:
        raise ValueError("score needs at least one crop and one question")
    return sum(crop_score(dependencies, a) for a in answers) / len(answers)


@dataclass
class ItemResult:
    item_id: str
    score: float  # in [0, 1]
    crop_scores: list[float]
    answers: list[dict[int, str]]  # per crop: proposition id -> answer


def aggregate(items: list[DPGItem], results: list[ItemResult],
              category_crops: Literal["all", "last"] = "all") -> dict:
    """Overall (mean over prompts) and category breakdowns from raw answers, all x 100.

    Category scores pool every (question, crop) raw 0/1 score, as the reference pools
    questions across prompts. Detailed categories are keyed ``"<broad>/<detailed>"``.
    """
    if not results:
        raise ValueError("no DPG results to aggregate")
    by_id = {item.item_id: item for item in items}
    broad: dict[str, list[float]] = defaultdict(list)
    detailed: dict[str, list[float]] = defaultdict(list)
    for res in results:
        item = by_id[res.item_id]
        crops = res.answers if category_crops == "all" else res.answers[-1:]
        for answers in crops:
            raw = raw_scores(item.dependencies, answers)
            for q in item.questions:
                broad[q.category_broad].append(raw[q.proposition_id])
                detailed[f"{q.category_broad}/{q.category_detailed}"].append(raw[q.proposition_id])
    mean = lambda xs: 100.0 * sum(xs) / len(xs)  # noqa: E731
    return {
        "overall": mean([r.score for r in results]),
        "num_items": len(results),
        "broad": {k: mean(v) for k, v in sorted(broad.items())},
        "detailed": {k: mean(v) for k, v in sorted(detailed.items())},
    }


# --------------------------------------------------------------------------------------
# Runner: a judge over a folder of tiles
# --------------------------------------------------------------------------------------


def judge_item(item: DPGItem, judge, path: Path) -> ItemResult:
    """Every question of ``item`` on every crop of its 2x2 tile at ``path``, scored."""
    with Image.open(path) as im:
        crops = split_2x2(im.convert("RGB"))
    qids = [q.proposition_id for q in item.questions]
    questions = [q.question for q in item.questions]
    answers = judge.answer(crops, [questions] * len(crops))
    if len(answers) != len(crops) or any(len(a) != len(qids) for a in answers):
        raise ValueError(f"judge {type(judge).__name__} returned answers of the wrong shape "
                         f"for {path}: expected {len(crops)} x {len(qids)}")
    per_crop = [dict(zip(qids, a)) for a in answers]
    crop_scores = [crop_score(item.dependencies, a) for a in per_crop]
    return ItemResult(item.item_id, sum(crop_scores) / len(crop_scores), crop_scores, per_crop)


def evaluate_folder(items: list[DPGItem], judge, image_dir: str | Path, out_dir: str | Path | None = None,
                    require_all: bool = True, category_crops: Literal["all", "last"] = "all") -> dict:
    """Score ``<image_dir>/<item_id>.png`` (2x2 tiles) with a VQA judge.

    ``judge.answer(images, questions)`` is the VQA role described in ``ablate.eval.judges``. Writes
    ``dpg_results.jsonl`` (one line per prompt) and ``dpg_summary.json`` to ``out_dir``
    when given; returns the summary of :func:`aggregate`. With ``require_all=False``
    missing images are skipped (as the reference does, it scores what is in the folder).
    With several ranks each judges its share of the prompts (``ablate.eval.sampling.split_map``).
    """
    from ablate.eval.sampling import split_map  # torch: only when judging, not for the rules

    image_dir = Path(image_dir)
    missing = [it.item_id for it in items if not (image_dir / f"{it.item_id}.png").is_file()]
    if missing and require_all:
        raise FileNotFoundError(f"{image_dir}: {len(missing)} of {len(items)} DPG images missing, "
                                f"e.g. {missing[0]}.png")
    skipped = set(missing)
    present = [it for it in items if it.item_id not in skipped]
    results = split_map(lambda share: [judge_item(it, judge, image_dir / f"{it.item_id}.png")
                                       for it in share], present)
    summary = aggregate(items, results, category_crops)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "dpg_results.jsonl").open("w") as f:
            for r in results:
                f.write(json.dumps({"item_id": r.item_id, "score": r.score,
                                    "crop_scores": r.crop_scores, "answers": r.answers}) + "\n")
        (out_dir / "dpg_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
