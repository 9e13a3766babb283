"""Session 15 (results/reference/README.md): short-caption slots shards whose caption fixes the layout ("canonical" placement).
1 object: centre. 2: horizontal or vertical at random, and the caption says which: "A and B" /
"A left of B" / "B right of A" (A left), "A above B" / "B below A" (A on top). 3: the top-left,
top-right and bottom-left quadrants in reading order; 4: all four in reading order.
usage: make_canon.py OUT N"""
import sys

import ablate.toy.scenes as S
from ablate.toy.shards import write_split

Q = S._QUADRANTS
orig_short = S._short

def canon_scene(rng, n_objects=None, world=S.DEFAULT_WORLD):
    n = int(n_objects or rng.integers(1, S.MAX_OBJECTS + 1))
    objs = [S.Obj(str(rng.choice(S.SHAPES)), str(rng.choice(list(S.COLORS))), str(rng.choice(list(S.SIZES))), 0, 0)
            for _ in range(n)]
    sides = S.SLOT_SIDES["alone" if n == 1 else "shared"]
    slots = {1: [(0.5, 0.5)], 3: Q[:3], 4: Q}.get(n) or S.SLOT_LAYOUTS[2][int(rng.integers(2))]
    for o, (x, y) in zip(objs, slots):
        o.side, o.x, o.y = sides[o.size], x, y
    return S.Scene(objs, str(rng.choice(list(S.BACKGROUNDS))), world)

def canon_short(scene, rng):
    if len(scene.objects) != 2:
        return orig_short(scene, rng)
    a, b = scene.objects
    color = rng.random() > 0.3
    pa, pb = a.phrase(with_color=color), b.phrase(with_color=color)
    A, B = f"{S.article(pa)} {pa}", f"{S.article(pb)} {pb}"
    if a.x < b.x:
        body = [f"{A} and {B}", f"{A} left of {B}", f"{B} right of {A}"][int(rng.integers(3))]
    else:
        body = [f"{A} above {B}", f"{B} below {A}"][int(rng.integers(2))]
    bg = S.BACKGROUND_WORDS[scene.background]
    return [f"a photo of {body}", f"{body} on a {bg} background", f"an image showing {body} on {bg}"][int(rng.integers(3))]

S.sample_scene, S._short = canon_scene, canon_short
paths = write_split(sys.argv[1], "train", int(sys.argv[2]), seed=0, shard_size=1000, short_fraction=1.0)
print(len(paths), "shards")
