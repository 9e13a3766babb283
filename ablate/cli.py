"""The ``ablate`` command line. Each subcommand is a thin shell over a library function.

Building the parser imports no torch (``ablate --help`` answers in well under a second):
command modules import what they run inside their handlers.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ablate.config import ConfigError

SET_HELP = "override a key, e.g. --set train.max_steps=100 (repeatable)"


def _fit(args) -> None:
    from ablate.config import load_run
    from ablate.train import fit

    run = load_run(args.config, args.set)
    run_dir = fit(run, resume=args.resume, overwrite=args.overwrite)
    print(f"results: {run_dir}")


def _bench(args) -> None:
    from ablate.bench import run_bench_command

    run_bench_command(args)


def _train_decoder(args) -> None:
    from ablate.decoder_training import train_decoder_from_yaml

    record = train_decoder_from_yaml(args.spec, args.out, args.steps, args.set, log=print)
    print(f"decoder: {args.out} ({record['steps']} steps, final loss {record['final_loss']}, "
          f"{record['wall_s']:.0f}s); use it as encoder.decoder: {args.out}")


KIND_ALIASES = {"objectives": "objective", "encoders": "encoder", "metrics": "metric",
                "judges": "judge", "datasets": "dataset"}


def _list(args) -> None:
    from ablate.registry import REGISTRIES, load_plugins

    kinds = [args.kind] if args.kind else [*sorted(REGISTRIES), "plugins"]
    for kind in kinds:
        kind = KIND_ALIASES.get(kind, kind)
        if kind == "plugins":
            print("plugins (modules outside the core, see `ablate.registry`):")
            for plugin in load_plugins():
                status = f"  FAILED: {plugin.error}" if plugin.error else ""
                print(f"  {plugin.module:<32} {plugin.source}{status}")
            continue
        if kind not in REGISTRIES:
            raise ConfigError(f"unknown kind {kind!r}; kinds: {[*sorted(REGISTRIES), 'plugins']}")
        print(f"{kind}:")
        for name, cls in REGISTRIES[kind].items():
            # the class's own docstring, else its module's (one plugin per file)
            doc = (cls.__dict__.get("__doc__") or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
            print(f"  {name:<16} {cls.__module__}.{cls.__name__}  {doc[0] if doc else ''}")


def _core_commands(sub) -> None:
    p = sub.add_parser("fit", help="train one run from a YAML spec")
    p.add_argument("config", help="run spec (YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run folder first")
    p.set_defaults(func=_fit)

    p = sub.add_parser("bench", help="time training steps of a run or of each cell of a study: "
                                     "step time, samples/s, memory, MFU, where the step goes")
    p.add_argument("config", help="run spec or study spec (YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--baseline", action="store_true",
                   help="also time the un-optimised step (no cache, no compile, full prompt pass) "
                        "in the same process, from the same weights, on the same batches")
    p.add_argument("--baseline-prompt-cache", action="store_true",
                   help="a baseline that keeps reusing the prompt's KV cache (only cache and compile off)")
    p.add_argument("--eval", action="store_true", help="time one evaluation: its share of training")
    p.add_argument("--find-batch", action="store_true", help="largest batch that fits (GPU)")
    p.add_argument("--json", action="store_true", help="print JSON (a list for a study)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.set_defaults(func=_bench)

    p = sub.add_parser("train-decoder", help="train a CLIP-features -> pixels diffusion decoder")
    p.add_argument("spec", help="YAML with encoder: and data: (run-spec format), optional decoder: "
                                "and decoder_training:")
    p.add_argument("--out", required=True, help="decoder folder to write (unet/, scheduler/, vae/)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: decoder_training.steps)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set decoder_training.lr=1e-4 (repeatable)")
    p.set_defaults(func=_train_decoder)

    p = sub.add_parser("list", help="registered plugins and the plugin modules that provide them")
    p.add_argument("kind", nargs="?", help="encoder | objective | metric | judge | dataset | plugins")
    p.set_defaults(func=_list)


# Each of these modules adds its own subcommands with ``add_commands(subparsers)``.
COMMAND_MODULES = ("ablate.eval.cli", "ablate.study.cli", "ablate.data.cache_cli")


def build_parser() -> argparse.ArgumentParser:
    from ablate.registry import load_plugins

    parser = argparse.ArgumentParser(prog="ablate", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _core_commands(sub)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    # Plugin modules (entry points, ABLATE_PLUGINS) may add commands too, e.g. the toy world's.
    for plugin in load_plugins():
        add_commands = getattr(sys.modules.get(plugin.module), "add_commands", None)
        if not plugin.error and callable(add_commands):
            add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args) or 0
    except (ConfigError, FileNotFoundError, FileExistsError) as err:
        print(f"ablate {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
