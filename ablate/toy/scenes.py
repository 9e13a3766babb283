"""The toy world's scene grammar: coloured shapes on a plain background, rendered and captioned.

A scene holds 1-4 non-overlapping objects (shape, colour, size class, centre). Everything is
deterministic given a ``numpy.random.Generator``; ``render`` takes no randomness at all, so a
scene's JSON is its full ground truth (for captions, benchmarks and judge validation).

Two worlds (``WORLDS``), a recorded setting that every writer of scenes takes as ``world=``:

- ``free`` (the first toy world): objects of 24-38 % of the image side anywhere on the image
  (2-3 tokens of the 8x8 CLIP grid, 4-6 cells of the 16x16 VAE latent grid);
- ``slots`` (the default, the shipped assets' world): objects large relative to the target grids at a few coarse positions: one object
  at the centre (50-62 % of the side: >= 4x4 CLIP tokens, >= 8x8 latent cells); two side by side
  (left / right) or stacked (above / below); three or four in the quadrants (38-44 % of the
  side). Measured: heads learn the shapes of such objects within minutes; of the free world's
  objects not in hours (``results/reference/positive_control/``).

Coordinates: ``x, y`` are the object's centre as fractions of the image side (y grows
downward, as in image pixels); boxes are ``[x0, y0, x1, y1]`` in pixels of the rendered size.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

# GenEval's ten colour names (its CLIP colour classifier chooses among exactly these).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (255, 140, 0), "yellow": (250, 220, 20),
    "green": (30, 150, 50), "blue": (30, 70, 220), "purple": (130, 40, 170),
    "pink": (255, 120, 190), "brown": (125, 75, 30), "black": (20, 20, 20),
    "white": (250, 250, 250),
}
# Mid/light tinted backgrounds: every object colour (black and white included) keeps an RGB
# distance of >= ~90 from each of them, so segmentation against the background stays easy.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128), "beige": (222, 206, 170),
    "sky": (170, 200, 235), "mint": (170, 222, 190),
}
BACKGROUND_WORDS = {"gray": "gray", "beige": "beige", "sky": "light blue", "mint": "light green"}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring")
SIZES: dict[str, float] = {"small": 0.24, "medium": 0.31, "large": 0.38}  # side / image side
WORLDS = ("free", "slots")
DEFAULT_WORLD = "slots"  # the world of the shipped assets (``ablate/toy/assets/build_info.json``)
# The slots world: object sides (fraction of the image side) by size class, alone or with others,
# and the slot centres by layout. Two-object layouts put the pair on one axis, so exactly one
# GenEval relation holds between them; quadrant neighbours share a row or a column.
SLOT_SIDES = {"alone": {"small": 0.50, "medium": 0.56, "large": 0.62},
              "shared": {"small": 0.38, "medium": 0.41, "large": 0.44}}
_QUADRANTS = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]
SLOT_LAYOUTS: dict[int, list[list[tuple[float, float]]]] = {
    1: [[(0.5, 0.5)]],
    2: [[(0.25, 0.5), (0.75, 0.5)], [(0.5, 0.25), (0.5, 0.75)]],
    3: [[q for q in _QUADRANTS if q != empty] for empty in _QUADRANTS],
    4: [_QUADRANTS],
}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
MAX_OBJECTS = 4
MARGIN = 0.04  # empty border (fraction of the side): the border pixels are pure background
GAP = 0.07  # minimum empty gap between object boxes, so blur does not merge neighbours
RING_HOLE = 0.52  # inner / outer radius of a ring


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    pts = []
    for k in range(2 * points):
        r = 0.5 if k % 2 == 0 else 0.5 * inner
        a = -math.pi / 2 + k * math.pi / points
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


_ARM = 0.18  # half width of a cross arm, in object units
# Polygons in object units (the object's size is 1), centred on the object's centre.
POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.45, -0.45), (0.45, -0.45), (0.45, 0.45), (-0.45, 0.45)],
    "triangle": [(0.0, -0.433), (0.5, 0.433), (-0.5, 0.433)],
    "diamond": [(0.0, -0.5), (0.4, 0.0), (0.0, 0.5), (-0.4, 0.0)],
    "star": _star(),
    "cross": [(-_ARM, -0.5), (_ARM, -0.5), (_ARM, -_ARM), (0.5, -_ARM), (0.5, _ARM), (_ARM, _ARM),
              (_ARM, 0.5), (-_ARM, 0.5), (-_ARM, _ARM), (-0.5, _ARM), (-0.5, -_ARM), (-_ARM, -_ARM)],
}


def shape_extent(shape: str) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a shape in object units around its centre."""
    if shape in ("circle", "ring"):
        return (-0.5, -0.5, 0.5, 0.5)
    xs, ys = zip(*POLYGONS[shape])
    return (min(xs), min(ys), max(xs), max(ys))


