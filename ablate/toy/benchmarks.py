"""Toy GenEval / DPG-Bench / MJHQ files generated from the scene grammar of ``scenes.py``.

The files have exactly the real benchmarks' formats (see docs/reference.md), with the toy
shape names as classes, so the project's real scorers read them unchanged:

    <out>/geneval/evaluation_metadata.jsonl   (+ object_names.txt)
    <out>/dpg_bench/dpg_bench.csv             (+ prompts/<item_id>.txt)
    <out>/mjhq/meta_data.json                 (+ <category>/<id>.jpg, category = background)

``scene_for_geneval`` / ``scene_for_dpg`` build a scene that satisfies an item: rendered,
it is the ground truth the scorers and the toy judges are checked against. Every writer takes
the toy world (``scenes.WORLDS``); ``write_benchmarks`` records it in ``<out>/toy_world.json``.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ablate.toy.scenes import (
    BACKGROUND_WORDS,
    BACKGROUNDS,
    COLORS,
    DEFAULT_WORLD,
    NUMBER_WORDS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    article,
    caption,
    check_world,
    clear_pairs,
    place,
    plural,
    relations,
    render,
    sample_scene,
)

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVAL_REAL_COUNTS = (80, 99, 80, 94, 100, 100)  # the real file's 553 prompts, per tag
RELATIONS = ("left of", "right of", "above", "below")
DPG_COLUMNS = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
               "category_detailed", "tuple", "question_natural_language")
_STREAMS = {"geneval": 10, "dpg": 11, "mjhq": 12}  # rng streams apart from the training splits


# ----------------------------------------------------------------------------- GenEval


def _tag_counts(n: int) -> list[int]:
    """Split ``n`` prompts over the six tags in the real file's proportions."""
    total = sum(GENEVAL_REAL_COUNTS)
    raw = [n * c / total for c in GENEVAL_REAL_COUNTS]
    counts = [int(r) for r in raw]
    for i in sorted(range(6), key=lambda i: counts[i] - raw[i])[: n - sum(counts)]:
        counts[i] += 1
    return counts


def geneval_item(tag: str, rng: np.random.Generator) -> dict:
    """One GenEval line of ``tag`` (same keys, order and prompt wording as the real file)."""
    a, b = (str(s) for s in rng.choice(SHAPES, size=2, replace=False))
    ca, cb = (str(c) for c in rng.choice(list(COLORS), size=2, replace=False))
    if tag == "single_object":
        return {"tag": tag, "include": [{"class": a, "count": 1}], "prompt": f"a photo of {article(a)} {a}"}
    if tag == "two_object":
        return {"tag": tag, "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                "prompt": f"a photo of {article(a)} {a} and {article(b)} {b}"}
    if tag == "counting":
        n = int(rng.integers(2, 5))
        return {"tag": tag, "include": [{"class": a, "count": n}], "exclude": [{"class": a, "count": n + 1}],
                "prompt": f"a photo of {NUMBER_WORDS[n]} {plural(a)}"}
    if tag == "colors":
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": ca}],
                "prompt": f"a photo of {article(ca)} {ca} {a}"}
    if tag == "position":
        rel = str(rng.choice(RELATIONS))  # b is `rel` the object of include group 0 (a)
        return {"tag": tag, "include": [{"class": a, "count": 1}, {"class": b, "count": 1, "position": [rel, 0]}],
                "prompt": f"a photo of {article(b)} {b} {rel} {article(a)} {a}"}
    if tag == "color_attr":
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                "prompt": f"a photo of {article(ca)} {ca} {a} and {article(cb)} {cb} {b}"}
    raise ValueError(f"unknown GenEval tag {tag!r}; tags: {GENEVAL_TAGS}")


