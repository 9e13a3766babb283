"""``ablate demo``: the toy study end to end on a CPU.

1. toy data, once: webdataset shards of rendered scenes and the GenEval / DPG-Bench /
   MJHQ-format benchmark files, all from the same scene grammar (``ablate toy data``);
2. ``ablate grid experiments/demo.yaml``: CLIP+MSE, CLIP+FM, VAE+FM, VAE+MSE on the toy
   LM / CLIP / VAE / decoder, evaluated every N steps (re-running resumes);
3. ``ablate plot results/demo``: the Figure-4 style curves and the final table.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

DATA_DIR = Path("data/toy")
# short_fraction: the share of GenEval-style short captions in the training shards (the rest
# detailed, DPG-style); the benchmarks are the same whatever it is.
TOY_DATA = {"seed": 0, "n_train": 6000, "n_validation": 200, "shard_size": 1000,
            "n_geneval": 120, "n_dpg": 60, "n_mjhq": 400, "short_fraction": 0.2}


def scaled_sizes(scale: float) -> dict[str, int]:
    """``TOY_DATA``'s set sizes times ``scale`` (at least 8 each)."""
    return {k: max(8, int(v * scale)) for k, v in TOY_DATA.items() if k.startswith("n_")}


def prepare_toy_data(out: str | Path = DATA_DIR, world: str | None = None, **settings) -> Path:
    """Write the toy shards and benchmark files of ``world`` (default: the world the shipped
    assets were built on) under ``out`` unless the same set is there; ``settings`` override
    ``TOY_DATA`` (sizes, seed, caption mix)."""
    from ablate.toy.benchmarks import write_benchmarks
    from ablate.toy.build import assets_world
    from ablate.toy.shards import write_shards

    out = Path(out)
    spec = {**TOY_DATA, **settings, "world": world or assets_world()}
    stamp = out / "toy_data.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return out
    start = time.time()
    print(f"toy data: rendering {spec['n_train']} training scenes of the {spec['world']} world and the "
          f"benchmarks into {out}/ ...", flush=True)
    write_shards(out / "shards", spec["n_train"], spec["n_validation"], seed=spec["seed"],
                 shard_size=spec["shard_size"], short_fraction=spec["short_fraction"], world=spec["world"])
    write_benchmarks(out / "benchmarks", seed=spec["seed"], n_geneval=spec["n_geneval"],
                     n_dpg=spec["n_dpg"], n_mjhq=spec["n_mjhq"], world=spec["world"])
    stamp.write_text(json.dumps(spec, indent=2))
    print(f"toy data: done in {time.time() - start:.0f}s", flush=True)
    return out


def default_study() -> Path:
    """``experiments/demo.yaml`` as the package ships it (``ablate/experiments`` links to the
    repository's ``experiments/``; a wheel carries the files): found from any directory."""
    return Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"


# ``--smoke``: every stage of the demo in about a minute per cell: a little toy data, two
# steps, one small evaluation at the end (no FID: its features need a larger sample).
SMOKE_DATA_SCALE = 0.02
SMOKE_METRICS = (
    f"[{{name: geneval, prompts: {DATA_DIR}/benchmarks/geneval/evaluation_metadata.jsonl, "
    "judge: {name: toy-detector}, max_prompts: 3, images_per_prompt: 1}, "
    f"{{name: dpg, bench_dir: {DATA_DIR}/benchmarks/dpg_bench, judge: {{name: toy-vqa}}, max_prompts: 1}}, "
    "{name: diversity, num_prompts: 1, num_seeds: 2, prompts: [a photo of a red circle]}]")
# results/smoke/: a smoke run never stands in the way of (or for) the real demo's results/demo/
SMOKE_OVERRIDES = ("results_dir=results/smoke", "train.max_steps=2", "eval.every_n_steps=0", "eval.at_start=false", "data.batch_size=4",
                   "eval.sample_steps=2", "eval.sample_prompts=[]", f"eval.metrics={SMOKE_METRICS}")


def default_workers(cells: int, cores: int | None = None) -> int:
    """One worker per core up to one per cell: the toy cells use a second thread poorly, so
    on 2 cores two cells side by side finish sooner than one after the other on 2 threads
    (the demo: 8.1 min in two workers of one thread vs 9.0 in one of two threads; results/reference/README.md)."""
    return max(1, min(cells, cores if cores is not None else os.cpu_count() or 1))


def run_demo(study_path: str | Path | None = None, overrides=(), data_scale: float = 1.0,
             rerun_changed: bool = False, workers: int | None = None) -> Path:
    from ablate.study.grid import check_workers, run_grid, run_workers
    from ablate.study.plots import plot
    from ablate.study.spec import load_study

    start = time.time()
    study = load_study(study_path or default_study(), overrides)
    workers = default_workers(len(study.cells)) if workers is None else workers
    check_workers(workers)  # before any toy data is written
    prepare_toy_data(**scaled_sizes(data_scale))
    if workers > 1:
        outcomes = run_workers(study, list(overrides), workers, rerun_changed=rerun_changed)
    else:
        outcomes = run_grid(study, rerun_changed=rerun_changed)
    failed = [o.cell.name for o in outcomes if o.result == "failed"]
    out = plot(study.study_dir)
    print(out["markdown"].read_text())
    print(f"demo: {len(outcomes) - len(failed)} of {len(outcomes)} runs finished in "
          f"{(time.time() - start) / 60:.1f} min; figures: {out.get('step.png')}, table: {out['table']}")
    if failed:
        logs = study.study_dir / ("worker<i>.log" if workers > 1 else "grid.log")
        raise SystemExit(f"demo: runs failed: {', '.join(failed)} (see {logs})")
    return study.study_dir


def _demo(args) -> None:
    if args.smoke:
        run_demo(args.study, [*SMOKE_OVERRIDES, *args.set], args.data_scale or SMOKE_DATA_SCALE,
                 args.rerun_changed, args.workers)
    else:
        run_demo(args.study, args.set, args.data_scale or 1.0, args.rerun_changed, args.workers)


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="the toy CLIP-vs-VAE x MSE-vs-flow-matching study on CPU")
    p.add_argument("--study", help="study spec (default: the packaged experiments/demo.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set train.max_steps=50")
    p.add_argument("--data-scale", type=float, default=None,
                   help="shrink the toy data and benchmark files (default 1.0; --smoke: 0.02)")
    p.add_argument("--smoke", action="store_true",
                   help="a check that every stage runs: 2 steps per cell, a little data, a small eval "
                        "(results in results/smoke/demo)")
    p.add_argument("--rerun-changed", action="store_true",
                   help="run again, from scratch, finished cells whose spec changed (e.g. another --set)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="cells side by side in N processes, cores/N threads each (default: one per core, "
                        "at most one per cell; 1: one after the other in this process; see ablate grid --workers)")
    p.set_defaults(func=_demo)