@dataclass
class Obj:
    shape: str
    color: str
    size: str  # "small" | "medium" | "large"
    x: float  # centre, fraction of the image width
    y: float  # centre, fraction of the image height (downward)
    side: float | None = None  # drawn size, fraction of the image side (None: SIZES[size], free world)

    @property
    def extent(self) -> float:
        """The drawn size as a fraction of the image side."""
        return SIZES[self.size] if self.side is None else self.side

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.side is None:  # free-world scenes keep their original JSON
            d.pop("side")
        return d

    def box(self, image_size: int = 64) -> list[float]:
        """Pixel box [x0, y0, x1, y1] of the drawn shape at ``image_size``."""
        d = self.extent * image_size
        ex0, ey0, ex1, ey1 = shape_extent(self.shape)
        cx, cy = self.x * image_size, self.y * image_size
        return [cx + ex0 * d, cy + ey0 * d, cx + ex1 * d, cy + ey1 * d]

    def phrase(self, with_size: bool = False, with_color: bool = True) -> str:
        words = ([self.size] if with_size else []) + ([self.color] if with_color else [])
        return " ".join(words + [self.shape])


@dataclass
class Scene:
    objects: list[Obj] = field(default_factory=list)
    background: str = "gray"
    world: str = "free"

    def to_dict(self) -> dict:
        d = {"background": self.background, "objects": [o.to_dict() for o in self.objects]}
        if self.world != "free":  # free-world scenes keep their original JSON
            d["world"] = self.world
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict | str) -> Scene:
        d = json.loads(d) if isinstance(d, str) else d
        return cls([Obj(**o) for o in d["objects"]], d["background"], d.get("world", "free"))

    def counts(self) -> Counter:
        return Counter(o.shape for o in self.objects)


# ----------------------------------------------------------------------------- geometry


def relations(box_a, box_b) -> list[str]:
    """Spatial relations of A relative to B ("left of", "above", ...) by GenEval's own rule,
    in the fixed order of ``ablate.eval.scorers.geneval.RELATIONS``."""
    from ablate.eval.scorers.geneval import RELATIONS, relative_position

    found = relative_position(box_a, box_b)
    return [r for r in RELATIONS if r in found]


def _boxes_clear(a, b, gap: float) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def check_world(world: str) -> str:
    if world not in WORLDS:
        raise ValueError(f"world {world!r} is not valid; choose one of {list(WORLDS)}")
    return world


def place(objs: list[Obj], rng: np.random.Generator, check=None, tries: int = 60,
          world: str = DEFAULT_WORLD) -> bool:
    """Give ``objs`` random non-overlapping centres (in place). ``check(objs) -> bool`` adds a
    constraint (e.g. a relation). Free world: anywhere, shrinking the largest object when
    crowded; slots world: a random layout of ``SLOT_LAYOUTS`` and order. False if it failed."""
    if check_world(world) == "slots":
        return _place_in_slots(objs, rng, check, tries)
    for _round in range(2 * len(objs) + 1):
        for _ in range(tries):
            boxes: list[list[float]] = []
            for o in objs:  # sequential: each object gets a few tries around the placed ones
                for _ in range(20):
                    ex0, ey0, ex1, ey1 = (e * SIZES[o.size] for e in shape_extent(o.shape))
                    o.x = float(rng.uniform(MARGIN - ex0, 1 - MARGIN - ex1))
                    o.y = float(rng.uniform(MARGIN - ey0, 1 - MARGIN - ey1))
                    if all(_boxes_clear(o.box(1), b, GAP) for b in boxes):
                        boxes.append(o.box(1))
                        break
                else:
                    break
            if len(boxes) == len(objs) and (check is None or check(objs)):
                return True
        big = max(objs, key=lambda o: SIZES[o.size])
        big.size = {"large": "medium", "medium": "small"}.get(big.size, "small")
    return False


