"""``ablate cache STUDY.yaml``: fill the target feature cache of every encoder of a study.

Each distinct (encoder, dataset) of the study's runs is encoded once. ``--shard I/N`` takes
every N-th unit (data shard) from I, so N workers / GPUs fill one cache together; running
again resumes (complete units are skipped, incomplete or stale ones rebuilt).
"""

from __future__ import annotations


def study_runs(path: str, overrides) -> list:
    """The runs of a study spec, or the one run of a run spec."""
    from ablate.config import load_run, load_yaml

    data = load_yaml(path)
    if "cells" in data or "base" in data or "extends" in data:
        from ablate.study.spec import load_study

        return [cell.run for cell in load_study(path, overrides).cells]
    return [load_run(path, overrides)]


def fill_study_cache(path: str, overrides=(), shard: tuple[int, int] | None = None,
                     verify: bool = False, device: str | None = None, skip_failing: bool = False) -> list[tuple]:
    """(cache, units written, units in this shard) for every distinct cache of the study."""
    return fill_run_caches(study_runs(path, overrides), shard, verify, device, skip_failing)


def fill_run_caches(runs, shard: tuple[int, int] | None = None, verify: bool = False,
                    device: str | None = None, skip_failing: bool = False) -> list[tuple]:
    """:func:`fill_study_cache` for runs already parsed. ``skip_failing``: a cache that cannot
    be filled (its encoder does not load, ...) is logged and left to the runs that need it,
    which then fail with the error themselves."""
    import logging

    from ablate.data.cache import cache_for_run
    from ablate.registry import get_registry

    done, out = set(), []
    for run in runs:
        try:
            cache = cache_for_run(run)
            if cache is None or cache.dir in done:
                continue
            done.add(cache.dir)
            units = get_registry("dataset").build(run.data.train, where="data.train").units()
            if shard:
                units = units[shard[0]::shard[1]]
            out.append((cache, cache.fill(run, units, device=device, verify=verify), len(units)))
        except Exception as err:
            if not skip_failing:
                raise
            logging.getLogger("ablate.cache").warning("%s: the target cache was not filled (%s: %s); "
                                                      "the run will report it", run.name, type(err).__name__, err)
    return out


def _cache(args) -> None:
    from ablate.study.grid import parse_shard

    results = fill_study_cache(args.study, args.set, parse_shard(args.shard), args.verify, args.device)
    if not results:
        print("ablate cache: no run of this spec uses the cache (data.cache: false, or random targets)")
    for cache, written, total in results:
        print(f"{cache.dir}: {written} of {total} units encoded, {total - written} already complete")


def add_commands(sub) -> None:
    p = sub.add_parser("cache", help="encode a study's datasets once per encoder (feature cache)")
    p.add_argument("study", help="study spec (or run spec) YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--shard", help="I/N: this worker fills every N-th data unit from I")
    p.add_argument("--verify", action="store_true",
                   help="also re-read every complete unit and rebuild those failing their checksum")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.set_defaults(func=_cache)
