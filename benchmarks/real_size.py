"""Step time, memory and MFU of the paper-size cells of ``experiments/blip3o_design.yaml``.

No weights can be downloaded here and none are needed for speed: this builds randomly
initialised models with the shapes of Llama-3.2-1B-Instruct, CLIP ViT-L/14-336 and the
FLUX.1 VAE, saves them with ``save_pretrained`` and points the study's four cells at them
(the same ``from_pretrained`` paths real weights take), keeps BLIP3-o's 1.36 B DiT as the
study file sets it, and times training steps with ``ablate.bench.bench``. Images come from
the toy shards (upsampled by each encoder's preprocessing, so the cost is the real one); the
tokenizer is the word-level test tokenizer, so prompts are a little shorter than Llama's.

    python benchmarks/real_size.py [--cells clip+fm vae+fm] [--batch-size 16] [--steps 10]
                                   [--baseline] [--find-batch] [--set train.compile=true]

``--baseline`` also times the un-optimised step in the same process (``ablate bench
--baseline``); ``--find-batch`` first finds the largest batch that fits and benches at it.

Figures only; nothing here asserts a target. Meant for a GPU (bf16); it runs on CPU too, slowly.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ablate.bench import bench, find_batch
from ablate.config import parse_run
from ablate.study.spec import load_study
from ablate.testing import tiny_tokenizer


def build_models(root: Path, device: str) -> dict[str, Path]:
    from diffusers import AutoencoderKL
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, LlamaConfig, LlamaForCausalLM

    paths = {"lm": root / "llama-3.2-1b-shape", "clip": root / "clip-vit-l14-336-shape",
             "vae": root / "flux-vae-shape"}
    if all((p / "config.json").is_file() for p in paths.values()):
        return paths
    with torch.device(device):
        lm = LlamaForCausalLM(LlamaConfig(
            vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
            rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=2, eos_token_id=3, pad_token_id=0))
        lm.to(torch.bfloat16).save_pretrained(paths["lm"])
        tiny_tokenizer(paths["lm"])
        del lm
        clip = CLIPModel(CLIPConfig(
            text_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                         "num_attention_heads": 12, "vocab_size": 49408},
            vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                           "num_attention_heads": 16, "image_size": 336, "patch_size": 14},
            projection_dim=768))
        clip.save_pretrained(paths["clip"])
        CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(
            paths["clip"])
        del clip
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                            block_out_channels=(128, 256, 512, 512),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                            use_post_quant_conv=False)
        vae.save_pretrained(paths["vae"])
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default="experiments/blip3o_design.yaml")
    p.add_argument("--cells", nargs="+", default=["clip+mse", "clip+fm", "vae+fm", "vae+mse"])
    p.add_argument("--shards", default="data/toy/shards/train/shards-*.tar", help="any webdataset shards")
    p.add_argument("--models", default="/tmp/ablate-real-size", help="where the random-init models go")
    p.add_argument("--batch-size", type=int, default=16, help="per device (the study's: 16)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study or run key, as for `ablate grid`")
    p.add_argument("--baseline", action="store_true", help="also time the un-optimised step")
    p.add_argument("--find-batch", action="store_true", help="bench at the largest batch that fits")
    p.add_argument("--out", help="also write the results here (JSON)")
    args = p.parse_args()

    start = time.perf_counter()
    paths = build_models(Path(args.models), args.device)
    print(f"random-init models ready in {time.perf_counter() - start:.0f}s: {json.dumps({k: str(v) for k, v in paths.items()})}",
          flush=True)
    study = load_study(args.study, args.set)
    results = {}
    for cell in study.cells:
        if cell.cell not in args.cells or cell.seed != study.cells[0].seed:
            continue
        spec = json.loads(json.dumps(cell.spec))  # a private copy
        spec["backbone"]["model"] = str(paths["lm"])
        enc = spec["encoder"]
        enc["model"] = str(paths[enc["name"]])
        enc.pop("decoder", None)  # training needs no decoder
        if enc["name"] == "vae":
            enc["subfolder"] = None
        spec["data"].update(train={"name": "webdataset", "urls": args.shards}, batch_size=args.batch_size,
                            num_workers=4)
        run = parse_run(spec, f"{args.study} [{cell.cell}]")
        try:
            if args.find_batch:
                largest = find_batch(run, args.device, start=args.batch_size)["largest_batch"]
                spec["data"]["batch_size"] = largest
                run = parse_run(spec, f"{args.study} [{cell.cell}]")
            res = bench(run, steps=args.steps, warmup=args.warmup, device=args.device, baseline=args.baseline)
            res.pop("losses", None)
        except torch.OutOfMemoryError as err:  # report it and go on with the next cell
            res = {"error": f"out of memory: {err}".splitlines()[0]}
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        results[cell.cell] = res
        print(f"{cell.cell}: {json.dumps(res)}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
