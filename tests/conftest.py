"""Test session set-up: offline, caches in a temp dir, small thread count."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="ablate-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
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


# ---- any study spec -> a CPU smoke study on the tiny models (tests/test_experiments.py) ----

# Forced on every run: a couple of CPU steps, checkpoints and logs every step.
SMOKE_RUN = {"train.max_steps": 2, "train.accelerator": "cpu", "train.devices": 1,
             "train.num_nodes": 1, "train.strategy": "auto", "train.precision": "32",
             "train.gradient_checkpointing": False, "train.compile": False,
             "train.accumulate_grad_batches": 1, "train.log_every_n_steps": 1,
             "train.checkpoint_every_n_steps": 1, "train.progress_bar": False,
             "train.logger": "csv", "data.batch_size": 2, "data.num_workers": 0,
             "backbone.tokenizer": None, "backbone.dtype": "float32",
             "eval.every_n_steps": 2, "eval.at_start": False, "eval.batch_size": 2, "eval.sample_steps": 2,
             "eval.sample_prompts": ["a red circle"]}


def _run_field(key: str) -> bool:
    """Whether dotted ``key`` is a field of the run spec (the schema may grow or shrink)."""
    import dataclasses
    import typing

    from ablate.config import RunConfig

    node = RunConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            return False
        node = typing.get_type_hints(node)[part]
    return True


# Metrics that run on tiny models, shrunk; the others need real judges / reference data.
SMOKE_METRICS = {"diversity": {"num_prompts": 2, "num_seeds": 2}}


def _tiny_encoder(spec, models: dict):
    """The tiny model of the same class; an encoder plugin unknown here is kept as it is."""
    name = spec.get("name") if isinstance(spec, dict) else spec
    if name == "clip":
        kind = "siglip" if "siglip" in str(spec.get("model", "")).lower() else "clip"
        return {"name": "clip", "model": str(models[kind]), "grid": 4,
                "decoder": str(models["clip_decoder"]), "decoder_steps": 2}
    if name == "vae":
        return {"name": "vae", "model": str(models["vae"]), "subfolder": None, "resolution": 16}
    return spec


def _tiny_objective(spec):
    """The plugin's own ``tiny_config`` where it differs from its defaults (the net size and
    sampling steps), over the spec's other arguments."""
    import dataclasses

    from ablate.registry import get_registry

    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    cls = get_registry("objective").get(spec["name"])
    if getattr(cls, "Config", None) is None:
        return spec
    tiny, default = dataclasses.asdict(cls.tiny_config()), dataclasses.asdict(cls.Config())
    spec.update({k: v for k, v in tiny.items() if v != default[k]})
    if "patch_size" in default:  # the tiny target grids are 4x4 / 8x8
        spec["patch_size"] = 1
    return spec


def _fixed_queries(objective) -> bool:
    """Objectives like MSE need one query per target token: num_queries must be derived."""
    from ablate.registry import get_registry

    spec = {"name": objective} if isinstance(objective, str) else objective
    cls = get_registry("objective").get(spec["name"])
    return cls.required_queries(cls.tiny_config(), (4, 4, 4)) is not None


def _tiny_metrics(metrics: list) -> list:
    out = []
    for m in metrics or []:
        m = {"name": m} if isinstance(m, str) else m
        if m["name"] in SMOKE_METRICS:
            keep = {k: v for k, v in m.items() if k in ("name", "label", "distance")}
            out.append({**keep, **SMOKE_METRICS[m["name"]]})
    return out


