"""The ``ablate`` command line. Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ablate.config import ConfigError


def _fit(args) -> None:
    from ablate.config import load_run
    from ablate.train import fit

    run = load_run(args.config, args.set)
    run_dir = fit(run, resume=args.resume, overwrite=args.overwrite)
    print(f"results: {run_dir}")


def _list(args) -> None:
    from ablate.registry import REGISTRIES

    kinds = [args.kind] if args.kind else sorted(REGISTRIES)
    for kind in kinds:
        kind = {"objectives": "objective", "encoders": "encoder", "metrics": "metric",
                "judges": "judge", "datasets": "dataset"}.get(kind, kind)
        if kind not in REGISTRIES:
            raise ConfigError(f"unknown kind {kind!r}; kinds: {sorted(REGISTRIES)}")
        print(f"{kind}:")
        for name, cls in REGISTRIES[kind].items():
            doc = (sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip().splitlines()
            print(f"  {name:<16} {cls.__module__}.{cls.__name__}  {doc[0] if doc else ''}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablate", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="train one run from a YAML spec")
    p.add_argument("config", help="run spec (YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run folder first")
    p.set_defaults(func=_fit)

    p = sub.add_parser("list", help="registered plugins")
    p.add_argument("kind", nargs="?", help="encoder | objective | metric | judge | dataset")
    p.set_defaults(func=_list)

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


# Each of these modules adds its own subcommands with ``add_commands(subparsers)``.
COMMAND_MODULES = ("ablate.eval.cli", "ablate.study.cli", "ablate.toy.cli", "ablate.toy.demo",
                   "ablate.bench", "ablate.data.cache_cli")


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
