"""What of a caption do the frozen LM's query states carry? A ridge probe on held-out captions.

For ``--n`` one-object scenes of the toy world (captions ``short``: "a photo of a red
circle", or ``mixed``: the demo data's mix, 80 % detailed), the backbone's 64 query states
(queries at their initial values) are reduced to their mean, first and last token; for each,
a ridge probe trained on 3/4 of the captions reads the colour and the shape of the rest, and
the share of the states' variance that the colour / the shape explains (between-class
variance over total) and their spread across captions relative to their norm are printed.

    python research/toy_diagnostics/query_state_probe.py ablate/toy/assets/lm --captions mixed

``--two-objects``: do the states bind each colour to its shape, in order? Captions "a photo
of a C1 S1 and a C2 S2" / "... C1 S1 left of / right of / above / below a C2 S2" (two distinct
colours and shapes); a kernel ridge probe reads C1, S1, C2, S2 and the relation (the four
relations or "and") from the mean, first and last query state, all 64 query states together,
and, as the LM's own summary without the queries, its state at the prompt's last token.

    python research/toy_diagnostics/query_state_probe.py ablate/toy/assets/lm --two-objects --n 2400

Figures only; nothing here asserts a target.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ablate.backbone import Backbone
from ablate.config import BackboneConfig
from ablate.toy.scenes import COLORS, SHAPES, WORLDS, caption, sample_scene


def standardised(x: np.ndarray, train: int) -> np.ndarray:
    """``x`` standardised per feature with the statistics of its first ``train`` rows."""
    return (x - x[:train].mean(0)) / (x[:train].std(0) + 1e-6)


def ridge_accuracy(x: np.ndarray, y: np.ndarray, classes: int, train: int, alpha: float = 10.0) -> float:
    """Held-out accuracy of a one-vs-all ridge probe on standardised features."""
    x = standardised(x, train)
    onehot = np.eye(classes)[y]
    w = np.linalg.solve(x[:train].T @ x[:train] + alpha * np.eye(x.shape[1]), x[:train].T @ onehot[:train])
    return float(((x[train:] @ w).argmax(1) == y[train:]).mean())


def explained(x: np.ndarray, y: np.ndarray, classes: int) -> float:
    """Between-class share of the total variance of ``x`` (one-way ANOVA's R^2)."""
    centre = x.mean(0)
    means = np.stack([x[y == c].mean(0) if (y == c).any() else centre for c in range(classes)])
    return float(((means[y] - centre) ** 2).sum(1).mean() / x.var(0).sum())


def kernel_ridge_accuracy(x: np.ndarray, y: np.ndarray, classes: int, train: int, alpha: float = 1.0) -> float:
    """``ridge_accuracy`` in its dual form (a linear kernel), for more features than captions."""
    x = standardised(x, train)
    kernel = x @ x[:train].T / x.shape[1]
    coef = np.linalg.solve(kernel[:train] + alpha * np.eye(train), np.eye(classes)[y[:train]])
    return float(((kernel[train:] @ coef).argmax(1) == y[train:]).mean())


RELATIONS = ("left of", "right of", "above", "below")


def two_object_probe(backbone: Backbone, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    colors, texts, labels = list(COLORS), [], []
    for _ in range(n):
        c1, c2 = rng.choice(len(colors), 2, replace=False)
        s1, s2 = rng.choice(len(SHAPES), 2, replace=False)
        rel = int(rng.integers(len(RELATIONS) + 1))  # the last: "and"
        joint = RELATIONS[rel] if rel < len(RELATIONS) else "and"
        texts.append(f"a photo of a {colors[c1]} {SHAPES[s1]} {joint} a {colors[c2]} {SHAPES[s2]}")
        labels.append((c1, s1, c2, s2, rel))
    with torch.no_grad():
        states = torch.cat([backbone(texts[i:i + 100]) for i in range(0, n, 100)]).float()
        # left-padded: the last position is every prompt's last token
        last_token = torch.cat([backbone.prompt_states(texts[i:i + 100])[0][:, -1]
                                for i in range(0, n, 100)]).float()
    labels = np.array(labels)
    targets = {"colour 1": len(colors), "shape 1": len(SHAPES), "colour 2": len(colors), "shape 2": len(SHAPES),
               "relation": len(RELATIONS) + 1}
    train = 3 * n // 4
    features = {"mean query state": states.mean(1), "first query state": states[:, 0],
                "last query state": states[:, -1], "all 64 query states": states.flatten(1),
                "prompt's last token (no queries)": last_token}
    for name, x in features.items():
        x = x.numpy().astype(np.float64)
        read = [f"{what} {kernel_ridge_accuracy(x, labels[:, k], classes, train):.2f}"
                for k, (what, classes) in enumerate(targets.items())]
        print(f"two objects, {name}: held-out probe " + ", ".join(read), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("lm", help="the backbone LM folder (e.g. ablate/toy/assets/lm)")
    p.add_argument("--captions", choices=("short", "mixed"), default="short")
    p.add_argument("--world", choices=WORLDS, default="slots")
    p.add_argument("--n", type=int, default=800, help="captions (3/4 train the probe)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--two-objects", action="store_true", help="probe two-object captions' binding instead")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    backbone = Backbone(BackboneConfig(model=args.lm), num_queries=64)
    if args.two_objects:
        return two_object_probe(backbone, args.n, args.seed)
    rng = np.random.default_rng(args.seed)
    texts, colors, shapes = [], [], []
    for _ in range(args.n):
        scene = sample_scene(rng, 1, args.world)
        obj = scene.objects[0]
        if args.captions == "short":
            texts.append(f"a photo of a {obj.color} {obj.shape}")
        else:
            texts.append(caption(scene, rng, "short" if rng.random() < 0.2 else "detailed"))
        colors.append(list(COLORS).index(obj.color))
        shapes.append(SHAPES.index(obj.shape))
    with torch.no_grad():
        states = torch.cat([backbone(texts[i:i + 100]) for i in range(0, len(texts), 100)]).float()
    colors, shapes = np.array(colors), np.array(shapes)
    train = 3 * args.n // 4
    for name, x in (("mean", states.mean(1)), ("first", states[:, 0]), ("last", states[:, -1])):
        x = x.numpy()
        spread = float(np.sqrt(x.var(0).sum()) / np.linalg.norm(x.mean(0)))
        print(f"{args.captions} captions, {name} query state: probe colour "
              f"{ridge_accuracy(x, colors, len(COLORS), train):.2f} shape "
              f"{ridge_accuracy(x, shapes, len(SHAPES), train):.2f}; variance explained by colour "
              f"{explained(x, colors, len(COLORS)):.3f} shape {explained(x, shapes, len(SHAPES)):.3f}; "
              f"spread / norm {spread:.3f}")


if __name__ == "__main__":
    main()
