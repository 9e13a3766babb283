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
import math
import os
import shutil
import traceback
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ablate.checkpoints import AtomicCheckpointIO, checkpoint_files, resume_checkpoint
from ablate.config import ConfigError, RunConfig, check_local_models
from ablate.data.cache import ensure_cache
from ablate.data.stream import ImageCaptionStream, make_loader
from ablate.module import AblationModule
from ablate.provenance import spec_fingerprint, write_run_config
from ablate.registry import get_registry

log = logging.getLogger("ablate")

# Expected here, not problems: the run folder holds config.yaml before the logger starts,
# a resumed run's checkpoint folder is not empty, and the frozen parts sit in eval mode.
for _msg in ("Experiment logs directory", "Checkpoint directory .* exists and is not empty",
             "Found .* module\\(s\\) in eval mode", ".*does not have many workers"):
    warnings.filterwarnings("ignore", message=_msg)


class RunCSVLogger(CSVLogger):
    """Lightning's CSV logger writing ``<run_dir>/metrics.csv``. On resume it keeps the
    rows logged before the resumed step, and the evaluation rows at that step (evaluation
    runs before the step's checkpoint is written); the stock logger deletes the file."""

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
                kept = [r for r in reader if r.get("step") and self._keep(r)]
        exp = super().experiment  # removes an old metrics.csv
        if header:
            exp.metrics_keys = sorted(header)
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=exp.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
        return exp

    def _keep(self, row: dict) -> bool:
        step = int(float(row["step"]))
        trained = any(v for k, v in row.items() if k.startswith("train/"))
        return step < self._resume_step or (step == self._resume_step and not trained)


class NonFiniteLoss(RuntimeError):
    """The loss or the gradient norm became inf / NaN: the run diverged."""


class NonFiniteGuard(L.Callback):
    """Checks the gradient norm before every optimizer step (a NaN / inf loss makes it
    non-finite too), so diverged weights are never stepped into, logged or checkpointed.
    ``stop``: raise ``NonFiniteLoss`` naming the step; ``skip_batch``: drop that update and
    count it in ``skipped``. Also warns once when the loss grows 10^4-fold (divergence
    under way, e.g. a learning rate far too high)."""

    SKIPPED = "non-finite loss or gradient"

    def __init__(self, mode: str, lr: float):
        self.mode, self.lr = mode, lr
        self.first_loss: float | None = None
        self.warned = False

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if trainer.precision == "16-mixed":
            return  # fp16's grad scaler skips overflowing steps itself, by design
        grads = [p.grad.detach().float().norm() for g in optimizer.param_groups for p in g["params"]
                 if p.grad is not None]
        if not grads:
            return
        norm = torch.stack(grads).norm()
        if torch.isfinite(norm):
            return
        step = trainer.global_step
        if self.mode == "stop":
            raise NonFiniteLoss(f"step {step}: the gradient norm is {norm.item()} (non-finite loss or "
                                f"gradient, train.lr={self.lr:g}): the run diverged; the last checkpoint "
                                "holds the weights before it. Lower train.lr or set "
                                "train.on_nonfinite: skip_batch")
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # AdamW leaves parameters without a gradient untouched
        module.skipped[self.SKIPPED] += 1
        log.warning("step %d: non-finite gradient norm; batch skipped (train.on_nonfinite: skip_batch)", step)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach())
        if not math.isfinite(value):
            if self.mode == "stop":
                raise NonFiniteLoss(f"step {trainer.global_step - 1}: train/loss is {value} "
                                    f"(train.lr={self.lr:g}): the run diverged")
            return
        if self.first_loss is None:
            self.first_loss = abs(value) or 1e-12
        elif not self.warned and abs(value) > 1e4 * self.first_loss:
            self.warned = True
            log.warning("step %d: train/loss %.3g is %.0e times its first value %.3g: diverging? "
                        "(train.lr=%g)", trainer.global_step - 1, value, value / self.first_loss,
                        self.first_loss, self.lr)


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
    elif run.train.logger == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        # MLFLOW_TRACKING_URI picks the server; without it, a file store in the run folder
        loggers.append(MLFlowLogger(experiment_name=run.study, run_name=run.name,
                                    save_dir=str(run_dir / "mlruns")))
    return loggers


def build_train_loader(run: RunConfig, resolution: int, skip_batches: int = 0, cache=None):
    """The training loader; with ``cache`` (a filled FeatureCache) it yields cached targets."""
    source = get_registry("dataset").build(run.data.train, where="data.train")
    stream = ImageCaptionStream(source, resolution=resolution, batch_size=run.data.batch_size,
                                seed=run.seed, shuffle_buffer=run.data.shuffle_buffer,
                                skip_batches=skip_batches, cache=cache)
    return make_loader(stream, run.data.num_workers, run.data.prefetch_factor)


