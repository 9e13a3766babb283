"""The positive control: can a cell's head draw the prompted shape and colour? A label vs the LM's states.

A diagnostic for the question "the head learns the image distribution but not the prompt:
is the conditioning the bottleneck?". On toy single-object scenes (one shape, one colour),
the cell's objective is trained from its initial weights three times, each for ``--steps``
steps (AdamW at the run's learning rate, held constant) on the same targets with a different
conditioning of the same shape ``[N, hidden]``:

- ``label``:  a fixed random embedding of the colour plus one of the shape: the same
  information, cleanly separated (what a class-conditional DiT gets);
- ``lm``:     the frozen backbone's query states of the caption (queries untrained, unless
  ``--train-queries``: then they learn with the head, through the LM, at ``train.query_lr``
  when set), which is what the study's heads get;
- ``lm-std``: those query states standardised per (token, feature) with the training pairs'
  mean and std, so the few caption words that change from prompt to prompt are no longer a
  small perturbation of what every prompt shares.

The ``label`` mode is the positive control of the train -> sample -> decode -> judge chain:
before any LM is involved, it shows whether the head can follow a prompt at all, in how many
steps and CPU seconds. ``--world`` picks the toy world of the training scenes (one object
each; default: the world the shipped assets were built on): in the ``slots`` world the
object sits at the centre, at 50-62 % of the image side.

Every ``--every`` steps it samples one image per (colour, shape) for ``--probe-shapes``
(default: all seven), decodes it with the cell's encoder and asks the toy detector's
segmenter what it drew: ``colour`` (largest object's colour as prompted), ``shape`` (its
shape class as prompted) and ``found`` (any object at all); ``seconds`` / ``cpu_seconds`` are
the wall and process CPU time of training (not sampling) so far. Chance is 0.1 for colour
(ten colours), 1/7 for shape. ``--captions short``
trains on GenEval-style captions ("a photo of a red circle"); ``mixed`` on the toy grammar's
caption mix (20 % short, 80 % detailed), as the demo's data does; the samples are always
prompted with the short form. ``--centre`` puts every object at the image centre, so the
head has no position to choose and only the colour, shape and size to follow (free world;
the slots world's single objects are centred anyway). Results land
in ``<out>/<cell>/conditioning_check.csv``, the samples in
``<out>/<cell>/samples/<mode>_<step>.png`` (a row per shape, a column per colour). With
``--ema 0.999`` every check also samples an exponential moving average of the head's
weights (rows with ``weights: ema``, samples ``<mode>_ema_<step>.png``), as DiT-style
trainings sample from.

    python research/toy_diagnostics/conditioning_check.py experiments/demo.yaml --cell vae+fm --steps 1000
    python research/toy_diagnostics/conditioning_check.py experiments/demo.yaml --cell vae+fm --modes label \
        --world slots --steps 2000 --every 250 --set train.lr=1e-3     # the positive control

Figures only; nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.optim.swa_utils import AveragedModel

from ablate.data.stream import preprocess
from ablate.eval.sampling import contact_sheet, to_pil
from ablate.module import AblationModule, lr_lambda
from ablate.toy.build import assets_world
from ablate.toy.judges import classify, nearest_color, segment
from ablate.toy.scenes import COLORS, SHAPES, WORLDS, Scene, caption, render, sample_scene

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling diagnostic's training step
from objective_only import head_step, load_cell  # noqa: E402

MODES = ("label", "lm", "lm-std")
PROBE_SHAPES = SHAPES  # the samples: every colour x these shapes (sessions 5-7 probed circle, square, diamond)


def ema_with_warmup(decay: float):
    """``AveragedModel``'s ``avg_fn`` for an EMA whose decay ramps up as ``(1 + n) / (10 + n)``
    to ``decay``, so a run of a few thousand steps does not keep its initial weights."""
    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        n = int(num_averaged)
        return torch.lerp(averaged, current, 1 - min(decay, (1 + n) / (10 + n)))
    return avg_fn


def short_caption(color: str, shape: str) -> str:
    return f"a photo of a {color} {shape}"  # GenEval's colour-prompt form


def judge_single_objects(images: list[Image.Image], colors: list[str], shapes: list[str]) -> dict[str, float]:
    """Fractions of images whose largest segmented object has the prompted colour / shape."""
    found = color_ok = shape_ok = 0
    for image, color, shape in zip(images, colors, shapes):
        segments = segment(image)
        if not segments:
            continue
        largest = max(segments, key=lambda s: s["area"])
        found += 1
        color_ok += nearest_color(largest["rgb"]) == color
        shape_ok += classify(largest["features"])[0] == shape
    n = max(len(images), 1)
    return {"found": found / n, "colour": color_ok / n, "shape": shape_ok / n}


def centred(scene: Scene) -> Scene:
    """``scene`` with every object moved to the image centre (for one-object scenes)."""
    return replace(scene, objects=[replace(o, x=0.5, y=0.5) for o in scene.objects])


@torch.no_grad()
def single_object_pairs(module: AblationModule, n: int, captions: str, seed: int, centre: bool = False,
                        world: str = "free"):
    """(targets, captions, colour ids, shape ids) of ``n`` rendered one-object scenes of
    ``world``, each object at the image centre with ``centre``."""
    rng = np.random.default_rng([seed, 7])
    transform = preprocess(module.encoder.resolution)
    device = module.backbone.queries.device
    targets, texts, color_ids, shape_ids = [], [], [], []
    for start in range(0, n, 64):
        scenes = [sample_scene(rng, 1, world) for _ in range(min(64, n - start))]
        if centre:
            scenes = [centred(s) for s in scenes]
        pixels = torch.stack([transform(render(s)) for s in scenes]).to(device)
        targets.append(module.encoder.encode(pixels))
        for s in scenes:
            o = s.objects[0]
            if captions == "mixed":  # the demo data's mix: 20 % short, 80 % detailed
                texts.append(caption(s, rng, "short" if rng.random() < 0.2 else "detailed"))
            else:
                texts.append(short_caption(o.color, o.shape))
            color_ids.append(list(COLORS).index(o.color))
            shape_ids.append(SHAPES.index(o.shape))
    return torch.cat(targets), texts, torch.tensor(color_ids), torch.tensor(shape_ids)


class Conditioner:
    """One of ``MODES``: caption / colour / shape -> conditioning ``[B, N, hidden]``."""

    def __init__(self, mode: str, module: AblationModule, train_conds: torch.Tensor | None, seed: int):
        """``train_conds``: the training captions' query states (None: label mode only)."""
        self.mode, self.module = mode, module
        if train_conds is None:
            backbone = module.backbone
            n, hidden, device = backbone.num_queries, backbone.hidden_size, backbone.queries.device
        else:
            (n, hidden), device = train_conds.shape[1:], train_conds.device
            self.mean, self.std = train_conds.mean(0), train_conds.std(0) + 1e-4
        g = torch.Generator().manual_seed(seed)
        self.color_emb = torch.randn(len(COLORS), n, hidden, generator=g).to(device)
        self.shape_emb = torch.randn(len(SHAPES), n, hidden, generator=g).to(device)

    @torch.no_grad()
    def __call__(self, texts: list[str], color_ids: torch.Tensor, shape_ids: torch.Tensor,
                 lm_states: torch.Tensor | None = None) -> torch.Tensor:
        if self.mode == "label":
            return self.color_emb[color_ids] + self.shape_emb[shape_ids]
        states = lm_states if lm_states is not None else self.module.conditioning(texts)
        return states if self.mode == "lm" else (states - self.mean) / self.std


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study", help="a study YAML (experiments/...)")
    p.add_argument("--cell", default="vae+fm", help="a flow-matching cell of the study")
    p.add_argument("--set", nargs="*", default=[], help="overrides for every cell, key=value")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                   help="constant: the run's lr throughout (default); cosine: the training's own "
                        "warm-up and cosine decay to train.min_lr, over --steps")
    p.add_argument("--pairs", type=int, default=3000, help="training scenes to render and encode")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {MODES}")
    p.add_argument("--captions", choices=("short", "mixed"), default="short")
    p.add_argument("--centre", action="store_true", help="every training object at the image centre")
    p.add_argument("--world", choices=WORLDS, default=None,
                   help="toy world of the training scenes (default: the shipped assets' world)")
    p.add_argument("--probe-shapes", default=",".join(PROBE_SHAPES),
                   help="comma-separated shapes to prompt, each in every colour (default: all)")
    p.add_argument("--out", default="results/conditioning_check")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--guidance", default="",
                   help="comma-separated guidance scales to sample every check with (default: the "
                        "objective's own); rows and sample files name each")
    p.add_argument("--sample-steps", default="",
                   help="comma-separated Euler step counts to sample every check with (default: the objective's)")
    p.add_argument("--train-queries", action="store_true",
                   help="lm mode: train the query tokens too, through the frozen LM at every step (as the "
                        "study's runs do; default: the states of the untrained queries, computed once)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="also sample from an EMA of the head's weights with this decay (0: off; e.g. 0.999)")
    args = p.parse_args()
    if not 0.0 <= args.ema < 1.0:
        raise SystemExit(f"--ema {args.ema}: the decay must be in [0, 1) (0: off)")
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := sorted(set(modes) - set(MODES)):
        raise SystemExit(f"--modes: unknown {unknown}; choose from {list(MODES)}")
    if args.train_queries and "lm" not in modes:
        raise SystemExit(f"--train-queries trains the queries of the lm mode; --modes {args.modes!r} has none")

    probe_shapes_used = [s for s in args.probe_shapes.split(",") if s]
    if unknown := sorted(set(probe_shapes_used) - set(SHAPES)):
        raise SystemExit(f"--probe-shapes: unknown {unknown}; choose from {list(SHAPES)}")
    try:
        guidances = [float(g) for g in args.guidance.split(",") if g] or [None]
        sample_steps = [int(n) for n in args.sample_steps.split(",") if n] or [None]
    except ValueError:
        raise SystemExit(f"--guidance {args.guidance!r} / --sample-steps {args.sample_steps!r}: expected "
                         f"comma-separated numbers, e.g. 2,4 / 20,50") from None
    args.world = args.world or assets_world()
    run, module, out_dir = load_cell(args, {"conditioning_check": vars(args) | {"modes": modes}})
    device = module.backbone.queries.device
    targets, texts, color_ids, shape_ids = single_object_pairs(module, args.pairs, args.captions, run.seed,
                                                                  args.centre, args.world)
    color_ids, shape_ids = color_ids.to(device), shape_ids.to(device)
    lm_states = None
    if any(mode != "label" for mode in modes):
        with torch.no_grad():
            lm_states = torch.cat([module.conditioning(texts[i:i + 64]) for i in range(0, len(texts), 64)])
    print(f"{len(targets)} single-object pairs of the {args.world} world ({args.captions} captions"
          f"{', centred' if args.centre else ''}), targets {tuple(targets.shape[1:])}",
          flush=True)

    probe_colors = [c for _ in probe_shapes_used for c in COLORS]
    probe_shapes = [s for s in probe_shapes_used for _ in COLORS]
    probe_c = torch.tensor([list(COLORS).index(c) for c in probe_colors], device=device)
    probe_s = torch.tensor([SHAPES.index(s) for s in probe_shapes], device=device)
    probe_texts = [short_caption(c, s) for c, s in zip(probe_colors, probe_shapes)]
    initial = copy.deepcopy(module.objective.state_dict())
    initial_queries = module.backbone.queries.detach().clone()
    samples_dir = out_dir / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in modes:
        cond_of = Conditioner(mode, module, lm_states, run.seed)
        conds = cond_of(texts, color_ids, shape_ids, lm_states)
        probe_conds = cond_of(probe_texts, probe_c, probe_s)
        objective = module.objective
        objective.load_state_dict(initial)  # every mode starts from the same weights
        params = [q for q in objective.parameters() if q.requires_grad]
        live = args.train_queries and mode == "lm"
        if live:  # the queries learn with the head, at the run's query_lr (default: its lr)
            queries = module.backbone.queries
            queries.data.copy_(initial_queries)
            queries.requires_grad_(True)
            params = params + [queries]
        # live: the batch's states through the backbone at every step, so the queries learn
        batch_conds = (lambda idx: module.conditioning([texts[i] for i in idx.tolist()])) if live else conds
        t = run.train
        groups = params  # the module's groups: the queries at train.query_lr when it is set
        if live and t.query_lr is not None:
            groups = [{"params": params[:-1]}, {"params": [queries], "lr": t.query_lr}]
        opt = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        # the module's schedule (lr_lambda is indexed by optimiser steps taken, from 0)
        schedule = (torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(replace(run, train=replace(t, max_steps=args.steps))))
                    if args.schedule == "cosine" else None)
        order = torch.Generator().manual_seed(run.seed)
        heads = {"raw": objective}
        if args.ema:
            heads["ema"] = AveragedModel(objective, avg_fn=ema_with_warmup(args.ema), use_buffers=True)
        losses, train_s, train_cpu_s = [], 0.0, 0.0
        for step in range(1, args.steps + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            losses.append(head_step(objective, opt, params, batch_conds, targets, run, step, order))
            if schedule is not None:
                schedule.step()
            if args.ema:
                heads["ema"].update_parameters(objective)
            train_s += time.perf_counter() - t0
            train_cpu_s += time.process_time() - c0
            if step % args.every == 0 or step == args.steps:
                if live:
                    probe_conds = cond_of(probe_texts, probe_c, probe_s)
                for (weights, head), guidance, n_steps in itertools.product(heads.items(), guidances, sample_steps):
                    head.eval()
                    g = torch.Generator(device).manual_seed(run.seed)
                    with torch.no_grad():
                        kwargs = {k: v for k, v in (("guidance", guidance), ("steps", n_steps)) if v is not None}
                        sample = getattr(head, "module", head).sample(probe_conds, generator=g, **kwargs)
                        images = to_pil(module.encoder.decode(sample, generator=g))
                    scores = judge_single_objects(images, probe_colors, probe_shapes)
                    # a row per probe shape, a column per colour
                    name = ((mode + ("_trained_queries" if live else "") if weights == "raw" else f"{mode}_ema") + ("" if guidance is None else f"_g{guidance:g}")
                            + ("" if n_steps is None else f"_s{n_steps}"))
                    contact_sheet(images, columns=len(COLORS)).save(samples_dir / f"{name}_{step:07d}.png")
                    rows.append({"mode": mode, "weights": weights, "guidance": guidance,
                                 "sample_steps": n_steps, "step": step,
                                 "loss": float(np.mean(losses[-args.every:])), **scores,
                                 "seconds": round(train_s, 4), "cpu_seconds": round(train_cpu_s, 4)})
                    print(f"{name} step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items()
                                                              if k not in ("mode", "weights", "guidance", "sample_steps", "step")),
                          flush=True)
                pd.DataFrame(rows).to_csv(out_dir / "conditioning_check.csv", index=False)
    for what, chance in (("colour", 1 / len(COLORS)), ("shape", 1 / len(probe_shapes_used))):
        frame = pd.DataFrame(rows).astype({"guidance": object, "sample_steps": object})
        frame = frame.fillna({"guidance": "default", "sample_steps": "default"})
        table = frame.pivot(index="step", columns=["mode", "weights", "guidance", "sample_steps"], values=what)
        print(f"\n{what} accuracy of the samples (chance {chance:.2f}):\n{table.to_string()}")


if __name__ == "__main__":
    main()
