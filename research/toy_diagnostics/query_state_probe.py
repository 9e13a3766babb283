"""What of a caption do the frozen LM's query states carry? A ridge probe on held-out captions.

For ``--n`` one-object scenes of the toy world (captions ``short``: "a photo of a red
circle", or ``mixed``: the demo data's mix, 80 % detailed), the backbone's 64 query states
(queries at their initial values) are reduced to their mean, first and last token; for each,
a ridge probe trained on 3/4 of the captions reads the colour and the shape of the rest, and
the share of the states' variance that the colour / the shape explains (between-class
variance over total) and their spread across captions relative to their norm are printed.

    python research/toy_diagnostics/query_state_probe.py ablate/toy/assets/lm --captions mixed

Figures only; nothing here asserts a target.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ablate.backbone import Backbone
from ablate.config import BackboneConfig
from ablate.toy.scenes import COLORS, SHAPES, WORLDS, caption, sample_scene


def ridge_accuracy(x: np.ndarray, y: np.ndarray, classes: int, train: int, alpha: float = 10.0) -> float:
    """Held-out accuracy of a one-vs-all ridge probe on standardised features."""
    x = (x - x[:train].mean(0)) / (x[:train].std(0) + 1e-6)
    onehot = np.eye(classes)[y]
    w = np.linalg.solve(x[:train].T @ x[:train] + alpha * np.eye(x.shape[1]), x[:train].T @ onehot[:train])
    return float(((x[train:] @ w).argmax(1) == y[train:]).mean())


def explained(x: np.ndarray, y: np.ndarray, classes: int) -> float:
    """Between-class share of the total variance of ``x`` (one-way ANOVA's R^2)."""
    centre = x.mean(0)
    means = np.stack([x[y == c].mean(0) if (y == c).any() else centre for c in range(classes)])
    return float(((means[y] - centre) ** 2).sum(1).mean() / x.var(0).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("lm", help="the backbone LM folder (e.g. ablate/toy/assets/lm)")
    p.add_argument("--captions", choices=("short", "mixed"), default="short")
    p.add_argument("--world", choices=WORLDS, default="slots")
    p.add_argument("--n", type=int, default=800, help="captions (3/4 train the probe)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    backbone = Backbone(BackboneConfig(model=args.lm), num_queries=64)
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
