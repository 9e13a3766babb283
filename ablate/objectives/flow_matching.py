"""Flow matching objective: a NextDiT predicts velocity on the target grid, conditioned on Q.

Paper convention (BLIP3-o Section 3): ``t ~ U(0, 1)``, ``x0 ~ N(0, I)``, ``x1 = target``,
``x_t = t*x1 + (1-t)*x0``, target velocity ``v = x1 - x0``, loss ``||v_theta(x_t, Q, t) - v||^2``;
sampling integrates dx/dt = v from noise at t=0 to data at t=1. (BLIP3-o's code uses the
diffusers direction, ``s = 1 - t`` and the opposite sign; the models are the same.)

Written SiT / torchcfm style: each piece of the recipe is a small method (time sampling,
noise, interpolant, target velocity, guided velocity, one solver step), so a new schedule or
parameterisation is a subclass that overrides one or two hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F

from ablate.config import limits
from ablate.nets.dit import DiT, DiTConfig
from ablate.objectives import Objective, sampler
from ablate.registry import register
from ablate.rng import draw

_FROM_CONTEXT = ("in_channels", "grid", "cond_dim", "cond_tokens")  # DiTConfig fields set by target/backbone


def _random(kind: str, shape, device, dtype=torch.float32, generator=None) -> torch.Tensor:
    """rand/randn from one generator or one per row (see ``ablate.rng.draw``)."""
    return draw(kind, shape, device, dtype, generator)


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, ...] to multiply a batch shaped like ``like``."""
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


