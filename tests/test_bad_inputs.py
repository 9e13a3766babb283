"""Bad input, as a new user gives it: each case must stop with a message that names what is
wrong (file, key, value, what is valid), before any model loads. One table, one test per
row; the cases that already passed before issue 16 stay in it so they keep passing."""

from __future__ import annotations

import io
import tarfile

import pytest
import yaml
from conftest import write_spec

from ablate.cli import main
from ablate.config import ConfigError, load_run, parse_run
from ablate.data.stream import ImageCaptionStream, NoReadableSamples
from ablate.registry import get_registry
from ablate.study.spec import load_study

MODELS = {"llama": "/nonexistent/llama", "vae": "/nonexistent/vae"}


def run_spec(tmp, **over) -> dict:
    """A valid run spec whose model paths do not exist: parsing must not load anything."""
    spec = {"name": "r", "study": "s", "results_dir": str(tmp / "results"),
            "backbone": {"model": MODELS["llama"]},
            "encoder": {"name": "vae", "model": MODELS["vae"], "resolution": 16},
            "objective": {"name": "flow_matching", "depth": 2},
            "data": {"train": {"name": "webdataset", "urls": "x.tar"}}}
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            spec.setdefault(section, {})[field] = value
        else:
            spec[section] = value
    return spec


def parse(**over):
    def case(tmp, capsys):
        parse_run(run_spec(tmp, **over), "exp.yaml")
    return case


def cli(*argv, files=None):
    """Run ``ablate ARGV`` (``{tmp}`` filled in) after writing ``files`` {name: bytes|dict}."""
    def case(tmp, capsys):
        for name, content in (files or {}).items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if callable(content):
                content = content(tmp)
            if isinstance(content, dict):
                content = yaml.safe_dump(content).encode()
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        code = main([a.format(tmp=tmp) for a in argv])
        err = capsys.readouterr().err
        assert code == 2, f"exit {code}, stderr: {err}"
        raise ConfigError(err)  # the message under test
    return case


def fit_spec(tmp, **over):
    return write_spec(run_spec(tmp, **over), tmp / "run.yaml")


def stream_of(tmp, shards: dict):
    """Iterate a webdataset stream over the given shard files (name -> bytes)."""
    def case(tmp, capsys):
        for name, data in shards.items():
            (tmp / name).write_bytes(data(tmp) if callable(data) else data)
        source = get_registry("dataset").build({"name": "webdataset", "urls": str(tmp / "*.tar")})
        stream = ImageCaptionStream(source, resolution=16, batch_size=2, shuffle_buffer=4)
        for _ in zip(range(10_000), stream):
            pass
        raise AssertionError("the stream went on without readable samples")
    return case


def tar_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


EMPTY_TAR = tar_of({})
CORRUPT_TAR = tar_of({f"{i:04d}.{ext}": (b"not a png" if ext == "png" else b"a red circle")
                      for i in range(5) for ext in ("png", "txt")})


def study(tmp, text: str):
    def case(tmp_, capsys):
        path = tmp_ / "study.yaml"
        path.write_text(text.format(llama=MODELS["llama"], vae=MODELS["vae"]))
        load_study(path)
    return case


DUP_CELLS = """study: s
base:
  backbone: {{model: {llama}}}
  encoder: {{name: vae, model: {vae}}}
  data: {{train: {{name: webdataset, urls: x.tar}}}}
cells:
  vae+mse: {{objective: {{name: mse}}}}
  vae+mse: {{objective: {{name: flow_matching}}}}
"""
DUP_TOP = "train: {max_steps: 3}\ntrain: {lr: 0.1}\n"
SWEEP_STUDY = {"study": "s", "base": {"backbone": {"model": MODELS["llama"]},
                                      "encoder": {"name": "vae", "model": MODELS["vae"]},
                                      "data": {"train": {"name": "webdataset", "urls": "x.tar"}}},
               "sweep": {"params": {"train.lr": {"low": 1e-4, "high": 1e-2}}}}


def raw(name: str, text: bytes | str):
    def case(tmp, capsys):
        path = tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        load_run(path)
    return case


