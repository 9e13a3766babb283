"""The positive control's probe, on a study run's checkpoint: does the trained cell draw the
prompted colour and shape of one object?

GenEval scores a sample only when every object of the prompt is right, so in the first
thousands of steps it stays at 0 whether or not a cell has started to follow the colour.
This script asks the question ``conditioning_check.py`` asks of its heads, of a checkpoint of
the real training (queries and head as ``ablate grid`` trained them): one sample per (colour,
shape) prompt "a photo of a <colour> <shape>" (70 with the default seven shapes), sampled
with the run's eval settings (or ``--guidance`` / ``--steps``; ``--captions detailed``: the
toy grammar's detailed caption of the object instead, the form most training captions take), decoded by the run's encoder
and judged by the toy detector (largest object's colour / shape; chance 0.10 / 0.14).

    python research/toy_diagnostics/probe_checkpoint.py results/demo/vae+fm-seed0 --out probe/

It prints the scores, appends a row to ``<out>/probe.csv`` and writes the samples' contact
sheet (a row per shape, a column per colour). Figures only; nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ablate.eval.cli import readable_checkpoint
from ablate.eval.sampling import contact_sheet, to_pil
from ablate.module import AblationModule
from ablate.toy.scenes import BACKGROUNDS, COLORS, SHAPES, Obj, Scene, caption

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling diagnostic's probe and judge
from conditioning_check import judge_single_objects, short_caption  # noqa: E402


def prompts(colors: list[str], shapes: list[str], style: str = "short", seed: int = 0) -> list[str]:
    """One prompt per (colour, shape): GenEval's short form, or the toy grammar's detailed
    caption of that object alone at the centre (random size and background), as the demo's
    training data mostly words it."""
    if style == "short":
        return [short_caption(c, s) for c, s in zip(colors, shapes)]
    rng = np.random.default_rng([seed, 11])
    backgrounds, sizes = list(BACKGROUNDS), ["small", "medium", "large"]
    return [caption(Scene([Obj(s, c, sizes[int(rng.integers(3))], 0.5, 0.5)],
                          backgrounds[int(rng.integers(len(backgrounds)))], "slots"), rng, style)
            for c, s in zip(colors, shapes)]


@torch.no_grad()
def probe(module: AblationModule, shapes=SHAPES, guidance: float | None = None, steps: int | None = None,
          seed: int = 0, style: str = "short") -> tuple[dict[str, float], list]:
    """(scores, images) of one sample per (shape, colour) prompt from ``module``."""
    colors = [c for _ in shapes for c in COLORS]
    shape_of = [s for s in shapes for _ in COLORS]
    g = torch.Generator(module.device).manual_seed(seed)
    ev = module.run_cfg.eval
    sample = module.generate_features(prompts(colors, shape_of, style, seed), generator=g,
                                      steps=ev.sample_steps if steps is None else steps,
                                      guidance=ev.guidance if guidance is None else guidance)
    images = to_pil(module.encoder.decode(sample, generator=g))
    return judge_single_objects(images, colors, shape_of), images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a .ckpt file or a run folder (its last.ckpt)")
    p.add_argument("--out", default="results/probe_checkpoint")
    p.add_argument("--guidance", type=float, default=None, help="default: the run's eval.guidance")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's eval.sample_steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--captions", choices=("short", "detailed"), default="short",
                   help="prompt form: GenEval's short one, or the toy grammar's detailed caption of the object")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = readable_checkpoint(args.checkpoint)
    module = AblationModule.load(checkpoint).eval()
    scores, images = probe(module, guidance=args.guidance, steps=args.steps, seed=args.seed, style=args.captions)
    step = int(torch.load(checkpoint, map_location="cpu", weights_only=False).get("global_step", -1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = module.run_cfg.name
    suffix = "" if args.captions == "short" else f"_{args.captions}"
    contact_sheet(images, columns=len(COLORS)).save(out / f"{run}_{step:07d}{suffix}.png")
    row = {"run": run, "checkpoint": str(checkpoint), "step": step, "captions": args.captions, **scores}
    table = out / "probe.csv"
    frame = pd.concat([pd.read_csv(table), pd.DataFrame([row])]) if table.is_file() else pd.DataFrame([row])
    frame.to_csv(table, index=False)
    print(", ".join(f"{k} {v}" if isinstance(v, (str, int)) else f"{k} {v:.3f}" for k, v in row.items()))


if __name__ == "__main__":
    main()
