"""Evaluation split across ranks (2 CPU processes, gloo) gives the single-process numbers,
each rank samples, judges and extracts features of only its share of the images, and only
rank 0 writes the run's files."""

import copy
import json
import os
from collections import Counter
from pathlib import Path

import torch
import torch.multiprocessing as mp
from conftest import tiny_run_spec
from test_dpg import ROWS, write_bench
from test_fid import fake_mjhq

from ablate.eval.scorers.fid import PixelFeatures

PROMPTS = ["a photo of a red circle", "a photo of two blue stars", "a green square", "a white star",
           "a photo of a pink cross"]
GENEVAL = [{"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
           {"tag": "counting", "include": [{"class": "dog", "count": 2}], "prompt": "two dogs"},
           {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}]
CALLS = Counter()  # in this process: images judged and featurised, by metric


class CountingDetector:
    """GenEval judge: one dog per image, scored by the red of its top-left pixel."""

    def detect(self, images, metadata):
        CALLS["geneval judge"] += len(images)
        return [{"dog": [{"box": [0, 0, 4, 4], "score": im.getpixel((0, 0))[0] / 255}]} for im in images]


class CountingVQA:
    """DPG judge: "yes" to every question on a crop whose top-left pixel is reddish."""

    def answer(self, images, questions):
        CALLS["dpg judge"] += len(images)
        return [["yes" if im.getpixel((0, 0))[0] > 100 else "no" for _ in qs]
                for im, qs in zip(images, questions)]


class CountingPixels(PixelFeatures):
    """Pixel features that count the images they see in ``CALLS[counter]``."""

    def __init__(self, size: int = 1, counter: str = "features"):
        super().__init__(size)
        self.counter = counter

    def forward(self, x):
        CALLS[self.counter] += x.shape[0]
        return super().forward(x)


def eval_spec(tiny_models, tiny_shards, tmp_path) -> dict:
    """A run whose eval has sample images and every metric: diversity, GenEval, DPG, FID."""
    geneval = tmp_path / "geneval.jsonl"
    geneval.write_text("".join(json.dumps(m) + "\n" for m in GENEVAL))
    (tmp_path / "dpg").mkdir()
    pixels = {"name": "test_split_eval.CountingPixels", "size": 1}
    metrics = [{"name": "diversity", "prompts": PROMPTS[:3], "num_seeds": 3,
                "feature_extractor": {**pixels, "counter": "diversity features"}},
               {"name": "geneval", "prompts": str(geneval), "images_per_prompt": 1,
                "judge": {"name": "test_split_eval.CountingDetector"}},
               {"name": "dpg", "bench_dir": str(write_bench(tmp_path / "dpg", ROWS)),
                "judge": {"name": "test_split_eval.CountingVQA"}},
               {"name": "fid", "data_dir": str(fake_mjhq(tmp_path / "mjhq", per_category=3)),
                "resolution": 16, "resize": "clean", "cache_dir": str(tmp_path / "fid-cache"),
                "feature_extractor": {**pixels, "counter": "fid features"}}]
    spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path, "clip", "flow_matching")
    spec["data"]["cache"] = False  # the eval path only
    spec["eval"] = {"sample_prompts": PROMPTS, "batch_size": 2, "sample_steps": 2, "metrics": metrics}
    return spec


def evaluate(spec: dict, run_dir: Path) -> dict:
    """The run's eval on a freshly built, seeded module, and how many images this process
    decoded, judged and featurised."""
    from ablate.config import parse_run
    from ablate.eval.callback import run_metrics
    from ablate.module import AblationModule

    run = parse_run(spec)
    torch.manual_seed(0)
    module = AblationModule.from_run(run).eval()
    decode = module.encoder.decode
    CALLS.clear()

    def counting_decode(features, **kwargs):
        CALLS["decoded"] += features.shape[0]
        return decode(features, **kwargs)

    module.encoder.decode = counting_decode
    values = run_metrics(module, run, 0, run_dir)
    return {"calls": dict(CALLS), **{k: v for k, v in values.items() if not k.startswith("time/")}}


def _failing_on_rank1(share: list) -> list:
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise ValueError("the judge broke")
    return share


