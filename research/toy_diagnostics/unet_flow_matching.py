"""Flow matching with a convolutional UNet instead of the DiT: an out-of-tree objective plugin.

A diagnostic for "is the DiT's missing locality prior why the toy heads draw blobs, not
shapes?". Same recipe as ``flow_matching`` (time sampling, interpolant, guidance, solvers:
inherited), only ``build_net`` returns a small diffusers ``UNet2DConditionModel`` that
cross-attends to the query states. Chosen by dotted path, with no edit to the package:

    python research/toy_diagnostics/conditioning_check.py experiments/demo.yaml --cell vae+fm --modes label \\
        --set objective.name=unet_flow_matching.UNetFlowMatching

(the scripts in ``benchmarks/`` put this folder on ``sys.path``). The DiT size fields of the
config are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ablate.objectives.flow_matching import FlowMatching


class ConditionalUNet(nn.Module):
    """``net(x, t, cond)`` as the DiT takes it, with t in [0, 1]."""

    def __init__(self, channels: int, side: int, cond_dim: int, widths: tuple[int, ...], head_dim: int):
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.unet = UNet2DConditionModel(
            sample_size=side, in_channels=channels, out_channels=channels, block_out_channels=widths,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(widths) - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (len(widths) - 1) + ("UpBlock2D",),
            layers_per_block=1, cross_attention_dim=cond_dim, attention_head_dim=head_dim,
            norm_num_groups=min(32, widths[0] // 2))
        self.gradient_checkpointing = False

    def forward(self, x, t, cond):
        return self.unet(x, t * 1000, encoder_hidden_states=cond).sample


class UNetFlowMatching(FlowMatching):
    @dataclass
    class Config(FlowMatching.Config):
        unet_widths: tuple[int, ...] = (64, 128)
        unet_head_dim: int = 32

    def build_net(self, cfg: Config, target_shape: tuple[int, int, int], cond_dim: int) -> nn.Module:
        c, h, w = target_shape
        if h != w or h % 2 ** (len(cfg.unet_widths) - 1):
            raise ValueError(f"unet_widths={list(cfg.unet_widths)}: the {h}x{w} target grid must be square "
                             f"and divisible by {2 ** (len(cfg.unet_widths) - 1)}")
        return ConditionalUNet(c, h, cond_dim, tuple(cfg.unet_widths), cfg.unet_head_dim)

    @classmethod
    def tiny_config(cls) -> Config:
        return cls.Config(dim=32, depth=1, heads=4, unet_widths=(16, 32), unet_head_dim=8, sample_steps=2)


__all__ = ["UNetFlowMatching"]
