"""Can a linear head read the prompt from the frozen LM's query states? The closed-form answer.

The upper bound of a CLIP+MSE (or VAE+MSE) cell with untrained queries: on ``--pairs``
one-object scenes of the slots world with GenEval-style captions, a ridge regression from
the standardised mean query state to the whole target grid is solved in closed form (3/4
of the pairs), its held-out MSE is printed beside the training mean's, and its predictions
for every (shape, colour) prompt are decoded by the cell's encoder and judged by the toy
detector as in ``conditioning_check.py`` (colour / shape right). ``--form tokenwise`` solves
instead the MSE cell's own form, one linear map shared by all 64 query tokens (query state
``i`` -> target token ``i``, standardised per feature), and compares it with the per-position
mean of the targets: what a token-wise head can draw from untrained queries. Samples:
``<out>/<cell>/ridge_samples.png`` (a row per shape, a column per colour); the solution:
``<out>/<cell>/ridge.pt`` (what ``pooled_regression.py``'s ``ridge_init`` starts from).

    python research/toy_diagnostics/ridge_readout.py experiments/demo.yaml --cell clip+mse

Figures only; nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ablate.eval.sampling import contact_sheet, to_pil
from ablate.toy.scenes import COLORS, SHAPES

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling diagnostics' helpers
from conditioning_check import judge_single_objects, short_caption, single_object_pairs  # noqa: E402
from objective_only import load_cell  # noqa: E402


def ridge(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """W minimising ||x W - y||^2 + alpha ||W||^2 (x, y centred)."""
    return torch.linalg.solve(x.T @ x + alpha * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study")
    p.add_argument("--cell", default="clip+mse")
    p.add_argument("--set", nargs="*", default=[])
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--alpha", type=float, default=10.0)
    p.add_argument("--form", choices=("pooled", "tokenwise"), default="pooled",
                   help="pooled: mean query state -> whole grid (default); tokenwise: the MSE head's form")
    p.add_argument("--out", default="results/ridge_readout")
    args = p.parse_args()
    run, module, out_dir = load_cell(args, {"ridge_readout": vars(args)})
    targets, texts, _, _ = single_object_pairs(module, args.pairs, "short", run.seed, world="slots")
    with torch.no_grad():
        states = torch.cat([module.conditioning(texts[i:i + 100]) for i in range(0, len(texts), 100)])
    if args.form == "tokenwise":
        return tokenwise(states.double(), targets.double(), args.alpha)
    x, y = states.mean(1).double(), targets.flatten(1).double()
    mean_x, std_x, mean_y = x.mean(0), x.std(0) + 1e-6, y.mean(0)
    x = (x - mean_x) / std_x
    train = 3 * len(x) // 4
    w = ridge(x[:train], y[:train] - mean_y, args.alpha)
    held_out = float(((x[train:] @ w + mean_y - y[train:]) ** 2).mean())
    mean_only = float(((mean_y - y[train:]) ** 2).mean())
    print(f"held-out MSE: ridge {held_out:.3f}, training mean {mean_only:.3f}")
    colors = [c for _ in SHAPES for c in COLORS]
    shapes = [s for s in SHAPES for _ in COLORS]
    with torch.no_grad():
        probe = module.conditioning([short_caption(c, s) for c, s in zip(colors, shapes)]).mean(1).double()
        pred = (((probe - mean_x) / std_x) @ w + mean_y).float().reshape(len(colors), *targets.shape[1:])
        images = to_pil(module.encoder.decode(pred, generator=torch.Generator().manual_seed(run.seed)))
    print("decoded predictions:", judge_single_objects(images, colors, shapes))
    contact_sheet(images, columns=len(COLORS)).save(out_dir / "ridge_samples.png")
    # the solution, for pooled_regression.py's ``ridge_init`` (a head that starts from it)
    torch.save({"mean_x": mean_x.float(), "std_x": std_x.float(), "weight": w.float().T.contiguous(),
                "bias": mean_y.float()}, out_dir / "ridge.pt")


def tokenwise(states: torch.Tensor, targets: torch.Tensor, alpha: float) -> None:
    """Held-out MSE of one map shared by every query token (query i -> target token i)."""
    n, q, d = states.shape
    y = targets.flatten(2).transpose(1, 2)  # [N, h*w, C], token i = grid cell (i // w, i % w)
    if y.shape[1] != q:
        raise SystemExit(f"--form tokenwise needs one query per target token: {q} queries, {y.shape[1]} tokens")
    train = 3 * n // 4
    position_mean = y[:train].mean(0)
    flat = states[:train].reshape(-1, d)
    x = (states - flat.mean(0)) / (flat.std(0) + 1e-6)
    w = ridge(x[:train].reshape(-1, d), (y[:train] - position_mean).reshape(-1, y.shape[-1]), alpha)
    held_out = float(((x[train:] @ w + position_mean - y[train:]) ** 2).mean())
    print(f"held-out MSE: token-wise ridge {held_out:.3f}, per-position training mean "
          f"{float(((position_mean - y[train:]) ** 2).mean()):.3f}; query states vary "
          f"{float(states.var(1).sum(-1).mean() / states.var(0).sum(-1).mean()):.1f}x more across "
          f"the 64 queries than across captions")


if __name__ == "__main__":
    main()
