"""Session 15 (results/reference/README.md): the positive control for scenes of 1-4 objects.
The head (a study cell's objective, alone, with the run's optimiser and schedule) trains on
slots-world scenes conditioned on a clean *scene label* instead of a caption: one token per
object, a fixed random embedding of its colour + one of its shape + one of its slot (the 9
slot centres of the world), the other tokens zero. Every ``--every`` steps it samples held-out
scenes from their labels, decodes them and judges each object with the toy segmenter: an
object is right when a segment centred within 0.15 of the side from its slot has its shape and
colour; a scene when all its objects are right and nothing else is drawn (``--no-slots``: the
label leaves the slot out and the head picks the placement, so an object is right anywhere). Does the head draw
several objects quickly when nothing has to be read from a caption?

    python results/reference/multi_object/scene_label_control.py experiments/demo.yaml \\
        --cell vae+fm --set train.max_steps=4000 --every 1000"""
import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ablate.data.stream import preprocess
from ablate.eval.sampling import to_pil
from ablate.toy.judges import classify, nearest_color, segment
from ablate.toy.scenes import COLORS, SHAPES, SLOT_LAYOUTS, Scene, make_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "research" / "toy_diagnostics"))
from objective_only import head_step, load_cell  # noqa: E402

SLOTS = sorted({xy for layouts in SLOT_LAYOUTS.values() for layout in layouts for xy in layout})


@torch.no_grad()
def scenes_and_targets(module, n: int, split: str, seed: int):
    transform = preprocess(module.encoder.resolution)
    scenes, targets = [], []
    samples = list(make_dataset(n, seed, split, short_fraction=1.0))
    for start in range(0, n, 64):
        chunk = samples[start:start + 64]
        pixels = torch.stack([transform(image) for image, _, _ in chunk])
        targets.append(module.encoder.encode(pixels))
        scenes += [Scene.from_dict(d) for _, _, d in chunk]
    return scenes, torch.cat(targets)


def labels(scenes, tables, n_tokens: int, hidden: int, slots: bool = True) -> torch.Tensor:
    color_emb, shape_emb, slot_emb = tables
    slot_emb = slot_emb if slots else torch.zeros_like(slot_emb)
    out = torch.zeros(len(scenes), n_tokens, hidden)
    for i, s in enumerate(scenes):
        for k, o in enumerate(s.objects):
            out[i, k] = (color_emb[list(COLORS).index(o.color)] + shape_emb[SHAPES.index(o.shape)]
                         + slot_emb[SLOTS.index((o.x, o.y))])
    return out


def judge(image, scene: Scene, anywhere: bool = False) -> tuple[int, bool]:
    """(objects right, scene right) of one sample; ``anywhere``: at any position."""
    segs, used, side = segment(image), set(), image.width
    right = 0
    for o in scene.objects:
        for j, seg in enumerate(segs):
            if j in used:
                continue
            x0, y0, x1, y1 = seg["box"]
            near = anywhere or (abs((x0 + x1) / 2 / side - o.x) < 0.15 and abs((y0 + y1) / 2 / side - o.y) < 0.15)
            if near and classify(seg["features"])[0] == o.shape and nearest_color(seg["rgb"]) == o.color:
                right += 1
                used.add(j)
                break
    return right, right == len(scene.objects) == len(segs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study")
    p.add_argument("--cell", default="vae+fm")
    p.add_argument("--set", nargs="*", default=[])
    p.add_argument("--pairs", type=int, default=6000)
    p.add_argument("--probe", type=int, default=80, help="held-out scenes sampled at each report")
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--out", default="results/scene_label_control")
    p.add_argument("--no-slots", action="store_true",
                   help="leave the slot out of the label: the head picks the placement, as from a caption")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run, module, out_dir = load_cell(args, {"scene_label_control": vars(args)})
    backbone = module.backbone
    g = torch.Generator().manual_seed(run.seed)
    tables = [torch.randn(k, backbone.hidden_size, generator=g) for k in (len(COLORS), len(SHAPES), len(SLOTS))]
    train_scenes, targets = scenes_and_targets(module, args.pairs, "train", run.seed)
    probe_scenes, _ = scenes_and_targets(module, args.probe, "validation", run.seed)
    conds = labels(train_scenes, tables, backbone.num_queries, backbone.hidden_size, not args.no_slots)
    probe_conds = labels(probe_scenes, tables, backbone.num_queries, backbone.hidden_size, not args.no_slots)
    print(f"{len(train_scenes)} scenes, targets {tuple(targets.shape[1:])}", flush=True)
    objective = module.objective
    optimizers = module.configure_optimizers()
    opt, sched = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    params = [q for q in objective.parameters() if q.requires_grad]
    order, train_s, rows = torch.Generator().manual_seed(run.seed), 0.0, []
    for step in range(1, run.train.max_steps + 1):
        tick = time.time()
        loss = head_step(objective, opt, params, conds, targets, run, step, order)
        sched.step()
        train_s += time.time() - tick
        if step % args.every == 0 or step == run.train.max_steps:
            objective.eval()
            with torch.no_grad():
                sample = objective.sample(probe_conds, generator=torch.Generator().manual_seed(0))
                images = to_pil(module.encoder.decode(sample, generator=torch.Generator().manual_seed(0)))
            by_n = defaultdict(lambda: [0, 0, 0, 0])  # objects right, objects, scenes right, scenes
            for image, scene in zip(images, probe_scenes):
                right, ok = judge(image, scene, anywhere=args.no_slots)
                tally = by_n[len(scene.objects)]
                tally[0] += right
                tally[1] += len(scene.objects)
                tally[2] += ok
                tally[3] += 1
            for n, (r, o, sr, s) in sorted(by_n.items()):
                rows.append(dict(step=step, objects=n, object_acc=r / o, scene_acc=sr / s, scenes=s,
                                 loss=loss, train_s=round(train_s)))
            shown = {n: (round(r / o, 2), round(sr / s, 2)) for n, (r, o, sr, s) in sorted(by_n.items())}
            print(f"step {step}: (object, scene) accuracy by object count {shown}, train {train_s:.0f}s", flush=True)
            out_dir.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(out_dir / "scene_label_control.csv", index=False)
            grid = np.concatenate([np.concatenate([np.asarray(im) for im in images[r * 10:(r + 1) * 10]], 1)
                                   for r in range(min(4, len(images) // 10))], 0)
            Image.fromarray(grid).save(out_dir / f"probe_{step:07d}.png")


if __name__ == "__main__":
    main()
