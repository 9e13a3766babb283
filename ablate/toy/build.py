"""Rebuild the toy world's pretrained components from scratch: ``ablate toy build``.

    <assets>/tokenizer/      byte-level BPE + chat template (PreTrainedTokenizerFast)
    <assets>/lm/             LlamaForCausalLM, next-token trained on toy captions (+ tokenizer)
    <assets>/clip/           CLIPModel (64 px, patch 8 -> 8x8 tokens) + CLIPImageProcessor (+ tokenizer)
    <assets>/vae/            AutoencoderKL, 64 px -> 4x16x16 latents, scaling_factor from the data
    <assets>/clip_decoder/   unet/ + scheduler/ + vae/: toy CLIP tokens -> pixels
    <assets>/build_info.json how each was built (steps, data, losses, times, versions) + quality
    <assets>/README.md, preview.png (held-out originals / VAE / CLIP-decoder reconstructions)

Everything is deterministic given ``seed`` (up to floating-point thread effects). ``scale``
shrinks the data and step counts (not the model sizes): 1.0 is the shipped build (about
10-15 minutes on 2 CPU cores), 0.01 a smoke test of a few seconds per asset.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ablate.toy.scenes import DEFAULT_WORLD, Scene, check_world, patch_semantics, restatement

ASSETS = ("tokenizer", "lm", "clip", "vae", "clip_decoder")
# Data sizes and steps at scale 1.0 (scaled, with floors, by ``build``).
BASE = {"images": 6000, "lm_steps": 3000, "clip_steps": 300, "vae_steps": 1000, "decoder_steps": 800,
        "eval_pairs": 256, "eval_decode": 64}
FLOORS = {"images": 64, "lm_steps": 2, "clip_steps": 2, "vae_steps": 4, "decoder_steps": 2,
          "eval_pairs": 8, "eval_decode": 4}
BATCH = {"lm": 32, "clip": 64, "vae": 32, "decoder": 32}
DECODER_NET = {"spatial": True, "channels": [32, 64], "cross_attention": [False, True], "head_dim": 32,
               "norm_groups": 16, "prediction_type": "v_prediction", "scheduler": "EulerDiscreteScheduler",
               "timestep_spacing": "trailing"}
DECODE_STEPS, DECODE_GUIDANCE = 20, 2.0  # what the quality check (and the demo) decode with
GUIDANCE_SWEEP = (1.0, 4.0)  # also judged, on the same scenes
RESTATEMENT_CAPTIONS = 128  # held-out captions the LM answers in the quality check
SHORT_FRACTION = 0.3  # of training captions in the short GenEval-like form
CLIP_TARGETS = ("pixels", "semantics")  # the toy CLIP's dense target (see ``build``)
LM_ANSWERS = ("none", "restatement")  # what follows the generation prompt in the LM's training


def assets_dir() -> Path:
    """The shipped assets folder inside the package (``ablate/toy/assets``)."""
    return Path(__file__).resolve().parent / "assets"


def asset_paths(path: str | Path | None = None) -> dict[str, Path]:
    root = Path(path) if path else assets_dir()
    return {name: root / name for name in ASSETS}


def assets_world(path: str | Path | None = None) -> str:
    """The toy world the assets at ``path`` (default: the shipped ones) were built on, from their
    ``build_info.json`` (assets built before worlds were named: ``free``)."""
    info = (Path(path) if path else assets_dir()) / "build_info.json"
    if not info.is_file():  # only assets from before worlds were named lack a record
        return "free"
    return check_world(json.loads(info.read_text()).get("world", "free"))


def check_assets(path: str | Path | None = None) -> dict[str, Path]:
    """The asset folders, after checking each holds its saved config; a clear error if not."""
    root = Path(path) if path else assets_dir()
    needs = {"tokenizer": "tokenizer_config.json", "lm": "config.json", "clip": "preprocessor_config.json",
             "vae": "config.json", "clip_decoder": "unet/config.json"}
    missing = [f"{name}/{file}" for name, file in needs.items() if not (root / name / file).is_file()]
    missing += [f"{name}/ weights" for name in ("lm", "clip", "vae") if not list((root / name).glob("*.safetensors"))]
    if missing:
        raise FileNotFoundError(
            f"toy assets missing or incomplete in {root} (no {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}): run `ablate toy build"
            f"{'' if root == assets_dir() else f' --out {root}'}` to rebuild them "
            "(about 15 minutes on 2 CPU cores)")
    return asset_paths(root)


def _scaled(scale: float) -> dict[str, int]:
    return {k: max(FLOORS[k], int(round(v * scale))) for k, v in BASE.items()}


def _pil(images_u8: torch.Tensor) -> list:
    from PIL import Image

    return [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images_u8]


def _provenance() -> dict:
    from ablate.provenance import provenance

    record = provenance()
    record.pop("command", None)
    try:
        import tokenizers

        record["packages"]["tokenizers"] = tokenizers.__version__
    except ImportError:
        pass
    return record


def _folder_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 2)


def build(out_dir: str | Path | None = None, scale: float = 1.0, seed: int = 0, log=print,
          threads: int | None = None, clip_target: str = "pixels", lm_answers: str = "restatement",
          world: str = DEFAULT_WORLD) -> dict:
    """Train and save every toy asset into ``out_dir`` (default: :func:`assets_dir`).

    ``clip_target``: what the toy CLIP's patch tokens are trained to tell besides their grid
    position, ``"pixels"`` (the shipped build) or ``"semantics"``
    (:func:`ablate.toy.scenes.patch_semantics`). ``lm_answers``: ``"restatement"`` (the shipped LM
    answers the generation prompt with :func:`ablate.toy.scenes.restatement`, so its states
    after the prompt must hold the caption's content, as an instruct LM's do) or ``"none"``
    (the text ends at the generation prompt: the first toy LM). ``clip_target="semantics"``
    is one of the experiments on what the toy heads lack (``results/reference/README.md``).

    Builds into a sibling temporary folder and swaps it in at the end, so a failed build
    leaves the previous assets intact. Returns the ``build_info.json`` record."""
    from ablate.decoder_training import InMemoryPairs, train_decoder
    from ablate.toy import components as C

    check_world(world)
    for name, value, choices in (("clip_target", clip_target, CLIP_TARGETS), ("lm_answers", lm_answers, LM_ANSWERS)):
        if value not in choices:
            raise ValueError(f"{name}={value!r} is not valid; choose one of {list(choices)}")

    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir) if out_dir else assets_dir()
    work = out.with_name(out.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n = _scaled(scale)
    batch = BATCH if scale >= 0.05 else {k: 8 for k in BATCH}  # smoke builds: small batches too
    info: dict = {"world": world, "seed": seed, "scale": scale, "threads": torch.get_num_threads(), "sizes": n, "batch": batch,
                  "options": {"clip_target": clip_target, "lm_answers": lm_answers},
                  "provenance": _provenance(), "assets": {}, "quality": {}}
    start, cpu0 = time.perf_counter(), time.process_time()

    def seeded(k: int):
        torch.manual_seed(seed * 1000 + k)
        np.random.seed(seed * 1000 + k)

    log(f"toy build -> {out} ({world} world, scale {scale}, seed {seed}, {torch.get_num_threads()} threads)")
    with C.Timer() as t:
        images, captions, scenes = C.toy_pairs(n["images"], seed, "train", SHORT_FRACTION, world=world)
        held_images, held_captions, held_scenes = C.toy_pairs(n["eval_pairs"], seed, "validation", world=world)
    info["data"] = {"train_pairs": len(images), "held_out_pairs": len(held_images), "image_size": 64,
                    "train_short_fraction": SHORT_FRACTION, "split_seed": seed, **t.info()}
    log(f"rendered {len(images)} + {len(held_images)} scenes in {t.wall:.0f}s")

    with C.Timer() as t:
        texts = captions + [C.PROMPT_TEMPLATE.format(caption="")] * 50
        tokenizer = C.train_tokenizer(texts, work / "tokenizer")
    info["assets"]["tokenizer"] = {"kind": "byte-level BPE", "vocab_size": len(tokenizer),
                                   "texts": len(texts), **t.info()}

    seeded(1)
    log("training the causal LM")
    answers = [restatement(scene, text) for scene, text in zip(scenes, captions)] if lm_answers != "none" else None
    info["assets"]["lm"] = C.train_lm(tokenizer, captions, work / "lm", n["lm_steps"], batch["lm"],
                                      responses=answers, log=log)
    seeded(2)
    log("training CLIP")
    semantics = None
    if clip_target == "semantics":
        semantics = torch.from_numpy(np.stack([patch_semantics(Scene.from_dict(x)) for x in scenes]))
    info["assets"]["clip"] = C.train_clip(tokenizer, images, captions, work / "clip", n["clip_steps"],
                                          batch["clip"], semantics=semantics, log=log)
    seeded(3)
    log("training the VAE")
    info["assets"]["vae"] = C.train_vae(images, work / "vae", n["vae_steps"], batch["vae"], log=log)
    seeded(4)
    log("training the CLIP decoder")
    encoder = {"name": "clip", "model": str(work / "clip"), "grid": 8}
    training = {"lr": 2e-3, "warmup_steps": max(1, n["decoder_steps"] // 40), "ema_decay": 0.995,
                "seed": seed, "log_every": 50}
    record = train_decoder(encoder, {"train": InMemoryPairs(_pil(images), captions),
                                     "batch_size": batch["decoder"], "num_workers": 0},
                           work / "clip_decoder", n["decoder_steps"],
                           net={**DECODER_NET, "vae": str(work / "vae")}, training=training, log=log)
    info["assets"]["clip_decoder"] = {k: record[k] for k in ("steps", "images_seen", "unet_params", "final_loss",
                                                              "wall_s", "cpu_s")}
    info["assets"]["clip_decoder"].update(net=DECODER_NET, batch_size=batch["decoder"], lr=training["lr"],
                                          ema_decay=training["ema_decay"])

    log("quality checks on held-out scenes")
    with C.Timer() as t:
        info["quality"] = quality(work, held_images, held_captions, held_scenes, n["eval_decode"], seed,
                                  decode_steps=DECODE_STEPS if scale >= 0.1 else 2)
    info["quality"].update(t.info())
    info["wall_s"] = round(time.perf_counter() - start, 1)
    info["cpu_s"] = round(time.process_time() - cpu0, 1)
    info["sizes_mb"] = {name: _folder_mb(work / name) for name in ASSETS}
    info["sizes_mb"]["total"] = round(sum(info["sizes_mb"].values()), 2)
    (work / "build_info.json").write_text(json.dumps(info, indent=1))
    (work / "README.md").write_text(readme(info))
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    log(f"toy build done in {info['wall_s']:.0f}s ({info['sizes_mb']['total']} MB): {json.dumps(info['quality'])}")
    return info


@torch.no_grad()
def quality(root: Path, images: torch.Tensor, captions: list[str], scenes: list[dict], n_decode: int,
            seed: int = 0, decode_steps: int = DECODE_STEPS, guidance: float = DECODE_GUIDANCE) -> dict:
    """The LM's answers to held-out captions (:func:`ablate.toy.components.lm_restatement`), CLIP
    retrieval, VAE reconstruction and CLIP-decoder reconstruction of held-out scenes, the last
    two judged by the toy detector (do the detected shapes / colours match?).
    Writes ``preview.png``: originals, VAE and CLIP-decoder reconstructions, one row each."""
    from ablate.registry import get_registry
    from ablate.toy import components as C

    q: dict = {}
    with C.Timer() as t:
        q["clip_retrieval"] = C.clip_retrieval(root / "clip", images, captions)
    q["clip_retrieval"].update(t.info())
    with C.Timer() as t:  # does the frozen LM read its captions? (what the study's queries need)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        k = min(len(captions), RESTATEMENT_CAPTIONS)
        q["lm_restatement"] = C.lm_restatement(
            AutoModelForCausalLM.from_pretrained(root / "lm"), AutoTokenizer.from_pretrained(root / "lm"),
            captions[:k], [restatement(s, c) for s, c in zip(scenes[:k], captions[:k])])
    q["lm_restatement"].update(t.info())
    with C.Timer() as t:
        vae_err, recon = C.vae_reconstruction(root / "vae", images)
        q["vae"] = {**vae_err, "judge": C.judge_images([C.to_pil(x) for x in recon], scenes)}
    q["vae"].update(t.info())
    q["judge_on_originals"] = C.judge_images(_pil(images[:n_decode]), scenes[:n_decode])
    with C.Timer() as t:
        enc = get_registry("encoder").build({"name": "clip", "model": str(root / "clip"), "grid": 8,
                                             "decoder": str(root / "clip_decoder"),
                                             "decoder_steps": decode_steps, "decoder_guidance": guidance})
        x = C.to_unit(images[:n_decode])
        feats = [enc.encode(x[i:i + 32]) for i in range(0, len(x), 32)]

        def decode(g: float) -> torch.Tensor:
            gen = torch.Generator().manual_seed(seed)
            return torch.cat([enc.decode(f, generator=gen, guidance=g) for f in feats])

        decoded = decode(guidance)
        q["clip_decoder"] = {"images": len(x), "steps": decode_steps, "guidance": guidance,
                             "mse": round(float((decoded - x).pow(2).mean()), 5),
                             "judge": C.judge_images([C.to_pil(d) for d in decoded], scenes[:n_decode])}
    q["clip_decoder"].update(t.info())
    sweep = {}  # other guidance scales, on the same scenes (for choosing the runs' decoder_guidance)
    for g in GUIDANCE_SWEEP:
        sweep[str(g)] = C.judge_images([C.to_pil(d) for d in decode(g)], scenes[:n_decode])
    q["clip_decoder"]["judge_by_guidance"] = sweep
    k = min(8, len(x))
    rows = [torch.cat(list(r[:k]), dim=2) for r in (x, recon[:k], decoded[:k])]
    C.to_pil(torch.cat(rows, dim=1)).save(root / "preview.png")
    return q


def readme(info: dict) -> str:
    q, a = info["quality"], info["assets"]
    r, lr = q["clip_retrieval"], q["lm_restatement"]
    return f"""# Toy world assets

