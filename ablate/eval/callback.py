"""Evaluation inside training: every N steps (and at start / end), run the configured
metric plugins, log them to metrics.csv and the loggers, keep a few sample images.

A metric that fails is logged with its error and training goes on; each metric's time is
logged (``time/eval/<name>``) so the overhead of measuring is visible.

With several ranks every rank evaluates: the image generator splits sampling and decoding
across them and gathers the images, and the scorers split judging and feature extraction
the same way (``ablate.eval.sampling.split_map``), so each rank does 1/N of the work and
all get the single-process numbers. Rank 0 writes the run's files and logs (and the FID
reference cache); the other ranks write into a private scratch folder, deleted after.
"""

from __future__ import annotations

import csv
import logging
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import lightning as L

from ablate.config import RunConfig
from ablate.data.stream import rank_and_world
from ablate.ema import ema_weights
from ablate.eval.sampling import ImageGenerator, save_samples
from ablate.registry import get_registry

log = logging.getLogger("ablate.eval")


def build_metrics(specs: list[dict]) -> list[tuple[str, object]]:
    """(label, metric) pairs; the label is ``label:`` from the spec or the plugin name."""
    out = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        label = spec.pop("label", None) or spec["name"]
        out.append((label, get_registry("metric").build(spec, where=f"eval.metrics[{i}]")))
    return out


def run_metrics(module, run: RunConfig, step: int, run_dir: Path, metrics=None) -> dict[str, float]:
    """Every configured metric on ``module`` now; failures become ``eval/error/<name>``.
    Call it on every rank at once when there are several (the sampling is split)."""
    rank, _ = rank_and_world()
    if rank == 0:
        return _run_metrics(module, run, step, Path(run_dir), metrics)
    scratch = Path(tempfile.mkdtemp(prefix=f"ablate-eval-rank{rank}-"))
    try:  # the same computation; its files are rank 0's to keep
        return _run_metrics(module, run, step, scratch, metrics)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_metrics(module, run: RunConfig, step: int, run_dir: Path, metrics=None) -> dict[str, float]:
    e = run.eval
    gen = ImageGenerator(module, steps=e.sample_steps, guidance=e.guidance, sampler=e.sampler,
                         batch_size=e.batch_size)
    values: dict[str, float] = {}
    was_training = module.training
    module.eval()
    try:
        if e.sample_prompts:
            prompts = list(e.sample_prompts)
            start = time.time()
            try:
                images = gen.images(prompts, [e.sample_seed + i for i in range(len(prompts))])
                save_samples(images, prompts, run_dir / "samples" / f"{step:07d}")
            except Exception as exn:  # noqa: BLE001 - a sampling failure must not stop training
                log.error("step %d: sample images failed: %s", step, exn)
                err_dir = run_dir / "eval" / f"{step:07d}" / "samples"  # for status.json's eval_errors
                err_dir.mkdir(parents=True, exist_ok=True)
                (err_dir / "error.txt").write_text(traceback.format_exc())
                values["eval/error/samples"] = 1.0
            values["time/eval/samples"] = time.time() - start
        for label, metric in metrics if metrics is not None else build_metrics(e.metrics):
            start = time.time()
            out_dir = run_dir / "eval" / f"{step:07d}" / label
            out_dir.mkdir(parents=True, exist_ok=True)
            try:
                values.update({k: float(v) for k, v in metric.compute(gen, out_dir).items()})
            except Exception as exn:  # noqa: BLE001 - one metric failing never stops the run
                log.error("step %d: metric %s failed: %s", step, label, exn)
                (out_dir / "error.txt").write_text(traceback.format_exc())
                values[f"eval/error/{label}"] = 1.0
            values[f"time/eval/{label}"] = time.time() - start
    finally:
        module.train(was_training)
    return values


def logged_eval_steps(run_dir: Path) -> set[int]:
    """Steps with an evaluation row (one with ``time/eval``) in the run's metrics.csv."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return set()
    with path.open(newline="") as f:
        return {int(float(r["step"])) for r in csv.DictReader(f) if r.get("time/eval") and r.get("step")}


def exception_line(trace: str) -> str:
    """``Type: message`` of a formatted traceback (the message's first line)."""
    lines = trace.strip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    after = lines[frames[-1] + 1:] if frames else lines
    return next((line for line in after if line and not line.startswith(" ")), lines[-1] if lines else "")


def record_eval_errors(run_dir: Path, step: int, values: dict[str, float]) -> None:
    """Failed metrics also go to status.json (``eval_errors: {label: {steps, error}}``), so a
    run that finished says that its evaluation did not."""
    failed = [k.removeprefix("eval/error/") for k in values if k.startswith("eval/error/")]
    if not failed:
        return
    from ablate.train import read_status, write_status

    errors = read_status(run_dir).get("eval_errors") or {}
    for label in failed:
        path = run_dir / "eval" / f"{step:07d}" / label / "error.txt"
        entry = errors.setdefault(label, {"steps": []})
        entry["steps"] = sorted(set(entry["steps"]) | {step})
        entry["error"] = exception_line(path.read_text()) if path.is_file() else "see the log"
        entry["traceback"] = str(path)
    write_status(run_dir, eval_errors=errors)


class EvalCallback(L.Callback):
    def __init__(self, run: RunConfig, run_dir: Path):
        self.run = run
        self.run_dir = Path(run_dir)
        self.metrics = build_metrics(run.eval.metrics)  # bad specs fail before training
        self.last_step = None

    def _evaluate(self, trainer: L.Trainer, module) -> None:
        step = trainer.global_step
        if step == self.last_step:
            return
        self.last_step = step
        start = time.time()
        with ema_weights(trainer, module):  # the EMA's weights when train.ema_decay is set
            values = run_metrics(module, self.run, step, self.run_dir, self.metrics)  # every rank
        if trainer.is_global_zero:
            record_eval_errors(self.run_dir, step, values)
            values["time/eval"] = time.time() - start
            values["time/wall"] = module.wall_time()
            shown = {k: round(v, 4) for k, v in values.items() if not k.startswith("time/")}
            log.info("eval at step %d: %s", step, shown)
            for logger in trainer.loggers:
                logger.log_metrics(values, step=step)
                logger.save()
        if trainer.world_size > 1:
            trainer.strategy.barrier("ablate-eval")

    def on_train_start(self, trainer, module) -> None:
        step, n = trainer.global_step, self.run.eval.every_n_steps
        if self.run.eval.at_start and step == 0:
            self._evaluate(trainer, module)
        elif step and n and step % n == 0 and step not in logged_eval_steps(self.run_dir):
            # A resume at an eval step: that eval normally precedes the step's checkpoint, so
            # it is in metrics.csv already (kept on resume); if it is not, measure it now.
            self._evaluate(trainer, module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        n = self.run.eval.every_n_steps
        if n and trainer.global_step % n == 0 and trainer.global_step < trainer.max_steps:
            self._evaluate(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        if self.run.eval.at_end or (self.run.eval.every_n_steps and
                                    trainer.global_step % self.run.eval.every_n_steps == 0):
            self._evaluate(trainer, module)