def _place_in_slots(objs: list[Obj], rng: np.random.Generator, check=None, tries: int = 60) -> bool:
    layouts = SLOT_LAYOUTS.get(len(objs))
    if layouts is None:
        raise ValueError(f"the slots world holds 1-{MAX_OBJECTS} objects, not {len(objs)}")
    sides = SLOT_SIDES["alone" if len(objs) == 1 else "shared"]
    for o in objs:
        o.side = sides[o.size]
    for _ in range(tries):
        layout = layouts[int(rng.integers(len(layouts)))]
        for o, k in zip(objs, rng.permutation(len(objs))):
            o.x, o.y = layout[int(k)]
        if check is None or check(objs):
            return True
    return False


def sample_scene(rng: np.random.Generator, n_objects: int | None = None, world: str = DEFAULT_WORLD) -> Scene:
    """A random scene of ``world``: 1-4 objects (shape, colour, size uniform), random background."""
    n = int(n_objects or rng.integers(1, MAX_OBJECTS + 1))
    objs = [Obj(str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), str(rng.choice(list(SIZES))), 0, 0)
            for _ in range(n)]
    if not place(objs, rng, world=world):
        raise RuntimeError(f"could not place {n} objects")
    return Scene(objs, str(rng.choice(list(BACKGROUNDS))), world)


# ----------------------------------------------------------------------------- rendering

SUPERSAMPLE = 4  # draw at 4x, then box-downsample: exact area antialiasing


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Render ``scene`` as an RGB image of ``size`` x ``size`` pixels (deterministic)."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        _draw(draw, o, big, COLORS[o.color], BACKGROUNDS[scene.background])
    return img.reduce(SUPERSAMPLE)


def _draw(draw: ImageDraw.ImageDraw, o: Obj, big: int, fill, hole_fill) -> None:
    d, cx, cy = o.extent * big, o.x * big, o.y * big
    if o.shape in ("circle", "ring"):
        draw.ellipse([cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2], fill=fill)
        if o.shape == "ring":
            h = d / 2 * RING_HOLE
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=hole_fill)
    else:
        draw.polygon([(cx + px * d, cy + py * d) for px, py in POLYGONS[o.shape]], fill=fill)


# What each patch of a scene shows: the shape, colour and size class of the object on it, that
# object's centre, and the background (the same in every patch).
SEMANTIC_CHANNELS = len(SHAPES) + len(COLORS) + len(SIZES) + 2 + len(BACKGROUNDS)


def patch_semantics(scene: Scene, side: int = 8, size: int = 64) -> np.ndarray:
    """``[side * side, SEMANTIC_CHANNELS]``: for each patch of a ``side`` x ``side`` grid
    (row-major), one-hots of the shape, colour and size of the object covering most of it,
    that object's centre (x, y in [-1, 1]), each scaled by how much of the patch it covers
    (saturating at a third), and the background's one-hot.

    What a patch feature of a web-scale CLIP says about its patch (what is there, not its
    exact pixels), written down from the scene graph: the toy CLIP's dense training target.
    Every patch of an object gets the same vector, so a generator only has to place it."""
    big = size * SUPERSAMPLE
    covers = []
    for o in scene.objects:
        mask = Image.new("L", (big, big), 0)
        _draw(ImageDraw.Draw(mask), o, big, 255, 0)
        covers.append(np.asarray(mask.resize((side, side), Image.BOX), np.float32) / 255)  # [y, x]
    out = np.zeros((side, side, SEMANTIC_CHANNELS), np.float32)
    if covers:
        stacked = np.stack(covers)
        top = stacked.argmax(0)
        weight = np.minimum(1.0, 3 * stacked.max(0))
        color_at, size_at = len(SHAPES), len(SHAPES) + len(COLORS)
        centre_at = size_at + len(SIZES)
        for k, o in enumerate(scene.objects):
            w = np.where(top == k, weight, 0)
            out[..., SHAPES.index(o.shape)] += w
            out[..., color_at + list(COLORS).index(o.color)] += w
            out[..., size_at + list(SIZES).index(o.size)] += w
            out[..., centre_at] += w * (2 * o.x - 1)
            out[..., centre_at + 1] += w * (2 * o.y - 1)
    out[..., -len(BACKGROUNDS) + list(BACKGROUNDS).index(scene.background)] = 1
    return out.reshape(side * side, SEMANTIC_CHANNELS)


