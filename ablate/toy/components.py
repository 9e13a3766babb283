"""The toy world's pretrained components, trained by the project's own code on toy data.

Each trainer builds the *real* class a full-size run uses (``PreTrainedTokenizerFast``,
``LlamaForCausalLM``, ``CLIPModel`` + ``CLIPImageProcessor``, ``AutoencoderKL``), trains it
briefly on the procedural scenes of :mod:`ablate.toy.scenes` and saves it with
``save_pretrained``, so the harness loads it through exactly the config path real weights
take. The CLIP-tokens -> pixels decoder is trained by the generic
:mod:`ablate.decoder_training`. :mod:`ablate.toy.build` runs them all.

Every trainer returns a small ``info`` dict (steps, data sizes, final loss, timings) that
goes into ``build_info.json``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ablate.config import PROMPT_TEMPLATE
from ablate.nets import diffusers_load_kwargs

SPECIALS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
# A Llama-3-like chat template (role headers, end-of-turn marker, generation prompt).
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
                 "</s>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)  # the toy CLIP's preprocessing: pixels in [-1, 1]


class Timer:
    """Wall and process-CPU seconds of a block (CPU / threads ~ wall on unshared cores)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def info(self) -> dict:
        return {"wall_s": round(self.wall, 1), "cpu_s": round(self.cpu, 1)}


def lr_lambda(steps: int, warmup: int):
    """Linear warm-up, then cosine to 10 % of the peak."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))
    return f


def _optimizer(params, lr: float, steps: int, warmup: int, weight_decay: float = 0.0):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, warmup))


def _update(loss: torch.Tensor, params, opt, sched, max_norm: float = 1.0) -> None:
    """One optimiser step of the toy trainers: backward, clip, step, schedule, clear."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step(), sched.step(), opt.zero_grad(set_to_none=True)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _tail_mean(losses: list[float], frac: float = 0.1) -> float:
    k = max(1, int(len(losses) * frac))
    return round(float(np.mean(losses[-k:])), 5)


# ----------------------------------------------------------------------------- data


def toy_pairs(n: int, seed: int = 0, split: str = "train", short_fraction: float = 0.2,
              size: int = 64, world: str | None = None,
              n_objects: int | None = None) -> tuple[torch.Tensor, list[str], list[dict]]:
    """``n`` rendered samples of ``world`` (default: ``scenes.DEFAULT_WORLD``; ``n_objects``
    objects each, default the world's 1-4): uint8 images ``[n, 3, size, size]``, captions, scene dicts."""
    from ablate.toy.scenes import DEFAULT_WORLD, make_dataset

    images, captions, scenes = [], [], []
    for image, text, scene in make_dataset(n, seed, split, size, short_fraction, world=world or DEFAULT_WORLD,
                                              n_objects=n_objects):
        images.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        captions.append(text)
        scenes.append(scene)
    return torch.stack(images), captions, scenes


