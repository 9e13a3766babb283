"""``ablate toy build|data|check`` and ``ablate train-decoder`` (loaded by ``ablate.cli``)."""

from __future__ import annotations

import json

from ablate.toy.build import CLIP_TARGETS, LM_ANSWERS
from ablate.toy.scenes import DEFAULT_WORLD, WORLDS


def _toy_build(args) -> None:
    from ablate.toy.build import build

    info = build(args.out, scale=args.scale, seed=args.seed, threads=args.threads,
                 clip_target=args.clip_target, lm_answers=args.lm_answers, world=args.world)
    print(json.dumps({"out": args.out or "ablate/toy/assets", "wall_s": info["wall_s"],
                      "sizes_mb": info["sizes_mb"], "quality": info["quality"]}, indent=1))


def _toy_check(args) -> None:
    from ablate.toy.build import check_assets

    for name, path in check_assets(args.path).items():
        print(f"{name:<13} {path}")


def _toy_data(args) -> None:
    from ablate.toy.demo import TOY_DATA, prepare_toy_data

    sizes = {k: max(8, int(v * args.scale)) for k, v in TOY_DATA.items() if k.startswith("n_")}
    print(prepare_toy_data(args.out, world=args.world, seed=args.seed, **sizes))


def _train_decoder(args) -> None:
    from ablate.decoder_training import train_decoder_from_yaml

    record = train_decoder_from_yaml(args.spec, args.out, args.steps, args.set, log=print)
    print(f"decoder: {args.out} ({record['steps']} steps, final loss {record['final_loss']}, "
          f"{record['wall_s']:.0f}s); use it as encoder.decoder: {args.out}")


def add_commands(sub) -> None:
    p = sub.add_parser("toy", help="the toy world: rebuild its pretrained components")
    toy = p.add_subparsers(dest="toy_command", required=True)
    b = toy.add_parser("build", help="train tokenizer, LM, CLIP, VAE and CLIP decoder from scratch")
    b.add_argument("--out", default=None, help="output folder (default: the shipped ablate/toy/assets)")
    b.add_argument("--scale", type=float, default=1.0,
                   help="shrink data and steps (1.0: the shipped build, ~15 min on 2 CPU cores)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    b.add_argument("--clip-target", choices=CLIP_TARGETS, default="pixels",
                   help="what the CLIP's patch tokens are trained to tell: their pixels (shipped) or "
                        "which shape/colour/size covers them (ablate.toy.scenes.patch_semantics)")
    b.add_argument("--lm-answers", choices=LM_ANSWERS, default="none",
                   help="none (shipped): the LM's training texts end at the generation prompt; "
                        "restatement: it answers with the caption's content (ablate.toy.scenes.restatement)")
    b.add_argument("--world", choices=WORLDS, default=DEFAULT_WORLD,
                   help=f"the toy world to train on (default {DEFAULT_WORLD}; see ablate.toy.scenes)")
    b.set_defaults(func=_toy_build)
    d = toy.add_parser("data", help="write toy training shards + GenEval/DPG/MJHQ-format benchmark files")
    d.add_argument("--out", default="data/toy", help="output folder (default: data/toy, what the demo reads)")
    d.add_argument("--scale", type=float, default=1.0, help="shrink the number of scenes")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--world", choices=WORLDS, default=None,
                   help="the toy world (default: the one the shipped assets were built on)")
    d.set_defaults(func=_toy_data)
    c = toy.add_parser("check", help="say where the toy assets are, or what is missing")
    c.add_argument("path", nargs="?", default=None)
    c.set_defaults(func=_toy_check)

    p = sub.add_parser("train-decoder", help="train a CLIP-features -> pixels diffusion decoder")
    p.add_argument("spec", help="YAML with encoder: and data: (run-spec format), optional decoder: "
                                "and decoder_training:")
    p.add_argument("--out", required=True, help="decoder folder to write (unet/, scheduler/, vae/)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: decoder_training.steps)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set decoder_training.lr=1e-4 (repeatable)")
    p.set_defaults(func=_train_decoder)
