"""``ablate fit``: one run (one design-space cell) from a validated spec to a results folder.

    results/<study>/<run>/config.yaml      resolved spec + provenance
    results/<study>/<run>/metrics.csv      step, wall time, loss, lr, eval metrics
    results/<study>/<run>/checkpoints/     last.ckpt + every N steps
    results/<study>/<run>/status.json      running | finished | failed (+ error, skipped data)
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import traceback
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ablate.config import RunConfig
from ablate.data.cache import ensure_cache
from ablate.data.stream import ImageCaptionStream, make_loader
from ablate.module import AblationModule
from ablate.provenance import write_run_config
from ablate.registry import get_registry

log = logging.getLogger("ablate")

# Expected here, not problems: the run folder holds config.yaml before the logger starts,
# a resumed run's checkpoint folder is not empty, and the frozen parts sit in eval mode.
for _msg in ("Experiment logs directory", "Checkpoint directory .* exists and is not empty",
             "Found .* module\\(s\\) in eval mode", ".*does not have many workers"):
    warnings.filterwarnings("ignore", message=_msg)


class RunCSVLogger(CSVLogger):
    """Lightning's CSV logger writing ``<run_dir>/metrics.csv``. On resume it keeps the
    rows logged before the resumed step (the stock logger deletes the file)."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        super().__init__(save_dir=str(run_dir.parent), name=run_dir.name, version="")
        self._resume_step = resume_step

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        kept, header = [], []
        if self._resume_step is not None and path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                kept = [r for r in reader if r.get("step") and int(float(r["step"])) < self._resume_step]
        exp = super().experiment  # removes an old metrics.csv
        if header:
            exp.metrics_keys = sorted(header)
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=exp.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
        return exp


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision if precision != "32" else "32-true"
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def make_logger(run: RunConfig, run_dir: Path, resume_step: int | None):
    loggers = [RunCSVLogger(run_dir, resume_step)]  # metrics.csv is part of the results contract
    if run.train.logger == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    elif run.train.logger == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=run.study, name=run.name, save_dir=str(run_dir)))
    return loggers


def build_train_loader(run: RunConfig, resolution: int, skip_batches: int = 0, cache=None):
    """The training loader; with ``cache`` (a filled FeatureCache) it yields cached targets."""
    source = get_registry("dataset").build(run.data.train, where="data.train")
    stream = ImageCaptionStream(source, resolution=resolution, batch_size=run.data.batch_size,
                                seed=run.seed, shuffle_buffer=run.data.shuffle_buffer,
                                skip_batches=skip_batches, cache=cache)
    return make_loader(stream, run.data.num_workers, run.data.prefetch_factor)


def write_status(run_dir: Path, **fields) -> None:
    """Update status.json atomically; only the global-zero process of a multi-process run
    writes it, through a temp file of its own (no two processes share a file)."""
    from lightning.fabric.utilities.rank_zero import _get_rank

    if (_get_rank() or 0) != 0:
        return
    path = run_dir / "status.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    tmp = path.with_name(f".status.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**old, **fields}, indent=2))
    os.replace(tmp, path)


def read_status(run_dir: Path) -> dict:
    path = Path(run_dir) / "status.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def last_checkpoint(run_dir: Path) -> Path | None:
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def make_callbacks(run: RunConfig, run_dir: Path) -> list:
    t = run.train
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step:07d}",
                        auto_insert_metric_name=False, every_n_train_steps=t.checkpoint_every_n_steps,
                        save_top_k=t.keep_checkpoints, monitor="step", mode="max", save_last=True),
    ]
    if t.progress_bar:
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar(refresh_rate=max(1, t.log_every_n_steps)))
    if run.eval.metrics or run.eval.every_n_steps:
        from ablate.eval.callback import EvalCallback

        callbacks.append(EvalCallback(run, run_dir))
    return callbacks


def make_strategy(strategy: str, module):
    """Lightning's strategy for ``train.strategy``. ``fsdp`` shards only what trains (the
    queries and the objective's head: the DiT and its optimizer state are what fill memory)
    and leaves the frozen LM and encoder whole on every device (``ignored_modules``): FSDP
    cannot flatten their bf16 weights together with fp32 trainables, and they hold no
    gradients or optimizer state to shard."""
    if strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(ignored_modules=module.frozen_modules())
    return strategy


def fit(run: RunConfig, resume: bool = False, overwrite: bool = False,
        extra_callbacks: tuple = ()) -> Path:
    """Train one run; return its results folder. ``resume`` continues from last.ckpt."""
    run_dir = run.run_dir
    ckpt = last_checkpoint(run_dir)
    if ckpt and not resume:
        if not overwrite:
            raise FileExistsError(f"{run_dir} already holds checkpoints: pass --resume to continue "
                                  "it or --overwrite to start again")
        shutil.rmtree(run_dir)
        ckpt = None
    if resume and ckpt is None:
        log.info("no checkpoint in %s: starting from step 0", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_step = None
    if ckpt is not None:
        resume_step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    write_run_config(run, run_dir / "config.yaml", {"resumed_from_step": resume_step})
    write_status(run_dir, state="running", error=None)
    try:
        L.seed_everything(run.seed, workers=True, verbose=False)
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # encodes the dataset once per (encoder, dataset); None when the cache is off
        cache = ensure_cache(run, device="cpu" if run.train.accelerator == "cpu" else None)
        module = AblationModule.from_run(run)
        if run.train.compile:
            module.compile_step()
        t = run.train
        loader = build_train_loader(run, module.encoder.resolution, cache=cache,
                                    skip_batches=(resume_step or 0) * t.accumulate_grad_batches)
        trainer = L.Trainer(
            max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices,
            num_nodes=t.num_nodes, strategy=make_strategy(t.strategy, module),
            precision=resolve_precision(t.precision),
            gradient_clip_val=t.grad_clip or None, accumulate_grad_batches=t.accumulate_grad_batches,
            logger=make_logger(run, run_dir, resume_step), log_every_n_steps=t.log_every_n_steps,
            callbacks=make_callbacks(run, run_dir) + list(extra_callbacks),
            enable_progress_bar=t.progress_bar, enable_model_summary=False,
            default_root_dir=str(run_dir), limit_val_batches=0, num_sanity_val_steps=0,
            deterministic=False)
        trainer.fit(module, train_dataloaders=loader, ckpt_path=str(ckpt) if ckpt else None)
    except BaseException as exn:
        write_status(run_dir, state="failed", error=f"{type(exn).__name__}: {exn}",
                     traceback=traceback.format_exc())
        raise
    skipped = dict(module.skipped)
    if skipped:
        log.warning("%s: skipped %d unreadable samples: %s", run.name, sum(skipped.values()), skipped)
    write_status(run_dir, state="finished", step=trainer.global_step, skipped=skipped,
                 wall_time=module.wall_time())
    return run_dir
