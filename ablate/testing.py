"""Tiny models of the real classes, for tests and CPU smoke runs.

Each builder makes a randomly initialised model of the same class a real run uses
(``LlamaForCausalLM``, ``CLIPModel``, ``SiglipModel``, ``AutoencoderKL``,
``UNet2DConditionModel``), saves it with ``save_pretrained`` and returns the folder, so the
code under test loads it through exactly the ``from_pretrained`` path real weights take.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("please generate an image based on the following caption a photo of red green blue "
         "yellow purple orange pink brown black white circle square triangle star cross "
         "two three four left right above below the and with is on background").split()


def tiny_tokenizer(path: str | Path, words=WORDS, chat_template: bool = True):
    """A word-level fast tokenizer with a Llama-3 style chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(words) | set(":,.;!?")))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    if chat_template:
        fast.chat_template = ("{{ bos_token }}{% for m in messages %}user : {{ m['content'] }} "
                              "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}")
    fast.save_pretrained(path)
    return fast


def tiny_llama(path: str | Path, hidden: int = 32, layers: int = 2, chat_template: bool = True) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = tiny_tokenizer(path, chat_template=chat_template)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def tiny_clip(path: str | Path, image_size: int = 32, patch: int = 4, hidden: int = 32,
              kind: str = "clip") -> Path:
    """A CLIP (or SigLIP) model with its image processor config."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    path = Path(path)
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, image_size=image_size, patch_size=patch)
    text = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                num_attention_heads=4, vocab_size=64, max_position_embeddings=32,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=16))
        proc = CLIPImageProcessor(size={"shortest_edge": image_size},
                                  crop_size={"height": image_size, "width": image_size})
    elif kind == "siglip":
        model = SiglipModel(SiglipConfig(vision_config=vision, text_config=text))
        proc = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    else:
        raise ValueError(f"kind must be clip or siglip, got {kind!r}")
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


def tiny_vae(path: str | Path, latent_channels: int = 4, blocks: int = 2,
             shift_factor: float | None = None) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                        down_block_types=("DownEncoderBlock2D",) * blocks,
                        up_block_types=("UpDecoderBlock2D",) * blocks,
                        block_out_channels=(8,) * blocks, layers_per_block=1,
                        norm_num_groups=4, sample_size=32, scaling_factor=0.5,
                        shift_factor=shift_factor)
    vae.save_pretrained(path)
    return Path(path)


def tiny_clip_decoder(path: str | Path, cross_attention_dim: int, text_time: bool = True,
                      with_vae: bool = True, sample_size: int = 32, spatial: bool = False) -> Path:
    """A CLIP-tokens -> pixels diffusion decoder in the Emu2 / BLIP3-o folder layout
    (``spatial``: the feature grid also concatenated to the UNet input)."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    path = Path(path)
    latent = 4 if with_vae else 3
    if with_vae:
        tiny_vae(path / "vae", latent_channels=4, blocks=2)
        sample_size //= 2
    extra = {}
    if text_time:
        time_dim = 4
        extra = dict(addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                     projection_class_embeddings_input_dim=cross_attention_dim + 6 * time_dim)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=latent + (cross_attention_dim if spatial else 0),
        out_channels=latent,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(16, 32),
        layers_per_block=1, cross_attention_dim=cross_attention_dim, attention_head_dim=4,
        norm_num_groups=8, **extra)
    unet.save_pretrained(path / "unet")
    EulerDiscreteScheduler(num_train_timesteps=1000).save_pretrained(path / "scheduler")
    return path
