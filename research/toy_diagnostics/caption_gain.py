"""How much does a trained cell use its captions? Its loss on held-out pairs with the true
captions, against the same pairs with the captions shuffled across the batch and with the
null (dropped) condition, at the same noise and times.

The probe of ``probe_checkpoint.py`` asks whether one prompted object is drawn right; this
asks, of any scene (1-4 objects, either caption form), whether the head's prediction depends
on what the caption says at all. ``gain`` = 1 - loss(true) / loss(shuffled): 0 when the head
ignores the caption (it draws the data's average picture whatever the prompt), larger the
more of the loss the caption explains. The shuffled captions keep the conditioning's
statistics, so a gain is the caption's content, not its presence. ``object_gain`` shuffles
only among scenes of the same background colour: the part of the gain that the caption's
objects explain (the background, most of every image's area, is the easiest word to follow).

    python research/toy_diagnostics/caption_gain.py results/demo/vae+fm-seed0 --captions short

Each checkpoint (a .ckpt file or a run folder: its last.ckpt) prints a line and appends a row
to ``<out>/caption_gain.csv``. Figures only; nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import pandas as pd
import torch

from ablate.eval.cli import readable_checkpoint
from ablate.module import AblationModule
from ablate.toy.components import to_unit, toy_pairs
from ablate.toy.scenes import MAX_OBJECTS, WORLDS

SHORT_FRACTION = {"short": 1.0, "detailed": 0.0, "mixed": 0.2}  # "mixed": the demo shards' share


def held_out_pairs(n: int, short_fraction: float, world: str, objects: int | None = None):
    """``n`` validation-split (uint8 images, captions, scene dicts); ``objects``: every scene
    has that many objects (a head trained on one-object scenes is measured on its own kind)."""
    return toy_pairs(n, 0, "validation", short_fraction, world=world, n_objects=objects)


@torch.no_grad()
def shuffled_within(groups: list, generator: torch.Generator) -> torch.Tensor:
    """A permutation that moves each item only among the items of its own group."""
    order = torch.arange(len(groups))
    for g in set(groups):
        members = torch.tensor([i for i, x in enumerate(groups) if x == g])
        order[members] = members[torch.randperm(len(members), generator=generator)]
    return order


@torch.no_grad()
def caption_losses(module: AblationModule, images_u8: torch.Tensor, captions: list[str], backgrounds: list,
                   repeats: int = 4, batch_size: int = 64, seed: int = 0) -> dict[str, float]:
    """Mean loss with the true, shuffled and null condition, at the same noise and times.

    "same_background": captions shuffled only among scenes of the same background colour, so
    the wrong caption still names the right background: what the caption's objects (their
    shapes, colours, sizes, places, number) explain, apart from the background's large area."""
    module.eval()
    takes_generator = "generator" in inspect.signature(module.objective.loss).parameters
    sums = {"true": 0.0, "shuffled": 0.0, "same_background": 0.0, "null": 0.0}
    batches = 0
    for start in range(0, len(captions), batch_size):
        end = start + batch_size
        target = module.targets({"pixels": to_unit(images_u8[start:end])})
        cond = module.conditioning(captions[start:end])
        gen = torch.Generator().manual_seed(seed + start)
        variants = {"true": cond, "shuffled": cond[torch.randperm(len(cond), generator=gen)],
                    "same_background": cond[shuffled_within(backgrounds[start:end], gen)],
                    "null": torch.zeros_like(cond)}
        for r in range(repeats):
            for name, c in variants.items():
                kwargs = {"generator": torch.Generator().manual_seed(seed + 1000 * r + start)} if takes_generator else {}
                sums[name] += float(module.objective.loss(c, target, **kwargs)["loss"])
            batches += 1
    losses = {k: v / batches for k, v in sums.items()}
    losses["gain"] = 1 - losses["true"] / losses["shuffled"]
    losses["object_gain"] = 1 - losses["true"] / losses["same_background"]
    return losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help=".ckpt files or run folders (their last.ckpt)")
    p.add_argument("--captions", choices=tuple(SHORT_FRACTION), default="mixed")
    p.add_argument("--world", choices=WORLDS, default="slots")
    p.add_argument("--n", type=int, default=256, help="held-out pairs (the toy world's validation split)")
    p.add_argument("--objects", type=int, choices=range(1, MAX_OBJECTS + 1), default=None,
                   help="objects per held-out scene (default: the world's 1-4)")
    p.add_argument("--repeats", type=int, default=4, help="noise / time draws per pair")
    p.add_argument("--out", default="results/caption_gain")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images, captions, scenes = held_out_pairs(args.n, SHORT_FRACTION[args.captions], args.world, args.objects)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.checkpoints:
        checkpoint = readable_checkpoint(path)
        module = AblationModule.load(checkpoint)
        step = int(torch.load(checkpoint, map_location="cpu", weights_only=False).get("global_step", -1))
        row = {"run": module.run_cfg.name, "checkpoint": str(checkpoint), "step": step, "captions": args.captions,
               "objects": args.objects or f"1-{MAX_OBJECTS}",
               **caption_losses(module, images, captions, [x["background"] for x in scenes], args.repeats)}
        table = out / "caption_gain.csv"
        frame = pd.concat([pd.read_csv(table), pd.DataFrame([row])]) if table.is_file() else pd.DataFrame([row])
        frame.to_csv(table, index=False)
        print(", ".join(f"{k} {v}" if isinstance(v, (str, int)) else f"{k} {v:.4f}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
