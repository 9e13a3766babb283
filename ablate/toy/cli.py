"""``ablate toy build|data|check`` (added to ``ablate`` by the toy plugin, ``ablate.toy.plugins``)."""

from __future__ import annotations

import argparse
import importlib
import json


def _build_option(name: str, module: str = "build"):
    """An argparse ``type`` checking a value against ``ablate.toy.<module>.<name>`` when the
    option is used: importing the module (and torch with it) only then keeps ``--help`` fast."""
    def check(value: str) -> str:
        choices = getattr(importlib.import_module(f"ablate.toy.{module}"), name)
        if value not in choices:
            raise argparse.ArgumentTypeError(f"{value!r} is not one of {list(choices)}")
        return value

    check.__name__ = name.lower()  # what argparse calls the type in its messages
    return check


def _toy_build(args) -> None:
    from ablate.toy.build import build

    info = build(args.out, scale=args.scale, seed=args.seed, threads=args.threads,
                 clip_target=args.clip_target, lm_answers=args.lm_answers,
                 **({"world": args.world} if args.world else {}))
    print(json.dumps({"out": args.out or "ablate/toy/assets", "wall_s": info["wall_s"],
                      "sizes_mb": info["sizes_mb"], "quality": info["quality"]}, indent=1))


def _toy_check(args) -> None:
    from ablate.toy.build import check_assets

    for name, path in check_assets(args.path).items():
        print(f"{name:<13} {path}")


def _toy_data(args) -> None:
    from ablate.toy.demo import prepare_toy_data, scaled_sizes

    settings = scaled_sizes(args.scale)
    if args.short_fraction is not None:
        if not 0 <= args.short_fraction <= 1:
            raise SystemExit(f"--short-fraction: {args.short_fraction} is not a share; expected a number in [0, 1]")
        settings["short_fraction"] = args.short_fraction
    print(prepare_toy_data(args.out, world=args.world, seed=args.seed, **settings))


def add_commands(sub) -> None:
    p = sub.add_parser("toy", help="the toy world: rebuild its pretrained components")
    toy = p.add_subparsers(dest="toy_command", required=True)
    b = toy.add_parser("build", help="train tokenizer, LM, CLIP, VAE and CLIP decoder from scratch")
    b.add_argument("--out", default=None, help="output folder (default: the shipped ablate/toy/assets)")
    b.add_argument("--scale", type=float, default=1.0,
                   help="shrink data and steps (1.0: the shipped build, ~15 min on 2 CPU cores)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    b.add_argument("--clip-target", type=_build_option("CLIP_TARGETS"), default="pixels",
                   help="pixels | semantics: what the CLIP's patch tokens are trained to tell: their pixels "
                        "(shipped) or which shape/colour/size covers them (ablate.toy.scenes.patch_semantics)")
    b.add_argument("--lm-answers", type=_build_option("LM_ANSWERS"), default="restatement",
                   help="restatement | none. restatement (shipped): the LM answers the generation prompt with the "
                        "caption's content (ablate.toy.scenes.restatement); none: its training texts end at the prompt")
    b.add_argument("--world", type=_build_option("WORLDS", "scenes"), default=None,
                   help="slots | free: the toy world to train on (default: ablate.toy.scenes.DEFAULT_WORLD, slots)")
    b.set_defaults(func=_toy_build)
    d = toy.add_parser("data", help="write toy training shards + GenEval/DPG/MJHQ-format benchmark files")
    d.add_argument("--out", default="data/toy", help="output folder (default: data/toy, what the demo reads)")
    d.add_argument("--scale", type=float, default=1.0, help="shrink the number of scenes")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--world", type=_build_option("WORLDS", "scenes"), default=None,
                   help="the toy world (default: the one the shipped assets were built on)")
    d.add_argument("--short-fraction", type=float, default=None,
                   help="share of GenEval-style short captions in the training shards, the rest detailed "
                        "(default: the demo's mix, ablate.toy.demo.TOY_DATA; 1: short only)")
    d.set_defaults(func=_toy_data)
    c = toy.add_parser("check", help="say where the toy assets are, or what is missing")
    c.add_argument("path", nargs="?", default=None)
    c.set_defaults(func=_toy_check)

