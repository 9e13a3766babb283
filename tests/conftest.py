"""Test session set-up: offline, caches in a temp dir, small thread count."""

from __future__ import annotations

import os
import tempfile

_CACHE = tempfile.mkdtemp(prefix="ablate-test-cache-")
for _var in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR"):
    os.environ[_var] = os.path.join(_CACHE, _var.lower())
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---- tiny pretrained parts, built once per session and loaded through from_pretrained ----

from pathlib import Path  # noqa: E402

import yaml  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from ablate import testing

    root = tmp_path_factory.mktemp("tiny-models")
    paths = {
        "llama": testing.tiny_llama(root / "llama"),
        "llama_plain": testing.tiny_llama(root / "llama-plain", chat_template=False),
        "clip": testing.tiny_clip(root / "clip", image_size=32, patch=4, hidden=32),
        "siglip": testing.tiny_clip(root / "siglip", image_size=32, patch=4, hidden=32, kind="siglip"),
        "vae": testing.tiny_vae(root / "vae"),
    }
    paths["clip_decoder"] = testing.tiny_clip_decoder(root / "clip-decoder", cross_attention_dim=32)
    return paths


def write_shards(folder: Path, n_shards: int = 2, per_shard: int = 12, bad: bool = True) -> str:
    """Tiny webdataset shards of random images; with ``bad``, one corrupt image and one
    empty caption in the first shard."""
    import io

    import numpy as np
    import webdataset as wds
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["red", "green", "blue", "circle", "square", "star", "left", "right"]
    for s in range(n_shards):
        with wds.TarWriter(str(folder / f"shard-{s:06d}.tar")) as sink:
            for i in range(per_shard):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "PNG")
                image, caption = buf.getvalue(), "a photo of a " + " ".join(rng.choice(words, 3))
                if bad and s == 0 and i == 1:
                    image = b"not an image"
                if bad and s == 0 and i == 2:
                    caption = "   "
                sink.write({"__key__": f"{s:03d}{i:04d}", "png": image, "txt": caption})
    return str(folder / f"shard-{{000000..{n_shards - 1:06d}}}.tar")


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> str:
    return write_shards(tmp_path_factory.mktemp("shards"))


def tiny_run_spec(models: dict, shards: str, results: Path, encoder: str = "clip",
                  objective: str = "flow_matching", **train) -> dict:
    """A complete run spec on the tiny models: a few CPU steps."""
    enc = ({"name": "clip", "model": str(models["clip"]), "grid": 4,
            "decoder": str(models["clip_decoder"]), "decoder_steps": 2}
           if encoder == "clip" else {"name": "vae", "model": str(models["vae"]), "resolution": 16})
    obj = {"name": objective}
    if objective == "flow_matching":
        obj.update(dim=32, depth=2, heads=4, kv_heads=2, sample_steps=2)
    return {
        "name": f"{encoder}-{objective}", "study": "test", "seed": 0, "results_dir": str(results),
        "backbone": {"model": str(models["llama"]), "num_queries": None if objective == "mse" else 8},
        "encoder": enc, "objective": obj,
        "data": {"train": {"name": "webdataset", "urls": shards}, "batch_size": 4, "num_workers": 0},
        "train": {"max_steps": 3, "lr": 1e-3, "warmup_steps": 1, "log_every_n_steps": 1,
                  "checkpoint_every_n_steps": 2, "progress_bar": False, "accelerator": "cpu",
                  "devices": 1, **train},
    }


def write_spec(spec: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