Small pretrained components of the toy world (`{info.get('world', 'free')}` world), trained by `ablate toy build` (module
`ablate/toy/build.py`) on the procedural scenes of `ablate/toy/scenes.py`, saved with
`save_pretrained` so they load through the same `from_pretrained` path as real weights.
Rebuild from scratch with `ablate toy build [--out DIR] [--scale S]` (this build: {info['wall_s'] / 60:.0f} min on {info['threads']} threads).

| folder | what | use in a run spec |
|---|---|---|
| `tokenizer/` | byte-level BPE ({a['tokenizer']['vocab_size']} tokens), chat template | (inside `lm/` and `clip/` too) |
| `lm/` | `LlamaForCausalLM`, {a['lm']['params'] / 1e6:.2f} M params, next-token trained on captions and on answering the generation prompt with what the caption says | `backbone: {{model: <assets>/lm}}` |
| `clip/` | `CLIPModel` 64 px, patch 8 (8x8 grid, width 128), contrastive | `encoder: {{name: clip, model: <assets>/clip, grid: 8, decoder: <assets>/clip_decoder}}` |
| `vae/` | `AutoencoderKL` 64 px -> 4x16x16, scaling_factor {a['vae']['scaling_factor']} | `encoder: {{name: vae, model: <assets>/vae, subfolder: null, resolution: 64}}` |
| `clip_decoder/` | `UNet2DConditionModel` (text_time; the 8x8 grid cross-attended and, resized, concatenated to its input) + Euler scheduler + `vae/`: CLIP tokens -> pixels | the clip encoder's `decoder:` |

