"""A Lumina-Next / NextDiT style diffusion transformer that predicts velocity on a feature grid.

Layout (what the BLIP3-o checkpoint's ``LuminaNextDiT2DModel`` has, written out plainly):

- the ``[B, C, h, w]`` grid is cut into ``p x p`` patches, one token each (row-major);
- the condition (the backbone's query states) is projected to the DiT width by
  Linear -> GELU(tanh) -> Linear; its mean, with the 256-d sinusoidal timestep
  embedding, makes the vector ``c`` that drives the adaLN modulation;
- every block: RMSNorm sandwich around attention and around the SwiGLU MLP, scale/gate
  modulation from ``c``; the attention is grouped-query self-attention with qk-norm and 2D
  RoPE over the patch grid, plus a cross-attention to the projected condition (its own
  q/k/v and qk-norm) whose per-head gate ``tanh(g)`` starts at 0; both share one output
  projection;
- a final adaLN layer and linear out, both zero-initialised as in DiT, so the net predicts
  0 at init.

The adaLN input width is ``min(dim, 1024)`` as in Lumina-Next: with it (and the cross
attention's own q/k/v) the BLIP3-o size (dim 1792, 24 layers) is ~1.36 B parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class DiTConfig:
    dim: int = 1792
    depth: int = 24
    heads: int = 28
    kv_heads: int | None = None  # None: = heads (plain multi-head attention)
    ffn_dim: int | None = None  # SwiGLU inner width; None: Llama rule from dim (4864 at 1792)
    multiple_of: int = 256  # the Llama rule rounds ffn_dim up to a multiple of this
    patch_size: int = 1
    in_channels: int = 1792
    grid: tuple[int, int] = (8, 8)  # the training grid (h, w); other sizes also run
    cond_dim: int = 2048  # hidden size of the backbone (Llama-3.2-1B)
    qk_norm: bool = True
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    adaln_dim: int | None = None  # width of the timestep embedding; None: min(dim, 1024)
    time_freq_dim: int = 256  # sinusoidal timestep features
    time_scale: float = 1000.0  # t in [0, 1] is scaled so the sinusoid uses all its frequencies
    # tanh(cross_gate_init) opens the cross-attention to the condition at init. Lumina-Next
    # starts it at 0, where the cross q/k/v get no gradient until the gate itself has moved
    # (a 2,400-step toy run kept every gate under 0.07; opening them did not make that run
    # follow its captions sooner, so 0 stays the default). Blocks still start as the
    # identity either way: their adaLN output gates are zero.
    cross_gate_init: float = 0.0
    # Standardise the condition per (query token, feature) with running statistics of the
    # training batches before projecting it (``ConditionStandardizer``). Off in Lumina-Next /
    # BLIP3-o; on in the toy study, whose frozen toy LM puts a caption's content in ~1 % of
    # its query states' variance (research/toy_diagnostics/query_state_probe.py).
    cond_standardize: bool = False
    cond_tokens: int | None = None  # the number of condition tokens (set from the backbone)

    def __post_init__(self):
        self.grid = tuple(self.grid)
        if self.kv_heads is None:
            self.kv_heads = self.heads
        if self.ffn_dim is None:  # 2/3 of 4*dim (SwiGLU has three matrices), rounded up
            hidden = int(2 * 4 * self.dim / 3)
            self.ffn_dim = self.multiple_of * math.ceil(hidden / self.multiple_of)
        if self.adaln_dim is None:
            self.adaln_dim = min(self.dim, 1024)
        if self.dim % self.heads:
            raise ValueError(f"DiT dim {self.dim} is not divisible by heads {self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"DiT heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")
        if self.head_dim % 4:
            raise ValueError(f"DiT head dim {self.head_dim} must be divisible by 4 (2D RoPE "
                             f"rotates pairs, half of them per axis)")
        if self.cond_standardize and not self.cond_tokens:
            raise ValueError("DiT cond_standardize needs cond_tokens (the number of query tokens)")
        if any(g % self.patch_size for g in self.grid):
            raise ValueError(f"DiT grid {self.grid} is not divisible by patch_size {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


# --------------------------------------------------------------------------------------
# Patches and positions
# --------------------------------------------------------------------------------------


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), p*p*C], patches in row-major order."""
    b, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"grid {h}x{w} is not divisible by patch size {p}")
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: [B, (h/p)*(w/p), p*p*C] -> [B, C, h, w]."""
    b, _, d = tokens.shape
    c = d // (p * p)
    x = tokens.reshape(b, h // p, w // p, p, p, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


def rope_2d(h: int, w: int, head_dim: int, theta: float, device=None):
    """cos/sin ``[h*w, head_dim/2]`` for the rotation pairs of a row-major h x w grid.

    The first half of the pairs rotates with the row index, the second with the column, each
    with the usual geometric frequency ladder (Lumina-Next's 2D RoPE).
    """
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    rows = torch.arange(h, device=device, dtype=torch.float32).repeat_interleave(w)
    cols = torch.arange(w, device=device, dtype=torch.float32).repeat(h)
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of ``x [B, heads, L, head_dim]``."""
    xf = x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(x)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [B, dim] of (already scaled) timesteps [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device,
                                                           dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# --------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------


class ConditionStandardizer(nn.Module):
    """``(cond - mean) / std`` per (token, feature), with running statistics of training batches.

    Why: a frozen LM's query states share a large component whatever the caption (the
    queries' own embedding, the prompt template); the caption's words move them a little.
    Centred and scaled, those small moves become the condition's variation, and the DiT no
    longer has to learn to amplify them first. The statistics follow the training batches
    (a cumulative average over the first ``warmup`` batches, then an EMA with ``momentum``,
    as the trained queries drift), are buffers (checkpointed, broadcast by DDP) and are
    frozen outside training, as unCLIP standardises CLIP embeddings with data statistics.
    Rows that are exactly zero are classifier-free guidance's null condition: they are left
    out of the statistics and mapped like any input, so training and sampling agree.
    """

    def __init__(self, tokens: int, dim: int, momentum: float = 0.01, warmup: int = 100,
                 eps: float = 1e-4):
        super().__init__()
        self.momentum, self.warmup, self.eps = momentum, warmup, eps
        self.register_buffer("mean", torch.zeros(tokens, dim))
        self.register_buffer("var", torch.ones(tokens, dim))
        # a float count: code that averages every buffer (AveragedModel(use_buffers=True)) lerps it
        self.register_buffer("batches", torch.zeros(()))

    @torch.no_grad()
    def update(self, cond: torch.Tensor) -> None:
        real = cond[cond.flatten(1).abs().amax(1) > 0].float()
        if len(real) < 2:
            return
        rate = max(self.momentum, 1.0 / (int(self.batches) + 1)) if self.batches < self.warmup else self.momentum
        self.mean.lerp_(real.mean(0), rate)
        self.var.lerp_(real.var(0), rate)
        self.batches += 1

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        if cond.shape[1:] != self.mean.shape:
            raise ValueError(f"condition of shape {tuple(cond.shape[1:])}, but the standardizer "
                             f"holds statistics for {tuple(self.mean.shape)} (tokens, features)")
        if self.training and torch.is_grad_enabled():
            self.update(cond)
        return ((cond.float() - self.mean) * torch.rsqrt(self.var + self.eps)).to(cond.dtype)


class Attention(nn.Module):
    """Self-attention over image tokens + tanh-gated cross-attention to the condition.

    Lumina-Next layout: the cross-attention has its own q/k/v and qk-norm, and the two
    results are summed per head before one shared output projection.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim, hd = cfg.dim, cfg.head_dim
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, hd

        def norm():
            return nn.RMSNorm(hd, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()

        self.q = nn.Linear(dim, cfg.heads * hd, bias=False)
        self.k = nn.Linear(dim, cfg.kv_heads * hd, bias=False)
        self.v = nn.Linear(dim, cfg.kv_heads * hd, bias=False)
        self.q_norm, self.k_norm = norm(), norm()
        self.cross_q = nn.Linear(dim, cfg.heads * hd, bias=False)
        self.cross_k = nn.Linear(dim, cfg.kv_heads * hd, bias=False)
        self.cross_v = nn.Linear(dim, cfg.kv_heads * hd, bias=False)
        self.cross_q_norm, self.cross_k_norm = norm(), norm()
        self.cross_gate = nn.Parameter(torch.zeros(cfg.heads))  # tanh(0) = 0: off at init
        self.out = nn.Linear(cfg.heads * hd, dim, bias=False)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.unflatten(-1, (n, self.head_dim)).transpose(1, 2)  # [B, n, L, hd]

    def _attend(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=self.kv_heads != self.heads)

    def forward(self, x, ctx, cos, sin):
        q = self.q_norm(self._heads(self.q(x), self.heads))
        k = self.k_norm(self._heads(self.k(x), self.kv_heads))
        v = self._heads(self.v(x), self.kv_heads)
        out = self._attend(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)

        # The condition tokens carry no grid position, so no RoPE on this path.
        cq = self.cross_q_norm(self._heads(self.cross_q(x), self.heads))
        ck = self.cross_k_norm(self._heads(self.cross_k(ctx), self.kv_heads))
        cv = self._heads(self.cross_v(ctx), self.kv_heads)
        cross = self._attend(cq, ck, cv)  # every query token is real: no padding to mask
        out = out + self.cross_gate.tanh().view(1, -1, 1, 1).to(out.dtype) * cross
        return self.out(out.transpose(1, 2).flatten(2))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim, eps = cfg.dim, cfg.norm_eps
        self.attn_norm_in, self.attn_norm_out = nn.RMSNorm(dim, eps=eps), nn.RMSNorm(dim, eps=eps)
        self.ffn_norm_in, self.ffn_norm_out = nn.RMSNorm(dim, eps=eps), nn.RMSNorm(dim, eps=eps)
        self.ctx_norm = nn.RMSNorm(dim, eps=eps)
        self.attn = Attention(cfg)
        self.ffn = SwiGLU(dim, cfg.ffn_dim)
        # scale + gate for attention and for the MLP (RMSNorm has no shift in Lumina-Next)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.adaln_dim, 4 * dim))

    def forward(self, x, c, ctx, cos, sin):
        scale_attn, gate_attn, scale_ffn, gate_ffn = self.modulation(c)[:, None].chunk(4, dim=-1)
        h = self.attn(self.attn_norm_in(x) * (1 + scale_attn), self.ctx_norm(ctx), cos, sin)
        x = x + gate_attn.tanh() * self.attn_norm_out(h)
        h = self.ffn(self.ffn_norm_in(x) * (1 + scale_ffn))
        return x + gate_ffn.tanh() * self.ffn_norm_out(h)


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.adaln_dim, cfg.dim))  # scale
        self.linear = nn.Linear(cfg.dim, out_dim)

    def forward(self, x, c):
        return self.linear(self.norm(x) * (1 + self.modulation(c)[:, None]))


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


class DiT(nn.Module):
    """``forward(x [B,C,h,w], t [B] in [0,1], cond [B,N,cond_dim])`` -> velocity ``[B,C,h,w]``.
    The condition is the backbone's N query states: never padded, so never masked."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        p, dim = cfg.patch_size, cfg.dim
        self.patch_embed = nn.Linear(p * p * cfg.in_channels, dim)
        self.time_embed = nn.Sequential(nn.Linear(cfg.time_freq_dim, cfg.adaln_dim), nn.SiLU(),
                                        nn.Linear(cfg.adaln_dim, cfg.adaln_dim))
        self.cond_norm = (ConditionStandardizer(cfg.cond_tokens, cfg.cond_dim) if cfg.cond_standardize
                          else nn.Identity())
        self.cond_proj = nn.Sequential(nn.Linear(cfg.cond_dim, dim), nn.GELU(approximate="tanh"),
                                       nn.Linear(dim, dim))
        self.cond_pool_embed = nn.Sequential(nn.LayerNorm(dim, eps=1e-6),
                                             nn.Linear(dim, cfg.adaln_dim))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg, p * p * cfg.in_channels)
        self.gradient_checkpointing = False
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DiT init: xavier linears, N(0, 0.02) time MLP, zero adaLN and zero output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.time_embed:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        # cond_pool_embed keeps its xavier init, unlike Lumina-Next's zero-initialised caption
        # embedder: on the toy world, zero init memorised 16 pairs more slowly (600 steps,
        # recall/ratio 0.55 vs 0.48; research/toy_diagnostics/objective_only.py --pairs 16).
        # Zero modulation: every block starts as the identity and the output as 0, so the
        # untrained net is a stable no-op the first steps can grow out of.
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
            nn.init.constant_(block.attn.cross_gate, self.cfg.cross_gate_init)
        for lin in (self.final.modulation[-1], self.final.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def condition(self, t, cond):
        """(adaLN vector c [B, adaln_dim], projected condition tokens [B, N, dim])."""
        ctx = self.cond_proj(self.cond_norm(cond))
        pooled = ctx.mean(dim=1)
        t_feat = timestep_features(t * self.cfg.time_scale, self.cfg.time_freq_dim).to(ctx.dtype)
        return self.time_embed(t_feat) + self.cond_pool_embed(pooled), ctx

    def forward(self, x, t, cond):
        b, _, h, w = x.shape
        p = self.cfg.patch_size
        if t.ndim == 0:
            t = t.expand(b)
        c, ctx = self.condition(t, cond)
        cos, sin = rope_2d(h // p, w // p, self.cfg.head_dim, self.cfg.rope_theta, x.device)
        tokens = self.patch_embed(patchify(x, p))
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, c, ctx, cos, sin, use_reentrant=False)
            else:
                tokens = block(tokens, c, ctx, cos, sin)
        return unpatchify(self.final(tokens, c), p, h, w)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