def write_status(run_dir: Path, **fields) -> None:
    """Update status.json through a temporary file and a rename (never half written). Only
    the global-zero process of a multi-process run writes it, through a temp file of its own."""
    from lightning.fabric.utilities.rank_zero import _get_rank

    if (_get_rank() or 0) != 0:
        return
    path = Path(run_dir) / "status.json"
    tmp = path.with_name(f".status.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({**read_status(run_dir), **fields}, indent=2))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def record_failure(run_dir: Path, **fields) -> None:
    """``write_status(state=failed)`` that never masks the error being reported."""
    try:
        write_status(run_dir, state="failed", **fields)
    except OSError as err:  # e.g. the full disk that failed the run
        log.error("%s: could not record the failure in status.json: %s", run_dir, err)


def read_status(run_dir: Path) -> dict:
    """status.json, or {} when absent; an unreadable one is reported and read as {}."""
    path = Path(run_dir) / "status.json"
    if not path.is_file():
        return {}
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable (%s); treated as unknown", path, err)
        return {}
    return status if isinstance(status, dict) else {}


def last_checkpoint(run_dir: Path) -> Path | None:
    """The run's newest checkpoint file, readable or not (see ``resume_checkpoint``)."""
    files = checkpoint_files(run_dir)
    return files[0] if files else None


def writable_dir(path: Path, what: str = "results folder") -> Path:
    """Create ``path``; a read-only or impossible place is a ConfigError naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{path}: cannot write the {what} here ({err.strerror or err}); fix its "
                          "permissions or choose another results_dir") from None
    return path


def make_callbacks(run: RunConfig, run_dir: Path) -> list:
    t = run.train
    callbacks = [
        NonFiniteGuard(t.on_nonfinite, t.lr),
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step:07d}",
                        auto_insert_metric_name=False, every_n_train_steps=t.checkpoint_every_n_steps,
                        save_top_k=t.keep_checkpoints, monitor="step", mode="max", save_last=True),
    ]
    if t.progress_bar:
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar(refresh_rate=max(1, t.log_every_n_steps)))
    if t.ema_decay is not None:  # before EvalCallback: an eval at step N sees the EMA of step N
        from ablate.ema import EMA

        callbacks.append(EMA(t.ema_decay))
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
    """Train one run; return its results folder. ``resume`` continues from the newest
    readable checkpoint."""
    run_dir = run.run_dir
    check_local_models(run, f"run {run.name}")  # before anything loads: models, then data
    get_registry("dataset").build(run.data.train, where="data.train").units()
    if last_checkpoint(run_dir) and not resume:
        if not overwrite:
            raise FileExistsError(f"{run_dir} already holds checkpoints: pass --resume to continue "
                                  "it or --overwrite to start again")
        shutil.rmtree(run_dir)
    writable_dir(run_dir, "run folder")
    found = resume_checkpoint(run_dir) if resume else None
    ckpt, resume_step = found if found else (None, None)
    if resume and ckpt is None:
        log.info("no checkpoint in %s: starting from step 0", run_dir)
    write_run_config(run, run_dir / "config.yaml", {"resumed_from_step": resume_step})
    write_status(run_dir, state="running", error=None, **spec_fingerprint(run))
    module = None
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
            precision=resolve_precision(t.precision), plugins=[AtomicCheckpointIO()],
            gradient_clip_val=t.grad_clip or None, accumulate_grad_batches=t.accumulate_grad_batches,
            logger=make_logger(run, run_dir, resume_step), log_every_n_steps=t.log_every_n_steps,
            callbacks=make_callbacks(run, run_dir) + list(extra_callbacks),
            enable_progress_bar=t.progress_bar, enable_model_summary=False,
            default_root_dir=str(run_dir), limit_val_batches=0, num_sanity_val_steps=0,
            deterministic=False)
        trainer.fit(module, train_dataloaders=loader, ckpt_path=str(ckpt) if ckpt else None)
    except BaseException as exn:
        skipped = dict(module.skipped) if module is not None else {}
        record_failure(run_dir, error=f"{type(exn).__name__}: {exn}", skipped=skipped,
                       traceback=traceback.format_exc())
        raise
    skipped = dict(module.skipped)
    if skipped:
        log.warning("%s: skipped %d unreadable samples or batches: %s", run.name,
                    sum(skipped.values()), skipped)
    write_status(run_dir, state="finished", step=trainer.global_step, skipped=skipped,
                 wall_time=module.wall_time())
    if read_status(run_dir).get("eval_errors"):
        log.warning("%s: finished, but evaluation failed: %s (status.json eval_errors)", run.name,
                    {k: v["error"] for k, v in read_status(run_dir)["eval_errors"].items()})
    return run_dir
