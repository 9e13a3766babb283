"""``ablate eval``, ``ablate sample``, ``ablate export`` and ``ablate check-plugin``."""

from __future__ import annotations


def readable_checkpoint(path: str) -> str:
    """The checkpoint file to use: a file must load; a run folder gives its newest readable
    checkpoint. Broken files fail here with one line, before any model loads."""
    from pathlib import Path

    from ablate.checkpoints import read_checkpoint, resume_checkpoint

    if Path(path).is_dir():
        found = resume_checkpoint(path, set_aside=False)
        if found is None:
            raise FileNotFoundError(f"{path}: no readable checkpoint in {Path(path) / 'checkpoints'}")
        return str(found[0])
    read_checkpoint(path)
    return path


def _eval(args) -> None:
    from pathlib import Path

    from ablate.eval.runner import evaluate_checkpoint
    from ablate.train import writable_dir

    names = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    checkpoint = readable_checkpoint(args.checkpoint)
    writable_dir(Path(checkpoint).parent.parent, "run folder (metrics.csv gets a row)")
    values = evaluate_checkpoint(checkpoint, names, args.set, args.device)
    for key, value in sorted(values.items()):
        print(f"{key:<40} {value:.4f}")


def _sample(args) -> None:
    from ablate.eval.runner import sample_checkpoint

    out = sample_checkpoint(readable_checkpoint(args.checkpoint), args.prompt, args.n, args.out, args.steps,
                            args.guidance, args.device)
    print(f"samples: {out}")


def _export(args) -> None:
    from ablate.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, ema=not args.no_ema)
    print(f"exported: {out} (load with ablate.export.ExportedHead.from_pretrained)")


def _check_plugin(args) -> int:
    from ablate.plugin_check import TinyWorld, run_checks

    def echo(result) -> None:
        print(f"{'PASS' if result.ok else 'FAIL'}  {result.check}" + (f": {result.detail}" if result.detail else ""),
              flush=True)

    results = run_checks(args.plugin, fit=not args.no_fit, world=TinyWorld(args.workdir), echo=echo)
    failed = [r.check for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed" +
          (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def add_commands(sub) -> None:
    p = sub.add_parser("eval", help="run metrics on a checkpoint; append to its metrics.csv")
    p.add_argument("checkpoint", help="a .ckpt file or a run folder (uses its last.ckpt)")
    p.add_argument("--metrics", help="comma list of metric labels, e.g. fid,geneval,dpg,diversity "
                   "(default: every metric in the run's eval.metrics)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override eval settings, e.g. --set eval.sample_steps=50")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("sample", help="generate images for prompts from a checkpoint")
    p.add_argument("checkpoint", help="a .ckpt file or a run folder (uses its last.ckpt)")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    p.add_argument("--n", type=int, default=4, help="images per prompt")
    p.add_argument("--out", help="output folder (default: <run>/samples/cli-<step>/)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the objective's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.set_defaults(func=_sample)

    p = sub.add_parser("export", help="save a checkpoint's queries + head as a standalone folder")
    p.add_argument("checkpoint", help="a .ckpt file or a run folder (uses its last.ckpt)")
    p.add_argument("out", help="output folder: config.json + model.safetensors")
    p.add_argument("--no-ema", action="store_true",
                   help="export the trained weights even when the checkpoint holds an EMA")
    p.set_defaults(func=_export)

    p = sub.add_parser("check-plugin", help="run the plugin contract checks on an objective or encoder")
    p.add_argument("plugin", help="dotted class path (mypkg.losses.MyObjective) or a registered name")
    p.add_argument("--no-fit", action="store_true", help="skip the tiny fit + eval (the slow check)")
    p.add_argument("--workdir", help="folder for the tiny models and runs (default: a temp folder)")
    p.set_defaults(func=_check_plugin)
