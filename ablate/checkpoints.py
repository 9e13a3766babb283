"""A run's checkpoint files: written atomically, read with one clear line when broken, and
the newest readable one found for a resume.

Lightning writes a checkpoint straight to its final name, so a kill or a full disk in the
middle leaves a truncated ``last.ckpt`` that a resume then trips over. Here every checkpoint
is written to a hidden temporary file and renamed into place (atomic on POSIX), and a resume
falls back past unreadable files to the newest one that loads.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ablate.config import ConfigError

log = logging.getLogger("ablate")


class UnreadableCheckpoint(ConfigError):
    """A checkpoint file that is empty, truncated or not a checkpoint."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint writer, through a temporary file and a rename: a reader
    (or a resume) sees the old complete file or the new complete file, never half of one."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk leaves no partial file behind
            raise


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents, or ``UnreadableCheckpoint`` saying why in one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (give a .ckpt file or a run folder)")
    if path.stat().st_size == 0:
        raise UnreadableCheckpoint(f"{path}: not a readable checkpoint (empty file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exn:  # noqa: BLE001 - zip, pickle and EOF errors all mean "broken file"
        reason = str(exn).strip().splitlines()[0] if str(exn).strip() else type(exn).__name__
        raise UnreadableCheckpoint(f"{path}: not a readable checkpoint (truncated or not a "
                                   f"checkpoint: {reason[:200]})") from None
    if not isinstance(ckpt, dict) or "global_step" not in ckpt:
        raise UnreadableCheckpoint(f"{path}: not a Lightning checkpoint (no global_step)")
    return ckpt


def _step_of(path: Path) -> int:
    match = re.search(r"(\d+)", path.stem)
    return int(match.group(1)) if match else -1


def checkpoint_files(run_dir: str | Path) -> list[Path]:
    """``last.ckpt`` first, then ``stepNNNNNNN.ckpt`` newest first."""
    folder = Path(run_dir) / "checkpoints"
    last = [folder / "last.ckpt"] if (folder / "last.ckpt").is_file() else []
    steps = sorted((p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"), key=_step_of, reverse=True)
    return last + steps


def resume_checkpoint(run_dir: str | Path, set_aside: bool = True) -> tuple[Path, int] | None:
    """(file, step) of the newest readable checkpoint of a run; the fallback is logged and,
    with ``set_aside``, unreadable newer files are renamed ``*.unreadable`` (kept for a
    look, out of the way of the resumed run's own checkpointing)."""
    skipped = []
    for path in checkpoint_files(run_dir):
        try:
            step = read_checkpoint(path)["global_step"]
        except UnreadableCheckpoint as err:
            skipped.append(str(err))
            if set_aside:
                try:
                    path.rename(path.with_name(path.name + ".unreadable"))
                except OSError:  # another rank of the same run moved it first
                    pass
            continue
        if skipped:
            log.warning("%s; resuming from %s (step %d) instead", "; ".join(skipped), path.name, step)
        return path, step
    if skipped:
        log.warning("%s; no readable checkpoint left: starting from step 0", "; ".join(skipped))
    return None