def _shrink_override(key: str, value, models: dict, shards: str):
    """One dotted override (``key: value``) of a cell, base or grid point, made tiny.
    Returns ``(key, value)`` or None to drop it (size knobs of the real models)."""
    if key in SMOKE_RUN:
        return key, SMOKE_RUN[key]
    if key == "backbone.model":
        return key, str(models["llama"])
    if key == "data.train":
        return key, {"name": "webdataset", "urls": shards}
    if key == "eval.metrics":
        return key, _tiny_metrics(value)
    if key == "encoder":
        return key, _tiny_encoder(value, models)
    if key == "objective":
        return key, _tiny_objective(value)
    if key.startswith(("encoder.", "objective.")) and key.split(".")[1] not in ("cond_dropout",):
        return None  # sizes / paths of the real encoder or head
    if key in ("backbone", "data", "train", "eval") and isinstance(value, dict):
        shrunk = [_shrink_override(f"{key}.{k}", v, models, shards) for k, v in value.items()]
        return key, {k.split(".", 1)[1]: v for k, v in filter(None, shrunk)}
    return key, value


def shrink_study(spec: dict, tiny_models: dict, tiny_shards: str, results_dir) -> dict:
    """Turn any study spec into a CPU smoke study: tiny models of the same classes, tiny
    heads, 2 steps, batch 2, tiny shards, one eval (at step 2) with the metrics that run on
    tiny models, one seed, and sweep parameters that only size the real models dropped."""
    import copy

    from ablate.config import apply_overrides

    spec = copy.deepcopy(spec)
    given = spec.get("base") or {}
    base = dict(filter(None, (_shrink_override(k, v, tiny_models, tiny_shards) for k, v in given.items())))
    forced = [(k, v) for k, v in SMOKE_RUN.items() if _run_field(k)]
    base = apply_overrides(base, forced + [
        ("backbone.model", str(tiny_models["llama"])), ("results_dir", str(results_dir)),
        ("data.train", {"name": "webdataset", "urls": tiny_shards}),
        ("eval.metrics", _tiny_metrics((given.get("eval") or {}).get("metrics")))])
    if "objective" in base and _fixed_queries(base["objective"]):
        base["backbone"]["num_queries"] = None
    spec["base"] = base

    cells = spec.get("cells")
    if isinstance(cells, list):
        cells = {k: v for c in cells for k, v in c.items()}
    if cells:
        spec["cells"] = {}
        for name, overrides in cells.items():
            shrunk = dict(filter(None, (_shrink_override(k, v, tiny_models, tiny_shards)
                                        for k, v in overrides.items())))
            objective = shrunk.get("objective", base.get("objective"))
            if objective is not None and _fixed_queries(objective):
                shrunk["backbone.num_queries"] = None
            spec["cells"][name] = shrunk

    from ablate.study.spec import flatten_axes

    grid = {}
    for key, values in flatten_axes(spec.get("grid") or {}).items():
        if key == "seed":
            grid[key] = values[:1]
            continue
        shrunk = [s for s in (_shrink_override(key, v, tiny_models, tiny_shards) for v in values) if s]
        unique = list({yaml.safe_dump(v): v for _, v in shrunk}.values())
        if unique:
            grid[key] = unique
    spec["grid"] = grid

    sweep = spec.get("sweep")
    if sweep:
        # keep the parameters the shrink leaves alone (lr, num_queries, ...), not the sizes
        sweep["params"] = {k: p for k, p in sweep.get("params", {}).items()
                           if _shrink_override(k, None, tiny_models, tiny_shards) == (k, None)}
        kept = {m.get("label", m["name"]) for m in base["eval"]["metrics"]}
        if not sweep.get("metric", "train/loss").startswith("train/") and \
                sweep["metric"].split("/")[0] not in kept:
            sweep.update(metric="train/loss", direction="minimize")  # its judge was dropped
    return spec


# ---- a cheap eval metric for runs in the tests, named in specs as conftest.FeatureMean ----

from dataclasses import dataclass  # noqa: E402

from ablate.eval.metrics import Metric  # noqa: E402


class FeatureMean(Metric):
    """A cheap eval metric (higher is better): mean of one sampled feature grid."""

    @dataclass
    class Config:
        pass

    def compute(self, generator, out_dir):
        return {"probe/mean": generator.features(["a red circle"], [0]).mean().item()}