@register("objective", "flow_matching")
class FlowMatching(Objective):
    @dataclass
    class Config:
        # DiT size: DiTConfig's fields except in_channels / grid / cond_dim (from the context).
        dim: int = field(default=1792, metadata=limits(1))
        depth: int = field(default=24, metadata=limits(1))
        heads: int = field(default=28, metadata=limits(1))
        kv_heads: int | None = None
        ffn_dim: int | None = None
        multiple_of: int = 256
        patch_size: int = 1
        qk_norm: bool = True
        norm_eps: float = 1e-5
        rope_theta: float = 10000.0
        adaln_dim: int | None = None
        time_freq_dim: int = 256
        time_scale: float = 1000.0
        cross_gate_init: float = 0.0  # 0: Lumina-Next's closed gate (see DiTConfig)
        cond_standardize: bool = False  # running per-(token, feature) standardisation of Q (see DiTConfig)
        # Training recipe
        time_sampling: Literal["uniform", "logit_normal"] = "uniform"
        logit_normal_mean: float = 0.0  # in the paper's t (t=1 is data): > 0 leans to data
        logit_normal_std: float = 1.0
        shift: float = 1.0  # SD3 time shift; > 1 spends more time near noise; 1.0 = none
        cond_dropout: float = field(default=0.1, metadata=limits(0, 1))  # whole query sequence zeroed, for classifier-free guidance
        # Sampling defaults (sample() arguments override them)
        sample_steps: int = field(default=30, metadata=limits(1))
        guidance: float = 3.0
        sampler: str = "euler"  # a name in FlowMatching.samplers() (subclasses may add some)

        def __post_init__(self):
            if not 0.0 <= self.cond_dropout < 1.0:
                raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
            if self.shift <= 0:
                raise ValueError(f"shift must be > 0, got {self.shift}")
            if self.logit_normal_std <= 0:
                raise ValueError(f"logit_normal_std must be > 0, got {self.logit_normal_std}")
            if self.sample_steps < 1:
                raise ValueError(f"sample_steps must be >= 1, got {self.sample_steps}")

    def __init__(self, cfg: Config, *, cond_dim: int, num_queries: int,
                 target_shape: tuple[int, int, int]):
        super().__init__(cfg, cond_dim=cond_dim, num_queries=num_queries, target_shape=target_shape)
        self.check_sampler(cfg.sampler)
        self.net = self.build_net(cfg, self.target_shape, cond_dim)

    def build_net(self, cfg: Config, target_shape: tuple[int, int, int], cond_dim: int) -> torch.nn.Module:
        """The velocity net ``net(x, t, cond)``, t in [0, 1]: a NextDiT sized by
        ``cfg``. Override to try another denoiser under the same recipe."""
        c, h, w = target_shape
        size = {f.name: getattr(cfg, f.name) for f in fields(DiTConfig) if f.name not in _FROM_CONTEXT}
        return DiT(DiTConfig(in_channels=c, grid=(h, w), cond_dim=cond_dim, cond_tokens=self.num_queries, **size))

    @classmethod
    def tiny_config(cls) -> Config:
        """A CPU-test-sized instance (the generic objective tests build this)."""
        return cls.Config(dim=32, depth=2, heads=4, kv_heads=2, ffn_dim=64, adaln_dim=32,
                          time_freq_dim=32, sample_steps=3)

    @property
    def gradient_checkpointing(self) -> bool:
        return self.net.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.net.gradient_checkpointing = bool(value)

    # ---------------------------------------------------------------- schedule hooks

    def shift_time(self, t: torch.Tensor) -> torch.Tensor:
        """SD3 shift ``s' = k s / (1 + (k-1) s)`` on the noise level ``s = 1 - t``, written
        in t: ``t' = t / (t + k (1 - t))``. Identity for k = 1; keeps 0 and 1 fixed."""
        k = self.cfg.shift
        return t if k == 1.0 else t / (t + k * (1.0 - t))

    def sample_time(self, batch: int, device, generator=None) -> torch.Tensor:
        """Training times [B] in [0, 1]."""
        if self.cfg.time_sampling == "uniform":
            u = _random("rand", (batch,), device, generator=generator)
        else:
            z = _random("randn", (batch,), device, generator=generator)
            u = torch.sigmoid(self.cfg.logit_normal_mean + self.cfg.logit_normal_std * z)
        return self.shift_time(u)

    def sample_noise(self, target: torch.Tensor, generator=None) -> torch.Tensor:
        return _random("randn", target.shape, target.device, target.dtype, generator)

    def interpolant(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = _bcast(t, x1)
        return t * x1 + (1 - t) * x0

    def target_velocity(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x1 - x0  # d/dt of the linear interpolant; t unused, kept for other paths

    def clean_estimate(self, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x1 from x_t and a velocity, on the linear path (what ``train/x1_mse`` measures)."""
        return xt + _bcast(1 - t, xt) * v

    def _logs_x1_mse(self) -> bool:
        """A subclass that changes the path but not ``clean_estimate`` would log a wrong x1_mse."""
        cls = type(self)
        same = [getattr(cls, n) is getattr(FlowMatching, n)
                for n in ("interpolant", "target_velocity", "clean_estimate")]
        return not same[2] or (same[0] and same[1])

    def drop_condition(self, cond: torch.Tensor, generator=None):
        """Zero whole query sequences with prob ``cond_dropout`` (training only).
        Returns (cond, dropped [B] bool)."""
        b = cond.shape[0]
        if not self.training or self.cfg.cond_dropout == 0:
            return cond, torch.zeros(b, dtype=torch.bool, device=cond.device)
        dropped = _random("rand", (b,), cond.device, generator=generator) < self.cfg.cond_dropout
        return cond * (~dropped).to(cond.dtype)[:, None, None], dropped

    # ---------------------------------------------------------------- model and solver

    def _net(self, x, t, cond) -> torch.Tensor:
        """The DiT in its own dtype; returns float32 so solvers integrate in full precision."""
        dtype = next(self.net.parameters()).dtype
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        # t stays float32: bf16 would round t*1000 before the sinusoid
        return self.net(x.to(dtype), t, cond.to(dtype)).float()

    def velocity(self, x, t, cond, guidance: float = 1.0) -> torch.Tensor:
        """Classifier-free guided velocity ``v_u + g (v_c - v_u)``, null condition = zeros."""
        if guidance == 1.0:
            return self._net(x, t, cond)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        both = self._net(torch.cat([x, x]), torch.cat([t, t]),
                         torch.cat([cond, torch.zeros_like(cond)]))
        v_cond, v_uncond = both.chunk(2)
        return v_uncond + guidance * (v_cond - v_uncond)

    @sampler("euler")
    def euler_step(self, x, t, t_next, cond, guidance: float = 1.0):
        return x + (t_next - t) * self.velocity(x, t, cond, guidance)

    @sampler("heun")
    def heun_step(self, x, t, t_next, cond, guidance: float = 1.0):
        """Trapezoid rule with an Euler predictor: exact when v is linear in t alone."""
        dt = t_next - t
        v0 = self.velocity(x, t, cond, guidance)
        v1 = self.velocity(x + dt * v0, t_next, cond, guidance)
        return x + dt * 0.5 * (v0 + v1)

    def time_grid(self, steps: int, device) -> torch.Tensor:
        """steps+1 times from 0 (noise) to 1 (data), shifted like the training times."""
        return self.shift_time(torch.linspace(0.0, 1.0, steps + 1, device=device))

    # ---------------------------------------------------------------- the contract

    def loss(self, cond: torch.Tensor, target: torch.Tensor,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        x1 = target.float()
        x0 = self.sample_noise(x1, generator)
        t = self.sample_time(x1.shape[0], x1.device, generator)
        xt = self.interpolant(x0, x1, t)
        v = self.target_velocity(x0, x1, t)
        cond, dropped = self.drop_condition(cond, generator)
        pred = self._net(xt, t, cond)
        out = {"loss": F.mse_loss(pred, v), "cond_dropped": dropped.float().mean()}
        if self._logs_x1_mse():  # the clean estimate's error is easier to read than the loss
            with torch.no_grad():
                out["x1_mse"] = F.mse_loss(self.clean_estimate(xt, t, pred), x1)
        return out

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None,
               steps: int | None = None, guidance: float | None = None,
               sampler: str | None = None) -> torch.Tensor:
        steps = self.cfg.sample_steps if steps is None else steps
        guidance = self.cfg.guidance if guidance is None else guidance
        step = self.sampler_step(sampler or self.cfg.sampler)
        x = _random("randn", (cond.shape[0], *self.target_shape), cond.device, generator=generator)
        times = self.time_grid(steps, cond.device)
        for t, t_next in pairwise(times):
            x = step(x, t, t_next, cond, guidance)
        return x
