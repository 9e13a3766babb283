"""How far can a cell's target features be off before its decoder loses the shapes?

A generator never hits the target features exactly. This encodes held-out toy renders with a
cell's encoder, perturbs the features as a half-trained head would get them wrong, decodes
them with the same encoder's decoder (the VAE decoder, or the CLIP decoder) and asks the toy
detector whether the scene's shapes and colours are still there (``ablate.toy.components.judge_images``):

- ``noise``: Gaussian noise of ``level`` x each channel's std (over images and positions);
- ``lowpass``: the feature grid averaged over ``level`` x ``level`` cells and upsampled back
  (bilinear): what a head that has the coarse layout right but not the fine detail gives;
- ``shrink``: the features moved ``level`` of the way to their mean over the images: what an
  under-trained regression (MSE) head gives, between the training mean and the target.

    python research/toy_diagnostics/decoder_tolerance.py experiments/demo.yaml --cell vae+fm

Writes ``<out>/<cell>/decoder_tolerance.csv`` (one row per perturbation) and prints it.
Figures only; nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from ablate.eval.sampling import to_pil
from ablate.registry import get_registry
from ablate.toy.components import judge_images, to_unit, toy_pairs

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling diagnostic's cell loading
from objective_only import resolve_cell  # noqa: E402


def perturb(features: torch.Tensor, kind: str, level: float, seed: int) -> torch.Tensor:
    """``features`` [B, C, h, w] with the error of a ``kind`` at ``level`` (see the module doc)."""
    if kind == "noise":
        std = features.std(dim=(0, 2, 3), keepdim=True)
        g = torch.Generator(features.device).manual_seed(seed)
        return features + level * std * torch.randn(features.shape, generator=g, device=features.device)
    if kind == "lowpass":
        k = int(level)
        if k < 1 or features.shape[-1] % k or features.shape[-2] % k:
            raise ValueError(f"lowpass {level}: must be a whole number that divides the "
                             f"{features.shape[-2]}x{features.shape[-1]} grid")
        return F.interpolate(F.avg_pool2d(features, k), size=features.shape[-2:], mode="bilinear")
    if kind == "shrink":
        return torch.lerp(features, features.mean(0, keepdim=True), level)
    raise ValueError(f"unknown perturbation {kind!r}; choose 'noise', 'lowpass' or 'shrink'")


def levels(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study", help="a study YAML (experiments/...)")
    p.add_argument("--cell", default="vae+fm", help="a cell of the study (its encoder is tested)")
    p.add_argument("--set", nargs="*", default=[], help="overrides for every cell, key=value")
    p.add_argument("--images", type=int, default=64, help="held-out renders")
    p.add_argument("--noise", type=levels, default=[0.0, 0.1, 0.2, 0.3, 0.5], help="comma-separated levels")
    p.add_argument("--lowpass", type=levels, default=[2.0], help="comma-separated cell counts")
    p.add_argument("--shrink", type=levels, default=[], help="comma-separated fractions of the way to the mean")
    p.add_argument("--out", default="results/decoder_tolerance")
    args = p.parse_args()

    run, out_dir = resolve_cell(args, {"decoder_tolerance": vars(args)})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # only the encoder (and its decoder): the cell's LM and head play no part here
    encoder = get_registry("encoder").build(run.encoder, where="encoder").to(device).eval()
    images, _, scenes = toy_pairs(args.images, run.seed, "validation", size=encoder.resolution)
    rows = []
    with torch.no_grad():
        features = encoder.encode(to_unit(images).to(device))
        for kind, values in (("noise", args.noise), ("lowpass", args.lowpass), ("shrink", args.shrink)):
            for level in values:
                g = torch.Generator(device).manual_seed(run.seed)
                decoded = encoder.decode(perturb(features, kind, level, run.seed), generator=g)
                rows.append({"perturbation": kind, "level": level,
                             **judge_images(to_pil(decoded), scenes)})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(out_dir / "decoder_tolerance.csv", index=False)
    print(f"\n{args.cell}: {encoder.__class__.__name__} features {tuple(features.shape[1:])}\n{table.to_string(index=False)}")


if __name__ == "__main__":
    main()