def to_unit(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float pixels in [-1, 1]."""
    return images_u8.float() / 127.5 - 1


def to_pil(pixels: torch.Tensor):
    """One ``[3, H, W]`` image in [-1, 1] -> PIL (``ablate.eval.sampling.to_pil`` of a batch of one)."""
    from ablate.eval.sampling import to_pil as batch_to_pil

    return batch_to_pil(pixels.detach().float()[None])[0]


# ----------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], out: str | Path, vocab_size: int = 1024):
    """A byte-level BPE (any text tokenizes) with BOS post-processing and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=512)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def chat_prompt(tokenizer, caption: str) -> str:
    """The text the backbone feeds its LM for ``caption`` (prompt template + chat template)."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT_TEMPLATE.format(caption=caption)}],
        tokenize=False, add_generation_prompt=True)


# ----------------------------------------------------------------------------- causal LM


def lm_texts(tokenizer, captions: list[str], responses: list[str] | None = None) -> list[str]:
    """The LM's stage-1 texts: odd captions plain, even ones in the generation prompt's chat
    wrapping, followed by their response when ``responses`` are given."""
    if responses is not None and len(responses) != len(captions):
        raise ValueError(f"{len(responses)} responses for {len(captions)} captions; give one per caption")
    answers = responses or [""] * len(captions)
    return [(tokenizer.bos_token + c if i % 2 else chat_prompt(tokenizer, c) + a) + tokenizer.eos_token
            for i, (c, a) in enumerate(zip(captions, answers))]


def train_lm(tokenizer, captions: list[str], out: str | Path, steps: int, batch_size: int = 32,
             lr: float = 3e-3, hidden: int = 128, layers: int = 4, max_len: int = 192,
             responses: list[str] | None = None, log=print) -> dict:
    """Stage 1 (understanding): next-token prediction on toy captions, half of them plain
    (``<s> caption </s>``), half wrapped in the generation prompt and chat template the
    backbone will later use, so the frozen LM has seen exactly that format.

    ``responses`` (one per caption, e.g. :func:`ablate.toy.scenes.restatement`) are the
    assistant's answers to the wrapped half. Without them the LM only learns that the
    prompt ends there, and its states after the prompt hold the caption's wording (short or
    detailed) rather than its content; with them it must carry the content past the prompt,
    as a real instruct LM does (what the heads can read of it: the ``lm`` mode of
    ``research/toy_diagnostics/conditioning_check.py``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = lm_texts(tokenizer, captions, responses)
    ids = [torch.tensor(x[:max_len]) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(cfg)
    opt, sched = _optimizer(model.parameters(), lr, steps, max(1, steps // 20), weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    losses = []
    model.train()
    with Timer() as t:
        for step in range(steps):
            rows = [ids[i] for i in torch.randint(len(ids), (batch_size,), generator=gen).tolist()]
            batch = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True,
                                                    padding_value=tokenizer.pad_token_id)
            mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
            loss = model(input_ids=batch, attention_mask=mask, labels=batch.masked_fill(mask == 0, -100)).loss
            _update(loss, model.parameters(), opt, sched)
            losses.append(loss.item())
            if step % 50 == 0 or step == steps - 1:
                log(f"  lm step {step}/{steps} loss {loss.item():.3f}")
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"steps": steps, "batch_size": batch_size, "texts": len(texts), "lr": lr,
            "params": n_params(model), "final_loss": _tail_mean(losses), **t.info()}


def _words_in_place(said: str, answer: str) -> float:
    def words(text: str) -> list[str]:
        return text.replace(";", " ;").replace(",", " ,").split()
    ref = words(answer)
    return sum(x == y for x, y in zip(words(said), ref)) / max(1, len(ref))


@torch.no_grad()
def lm_restatement(model, tokenizer, captions: list[str], answers: list[str], batch_size: int = 32,
                   max_new_tokens: int = 96) -> dict:
    """How well the LM answers the generation prompt: greedy answers to held-out ``captions``
    against their reference ``answers`` (:func:`ablate.toy.scenes.restatement`). ``exact``: the
    whole answer right; ``first_group``: its object list (the text before the first ";");
    ``words``: the share of the answer's words said in their place (partial credit)."""
    if len(answers) != len(captions):
        raise ValueError(f"{len(answers)} reference answers for {len(captions)} captions; give one per caption")
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    said = []
    try:
        for i in range(0, len(captions), batch_size):
            enc = tokenizer([chat_prompt(tokenizer, c) for c in captions[i:i + batch_size]],
                            return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            said += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    said = [s.strip() for s in said]
    n = max(1, len(answers))
    return {"captions": len(answers),
            "exact": round(sum(s == a for s, a in zip(said, answers)) / n, 4),
            "first_group": round(sum(s.split(";")[0] == a.split(";")[0] for s, a in zip(said, answers)) / n, 4),
            "words": round(sum(_words_in_place(s, a) for s, a in zip(said, answers)) / n, 4),
            "example": {"caption": captions[0], "answer": answers[0], "said": said[0]} if said else None}


# ----------------------------------------------------------------------------- CLIP


def clip_text_ids(tokenizer, captions: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``<s> caption </s>``, truncated to ``max_len`` with the EOS kept (CLIP pools there)."""
    rows = []
    for x in tokenizer(captions, add_special_tokens=True)["input_ids"]:
        rows.append(torch.tensor(x[: max_len - 1] + [tokenizer.eos_token_id]))
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tokenizer.pad_token_id)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
    return ids, mask


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """``[side*side, dim]`` 2D sine-cosine position codes (half the channels per axis)."""
    quarter = dim // 4
    freq = 1.0 / (100 ** (torch.arange(quarter) / quarter))
    pos = torch.arange(side, dtype=torch.float32)
    ang_y = ang_x = pos[:, None] * freq[None]  # [side, quarter]
    ys = torch.cat([ang_y.sin(), ang_y.cos()], 1)[:, None, :].expand(side, side, 2 * quarter)
    xs = torch.cat([ang_x.sin(), ang_x.cos()], 1)[None, :, :].expand(side, side, 2 * quarter)
    code = torch.cat([ys, xs], -1).reshape(side * side, 4 * quarter)
    return F.pad(code, (0, dim - 4 * quarter))


@torch.no_grad()
def _strong_positions(embeddings, side: int, scale: float) -> None:
    weight = embeddings.position_embedding.weight  # [1 + side*side, dim]: CLS first
    patch_rms = embeddings.patch_embedding.weight.std() * math.sqrt(embeddings.patch_embedding.weight[0].numel())
    code = sincos_2d(side, weight.shape[1])
    weight[1:] = code / code.pow(2).mean().sqrt() * patch_rms * scale
    weight[0] = 0


def _clip_pixels(images_u8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (images_u8.float() / 255 - mean) / std


def train_clip(tokenizer, images: torch.Tensor, captions: list[str], out: str | Path, steps: int,
               batch_size: int = 64, lr: float = 1e-3, hidden: int = 128, vision_layers: int = 4,
               text_layers: int = 3, patch: int = 8, max_text_len: int = 77, pos_scale: float = 1.0,
               semantics: torch.Tensor | None = None, dense_weight: float = 1.0, log=print) -> dict:
    """A CLIP trained contrastively on (render, caption) pairs: 64 px, patch 8 -> 8x8 tokens.

    Two departures from plain CLIP training, both to give a 3-minute toy CLIP the dense patch
    features a web-scale CLIP has (the generation target is its patch grid, and the CLIP
    decoder must put shapes and colours back in place from it):

    - the vision position embeddings start as a 2D sin-cos pattern of ``pos_scale`` times
      the patch embeddings' typical size (not HF's 0.02-std noise);
    - ``dense_weight`` x an auxiliary loss: a linear probe on the last block's patch tokens
      (the features ``encoder.clip`` takes) predicts each patch's grid position and its
      content: ``semantics`` ``[N, patches, C]`` when given (what is on the patch, e.g.
      :func:`ablate.toy.scenes.patch_semantics`: semantic features, as a web-scale CLIP's
      are), else its pixels. The probe is thrown away; only the ``CLIPModel`` is saved.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    size = images.shape[-1]
    cfg = CLIPConfig(
        vision_config=dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=vision_layers,
                           num_attention_heads=4, image_size=size, patch_size=patch),
        text_config=dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=text_layers,
                         num_attention_heads=4, vocab_size=len(tokenizer), max_position_embeddings=max_text_len,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id),
        projection_dim=hidden)
    model = CLIPModel(cfg)
    _strong_positions(model.vision_model.embeddings, size // patch, pos_scale)
    ids, mask = clip_text_ids(tokenizer, captions, max_text_len)
    side = size // patch
    if semantics is not None and tuple(semantics.shape[:2]) != (len(images), side * side):
        raise ValueError(f"semantics must be [images, patches, channels] = [{len(images)}, {side * side}, C], "
                         f"got {list(semantics.shape)}")
    grid_pos = sincos_2d(side, 16)  # [side*side, 16] position targets
    content = semantics.shape[-1] if semantics is not None else 3 * patch * patch
    probe = torch.nn.Linear(hidden, content + 16)
    params = list(model.parameters()) + list(probe.parameters())
    opt, sched = _optimizer(params, lr, steps, max(1, steps // 20), weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    losses, dense_losses = [], []
    model.train()
    with Timer() as t:
        for step in range(steps):
            idx = torch.randperm(len(images), generator=gen)[:batch_size]
            length = int(mask[idx].sum(1).max())
            pixels = _clip_pixels(images[idx])
            res = model(input_ids=ids[idx, :length], attention_mask=mask[idx, :length],
                        pixel_values=pixels, return_loss=True)
            loss = res.loss
            if dense_weight:
                tokens = res.vision_model_output.last_hidden_state[:, 1:]  # [B, side*side, hidden]
                if semantics is not None:
                    target = semantics[idx]
                else:
                    target = F.unfold(pixels, patch, stride=patch).transpose(1, 2)  # [B, side*side, 3*p*p]
                target = torch.cat([target, grid_pos.expand(len(idx), -1, -1)], -1)
                dense = F.mse_loss(probe(tokens), target)
                dense_losses.append(dense.item())
                loss = loss + dense_weight * dense
            _update(loss, params, opt, sched)
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(res.loss.item())
            if step % 50 == 0 or step == steps - 1:
                log(f"  clip step {step}/{steps} contrastive {res.loss.item():.3f}"
                    + (f" dense {dense_losses[-1]:.3f}" if dense_losses else ""))
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD),
                       do_convert_rgb=True).save_pretrained(out)
    return {"steps": steps, "batch_size": batch_size, "pairs": len(images), "lr": lr,
            "params": n_params(model), "image_size": size, "patch_size": patch,
            "position_init": f"2D sin-cos x {pos_scale}", "dense_weight": dense_weight,
            "dense_target": "patch semantics" if semantics is not None else "patch pixels",
            "final_loss": _tail_mean(losses),
            "final_dense_loss": _tail_mean(dense_losses) if dense_losses else None, **t.info()}


def _pooled(out) -> torch.Tensor:
    """Projected features from ``get_*_features`` (a tensor before transformers 5, an output
    object with them in ``pooler_output`` since)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def clip_retrieval(path: str | Path, images: torch.Tensor, captions: list[str]) -> dict:
    """Top-1 / top-5 retrieval among ``len(images)`` held-out pairs, both directions."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids, mask = clip_text_ids(tokenizer, captions, model.config.text_config.max_position_embeddings)
    img = torch.cat([_pooled(model.get_image_features(pixel_values=_clip_pixels(images[i:i + 128])))
                     for i in range(0, len(images), 128)])
    txt = _pooled(model.get_text_features(input_ids=ids, attention_mask=mask))
    sim = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    target = torch.arange(len(images))

    def topk(s, k):
        return float((s.topk(k, dim=1).indices == target[:, None]).any(1).float().mean())

    return {"pairs": len(images), "chance_top1": round(1 / len(images), 4),
            "image_to_text_top1": round(topk(sim, 1), 4), "image_to_text_top5": round(topk(sim, 5), 4),
            "text_to_image_top1": round(topk(sim.T, 1), 4), "text_to_image_top5": round(topk(sim.T, 5), 4)}


# ----------------------------------------------------------------------------- VAE


def train_vae(images: torch.Tensor, out: str | Path, steps: int, batch_size: int = 32, lr: float = 3e-3,
              channels: tuple[int, ...] = (8, 16, 32), latent_channels: int = 4, kl_weight: float = 1e-3,
              crop: int = 32, full_fraction: float = 0.1, log=print) -> dict:
    """An ``AutoencoderKL`` (64 px -> 16x16x4 with three levels) trained with L1 + L2
    reconstruction and a small KL. The net is fully convolutional (no mid-block attention),
    so most steps see cheap random ``crop`` x ``crop`` crops; the last ``full_fraction`` see
    whole images. ``scaling_factor`` = 1 / std of the posterior means (the SD recipe)."""
    from diffusers import AutoencoderKL

    levels = len(channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                        down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(channels),
                        layers_per_block=1, norm_num_groups=2, sample_size=images.shape[-1],
                        mid_block_add_attention=False)
    vae = vae.to(memory_format=torch.channels_last)
    opt, sched = _optimizer(vae.parameters(), lr, steps, max(1, steps // 50))
    gen = torch.Generator().manual_seed(0)
    losses, full_from = [], int(steps * (1 - full_fraction))
    vae.train()
    with Timer() as t:
        for step in range(steps):
            x = to_unit(images[torch.randint(len(images), (batch_size,), generator=gen)])
            if step < full_from and crop < x.shape[-1]:
                i, j = torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=gen).tolist()
                x = x[:, :, i:i + crop, j:j + crop]
            x = x.contiguous(memory_format=torch.channels_last)
            post = vae.encode(x).latent_dist
            recon = vae.decode(post.sample(generator=gen)).sample
            rec = (recon - x).abs().mean() + (recon - x).pow(2).mean()
            kl = post.kl().mean() / post.mean[0].numel()
            loss = rec + kl_weight * kl
            _update(loss, vae.parameters(), opt, sched)
            losses.append(rec.item())
            if step % 100 == 0 or step == steps - 1:
                log(f"  vae step {step}/{steps} rec {rec.item():.4f} kl {kl.item():.3f}")
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(to_unit(images[i:i + 256])).latent_dist.mode()
                       for i in range(0, min(len(images), 1024), 256)])
    scaling = float(1 / z.std())
    vae.register_to_config(scaling_factor=round(scaling, 5))
    vae = vae.to(memory_format=torch.contiguous_format)
    vae.save_pretrained(out)
    return {"steps": steps, "batch_size": batch_size, "crop": crop, "full_res_steps": steps - full_from,
            "images": len(images), "lr": lr, "kl_weight": kl_weight, "params": n_params(vae),
            "latent_shape": [latent_channels] + [images.shape[-1] // 2 ** (levels - 1)] * 2,
            "scaling_factor": round(scaling, 5), "latent_mean": round(float(z.mean()), 4),
            "final_rec_loss": _tail_mean(losses), **t.info()}


@torch.no_grad()
def vae_reconstruction(path: str | Path, images: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Reconstruction error of held-out renders (posterior mean), and the reconstructions."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(path, dtype=torch.float32, **diffusers_load_kwargs()).eval()
    x = to_unit(images)
    recon = torch.cat([vae.decode(vae.encode(x[i:i + 128]).latent_dist.mode()).sample.clamp(-1, 1)
                       for i in range(0, len(x), 128)])
    mse = float((recon - x).pow(2).mean())
    return {"images": len(x), "mse": round(mse, 5), "mae_0_255": round(float((recon - x).abs().mean()) * 127.5, 2),
            "psnr_db": round(10 * math.log10(4 / mse), 2)}, recon


# ----------------------------------------------------------------------------- judging


def scene_match(image, scene: dict, detector=None, threshold: float = 0.3) -> dict:
    """Does the toy detector find exactly the scene's shapes (and colours) in ``image``?"""
    from ablate.toy.judges import ToyDetector

    found = (detector or ToyDetector()).detect_one(image)
    got = sorted((shape, d["color"]) for shape, ds in found.items() for d in ds if d["score"] > threshold)
    want = sorted((o["shape"], o["color"]) for o in scene["objects"])
    return {"shapes": sorted(s for s, _ in got) == sorted(s for s, _ in want),
            "colors": sorted(c for _, c in got) == sorted(c for _, c in want),
            "exact": got == want}


def judge_images(images: list, scenes: list[dict]) -> dict:
    """Fractions of images whose detected shapes / colours / (shape, colour) pairs match."""
    from ablate.toy.judges import ToyDetector

    det = ToyDetector()
    rows = [scene_match(im, sc, det) for im, sc in zip(images, scenes)]
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("shapes", "colors", "exact")} | {"images": len(rows)}
