"""``ablate grid``, ``ablate sweep`` and ``ablate plot``."""

from __future__ import annotations

import sys

SET_HELP = ("override a key (repeatable). Run keys (train.max_steps=100) apply to every run; "
            "study keys edit the study: grid.seed=[0], cells.clip+mse.train.lr=1.0e-4, "
            "sweep.params.train.lr.high=1.0e-3")


def _grid(args) -> None:
    from ablate.config import ConfigError
    from ablate.study.grid import check_workers, parse_shard, run_grid, run_workers
    from ablate.study.spec import load_study

    study = load_study(args.study, args.set)
    check_workers(args.workers)
    if args.workers > 1:
        if args.shard or args.dry_run or args.launcher != "local":
            raise ConfigError("--workers starts its own shards: it does not combine with --shard, "
                              "--dry-run or --launcher")
        outcomes = run_workers(study, args.set, args.workers, args.only, args.rerun_changed)
    else:
        outcomes = run_grid(study, only=args.only, shard=parse_shard(args.shard), dry_run=args.dry_run,
                            launcher=args.launcher, rerun_changed=args.rerun_changed)
    failed = [o.cell.name for o in outcomes if o.result == "failed"]
    if failed:
        print(f"ablate grid: {len(failed)} of {len(outcomes)} runs failed: {', '.join(failed)} "
              f"(errors in {study.study_dir / 'grid.log'}; run again to retry)", file=sys.stderr)
        raise SystemExit(1)


def _sweep(args) -> None:
    from ablate.study.spec import load_study
    from ablate.study.sweep import run_sweep

    study = load_study(args.study, args.set)
    try:
        run_sweep(study, args.trials, args.storage)
    except KeyboardInterrupt:
        print("ablate sweep: interrupted; the running trial is re-queued: run the same command "
              "again to resume it", file=sys.stderr)
        raise SystemExit(130) from None


def _plot(args) -> None:
    from ablate.study.plots import plot

    xs = ("step", "wall") if args.x == "both" else (args.x,)
    out = plot(args.results_dir, args.metrics, xs, args.band, args.smooth)
    for path in dict.fromkeys(out.values()):
        print(path)


def add_commands(sub) -> None:
    p = sub.add_parser("grid", help="run every cell of a study; re-running resumes")
    p.add_argument("study", help="study spec (experiments/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state only")
    p.add_argument("--only", nargs="+", action="extend", default=[], metavar="PATTERN",
                   help="run the cells whose run or cell name matches a glob, e.g. 'clip+*'")
    p.add_argument("--shard", metavar="I/N", help="run every N-th selected cell from the I-th "
                   "(0-based): one worker per GPU or SLURM array task")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run the cells in N local processes side by side (--shard i/N each, "
                        "cores/N threads each): on a CPU machine, 2 finish a study sooner than 1")
    p.add_argument("--launcher", choices=["local", "subprocess"], default="local",
                   help="local: in this process; subprocess: `python -m ablate fit` per cell")
    p.add_argument("--rerun-changed", action="store_true", help="run finished cells whose spec "
                   "changed since again, from scratch (default: refuse, naming the changed keys)")
    p.set_defaults(func=_grid)

    p = sub.add_parser("sweep", help="optuna search over a study's sweep: section")
    p.add_argument("study", help="study spec with a sweep: section")
    p.add_argument("--trials", type=int, required=True,
                   help="total complete-or-pruned trials the study should hold")
    p.add_argument("--storage", help="optuna storage URL shared by workers (default: "
                   "sqlite:///results/<study>/optuna.db), e.g. postgresql://user@host/db")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.set_defaults(func=_sweep)

    p = sub.add_parser("plot", help="comparison plots + final table of a study's runs")
    p.add_argument("results_dir", help="a study folder, e.g. results/blip3o_design")
    p.add_argument("--metrics", nargs="+", metavar="NAME",
                   help="metric columns or globs (default: fid/overall geneval/overall "
                   "dpg/overall 'diversity/*' train/loss)")
    p.add_argument("--x", choices=["step", "wall", "both"], default="both",
                   help="x axis: training step, wall-clock time, or one figure each")
    p.add_argument("--band", choices=["minmax", "std", "none"], default="minmax",
                   help="spread over seeds")
    p.add_argument("--smooth", type=float, default=0.6,
                   help="EMA smoothing of train/* curves, 0 (none) to <1")
    p.set_defaults(func=_plot)