def geneval_items(n: int, seed: int = 0) -> list[dict]:
    """``n`` GenEval lines over all six tags; prompts are unique within a tag while possible."""
    rng = np.random.default_rng([seed, _STREAMS["geneval"]])
    items = []
    for tag, k in zip(GENEVAL_TAGS, _tag_counts(n)):
        seen: set[str] = set()
        for _ in range(k):
            for _try in range(50):
                item = geneval_item(tag, rng)
                if item["prompt"] not in seen:
                    break
            seen.add(item["prompt"])
            items.append(item)
    return items


def scene_for_geneval(item: dict, rng: np.random.Generator, world: str = DEFAULT_WORLD) -> Scene:
    """A scene that satisfies a GenEval line: exactly the included objects (colours as asked,
    else random) and, for position clauses, an unambiguous relation (the only one that holds)."""
    objs, groups = [], []
    for clause in item["include"]:
        group = [Obj(clause["class"], clause.get("color") or str(rng.choice(list(COLORS))),
                     str(rng.choice(list(SIZES))), 0, 0) for _ in range(clause["count"])]
        groups.append(group)
        objs += group

    def check(_objs) -> bool:
        for clause, group in zip(item["include"], groups):
            if "position" in clause:
                rel, target = clause["position"]
                if any(relations(a.box(), b.box()) != [rel] for a in group for b in groups[target]):
                    return False
        return True

    if not place(objs, rng, check, tries=200, world=world):
        raise RuntimeError(f"no scene of the {world} world satisfies {item['prompt']!r}")
    return Scene(objs, str(rng.choice(list(BACKGROUNDS))), world)


# ----------------------------------------------------------------------------- DPG-Bench


def dpg_rows(scene: Scene, item_id: str, text: str) -> list[dict]:
    """DPG question rows for ``scene``: entities, then counts and colours depending on them,
    relations depending on both objects' colour questions, and the background (global)."""
    rows: list[dict] = []

    def add(question, broad, detailed, tup, parents=()):
        rows.append({"item_id": item_id, "text": text, "proposition_id": len(rows) + 1,
                     "dependency": ",".join(str(p) for p in parents) or "0", "category_broad": broad,
                     "category_detailed": detailed, "tuple": tup, "question_natural_language": question})
        return len(rows)

    color_pid: dict[tuple[str, str], int] = {}
    for shape, n in scene.counts().items():
        ent = add(f"Is there {article(shape)} {shape}?", "entity", "whole", f"entity - whole ({shape})")
        if n > 1:
            add(f"Are there {NUMBER_WORDS[n]} {plural(shape)}?", "other", "count",
                f"other - count ({shape}, =={n})", [ent])
        colors = list(dict.fromkeys(o.color for o in scene.objects if o.shape == shape))
        for color in colors:
            q = f"Is the {shape} {color}?" if n == 1 else f"Is there {article(color)} {color} {shape}?"
            color_pid[(color, shape)] = add(q, "attribute", "color", f"attribute - color ({shape}, {color})", [ent])
    unique = {k for k, c in Counter((o.color, o.shape) for o in scene.objects).items() if c == 1}
    pairs = [p for p in clear_pairs(scene) if {(p[0].color, p[0].shape), (p[2].color, p[2].shape)} <= unique]
    for a, rel, b in pairs[:3]:
        add(f"Is the {a.color} {a.shape} {rel} the {b.color} {b.shape}?", "relation", "spatial",
            f"relation - spatial ({a.shape}, {b.shape}, {rel})",
            [color_pid[(a.color, a.shape)], color_pid[(b.color, b.shape)]])
    bg = BACKGROUND_WORDS[scene.background]
    add(f"Is the background {bg}?", "global", "global", f"global - ({bg} background)")
    keywords = ", ".join(dict.fromkeys([o.shape for o in scene.objects] + [o.color for o in scene.objects] + [bg]))
    for r in rows:
        r["keywords"] = keywords
    return rows


