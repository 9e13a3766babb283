"""``ablate export CKPT OUT``: a trained head as a standalone folder.

    OUT/config.json          objective spec, num_queries, cond_dim, target_shape (what rebuilds
                             the head), the backbone and encoder it was trained with, and
                             where it came from (run, step, whether the weights are the EMA)
    OUT/model.safetensors    ``queries`` [N, D] and the objective head (``objective.*``)

``ExportedHead.from_pretrained(OUT)`` rebuilds the queries and the head without the LM or
the encoder; pair it with the LM named under ``backbone`` to turn prompts into ``cond``.
Exporting reads the checkpoint file only: nothing pretrained is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ablate.config import parse_run
from ablate.ema import ema_state
from ablate.module import FROZEN_PREFIXES
from ablate.registry import get_registry

FORMAT = "ablate-head"
WEIGHTS = "model.safetensors"


class ExportedHead(nn.Module):
    """Learnable queries + the objective head of one trained run."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.queries = nn.Parameter(torch.zeros(config["num_queries"], config["cond_dim"]))
        self.objective = get_registry("objective").build(
            config["objective"], where="config.json objective", cond_dim=config["cond_dim"],
            num_queries=config["num_queries"], target_shape=tuple(config["target_shape"]))

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> ExportedHead:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: no config.json (make one with `ablate export CKPT OUT`)")
        config = json.loads((folder / "config.json").read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"{folder}/config.json: format {config.get('format')!r}, expected {FORMAT!r}")
        head = cls(config)
        head.load_state_dict(load_file(folder / WEIGHTS, device=str(device)))  # strict: all or error
        return head.to(device).eval()

    def save_pretrained(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, folder / WEIGHTS, metadata={"format": FORMAT})
        (folder / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        return folder

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator=None, steps: int | None = None,
               guidance: float | None = None, sampler: str | None = None) -> torch.Tensor:
        """Target features for query states ``cond`` [B, N, D] (the objective's ``sample``)."""
        return self.objective.sample(cond, generator=generator, steps=steps, guidance=guidance,
                                     sampler=sampler)


def _target_shape(checkpoint: dict, run) -> tuple[int, int, int]:
    shape = (checkpoint.get("ablate") or {}).get("target_shape")
    if shape is None:  # a checkpoint from before the shape was recorded: ask the encoder
        shape = get_registry("encoder").build(run.encoder, where="encoder").grid_shape
    return tuple(shape)


def export_checkpoint(checkpoint_path: str | Path, out: str | Path, ema: bool = True) -> Path:
    """Write ``out`` (config.json + model.safetensors) from a checkpoint or a run folder."""
    path = Path(checkpoint_path)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (give a .ckpt file or a run folder)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    run = parse_run(checkpoint["hyper_parameters"]["config"], str(path))
    state = {k.replace("_orig_mod.", ""): v for k, v in checkpoint["state_dict"].items()
             if not k.startswith(FROZEN_PREFIXES)}  # (torch.compile's wrapper renames the head)
    averaged = ema_state(checkpoint) if ema else None
    if averaged is not None:
        state.update(averaged["averages"])
    queries = state["backbone.queries"]
    config = {"format": FORMAT, "version": 1, "objective": run.objective,
              "num_queries": queries.shape[0], "cond_dim": queries.shape[1],
              "target_shape": list(_target_shape(checkpoint, run)),
              "backbone": vars(run.backbone), "encoder": run.encoder,
              "source": {"study": run.study, "run": run.name, "checkpoint": str(path),
                         "step": checkpoint["global_step"], "ema": averaged is not None}}
    head = ExportedHead(config)
    head.load_state_dict({"queries": queries, **{k: v for k, v in state.items() if k.startswith("objective.")}})
    return head.save_pretrained(out)