def ground_truth_detections(scene: Scene, size: int = 64) -> dict[str, list[dict]]:
    """What a perfect detector would return for ``render(scene, size)`` (judge protocol)."""
    out: dict[str, list[dict]] = {}
    for o in scene.objects:
        out.setdefault(o.shape, []).append({"box": o.box(size), "score": 1.0, "color": o.color})
    return out


# ----------------------------------------------------------------------------- captions


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "sh", "ch")) else "s")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def counted(n: int, words: str, shape: str) -> str:
    """'a red circle' / 'two red circles' (``words`` ends with ``shape``)."""
    if n == 1:
        return f"{article(words)} {words}"
    return f"{NUMBER_WORDS[n]} {words[: len(words) - len(shape)]}{plural(shape)}"


def join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _groups(scene: Scene, with_color: bool, with_size: bool = False) -> list[str]:
    keys = Counter(o.phrase(with_size, with_color) for o in scene.objects)
    shape_of = {o.phrase(with_size, with_color): o.shape for o in scene.objects}
    return [counted(n, k, shape_of[k]) for k, n in keys.items()]


def region(o: Obj) -> str:
    """Where an object sits, as a prepositional phrase ('in the top left', 'on the right')."""
    col = "left" if o.x < 0.36 else "right" if o.x > 0.64 else ""
    row = "top" if o.y < 0.36 else "bottom" if o.y > 0.64 else ""
    if row and col:
        return f"in the {row} {col}"
    return f"at the {row}" if row else f"on the {col}" if col else "in the center"


def clear_pairs(scene: Scene) -> list[tuple[Obj, str, Obj]]:
    """(A, relation, B) for object pairs with exactly one GenEval relation (unambiguous)."""
    out = []
    for i, a in enumerate(scene.objects):
        for j, b in enumerate(scene.objects):
            rel = relations(a.box(), b.box())
            if i < j and len(rel) == 1:
                out.append((a, rel[0], b))
    return out


def caption(scene: Scene, rng: np.random.Generator, style: str = "short") -> str:
    """A caption for ``scene``: "short" (~5-20 words, GenEval-like) or "detailed" (~40-120)."""
    if style == "short":
        return _short(scene, rng)
    if style == "detailed":
        return _detailed(scene, rng)
    raise ValueError(f"caption style must be 'short' or 'detailed', got {style!r}")


def _short(scene: Scene, rng: np.random.Generator) -> str:
    bg = BACKGROUND_WORDS[scene.background]
    # Shape-only phrasing now and then: GenEval's single/two-object, counting and position
    # prompts name no colour, so the toy models must learn that form too.
    groups = join(_groups(scene, with_color=rng.random() > 0.3, with_size=rng.random() < 0.2))
    pairs = clear_pairs(scene) if len(scene.objects) == 2 else []
    options = [f"a photo of {groups}", f"{groups} on a {bg} background",
               f"a simple flat picture of {groups}, {bg} background",
               f"an image showing {groups} on {bg}"]
    if pairs:
        a, rel, b = pairs[int(rng.integers(len(pairs)))]
        color = rng.random() > 0.4
        pa, pb = a.phrase(with_color=color), b.phrase(with_color=color)
        options += [f"a photo of {article(pa)} {pa} {rel} {article(pb)} {pb}"] * 2
    return str(options[int(rng.integers(len(options)))])