def dpg_items(n: int, seed: int = 0, world: str = DEFAULT_WORLD) -> list[dict]:
    """``n`` DPG items ``{item_id, text, rows, questions}`` from scenes of ``world``; the prompt
    is a detailed caption."""
    rng = np.random.default_rng([seed, _STREAMS["dpg"]])
    items = []
    for i in range(n):
        scene = sample_scene(rng, world=world)
        item_id, text = f"toy{i:05d}", caption(scene, rng, "detailed")
        rows = dpg_rows(scene, item_id, text)
        items.append({"item_id": item_id, "text": text, "rows": rows,
                      "questions": [r["question_natural_language"] for r in rows]})
    return items


_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{plural(s): s for s in SHAPES}}
_BG_BY_WORD = {w: k for k, w in BACKGROUND_WORDS.items()}
_NUMBERS = {w: k for k, w in NUMBER_WORDS.items()}
_alt = "|".join
_C, _S = f"(?:({_alt(COLORS)}) )?", f"({_alt(sorted(_SHAPE_WORDS, key=len, reverse=True))})"
_FORMS = [  # (kind, regex) over the lower-cased question without '?'
    ("relation", re.compile(f"^is the {_C}{_S} ({_alt(RELATIONS)}) the {_C}{_S}$")),
    ("count", re.compile(f"^are there ({_alt(_NUMBERS)}) {_S}$")),
    ("color_of", re.compile(f"^is the {_S} ({_alt(COLORS)})$")),
    ("presence", re.compile(f"^is there an? {_C}{_S}$")),
    ("background", re.compile(f"^is the background ({_alt(_BG_BY_WORD)})$")),
]


def parse_question(question: str) -> dict | None:
    """The structured form of a question of the toy DPG grammar, or None if it is not one:
    {kind: presence|count|color_of|relation|background, shape, color, count, relation,
    other_shape, other_color, background}."""
    q = " ".join(question.lower().strip().rstrip("?").split())
    for kind, pattern in _FORMS:
        m = pattern.match(q)
        if not m:
            continue
        g = m.groups()
        if kind == "relation":
            return {"kind": kind, "color": g[0], "shape": _SHAPE_WORDS[g[1]], "relation": g[2],
                    "other_color": g[3], "other_shape": _SHAPE_WORDS[g[4]]}
        if kind == "count":
            return {"kind": kind, "count": _NUMBERS[g[0]], "shape": _SHAPE_WORDS[g[1]]}
        if kind == "color_of":
            return {"kind": kind, "shape": _SHAPE_WORDS[g[0]], "color": g[1]}
        if kind == "presence":
            return {"kind": kind, "color": g[0], "shape": _SHAPE_WORDS[g[1]]}
        return {"kind": kind, "background": _BG_BY_WORD[g[0]]}
    return None


def scene_for_dpg(item: dict, rng: np.random.Generator, world: str = DEFAULT_WORLD) -> Scene:
    """A scene in which every question of a DPG item is true. ``item``: a dict with
    ``questions`` (strings, as ``dpg_items`` / ``read_dpg`` give) or an ``ablate.eval.scorers.dpg.DPGItem``."""
    item_id = item.get("item_id") if isinstance(item, dict) else item.item_id
    questions = [q if isinstance(q, str) else q.question
                 for q in (item["questions"] if isinstance(item, dict) else item.questions)]
    parsed = [parse_question(q) for q in questions]
    if None in parsed:
        raise ValueError(f"{item_id}: not a toy question: {questions[parsed.index(None)]!r}")
    counts: dict[str, int] = {}
    colors: dict[str, list[str]] = {}
    background, rels = str(rng.choice(list(BACKGROUNDS))), []
    for p in parsed:
        if p["kind"] in ("presence", "color_of", "relation"):
            counts.setdefault(p["shape"], 1)
        if p["kind"] == "count":
            counts[p["shape"]] = p["count"]
        if p["kind"] in ("presence", "color_of") and p["color"]:
            colors.setdefault(p["shape"], []).append(p["color"])
        if p["kind"] == "relation":
            rels.append(p)
        if p["kind"] == "background":
            background = p["background"]
    objs = []
    for shape, n in counts.items():
        wanted = colors.get(shape, [])
        for k in range(n):
            color = wanted[k] if k < len(wanted) else str(rng.choice(wanted or list(COLORS)))
            objs.append(Obj(shape, color, str(rng.choice(list(SIZES))), 0, 0))

    def find(shape, color):
        return next(o for o in objs if o.shape == shape and (color is None or o.color == color))

    def check(_objs) -> bool:
        return all(relations(find(r["shape"], r["color"]).box(), find(r["other_shape"], r["other_color"]).box())
                   == [r["relation"]] for r in rels)

    if not place(objs, rng, check, tries=200, world=world):
        raise RuntimeError(f"no scene of the {world} world satisfies DPG item {item_id}")
    return Scene(objs, background, world)


