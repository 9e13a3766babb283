"""Evaluation split across ranks (2 CPU processes, gloo) gives the single-process numbers,
and only rank 0 writes the run's files."""

import json
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp
from conftest import tiny_run_spec

PROMPTS = ["a photo of a red circle", "a photo of two blue stars", "a green square", "a white star",
           "a photo of a pink cross"]
METRICS = [{"name": "diversity", "prompts": PROMPTS[:3], "num_seeds": 3}]


def evaluate(spec: dict, run_dir: Path) -> dict:
    """The run's eval (sample images + diversity) on a freshly built, seeded module, and
    how many images this process decoded."""
    from ablate.config import parse_run
    from ablate.eval.callback import run_metrics
    from ablate.module import AblationModule

    run = parse_run(spec)
    torch.manual_seed(0)
    module = AblationModule.from_run(run).eval()
    decode, decoded = module.encoder.decode, []

    def counting_decode(features, **kwargs):
        decoded.append(features.shape[0])
        return decode(features, **kwargs)

    module.encoder.decode = counting_decode
    values = run_metrics(module, run, 0, run_dir)
    return {"decoded": sum(decoded), **{k: v for k, v in values.items() if not k.startswith("time/")}}


def _worker(rank: int, world: int, spec: dict, run_dir: str, out: str, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        values = evaluate(spec, Path(run_dir))
        Path(out, f"rank{rank}.json").write_text(json.dumps(values))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_eval_matches_one_and_only_rank0_writes(tiny_models, tiny_shards, tmp_path):
    spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path, "clip", "flow_matching")
    spec["data"]["cache"] = False  # the eval path only
    spec["eval"] = {"sample_prompts": PROMPTS, "batch_size": 2, "sample_steps": 2, "metrics": METRICS}
    single = evaluate(spec, tmp_path / "single")
    assert single["diversity/image"] > 0 and not any("error" in k for k in single)
    total = single.pop("decoded")
    assert total == len(PROMPTS) + 3 * 3  # sample images + diversity's prompts x seeds

    split_dir = tmp_path / "split"
    mp.spawn(_worker, args=(2, spec, str(split_dir), str(tmp_path), _free_port()), nprocs=2, join=True)
    decoded = []
    for rank in (0, 1):
        values = json.loads((tmp_path / f"rank{rank}.json").read_text())
        decoded.append(values.pop("decoded"))
        assert values.keys() == single.keys()
        for key, value in single.items():
            assert abs(values[key] - value) <= 1e-4 * max(1.0, abs(value)), (rank, key)
    assert decoded == [3 + 5, 2 + 4]  # every other image of each set: 5 samples, 9 for diversity
    # rank 0 wrote exactly what a single process writes; rank 1 nothing of the run's
    written = sorted(p.relative_to(split_dir) for p in split_dir.rglob("*"))
    assert written == sorted(p.relative_to(tmp_path / "single") for p in (tmp_path / "single").rglob("*"))
    assert (split_dir / "samples" / "0000000" / "grid.png").is_file()


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
