"""Evaluating a finished run: ``ablate eval`` and ``ablate sample`` on a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch

from ablate.config import ConfigError, EvalConfig, RunConfig, check_samplers, from_dict, to_dict
from ablate.eval.callback import build_metrics, run_metrics
from ablate.eval.sampling import ImageGenerator, sample_seed, save_samples


def load_checkpoint(path: str | Path, device: str | None = None, ema: bool = True):
    """(module, run_dir, step) for a checkpoint file or a run folder (its last.ckpt); with
    ``ema``, the trainable weights are the checkpoint's EMA when it has one."""
    from ablate.ema import apply_ema
    from ablate.module import AblationModule

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (give a .ckpt file or a run folder)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    module = AblationModule.load(str(path), map_location=device).to(device).eval()
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    module.uses_ema = apply_ema(module, checkpoint) if ema else False
    step = checkpoint["global_step"]
    return module, path.parent.parent, step


def select_metrics(run: RunConfig, names: list[str] | None) -> list[dict]:
    """The run's configured metric specs, filtered by name; unconfigured names use defaults."""
    specs = list(run.eval.metrics)
    if not names:
        return specs
    by_label = {s.get("label", s["name"]): s for s in specs}
    return [by_label.get(n, {"name": n}) for n in names]


def append_metrics(run_dir: Path, step: int, values: dict[str, float]) -> None:
    """Add one row to metrics.csv (new columns allowed), atomically. Values measured again
    at a step replace that step's old ones (blanked in the earlier rows)."""
    path = run_dir / "metrics.csv"
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if not old.empty:
        again = [k for k in values if k in old.columns]
        old.loc[old["step"] == step, again] = float("nan")
    row = pd.DataFrame([{"step": step, **values}])
    table = pd.concat([old, row], ignore_index=True)
    tmp = path.with_suffix(".csv.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)


def evaluate_checkpoint(checkpoint: str, metrics: list[str] | None = None, overrides=(),
                        device: str | None = None) -> dict[str, float]:
    from ablate.config import apply_overrides

    module, run_dir, step = load_checkpoint(checkpoint, device)
    run = module.run_cfg
    if overrides:
        data = apply_overrides({"eval": to_dict(run.eval)}, overrides)
        run.eval = from_dict(EvalConfig, data["eval"], "eval")
        check_samplers(run)
    specs = select_metrics(run, metrics)
    if not specs:
        raise ConfigError("no metrics to run: the run configures none under eval.metrics; "
                          "name some with --metrics or add them with --set")
    values = run_metrics(module, run, step, run_dir, build_metrics(specs))
    append_metrics(run_dir, step, values)
    return values


def sample_checkpoint(checkpoint: str, prompts: list[str], n: int, out: str | None,
                      steps: int | None = None, guidance: float | None = None,
                      device: str | None = None) -> Path:
    module, run_dir, step = load_checkpoint(checkpoint, device)
    gen = ImageGenerator(module, steps=steps, guidance=guidance)
    all_prompts = [p for p in prompts for _ in range(n)]
    seeds = [sample_seed(p, i) for p in prompts for i in range(n)]
    out_dir = Path(out) if out else run_dir / "samples" / f"cli-{step:07d}"
    save_samples(gen.images(all_prompts, seeds), all_prompts, out_dir)
    return out_dir
