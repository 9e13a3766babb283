"""Train a CLIP-tokens -> pixels diffusion decoder for any CLIP-family encoder.

The Emu2 / BLIP3-o recipe: the encoder is frozen; a ``UNet2DConditionModel`` conditioned on
the encoder's feature grid (``h*w`` tokens as ``encoder_hidden_states``, their mean as the
``text_time`` pooled embedding) learns to denoise the image (in an ``AutoencoderKL``'s latent
space, or in pixel space without one), with ``CLIPDiffusionDecoder.training_loss``. The
result is a decoder folder (``unet/``, ``scheduler/``, ``vae/``) that the ``clip`` encoder
loads with ``decoder: FOLDER``.

The encoder is any registered encoder spec (``{name: clip, model: ..., grid: 8}``: CLIP,
SigLIP, EVA ...) and the images come from any dataset plugin through the training stream,
in the run-spec format:

    encoder: {name: clip, model: google/siglip-base-patch16-224, grid: 8}
    data: {train: {name: webdataset, urls: "shards/{000000..000099}.tar"}, batch_size: 32}
    decoder: {vae: stabilityai/sdxl-vae, channels: [128, 256, 512]}   # optional: the net
    decoder_training: {lr: 1.0e-4, ema_decay: 0.9999}                 # optional

    ablate train-decoder SPEC.yaml --out DIR --steps N

``data.train: {name: toy, n: 5000}`` draws images from the toy world's renderer (the toy
plugin's ``toy`` dataset).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ablate.config import ConfigError, DataConfig, from_dict, load_yaml
from ablate.data.datasets import ImageCaptionSource
from ablate.nets import diffusers_load_kwargs
from ablate.registry import get_registry

log_ = logging.getLogger(__name__)


@dataclass
class DecoderNetConfig:
    """The decoder to train: a UNet (+ scheduler), in a VAE's latent space or pixel space."""

    vae: str | None = None  # AutoencoderKL folder / hub id (latent diffusion); None: pixel space
    vae_subfolder: str | None = None  # e.g. "vae" inside a pipeline repo
    channels: list[int] = field(default_factory=lambda: [64, 128])  # UNet width per level
    cross_attention: list[bool] | None = None  # per level; default: every level but the first
    layers_per_block: int = 1
    head_dim: int = 32
    norm_groups: int = 16
    text_time: bool = True  # SDXL-style pooled-embedding + size conditioning (Emu2 / BLIP3-o)
    spatial: bool = False  # also feed the feature grid, resized, as extra UNet input channels
    time_embed_dim: int = 16  # addition_time_embed_dim for the size ids
    scheduler: str = "EulerDiscreteScheduler"
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    beta_schedule: str = "scaled_linear"
    num_train_timesteps: int = 1000
    timestep_spacing: str = "trailing"


@dataclass
class DecoderTrainConfig:
    steps: int = 2000
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decay to this fraction of lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    cond_dropout: float = 0.1  # whole-grid dropout, for classifier-free guidance at decode time
    cond_noise: float = 0.0  # conditioning augmentation: noise level ~ U(0, this) x feature std
    ema_decay: float = 0.999  # 0: no EMA; saved weights are the EMA ones otherwise
    seed: int = 0
    log_every: int = 50
    device: str = "auto"

    def __post_init__(self):
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.cond_noise < 0:
            raise ValueError(f"cond_noise must be >= 0 (0: off), got {self.cond_noise}")


# ----------------------------------------------------------------------------- sources


class InMemoryPairs(ImageCaptionSource):
    """Already-loaded (PIL image, caption) pairs as a source (e.g. renders a caller holds)."""

    def __init__(self, images: list, captions: list[str], per_unit: int = 500):
        super().__init__(None)
        self.images, self.captions, self.per_unit = images, captions, per_unit

    def units(self) -> list[range]:
        n, k = len(self.images), self.per_unit
        return [range(i, min(n, i + k)) for i in range(0, n, k)]

    def read(self, unit: range):
        for i in unit:
            yield {"image": self.images[i], "caption": self.captions[i], "key": f"memory/{i}"}

    def __repr__(self) -> str:
        return f"InMemoryPairs({len(self.images)} pairs)"


def build_source(spec) -> ImageCaptionSource:
    """A dataset source from a ``data.train`` spec (or a source object, returned as is)."""
    if isinstance(spec, ImageCaptionSource):
        return spec
    return get_registry("dataset").build(spec, where="data.train")


