"""The one LightningModule: frozen backbone + frozen encoder + an objective plugin.

Only the backbone's query vectors and the objective's head train. Checkpoints hold just
those (plus optimizer state): the frozen LM and encoder are reloaded from their configured
paths, so a checkpoint of a 1B-LM run stays megabytes, not gigabytes.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import lightning as L
import torch

from ablate.backbone import Backbone
from ablate.config import RunConfig, parse_run, to_dict
from ablate.registry import get_registry

DEFAULT_NUM_QUERIES = 64  # the paper's N
FROZEN_PREFIXES = ("backbone.lm.", "encoder.")


def build_parts(run: RunConfig):
    """(encoder, backbone, objective) for a validated run spec. With a filled feature cache
    the encoder is a stand-in that loads the real one only when decoding needs it."""
    from ablate.data.cache import build_encoder

    encoder = build_encoder(run)
    objective_cls, objective_cfg = get_registry("objective").config(run.objective, "objective")
    required = objective_cls.required_queries(objective_cfg, encoder.grid_shape)
    num_queries = run.backbone.num_queries or required or DEFAULT_NUM_QUERIES
    backbone = Backbone(run.backbone, num_queries)
    objective = objective_cls(objective_cfg, cond_dim=backbone.hidden_size, num_queries=num_queries,
                              target_shape=encoder.grid_shape)
    return encoder, backbone, objective


def lr_lambda(run: RunConfig):
    """Linear warmup, then cosine from ``lr`` down to ``min_lr`` at ``max_steps``."""
    t = run.train
    warmup = t.warmup_steps or round(t.warmup_ratio * t.max_steps)
    floor = t.min_lr / t.lr if t.lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, t.max_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class AblationModule(L.LightningModule):
    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.run_cfg = parse_run(config)
        self.encoder, self.backbone, self.objective = build_parts(self.run_cfg)
        if self.run_cfg.train.query_lr == 0:
            self.backbone.queries.requires_grad_(False)
        self.objective.gradient_checkpointing = self.run_cfg.train.gradient_checkpointing
        self.skipped: Counter = Counter()
        self.wall_offset = 0.0  # seconds trained before a resume
        self._start = time.time()
        # Checkpoints omit the frozen parts; loading must not ask for them.
        self.strict_loading = False

    @classmethod
    def from_run(cls, run: RunConfig) -> AblationModule:
        return cls(to_dict(run))

    # ---- what trains ----------------------------------------------------------------

    def trainable_parameters(self):
        queries = [self.backbone.queries] if self.backbone.queries.requires_grad else []
        return [*queries, *(p for p in self.objective.parameters() if p.requires_grad)]

    def frozen_modules(self) -> list[torch.nn.Module]:
        """The pretrained parts that never train: the language model and the encoder."""
        return [self.backbone.lm, self.encoder]

    def on_fit_start(self):
        # FSDP leaves the modules it ignores (the frozen ones) where they are: put them on
        # this process's device (a no-op for the other strategies, which moved everything).
        for m in self.frozen_modules():
            m.to(self.trainer.strategy.root_device)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        from torch.distributed.fsdp import FullyShardedDataParallel

        if gradient_clip_val and isinstance(self.trainer.model, FullyShardedDataParallel):
            # Lightning's FSDP precision plugin refuses norm clipping; FSDP's own method
            # computes the norm over every shard.
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        t = self.run_cfg.train
        params = self.trainable_parameters()
        # One fused kernel for the whole update on a GPU (Lightning has moved the module there).
        fused = all(p.is_cuda for p in params) or None
        groups = params
        if t.query_lr:  # the head's group first: ``train/lr`` logs group 0
            queries = self.backbone.queries
            groups = [{"params": [p for p in params if p is not queries]},
                      {"params": [queries], "lr": t.query_lr}]
        opt = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay,
                                fused=fused)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.run_cfg))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- the step ---------------------------------------------------------------------

    def step_seed(self) -> int:
        """Noise, time and dropout draws depend only on (seed, step, rank): a resumed run
        draws exactly what an uninterrupted one would have."""
        return (self.run_cfg.seed * 1_000_003 + self.global_step * 7919 + self.global_rank) % 2**63

    def wall_time(self) -> float:
        return self.wall_offset + time.time() - self._start

    def conditioning(self, captions: list[str]) -> torch.Tensor:
        return self.backbone(captions).float()

    def targets(self, batch) -> torch.Tensor:
        """The target grid: cached features when the batch has them, else encoded pixels."""
        if batch.get("targets") is not None:
            return batch["targets"].float()
        with torch.no_grad():
            return self.encoder.encode(batch["pixels"])

    def compute_loss(self, batch) -> dict[str, torch.Tensor]:
        """The objective's loss dict for one batch of captions and pixels / cached targets."""
        target = self.targets(batch)
        return self.objective.loss(self.conditioning(batch["captions"]), target)

    def compile_step(self) -> None:
        """``train.compile``: torch.compile, in place (state-dict keys unchanged), the
        objective's net (the DiT) and the LM decoder that runs the query pass."""
        net = getattr(self.objective, "net", None)
        if isinstance(net, torch.nn.Module):
            net.compile(dynamic=False)
        self.backbone.lm.get_decoder().compile(dynamic=True)  # prompt lengths vary per batch

    def training_step(self, batch, batch_idx):
        self.skipped.update(batch.get("skipped", {}))
        if batch.get("pixels") is None and batch.get("targets") is None:  # all unreadable
            return None
        torch.manual_seed(self.step_seed())
        out = self.compute_loss(batch)
        bs = len(batch["captions"])
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        for key, value in out.items():
            if key != "loss":
                self.log(f"train/{key}", value, batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        self.log("time/wall", self.wall_time(), batch_size=bs)
        return out["loss"]

    # ---- generation (used by evaluation and `ablate sample`) --------------------------

    @torch.no_grad()
    def generate_features(self, captions: list[str], generator: torch.Generator | None = None,
                          steps: int | None = None, guidance: float | None = None,
                          sampler: str | None = None) -> torch.Tensor:
        return self.objective.sample(self.conditioning(captions), generator=generator,
                                     steps=steps, guidance=guidance, sampler=sampler)

    # ---- checkpoints ------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
            del state[key]
        checkpoint["ablate"] = {"wall_time": self.wall_time(), "skipped": dict(self.skipped),
                                "target_shape": list(self.encoder.grid_shape)}  # for `ablate export`

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        extra = checkpoint.get("ablate", {})
        self.wall_offset = extra.get("wall_time", 0.0)
        self._start = time.time()
        self.skipped = Counter(extra.get("skipped", {}))
        # Lightning loads what the checkpoint has; keep the frozen weights already loaded.
        own = self.state_dict()
        for key in own:
            if key.startswith(FROZEN_PREFIXES):
                checkpoint["state_dict"][key] = own[key]

    @classmethod
    def load(cls, checkpoint: str, map_location="cpu") -> AblationModule:
        """Rebuild a module from a checkpoint (frozen parts from their configured paths)."""
        return cls.load_from_checkpoint(checkpoint, map_location=map_location, weights_only=False)