# (case, action, words the message must contain). Verdict: before issue 16 the cases marked
# "# new" were accepted, crashed later or hung; the others already gave a clear error.
CASES = [
    ("batch_size 0", parse(data__batch_size=0), ["exp.yaml", "data.batch_size", "0", ">= 1"]),  # new
    ("batch_size -1", parse(data__batch_size=-1), ["data.batch_size: -1 is not valid", ">= 1"]),  # new
    ("max_steps -5", parse(train__max_steps=-5), ["train.max_steps: -5 is not valid", ">= 1"]),  # new
    ("max_steps -1 (endless)", parse(train__max_steps=-1), ["train.max_steps: -1", ">= 1"]),  # new
    ("lr negative", parse(train__lr=-0.1), ["train.lr: -0.1 is not valid", "> 0"]),  # new
    ("lr NaN", parse(train__lr=float("nan")), ["train.lr", "finite number", "nan"]),  # new
    ("lr inf", parse(train__lr=float("inf")), ["train.lr", "finite number", "inf"]),  # new
    ("accumulate_grad_batches 0", parse(train__accumulate_grad_batches=0),
     ["train.accumulate_grad_batches: 0 is not valid", ">= 1"]),  # new
    ("objective.depth -2", parse(objective={"name": "flow_matching", "depth": -2}),
     ["exp.yaml", "objective.depth: -2 is not valid", ">= 1"]),  # new
    ("warmup_ratio 1.5", parse(train__warmup_ratio=1.5), ["train.warmup_ratio: 1.5", "<= 1"]),  # new
    ("checkpoint every 0 steps", parse(train__checkpoint_every_n_steps=0),
     ["train.checkpoint_every_n_steps: 0"]),  # new
    ("keep_checkpoints -3", parse(train__keep_checkpoints=-3), ["train.keep_checkpoints", "-1 or"]),  # new
    ("eval every -1 steps", parse(eval__every_n_steps=-1), ["eval.every_n_steps: -1", ">= 0"]),  # new
    ("seed -1", parse(seed=-1), ["seed: -1 is not valid", ">= 0"]),  # new
    ("num_workers -2", parse(data__num_workers=-2), ["data.num_workers: -2", ">= 0"]),  # new
    ("num_queries 0", parse(backbone__num_queries=0), ["backbone.num_queries: 0", ">= 1"]),  # new
    ("cond_dropout 2", parse(objective={"name": "flow_matching", "cond_dropout": 2.0}),
     ["objective.cond_dropout: 2.0", "<= 1"]),  # new
    ("on_nonfinite typo", parse(train__on_nonfinite="ignore"),
     ["train.on_nonfinite: 'ignore' is not valid", "'stop'", "'skip_batch'"]),  # new
    ("duplicate cell key", study(None, DUP_CELLS), ["study.yaml", "duplicate key 'vae+mse'", "line 8"]),  # new
    ("duplicate top-level key", raw("run.yaml", DUP_TOP), ["run.yaml", "duplicate key 'train'"]),  # new
    ("missing local model folder",
     cli("fit", "{tmp}/run.yaml", files={"run.yaml": lambda t: run_spec(t)}),
     ["backbone.model", "/nonexistent/llama", "no such folder"]),  # new
    ("results_dir not writable",
     cli("fit", "{tmp}/run.yaml", files={"file": b"x", "a.tar": CORRUPT_TAR, "run.yaml": lambda t: run_spec(
         t, backbone={"model": "org/llama"}, encoder={"name": "vae", "model": "org/vae"},
         data={"train": {"name": "webdataset", "urls": str(t / "a.tar")}},
         results_dir=str(t / "file" / "results"))}),
     ["file/results/s/r", "cannot write the run folder"]),  # new
    ("sweep --trials -3", cli("sweep", "{tmp}/s.yaml", "--trials", "-3", files={"s.yaml": SWEEP_STUDY}),
     ["--trials -3", ">= 1"]),  # new
    ("sweep --trials 0", cli("sweep", "{tmp}/s.yaml", "--trials", "0", files={"s.yaml": SWEEP_STUDY}),
     ["--trials 0", ">= 1"]),  # new
    ("sweep storage unreachable",
     cli("sweep", "{tmp}/s.yaml", "--trials", "1", "--storage", "postgresql://nobody@127.0.0.1:1/x",
         files={"s.yaml": lambda t: {**SWEEP_STUDY, "base": {**SWEEP_STUDY["base"], "results_dir": str(t)}}}),
     ["--storage postgresql://nobody@127.0.0.1:1/x: cannot open the database", "127.0.0.1"]),  # new
    ("eval on an empty checkpoint", cli("eval", "{tmp}/e.ckpt", files={"e.ckpt": b""}),
     ["e.ckpt: not a readable checkpoint (empty file)"]),  # new
    ("eval on a garbage checkpoint", cli("eval", "{tmp}/g.ckpt", files={"g.ckpt": b"\x00garbage" * 99}),
     ["g.ckpt: not a readable checkpoint (truncated or not a checkpoint"]),  # new
    ("eval on a missing checkpoint", cli("eval", "{tmp}/none.ckpt"), ["none.ckpt: no such checkpoint"]),
    ("plot on a 0-byte metrics.csv", cli("plot", "{tmp}/st", files={"st/r/metrics.csv": b""}),
     ["st", "no run has logged metrics"]),  # new
    ("plot on a header-only metrics.csv",
     cli("plot", "{tmp}/st", files={"st/r/metrics.csv": b"step,train/loss\n"}),
     ["st", "no run has logged metrics"]),  # new
    ("empty tar as the only shard", stream_of(None, {"a.tar": EMPTY_TAR}),
     ["no readable samples in", "a.tar", "after 0 attempts"]),  # new (hung)
    ("zero-byte shard", stream_of(None, {"a.tar": b""}), ["no readable samples in", "a.tar"]),  # new
    ("garbage shard", stream_of(None, {"a.tar": b"\x01garbage" * 300}),
     ["no readable samples in", "a.tar", "attempts", "unreadable shard data"]),  # new
    ("all images corrupt", stream_of(None, {"a.tar": CORRUPT_TAR}),
     ["no readable samples in", "after 5 attempts", "corrupt image (UnidentifiedImageError)': 5"]),  # new
    # already clear before issue 16
    ("misspelt section", parse(trian={}), ["exp.yaml", "trian: unknown key (did you mean 'train'?)"]),
    ("max_steps a word", parse(train__max_steps="many"), ["train.max_steps: expected an integer, got 'many'"]),
    ("lr true", parse(train__lr=True), ["train.lr: expected a number"]),
    ("precision fp8", parse(train__precision="fp8"), ["train.precision: 'fp8' is not valid; choose one of"]),
    ("objective typo", parse(objective={"name": "flow_matchin"}), ["did you mean 'flow_matching'"]),
    ("objective arg typo", parse(objective={"name": "flow_matching", "dpeth": 3}), ["objective.dpeth: unknown key"]),
    ("unknown encoder", parse(encoder={"name": "siglip9"}), ["unknown encoder 'siglip9'"]),
    ("dataset arg typo", parse(data={"train": {"name": "webdataset", "url": "x"}}), ["data.train.url: unknown key"]),
    ("not YAML", raw("bad.yaml", "a: [1, 2\n"), ["bad.yaml: not valid YAML"]),
    ("missing config file", cli("fit", "{tmp}/missing.yaml"), ["missing.yaml: no such config file"]),
    ("--set without =", cli("fit", "{tmp}/run.yaml", "--set", "train.lr", files={"run.yaml": lambda t: run_spec(t)}),
     ["--set 'train.lr': expected key=value"]),
    ("missing shards", cli("fit", "{tmp}/run.yaml", files={"run.yaml": lambda t: run_spec(
        t, backbone={"model": "org/llama"}, encoder={"name": "vae", "model": "org/vae"})}),
     ["data.train.urls", "not found", "x.tar"]),
]


@pytest.mark.parametrize("action, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_named(action, words, tmp_path, capsys):
    with pytest.raises((ConfigError, FileNotFoundError, NoReadableSamples)) as err:
        action(tmp_path, capsys)
    message = str(err.value)
    missing = [w for w in words if w not in message]
    assert not missing, f"{missing} not in: {message}"
    assert "Traceback" not in message


def test_table_is_large_enough():
    assert len(CASES) >= 30


def test_yaml_merge_keys_may_override_what_they_merge(tmp_path):
    """``<<: *anchor`` then a key of the anchor is an override, not a duplicate."""
    path = tmp_path / "run.yaml"
    path.write_text("x: &dit {depth: 2, dim: 8}\nobjective: {<<: *dit, depth: 3, name: flow_matching}\n")
    from ablate.config import load_yaml

    assert load_yaml(path)["objective"] == {"depth": 3, "dim": 8, "name": "flow_matching"}