Built with seed {info['seed']}, scale {info['scale']}, {info['threads']} threads in {info['wall_s']:.0f} s
(wall; {info['cpu_s']:.0f} s CPU). Quality on held-out scenes (see `build_info.json`):

- LM, asked the generation prompt for {lr['captions']} held-out captions, answers what they say
  (`ablate.toy.scenes.restatement`) word for word in {lr['exact']:.0%}, {lr['words']:.0%} of the words in place.
- CLIP retrieval among {r['pairs']} pairs: image->text top-1 {r['image_to_text_top1']:.2f}, text->image
  top-1 {r['text_to_image_top1']:.2f} (chance {r['chance_top1']:.3f}).
- VAE reconstruction: MSE {q['vae']['mse']} ([-1, 1] pixels), PSNR {q['vae']['psnr_db']} dB; toy detector
  finds the scene's exact shapes+colours in {q['vae']['judge']['exact']:.0%} of reconstructions
  (originals: {q['judge_on_originals']['exact']:.0%}).
- CLIP decoder ({q['clip_decoder']['steps']} steps, guidance {q['clip_decoder']['guidance']}): shapes match in
  {q['clip_decoder']['judge']['shapes']:.0%}, colours in {q['clip_decoder']['judge']['colors']:.0%},
  both exactly in {q['clip_decoder']['judge']['exact']:.0%} of {q['clip_decoder']['judge']['images']} reconstructions
  (guidance 1 / 4: {q['clip_decoder']['judge_by_guidance'].get('1.0', {}).get('exact', float('nan')):.0%} /
  {q['clip_decoder']['judge_by_guidance'].get('4.0', {}).get('exact', float('nan')):.0%} exact).

`preview.png`: held-out renders (top), VAE reconstructions (middle), CLIP decoder
reconstructions from the toy CLIP's 8x8 features (bottom).

The CLIP is trained contrastively plus, to stand in for the dense patch features of a
web-scale CLIP that a 3-minute toy run cannot learn, a sin-cos position init and an
auxiliary linear probe on its last-block patch tokens (patch pixels + grid position; the
probe is discarded). See `ablate/toy/components.py`.
"""
