"""A broken run never says "finished", a resume loses nothing, broken files are recovered
(issue 16) — on tiny models, a few CPU steps per run."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L
import optuna
import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_run_spec, write_spec
from test_study import study_spec, sweep_spec

from ablate.cli import main
from ablate.config import parse_run
from ablate.provenance import git_state
from ablate.study.grid import run_grid
from ablate.study.plots import plot
from ablate.study.spec import parse_study
from ablate.train import NonFiniteLoss, fit, read_status

QUIET = {"echo": lambda *_: None}


def finite_checkpoints(run_dir: Path) -> list[str]:
    names = []
    for path in sorted((run_dir / "checkpoints").glob("*.ckpt")):
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path
        names.append(path.name)
    return names


# ---- 1. a diverged run ----------------------------------------------------------------


def test_diverged_cell_fails_naming_the_step_and_the_grid_goes_on(tiny_models, tiny_shards, tmp_path):
    spec = study_spec(tiny_models, tiny_shards, tmp_path, cells=("vae+mse",), max_steps=3,
                      checkpoint_every_n_steps=1)
    spec["cells"]["diverge"] = {**spec["cells"]["vae+mse"], "train.lr": 1e30}
    spec["cells"] = {"diverge": spec["cells"].pop("diverge"), **spec["cells"]}
    outcomes = run_grid(parse_study(spec, "s.yaml"), **QUIET)
    assert [(o.cell.name, o.result) for o in outcomes] == [("diverge-seed0", "failed"),
                                                           ("vae+mse-seed0", "finished")]
    run_dir = tmp_path / "tiny" / "diverge-seed0"
    status = read_status(run_dir)
    assert status["state"] == "failed" and status["error"].startswith("NonFiniteLoss: step ")
    assert "train.lr=1e+30" in status["error"]
    assert "diverge-seed0\tfailed\tNonFiniteLoss: step" in (tmp_path / "tiny" / "grid.log").read_text()
    assert "last.ckpt" in finite_checkpoints(run_dir)  # the weights before the step that diverged


def test_skip_batch_counts_skipped_updates_and_finishes(tiny_models, tiny_shards, tmp_path):
    spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path, "vae", "mse", max_steps=3, lr=1e30,
                         on_nonfinite="skip_batch")
    run_dir = fit(parse_run(spec))
    status = read_status(run_dir)
    assert status["state"] == "finished" and status["skipped"]["non-finite loss or gradient"] >= 1
    finite_checkpoints(run_dir)
    with pytest.raises(NonFiniteLoss, match=r"^step \d+: the gradient norm is (nan|inf)"):
        fit(parse_run({**spec, "train": {**spec["train"], "on_nonfinite": "stop"}}), overwrite=True)


# ---- 3. data that yields nothing ------------------------------------------------------------


def test_all_corrupt_data_fails_the_run_instead_of_finishing(tiny_models, tmp_path):
    from test_bad_inputs import CORRUPT_TAR

    (tmp_path / "bad.tar").write_bytes(CORRUPT_TAR)
    spec = tiny_run_spec(tiny_models, str(tmp_path / "bad.tar"), tmp_path, "vae", "mse", max_steps=2)
    with pytest.raises(Exception, match=r"no readable samples in .*bad.tar after 5 attempts"):
        fit(parse_run(spec))
    status = read_status(tmp_path / "test" / "vae-mse")
    assert status["state"] == "failed" and "corrupt image (UnidentifiedImageError)': 5" in status["error"]


# ---- 2. resume keeps the evaluation at the resume step -----------------------------------




class CrashAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def comparable(run_dir: Path) -> pd.DataFrame:
    """metrics.csv without the wall-clock columns (which differ run to run), rows in step
    order: Lightning writes step k-1's training row after the evaluation at step k, so a
    re-measured evaluation lands one line later in the file, with the same values."""
    frame = pd.read_csv(run_dir / "metrics.csv").sort_values("step", kind="stable")
    frame = frame[sorted(c for c in frame.columns if not c.startswith("time/"))]
    return frame.reset_index(drop=True)


def test_resumed_metrics_equal_an_uninterrupted_run_row_for_row(tiny_models, tiny_shards, tmp_path):
    spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path / "a", "vae", "mse", max_steps=6,
                         checkpoint_every_n_steps=2)
    spec["eval"] = {"every_n_steps": 2, "sample_prompts": [], "metrics": [{"name": "conftest.FeatureMean"}]}
    straight = comparable(fit(parse_run(spec)))
    assert list(straight.dropna(subset=["probe/mean"])["step"]) == [0, 2, 4, 6]
    for case, edit in (("kept", None), ("lost", "drop the eval row at the resume step")):
        spec["results_dir"] = str(tmp_path / case)
        run = parse_run(spec)
        with pytest.raises(RuntimeError, match="simulated crash"):
            fit(run, extra_callbacks=(CrashAt(5),))  # after step0000004.ckpt
        if edit:  # as if the process died between the eval and its metrics reaching the disk
            frame = pd.read_csv(run.run_dir / "metrics.csv")
            frame[~((frame["step"] == 4) & frame["probe/mean"].notna())].to_csv(
                run.run_dir / "metrics.csv", index=False)
        resumed = comparable(fit(run, resume=True))
        pd.testing.assert_frame_equal(resumed, straight, check_exact=False, rtol=1e-5, obj=case)


# ---- 4. broken checkpoint files ------------------------------------------------------------


def test_truncated_checkpoints_fall_back_to_the_newest_readable(tiny_models, tiny_shards, tmp_path, caplog):
    spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path, "vae", "mse", max_steps=4,
                         checkpoint_every_n_steps=2)
    run = parse_run(spec)
    with pytest.raises(RuntimeError):
        fit(run, extra_callbacks=(CrashAt(3),))
    spec["train"]["max_steps"] = 5  # a longer run resumes the same checkpoints
    run = parse_run(spec)
    ckpts = run.run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step0000002.ckpt"]
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])
    assert main(["eval", str(ckpts / "last.ckpt")]) == 2  # one line, no traceback (see test_bad_inputs)
    with caplog.at_level(logging.WARNING, logger="ablate"):
        fit(run, resume=True)
    assert "last.ckpt: not a readable checkpoint" in caplog.text
    assert "resuming from step0000002.ckpt (step 2) instead" in caplog.text
    assert read_status(run.run_dir)["state"] == "finished"
    assert yaml.safe_load((run.run_dir / "config.yaml").read_text())["provenance"]["resumed_from_step"] == 2
    assert (ckpts / "last.ckpt.unreadable").is_file()
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 4  # written anew


def test_full_disk_leaves_no_partial_checkpoint_and_a_failed_status(tiny_models, tiny_shards, tmp_path,
                                                                     monkeypatch):
    import lightning.fabric.plugins.io.torch_io as torch_io

    real, calls = torch_io._atomic_save, []

    def disk_fills_up(checkpoint, path):
        calls.append(path)
        if len(calls) < 3:
            return real(checkpoint, path)
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch_io, "_atomic_save", disk_fills_up)
    spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path, "vae", "mse", max_steps=4,
                         checkpoint_every_n_steps=2)
    with pytest.raises(OSError, match="No space left"):
        fit(parse_run(spec))
    run_dir = tmp_path / "test" / "vae-mse"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt", "step0000002.ckpt"]
    assert finite_checkpoints(run_dir)
    status = read_status(run_dir)
    assert status["state"] == "failed" and "No space left" in status["error"]


# ---- 5. plots survive broken run files ---------------------------------------------------


def test_plot_survives_a_corrupt_status_and_an_empty_run(tiny_models, tiny_shards, tmp_path, caplog):
    spec = study_spec(tiny_models, tiny_shards, tmp_path, cells=("vae+mse",), max_steps=2)
    run_grid(parse_study(spec, "s.yaml"), **QUIET)
    (tmp_path / "tiny" / "vae+mse-seed0" / "status.json").write_text('{"state": "fini')
    (tmp_path / "tiny" / "empty-run").mkdir()
    (tmp_path / "tiny" / "empty-run" / "metrics.csv").write_text("step,train/loss\n")
    out = plot(tmp_path / "tiny", ["train/loss"], ("step",))
    assert out["step.png"].is_file()
    table = pd.read_csv(tmp_path / "tiny" / "summary.csv")
    assert set(table["run"]) == {"vae+mse-seed0"} and set(table["state"]) == {"unknown"}
    assert "status.json: unreadable" in caplog.text and "empty-run/metrics.csv: no rows" in caplog.text


# ---- 7. edited cells -----------------------------------------------------------------------


def test_grid_refuses_a_finished_cell_whose_spec_changed(tiny_models, tiny_shards, tmp_path, capsys):
    spec = study_spec(tiny_models, tiny_shards, tmp_path / "res", cells=("vae+mse",), max_steps=1)
    path = write_spec(spec, tmp_path / "study.yaml")
    assert main(["grid", str(path)]) == 0
    status = read_status(tmp_path / "res" / "tiny" / "vae+mse-seed0")
    assert len(status["spec_hash"]) == 16
    assert main(["grid", str(path), "--set", "train.progress_bar=true"]) == 0  # display only: same hash
    spec["base"]["train"]["lr"] = 5e-4
    write_spec(spec, path)
    capsys.readouterr()
    assert main(["grid", str(path), "--dry-run"]) == 0
    assert "changed" in capsys.readouterr().out
    assert main(["grid", str(path)]) == 2
    err = capsys.readouterr().err
    assert "1 finished run(s) were made from a different spec (vae+mse-seed0: train.lr)" in err
    assert "--rerun-changed" in err
    assert main(["grid", str(path), "--rerun-changed"]) == 0
    config = yaml.safe_load((tmp_path / "res" / "tiny" / "vae+mse-seed0" / "config.yaml").read_text())
    assert config["train"]["lr"] == 5e-4 and config["provenance"]["resumed_from_step"] is None
    assert main(["grid", str(path)]) == 0  # the new spec is now the recorded one


def test_provenance_flags_untracked_files(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    assert git_state(tmp_path) == {"commit": git_state(tmp_path)["commit"], "dirty": False, "untracked": []}
    (tmp_path / "plugin.py").write_text("y = 2\n")
    state = git_state(tmp_path)
    assert state["untracked"] == ["plugin.py"] and state["dirty"] is False


# ---- 6. sweep workers sharing a study -------------------------------------------------------


def run_workers(path: Path, trials: int, storage: str | None = None, workers: int = 2) -> None:
    cmd = [sys.executable, "-m", "ablate", "sweep", str(path), "--trials", str(trials)]
    cmd += ["--storage", storage] if storage else []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(workers)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)


def check_trials(ostudy: optuna.Study, results: Path, trials: int) -> None:
    done = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == trials, [(t.number, t.state.name) for t in ostudy.trials]
    lrs = [t.params["train.lr"] for t in done]
    assert len(set(lrs)) == trials, lrs  # a fixed sampler seed, yet distinct parameters
    trained = sorted(p.parent.name for p in results.glob("trial-*/status.json"))
    assert len(trained) == trials  # no run beyond N was started


@pytest.mark.slow
def test_two_sqlite_workers_make_exactly_n_trials(tiny_models, tiny_shards, tmp_path):
    path = write_spec(sweep_spec(tiny_models, tiny_shards, tmp_path), tmp_path / "sweep.yaml")
    run_workers(path, 2)
    from ablate.study.spec import load_study
    from ablate.study.sweep import open_study

    check_trials(open_study(load_study(path)), tmp_path / "tiny", 2)


def _postgres(tmp: Path):
    """Start a throw-away PostgreSQL server on loopback; yield its README-form URL."""
    binaries = [shutil.which(b) or f"/usr/local/bin/{b}" for b in ("initdb", "pg_ctl")]
    if not all(os.access(b, os.X_OK) for b in binaries):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg 3) is not installed")
    prefix = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root and there is no 'nobody' user to run postgres as")
        runuser = shutil.which("runuser")
        if not runuser:
            pytest.skip("running as root and runuser is missing")
        prefix = [runuser, "-u", "nobody", "--"]
        os.chown(tmp, user.pw_uid, user.pw_gid)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    initdb, pg_ctl = binaries
    done = subprocess.run(prefix + [initdb, "-D", str(tmp / "data"), "-U", "ablate", "--auth=trust"],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"initdb failed: {done.stderr.strip()[-300:]}")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {tmp}"
    done = subprocess.run(prefix + [pg_ctl, "-D", str(tmp / "data"), "-o", opts, "-l", str(tmp / "log"),
                                    "-w", "start"], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"pg_ctl start failed: {done.stderr.strip()[-300:]}")
    return port, lambda: subprocess.run(prefix + [pg_ctl, "-D", str(tmp / "data"), "-m", "immediate", "stop"],
                                        capture_output=True)


@pytest.mark.slow
def test_two_postgres_workers_make_exactly_n_trials(tiny_models, tiny_shards, tmp_path):
    tmp = Path(tempfile.mkdtemp(prefix="ablate-pg-"))  # outside pytest's 0700 folders
    os.chmod(tmp, 0o755)
    stop = None
    try:
        port, stop = _postgres(tmp)
        import psycopg

        with psycopg.connect(f"postgresql://ablate@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE ablate")
        url = f"postgresql://ablate@127.0.0.1:{port}/ablate"  # the README's form: no +driver
        path = write_spec(sweep_spec(tiny_models, tiny_shards, tmp_path), tmp_path / "sweep.yaml")
        run_workers(path, 2, storage=url)
        ostudy = optuna.load_study(study_name="tiny", storage=url)
        check_trials(ostudy, tmp_path / "tiny", 2)
    finally:
        if stop:
            stop()
        shutil.rmtree(tmp, ignore_errors=True)