def _detailed(scene: Scene, rng: np.random.Generator) -> str:
    n, bg = len(scene.objects), BACKGROUND_WORDS[scene.background]
    things = "object" if n == 1 else "objects"
    opener = [f"The image shows {NUMBER_WORDS[n]} {things} on a plain {bg} background.",
              f"A flat, minimal illustration with {NUMBER_WORDS[n]} {things} set against a {bg} background.",
              f"This picture contains {NUMBER_WORDS[n]} simple geometric {things} on a uniform {bg} backdrop."]
    sentences = [opener[int(rng.integers(3))]]
    for o in scene.objects:
        p = o.phrase(with_size=True)
        sentences.append(str(rng.choice([f"There is {article(p)} {p} {region(o)} of the image.",
                                         f"{region(o).capitalize()} sits {article(p)} {p}.",
                                         f"{article(p).capitalize()} {p} is placed {region(o)}."])))
    counts = scene.counts()
    shapes = join([counted(c, s, s) for s, c in counts.items()])
    sentences.append(f"In total the image contains {shapes}.")
    pairs = clear_pairs(scene)
    for k in rng.permutation(len(pairs))[:3]:
        a, rel, b = pairs[int(k)]
        sentences.append(f"The {a.phrase()} is {rel} the {b.phrase()}.")
    sentences.append(str(rng.choice(["The shapes have sharp edges and solid colors, and none of them overlap.",
                                     "Each shape is filled with a single solid color; nothing overlaps.",
                                     "The style is clean and flat, with no shadows or textures."])))
    return " ".join(sentences)


def restatement(scene: Scene | dict, text: str) -> str:
    """What ``text`` (a caption of ``scene``) says, in one canonical form: the object groups
    (with the colours and sizes the caption gives), the relations it states, its background.

    The toy LM's stage-1 answer to the generation prompt, as an instruct LM answers "what
    should the image show?": to write it, the LM's states after the prompt must hold the
    caption's content whatever its wording, which is what the study's query tokens read.
    """
    scene = Scene.from_dict(scene) if isinstance(scene, dict) else scene
    words = set(text.lower().replace(",", " ").replace(".", " ").split())
    bg = BACKGROUND_WORDS[scene.background]
    objects_text = text.replace(bg, " ")  # "light blue" background is not a blue object
    with_color = any(f" {c} " in f" {objects_text} " for c in COLORS)
    with_size = bool(words & set(SIZES))
    parts = [join(_groups(scene, with_color, with_size))]
    for a, rel, b in clear_pairs(scene):
        for color in (True, False):
            pa, pb = a.phrase(with_color=color), b.phrase(with_color=color)
            if f"{pa} is {rel} the {pb}" in text or f"{pa} {rel} {article(pb)} {pb}" in text:
                parts.append(f"{pa} {rel} {pb}")
                break
    if bg in text:
        parts.append(f"{bg} background")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- datasets

SPLITS = {"train": 0, "validation": 1, "test": 2}  # seed-stream codes: splits never share one


def sample_rng(index: int, seed: int, split: str) -> np.random.Generator:
    """The generator of sample ``index``: independent of every other sample and split."""
    return np.random.default_rng([seed, SPLITS[split], index])


def make_sample(index: int, seed: int = 0, split: str = "train", size: int = 64,
                short_fraction: float = 0.2, world: str = DEFAULT_WORLD,
                n_objects: int | None = None) -> tuple[Image.Image, str, dict]:
    """One (image, caption, scene dict) sample; a ``short_fraction`` of captions are short;
    ``n_objects``: that many objects (default: the world's 1-4)."""
    rng = sample_rng(index, seed, split)
    scene = sample_scene(rng, n_objects, world=world)
    style = "short" if rng.random() < short_fraction else "detailed"
    return render(scene, size), caption(scene, rng, style), scene.to_dict()


def make_dataset(n: int, seed: int = 0, split: str = "train", size: int = 64, short_fraction: float = 0.2,
                 start: int = 0, world: str = DEFAULT_WORLD,
                 n_objects: int | None = None) -> Iterator[tuple[Image.Image, str, dict]]:
    """Samples ``start .. start+n-1`` of a split of ``world``, deterministically (see ``make_sample``)."""
    check_world(world)
    for i in range(start, start + n):
        yield make_sample(i, seed, split, size, short_fraction, world, n_objects)
