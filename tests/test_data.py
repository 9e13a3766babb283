"""Readers, preprocessing, skipping bad records, resumable order."""

import io
import itertools

import numpy as np
import pytest
import torch
from conftest import write_shards
from PIL import Image

from ablate.data.stream import ImageCaptionStream, collate, make_loader
from ablate.registry import get_registry

build = get_registry("dataset").build


def png(h=20, w=30, seed=0):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def take(stream, n_batches, workers=0):
    loader = make_loader(stream, workers)
    return list(itertools.islice(iter(loader), n_batches))


def test_webdataset_reads_and_counts_bad_records(tmp_path):
    urls = write_shards(tmp_path, n_shards=2, per_shard=6)
    src = build({"name": "webdataset", "urls": urls})
    assert len(src.units()) == 2
    stream = ImageCaptionStream(src, resolution=16, batch_size=6, shuffle_buffer=1)
    batches = take(stream, 2)
    assert batches[0]["pixels"].shape == (4, 3, 16, 16)
    assert batches[0]["skipped"] == {"corrupt image (UnidentifiedImageError)": 1, "empty caption": 1}
    assert batches[1]["pixels"].shape[0] == 6
    assert batches[0]["pixels"].min() >= -1 and batches[0]["pixels"].max() <= 1


def test_truncated_shard_is_skipped_not_fatal(tmp_path):
    urls = write_shards(tmp_path, n_shards=2, per_shard=6, bad=False)
    first = tmp_path / "shard-000000.tar"
    first.write_bytes(first.read_bytes()[: 3000])  # cut mid-file
    src = build({"name": "webdataset", "urls": urls})
    records = [r for unit in src.units() for r in src.read(unit)]
    errors = [r for r in records if "error" in r]
    good = [r for r in records if "error" not in r]
    assert errors and len(good) >= 6  # the intact shard is read in full


def test_missing_shards_error_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.train.urls: 2 shard"):
        build({"name": "webdataset", "urls": str(tmp_path / "s-{0..1}.tar")}).units()


def test_folder_and_parquet_readers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        (root / "sub" / f"{i}.png").write_bytes(png(seed=i))
        if i != 2:
            (root / "sub" / f"{i}.txt").write_text(f"caption {i}")
    src = build({"name": "folder", "root": str(root)})
    records = [r for u in src.units() for r in src.read(u)]
    assert [r.get("caption") for r in records[:2]] == ["caption 0", "caption 1"]
    assert records[2]["error"] == "missing caption file"

    table = pa.table({"image": [{"bytes": png(seed=1), "path": "a"}, {"bytes": None, "path": "b"}],
                      "text": ["one", "two"]})
    pq.write_table(table, tmp_path / "d.parquet")
    src = build({"name": "parquet", "path": str(tmp_path / "*.parquet"), "caption_column": "text"})
    records = [r for u in src.units() for r in src.read(u)]
    assert records[0]["caption"] == "one" and records[1]["error"] == "no image bytes"
    with pytest.raises(ValueError, match="no column 'caption'"):
        build({"name": "parquet", "path": str(tmp_path / "d.parquet")}).units()


def test_resize_and_centre_crop():
    from ablate.data.stream import preprocess

    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # the left quarter is cut by the centre crop
    out = preprocess(8)(img)
    assert out.shape == (3, 8, 8)
    assert torch.allclose(out[0][:, 1:], torch.ones(8, 7), atol=0.05)  # col 0: bicubic edge


@pytest.mark.parametrize("workers", [0, 2])
def test_skipping_batches_resumes_the_same_order(tmp_path, workers):
    urls = write_shards(tmp_path, n_shards=4, per_shard=5, bad=False)
    src = build({"name": "webdataset", "urls": urls})
    full = take(ImageCaptionStream(src, 16, batch_size=3, seed=3, shuffle_buffer=4), 7, workers)
    resumed = take(ImageCaptionStream(src, 16, batch_size=3, seed=3, shuffle_buffer=4,
                                      skip_batches=3), 4, workers)
    assert [b["captions"] for b in full[3:]] == [b["captions"] for b in resumed]
    torch.testing.assert_close(full[-1]["pixels"], resumed[-1]["pixels"])


def test_collate_all_bad_batch():
    batch = collate([{"error": "empty caption", "key": "a"}])
    assert batch["pixels"] is None and batch["skipped"] == {"empty caption": 1}