# ----------------------------------------------------------------------------- the net


def build_decoder(cross_attention_dim: int, resolution: int, cfg: DecoderNetConfig | None = None):
    """A fresh ``CLIPDiffusionDecoder`` (random UNet, a scheduler, the frozen VAE if any)."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ablate.nets.clip_decoder import CLIPDiffusionDecoder

    cfg = cfg or DecoderNetConfig()
    vae = None
    if cfg.vae:
        try:
            vae = AutoencoderKL.from_pretrained(cfg.vae, subfolder=cfg.vae_subfolder, **diffusers_load_kwargs())
        except OSError:
            if not cfg.vae_subfolder:
                raise
            vae = AutoencoderKL.from_pretrained(cfg.vae, **diffusers_load_kwargs())
        vae.requires_grad_(False).eval()
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    if resolution % scale:
        raise ConfigError(f"decoder: resolution {resolution} is not a multiple of the VAE's factor {scale}")
    channels = list(cfg.channels)
    attn = cfg.cross_attention or [i > 0 or len(channels) == 1 for i in range(len(channels))]
    if len(attn) != len(channels):
        raise ConfigError(f"decoder.cross_attention: {len(attn)} entries for {len(channels)} levels")
    bad = [c for c in channels if c % cfg.head_dim or c % cfg.norm_groups]
    if bad:
        raise ConfigError(f"decoder.channels: {bad} not divisible by head_dim={cfg.head_dim} "
                          f"and norm_groups={cfg.norm_groups}")
    extra = {}
    if cfg.text_time:
        extra = dict(addition_embed_type="text_time", addition_time_embed_dim=cfg.time_embed_dim,
                     projection_class_embeddings_input_dim=cross_attention_dim + 6 * cfg.time_embed_dim)
    latent = vae.config.latent_channels if vae is not None else 3
    unet = UNet2DConditionModel(
        sample_size=resolution // scale, out_channels=latent,
        in_channels=latent + (cross_attention_dim if cfg.spatial else 0),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        block_out_channels=tuple(channels), layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cross_attention_dim, norm_num_groups=cfg.norm_groups,
        # diffusers' historical naming: ``attention_head_dim`` holds the number of heads
        attention_head_dim=tuple(c // cfg.head_dim for c in channels), **extra)
    scheduler_cls = getattr(diffusers, cfg.scheduler, None)
    if scheduler_cls is None:
        raise ConfigError(f"decoder.scheduler: diffusers has no {cfg.scheduler!r}")
    scheduler = scheduler_cls(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                              prediction_type=cfg.prediction_type, timestep_spacing=cfg.timestep_spacing)
    return CLIPDiffusionDecoder(unet, scheduler, vae)


# ----------------------------------------------------------------------------- training


def _versions() -> dict:
    import diffusers
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "diffusers": diffusers.__version__}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def train_decoder(encoder: dict, data: dict, out_dir: str | Path, steps: int | None = None, *,
                  net: dict | DecoderNetConfig | None = None,
                  training: dict | DecoderTrainConfig | None = None, log=None) -> dict:
    """Train a decoder from ``encoder``'s features back to pixels; save it to ``out_dir``.

    ``encoder``: an encoder spec (CLIP family); ``data``: a run spec's ``data`` section
    (``train`` may also be an ``ImageCaptionSource``); ``net`` / ``training``: the
    ``DecoderNetConfig`` / ``DecoderTrainConfig`` fields (``steps`` overrides
    ``training.steps``). Returns the training record also written to
    ``out_dir/decoder_training.json``."""
    from diffusers import DDPMScheduler

    from ablate.data.stream import ImageCaptionStream, make_loader

    log = log or log_.info
    net = net if isinstance(net, DecoderNetConfig) else from_dict(DecoderNetConfig, net or {}, "decoder")
    tcfg = (training if isinstance(training, DecoderTrainConfig)
            else from_dict(DecoderTrainConfig, training or {}, "decoder_training"))
    if steps is not None:
        tcfg = dataclasses.replace(tcfg, steps=steps)
    data = dict(data or {})
    source_obj = data.get("train") if isinstance(data.get("train"), ImageCaptionSource) else None
    if source_obj is not None:
        data["train"] = {"name": "in-memory"}
    dcfg = from_dict(DataConfig, data, "data")
    enc_spec = {"name": encoder} if isinstance(encoder, str) else dict(encoder)
    enc_spec.pop("decoder", None)  # we are training that decoder; do not load an old one
    device = torch.device(tcfg.device if tcfg.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(tcfg.seed)

    enc = get_registry("encoder").build(enc_spec, where="encoder")
    if not hasattr(enc, "tower"):
        raise ConfigError(f"encoder: {enc_spec.get('name')!r} is not a CLIP-family encoder; only those "
                          "need a trained decoder (a VAE decodes its own latents)")
    enc.to(device)
    source = source_obj or build_source(dcfg.train)
    stream = ImageCaptionStream(source, enc.resolution, dcfg.batch_size, seed=tcfg.seed,
                                shuffle_buffer=dcfg.shuffle_buffer)
    loader = make_loader(stream, dcfg.num_workers if source_obj is None else 0)

    decoder = build_decoder(enc.grid_shape[0], enc.resolution, net).to(device)
    # ``training_loss`` noises with ``scheduler.add_noise`` and feeds the UNet unscaled: right
    # for variance-preserving schedulers (DDPM / DDIM), not for Euler-type ones (their
    # add_noise is x + sigma * noise, meant for inputs scaled by ``scale_model_input``). So
    # train with DDPM's noising of the same betas and save the configured sampler.
    sampler = decoder.scheduler
    decoder.scheduler = DDPMScheduler.from_config(sampler.config)
    unet = decoder.unet
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < tcfg.warmup_steps:
            return (step + 1) / tcfg.warmup_steps
        p = min(1.0, (step - tcfg.warmup_steps) / max(1, tcfg.steps - tcfg.warmup_steps))
        return tcfg.min_lr_ratio + (1 - tcfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = [p.detach().clone() for p in params] if tcfg.ema_decay > 0 else None
    losses, history, skipped, images_seen = [], [], 0, 0
    wall, cpu = time.perf_counter(), time.process_time()
    unet.train()
    batches = iter(loader)
    step = 0
    while step < tcfg.steps:
        batch = next(batches)
        skipped += sum(batch["skipped"].values())
        if batch["pixels"] is None:
            continue
        pixels = batch["pixels"].to(device)
        features = enc.encode(pixels)
        loss = decoder.training_loss(features, pixels, cond_dropout=tcfg.cond_dropout,
                                     cond_noise=tcfg.cond_noise)
        loss.backward()
        if tcfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        if ema is not None:
            decay = min(tcfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        losses.append(loss.item())
        images_seen += pixels.shape[0]
        step += 1
        if step % tcfg.log_every == 0 or step == tcfg.steps:
            recent = sum(losses[-tcfg.log_every:]) / len(losses[-tcfg.log_every:])
            history.append({"step": step, "loss": round(recent, 5), "wall_s": round(time.perf_counter() - wall, 1)})
            log(f"  decoder step {step}/{tcfg.steps} loss {recent:.4f}")
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    unet.eval()
    decoder.scheduler = sampler
    out_dir = Path(out_dir)
    decoder.to("cpu").save_pretrained(out_dir)
    k = max(1, len(losses) // 10)
    record = {
        "encoder": enc_spec, "data": {**asdict(dcfg), "train": repr(source) if source_obj else dcfg.train},
        "decoder": asdict(net), "decoder_training": asdict(tcfg),
        "steps": tcfg.steps, "images_seen": images_seen, "skipped_records": skipped,
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "final_loss": round(sum(losses[-k:]) / k, 5), "history": history,
        "wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1),
        "device": str(device), "versions": _versions(),
    }
    (out_dir / "decoder_training.json").write_text(json.dumps(_jsonable(record), indent=1))
    return record


def train_decoder_from_yaml(path: str | Path, out_dir: str | Path, steps: int | None = None,
                            overrides=None, log=None) -> dict:
    """``ablate train-decoder``: a YAML with ``encoder`` and ``data`` (run-spec format) and
    optional ``decoder`` / ``decoder_training`` sections; other keys (a whole run spec) are
    ignored."""
    from ablate.config import apply_overrides

    spec = apply_overrides(load_yaml(path), overrides)
    for key in ("encoder", "data"):
        if key not in spec:
            raise ConfigError(f"{path}: {key}: required key is missing (a decoder spec needs "
                              "encoder: and data: in the run-spec format)")
    return train_decoder(spec["encoder"], spec["data"], out_dir, steps, net=spec.get("decoder"),
                         training=spec.get("decoder_training"), log=log)