def read_dpg(csv_path: str | Path) -> list[dict]:
    """Group a DPG CSV's rows by item: ``[{item_id, text, rows, questions}]`` in file order."""
    items: dict[str, dict] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            it = items.setdefault(row["item_id"], {"item_id": row["item_id"], "text": row["text"], "rows": []})
            it["rows"].append(row)
    for it in items.values():
        it["questions"] = [r["question_natural_language"] for r in it["rows"]]
    return list(items.values())


# ----------------------------------------------------------------------------- writers


def write_geneval(out_dir: str | Path, items: list[dict]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "evaluation_metadata.jsonl", "w") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
    (out / "object_names.txt").write_text("\n".join(SHAPES) + "\n")
    return out / "evaluation_metadata.jsonl"


def write_dpg(out_dir: str | Path, items: list[dict]) -> Path:
    out = Path(out_dir)
    (out / "prompts").mkdir(parents=True, exist_ok=True)
    with open(out / "dpg_bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=DPG_COLUMNS)
        writer.writeheader()
        for item in items:
            (out / "prompts" / f"{item['item_id']}.txt").write_text(item["text"])
            writer.writerows({k: r[k] for k in DPG_COLUMNS} for r in item["rows"])
    return out / "dpg_bench.csv"


def write_mjhq(out_dir: str | Path, n: int, seed: int = 0, size: int = 64, world: str = DEFAULT_WORLD) -> Path:
    """MJHQ-30k-style reference set: category = the scene's background, prompts are captions
    (mostly detailed, as Midjourney prompts are long), images ``<category>/<id>.jpg``."""
    out = Path(out_dir)
    rng = np.random.default_rng([seed, _STREAMS["mjhq"]])
    meta = {}
    for i in range(n):
        scene = sample_scene(rng, world=world)
        image_id = f"mj{i:06d}"
        meta[image_id] = {"category": scene.background,
                          "prompt": caption(scene, rng, "short" if rng.random() < 0.2 else "detailed")}
        (out / scene.background).mkdir(parents=True, exist_ok=True)
        render(scene, size).save(out / scene.background / f"{image_id}.jpg", quality=95)
    (out / "meta_data.json").write_text(json.dumps(meta, indent=1))
    return out / "meta_data.json"


def write_benchmarks(out_dir: str | Path, seed: int = 0, n_geneval: int = 120, n_dpg: int = 60,
                     n_mjhq: int = 200, size: int = 64, world: str = DEFAULT_WORLD) -> dict[str, Path]:
    """Write all three toy benchmarks of ``world`` under ``out_dir``, and ``toy_world.json``
    (the world and sizes they were written with); returns their main files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"world": check_world(world), "seed": seed, "n_geneval": n_geneval, "n_dpg": n_dpg,
              "n_mjhq": n_mjhq, "size": size}
    (out / "toy_world.json").write_text(json.dumps(record, indent=1))
    return {"geneval": write_geneval(out / "geneval", geneval_items(n_geneval, seed)),
            "dpg": write_dpg(out / "dpg_bench", dpg_items(n_dpg, seed, world)),
            "mjhq": write_mjhq(out / "mjhq", n_mjhq, seed, size, world),
            "record": out / "toy_world.json"}
