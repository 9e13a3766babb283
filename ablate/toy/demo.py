"""``ablate demo``: the toy study end to end on a CPU.

1. toy data, once: webdataset shards of rendered scenes and the GenEval / DPG-Bench /
   MJHQ-format benchmark files, all from the same scene grammar (``ablate toy data``);
2. ``ablate grid experiments/demo.yaml``: CLIP+MSE, CLIP+FM, VAE+FM, VAE+MSE on the toy
   LM / CLIP / VAE / decoder, evaluated every N steps (re-running resumes);
3. ``ablate plot results/demo``: the Figure-4 style curves and the final table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

DATA_DIR = Path("data/toy")
TOY_DATA = {"seed": 0, "n_train": 6000, "n_validation": 200, "shard_size": 1000,
            "n_geneval": 120, "n_dpg": 60, "n_mjhq": 400}


def prepare_toy_data(out: str | Path = DATA_DIR, world: str | None = None, **sizes) -> Path:
    """Write the toy shards and benchmark files of ``world`` (default: the world the shipped
    assets were built on) under ``out`` unless the same set is there."""
    from ablate.toy.benchmarks import write_benchmarks
    from ablate.toy.build import assets_world
    from ablate.toy.shards import write_shards

    out = Path(out)
    spec = {**TOY_DATA, **sizes, "world": world or assets_world()}
    stamp = out / "toy_data.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return out
    start = time.time()
    print(f"toy data: rendering {spec['n_train']} training scenes of the {spec['world']} world and the "
          f"benchmarks into {out}/ ...", flush=True)
    write_shards(out / "shards", spec["n_train"], spec["n_validation"], seed=spec["seed"],
                 shard_size=spec["shard_size"], world=spec["world"])
    write_benchmarks(out / "benchmarks", seed=spec["seed"], n_geneval=spec["n_geneval"],
                     n_dpg=spec["n_dpg"], n_mjhq=spec["n_mjhq"], world=spec["world"])
    stamp.write_text(json.dumps(spec, indent=2))
    print(f"toy data: done in {time.time() - start:.0f}s", flush=True)
    return out


def default_study() -> Path:
    """``experiments/demo.yaml`` here, else the one next to the installed package."""
    local = Path("experiments/demo.yaml")
    if local.is_file():
        return local
    return Path(__file__).resolve().parents[2] / "experiments" / "demo.yaml"


def run_demo(study_path: str | Path | None = None, overrides=(), data_scale: float = 1.0) -> Path:
    from ablate.study.grid import run_grid
    from ablate.study.plots import plot
    from ablate.study.spec import load_study

    start = time.time()
    study = load_study(study_path or default_study(), overrides)
    prepare_toy_data(**{k: max(8, int(v * data_scale)) for k, v in TOY_DATA.items()
                        if k.startswith("n_")})
    outcomes = run_grid(study)
    failed = [o.cell.name for o in outcomes if o.result == "failed"]
    out = plot(study.study_dir)
    print(out["markdown"].read_text())
    print(f"demo: {len(outcomes) - len(failed)} of {len(outcomes)} runs finished in "
          f"{(time.time() - start) / 60:.1f} min; figures: {out.get('step.png')}, table: {out['table']}")
    if failed:
        raise SystemExit(f"demo: runs failed: {', '.join(failed)} (see {study.study_dir / 'grid.log'})")
    return study.study_dir


def _demo(args) -> None:
    run_demo(args.study, args.set, args.data_scale)


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="the toy CLIP-vs-VAE x MSE-vs-flow-matching study on CPU")
    p.add_argument("--study", help="study spec (default: experiments/demo.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set train.max_steps=50")
    p.add_argument("--data-scale", type=float, default=1.0,
                   help="shrink the toy data and benchmark files (a smoke run)")
    p.set_defaults(func=_demo)