def _worker(rank: int, world: int, spec: dict, run_dir: str, out: str, port: int) -> None:
    import torch.distributed as dist

    from ablate.eval.sampling import split_map

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        values = evaluate(spec, Path(run_dir))
        try:  # a share failing on one rank fails every rank, none waits for it
            split_map(_failing_on_rank1, [1, 2, 3])
        except Exception as exn:  # noqa: BLE001
            values["failure"] = f"{type(exn).__name__}: {exn}"
        Path(out, f"rank{rank}.json").write_text(json.dumps(values))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shares(*sizes: int) -> list[int]:
    """Items of rank 0 and rank 1 when each set of ``sizes`` items is dealt out in turn."""
    return [sum((n + 1) // 2 for n in sizes), sum(n // 2 for n in sizes)]


def test_two_rank_eval_matches_one_and_splits_every_step(tiny_models, tiny_shards, tmp_path):
    spec = eval_spec(tiny_models, tiny_shards, tmp_path)
    single = evaluate(spec, tmp_path / "single")
    assert single["diversity/image"] > 0 and not any("error" in k for k in single)
    assert {"geneval/overall", "dpg/overall", "fid/overall", "fid/food"} <= single.keys()
    calls = single.pop("calls")
    # diversity 3 x 3, GenEval 3 x 1, DPG 2 prompts x 4 crops, FID 9 (and 9 reference images)
    assert calls == {"decoded": 5 + 9 + 3 + 8 + 9, "diversity features": 9, "geneval judge": 3,
                     "dpg judge": 8, "fid features": 9 + 9}

    split_spec = copy.deepcopy(spec)  # its own FID cache: the reference is extracted split too
    split_spec["eval"]["metrics"][-1]["cache_dir"] = str(tmp_path / "fid-cache-split")
    split_dir = tmp_path / "split"
    mp.spawn(_worker, args=(2, split_spec, str(split_dir), str(tmp_path), _free_port()), nprocs=2,
             join=True)
    per_rank = {key: [] for key in calls}
    failures = []
    for rank in (0, 1):
        values = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for key, n in values.pop("calls").items():
            per_rank[key].append(n)
        failures.append(values.pop("failure"))
        assert values.keys() == single.keys()
        for key, value in single.items():
            assert abs(values[key] - value) <= 1e-4 * max(1.0, abs(value)), (rank, key)
    # every batch is dealt out: samples 5, diversity 9, GenEval 3, DPG 8, FID 9
    assert per_rank == {"decoded": shares(5, 9, 3, 8, 9), "diversity features": shares(9),
                        "geneval judge": shares(3), "dpg judge": [4, 4],  # a prompt's 4 crops each
                        "fid features": shares(9, 9)}
    assert failures == ["RankFailed: rank 1: ValueError: the judge broke", "ValueError: the judge broke"]
    # rank 0 wrote exactly what a single process writes; rank 1 nothing of the run's
    written = sorted(p.relative_to(split_dir) for p in split_dir.rglob("*"))
    assert written == sorted(p.relative_to(tmp_path / "single") for p in (tmp_path / "single").rglob("*"))
    assert (split_dir / "samples" / "0000000" / "grid.png").is_file()
    # one reference cache, written once (by rank 0), the same as the single process's
    assert [p.name for p in (tmp_path / "fid-cache-split").iterdir()] == \
        [p.name for p in (tmp_path / "fid-cache").iterdir()]


def test_two_process_ddp_trains_as_one_process_with_the_same_global_batch(tiny_models, tmp_path):
    """One shard and no shuffling: the two ranks deal its records out (even to rank 0, odd
    to rank 1), so each global batch of 2 x 2 is the single process's batch of 4. MSE draws
    no noise, so DDP's averaged gradient is the single process's: the same weights after."""
    from conftest import write_shards

    from ablate.config import parse_run
    from ablate.train import fit

    shards = write_shards(tmp_path / "shards", n_shards=1, per_shard=16, bad=False)
    weights = {}
    for devices in (1, 2):
        spec = tiny_run_spec(tiny_models, shards, tmp_path / f"ddp{devices}", "vae", "mse", max_steps=3)
        spec["data"].update(batch_size=4 // devices, shuffle_buffer=1)
        spec["train"].update(devices=devices, strategy="ddp_spawn" if devices > 1 else "auto")
        run_dir = fit(parse_run(spec))
        weights[devices] = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert weights[1].keys() == weights[2].keys() and "backbone.queries" in weights[1]
    import lightning as L

    from ablate.module import AblationModule

    L.seed_everything(0, verbose=False)  # as fit seeds: the untrained queries differ
    initial = AblationModule.from_run(parse_run(spec)).backbone.queries.detach()
    assert not torch.allclose(initial, weights[1]["backbone.queries"])
    for key, value in weights[1].items():
        torch.testing.assert_close(weights[2][key], value, atol=1e-5, rtol=1e-4)
