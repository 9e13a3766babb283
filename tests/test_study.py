"""Studies: spec parsing, `ablate grid` (resume, failures, selection), `ablate sweep` (optuna,
resume), results table, plots and final table — on tiny models, 1-3 steps per run."""

import time

import lightning as L
import optuna
import pandas as pd
import pytest
import yaml
from conftest import tiny_run_spec, write_spec

from ablate.cli import main
from ablate.config import ConfigError
from ablate.study.grid import run_grid
from ablate.study.plots import plot
from ablate.study.results import collect
from ablate.study.spec import load_study, parse_study
from ablate.study.sweep import open_study, run_sweep
from ablate.train import read_status


def study_spec(models, shards, results, cells=("vae+mse", "vae+fm"), **train) -> dict:
    """A two-cell study on the tiny VAE (the cheapest encoder): MSE and flow matching."""
    base = tiny_run_spec(models, shards, results, "vae", "mse", **train)
    for key in ("name", "study", "encoder", "objective"):
        base.pop(key)
    base["backbone"]["num_queries"] = None
    objectives = {"vae+mse": {"name": "mse"},
                  "vae+fm": {"name": "flow_matching", "dim": 32, "depth": 2, "heads": 4,
                             "kv_heads": 2, "sample_steps": 2}}
    encoder = {"name": "vae", "model": str(models["vae"]), "resolution": 16}
    return {"study": "tiny", "base": base,
            "cells": {c: {"encoder": encoder, "objective": objectives[c]} for c in cells}}


# ---- spec ----------------------------------------------------------------------------


def test_spec_expands_cells_seeds_and_axes(tiny_models, tiny_shards, tmp_path):
    spec = study_spec(tiny_models, tiny_shards, tmp_path)
    spec["grid"] = {"seed": [0, 1], "train": {"lr": [1e-3, 1e-4]}}  # nested == dotted
    study = parse_study(spec, "s.yaml")
    names = [c.name for c in study.cells]
    assert names[:2] == ["vae+mse_lr=0.001-seed0", "vae+mse_lr=0.001-seed1"] and len(names) == 8
    cell = study.cells[3]
    assert (cell.run.seed, cell.run.train.lr, cell.run.study) == (1, 1e-4, "tiny")
    assert cell.run.meta == {"cell": "vae+mse_lr=0.0001", "axes": {"encoder": "vae",
                             "objective": "mse", "train.lr": 1e-4}}
    assert study.study_dir == tmp_path / "tiny"
    # study-level --set edits the study, run-level --set every run
    study = parse_study(spec, "s.yaml", ["grid.seed=[5]", "grid.train.lr=[0.01]", "train.max_steps=1"])
    assert [c.name for c in study.cells] == ["vae+mse-seed5", "vae+fm-seed5"]
    assert {(c.run.train.lr, c.run.train.max_steps) for c in study.cells} == {(0.01, 1)}
    study = parse_study(spec, "s.yaml", ["cells.vae+fm.objective.depth=1"])
    assert study.cells[-1].run.objective["depth"] == 1 and "depth" not in study.cells[0].run.objective


def test_extends_merges_base_and_replaces_other_sections(tiny_models, tiny_shards, tmp_path):
    parent = study_spec(tiny_models, tiny_shards, tmp_path / "results")
    parent["grid"] = {"seed": [0]}
    write_spec(parent, tmp_path / "parent.yaml")
    (tmp_path / "sub").mkdir()
    child = {"extends": "../parent.yaml", "study": "longer",
             "base": {"train": {"max_steps": 7}, "eval": {"every_n_steps": 3}},
             "grid": {"seed": [0, 1]}}
    write_spec(child, tmp_path / "sub" / "child.yaml")
    study = load_study(tmp_path / "sub" / "child.yaml")
    assert study.name == "longer"
    assert [c.name for c in study.cells] == ["vae+mse-seed0", "vae+mse-seed1", "vae+fm-seed0", "vae+fm-seed1"]
    run = study.cells[-1].run
    # base merged key by key: the child's steps and eval cadence, the parent's lr and metrics
    assert (run.train.max_steps, run.eval.every_n_steps) == (7, 3)
    assert run.train.lr == parent["base"]["train"]["lr"] and run.objective["name"] == "flow_matching"
    assert "extends" not in study.data and study.data["base"]["train"]["max_steps"] == 7
    # a missing parent and a cycle are named
    write_spec({"extends": "nowhere.yaml", "study": "x"}, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml: extends: 'nowhere.yaml': no such study file"):
        load_study(tmp_path / "bad.yaml")
    write_spec({"extends": "b.yaml", "study": "a"}, tmp_path / "a.yaml")
    write_spec({"extends": "a.yaml", "study": "b"}, tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="extends this file again"):
        load_study(tmp_path / "a.yaml")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["cells"]["vae+fm"].update({"objective.dpeth": 2}),
     "s.yaml: cell 'vae+fm': objective.dpeth: unknown key (did you mean 'depth'?)"),
    (lambda s: s["cells"]["vae+mse"].update({"train.lr": "fast"}),
     "s.yaml: cell 'vae+mse': train.lr: expected a number"),
    (lambda s: s.update(gird={"seed": [0]}), "s.yaml: gird: unknown key (did you mean 'grid'?)"),
    (lambda s: s.update(grid={"seed": []}), "grid.seed: expected a non-empty list"),
    (lambda s: s["cells"].update({"a/b": {}}), "cells.a/b: a cell name is a folder name"),
    (lambda s: s.update(sweep={"params": {"train.lr": {"low": 1e-2, "high": 1e-4}}}),
     "s.yaml: sweep.params.train.lr:"),
    (lambda s: s.update(sweep={"params": {"train.lr": {"low": 1e-4, "high": 1e-2}}, "sampler": "tpx"}),
     "s.yaml: sweep.sampler: unknown 'tpx' (did you mean 'tpe'?)"),
    (lambda s: s.update(sweep={"params": {"train.lr": {"choices": [1e-4]}}, "pruner": {"name": "median", "n_warmup": 1}}),
     "s.yaml: sweep.pruner:"),
])
def test_spec_errors_name_file_and_cell(tiny_models, tiny_shards, tmp_path, edit, message):
    spec = study_spec(tiny_models, tiny_shards, tmp_path)
    edit(spec)
    with pytest.raises(ConfigError) as err:
        parse_study(spec, "s.yaml")
    assert message in str(err.value)


def test_run_level_set_on_an_axis_is_refused(tiny_models, tiny_shards, tmp_path):
    spec = study_spec(tiny_models, tiny_shards, tmp_path)
    spec["grid"] = {"train.lr": [1e-3, 1e-4]}
    with pytest.raises(ConfigError, match="grid axis or sweep parameter; change its values with"):
        parse_study(spec, "s.yaml", ["train.lr=0.1"])


# ---- grid ----------------------------------------------------------------------------


def test_dry_run_only_and_shard(tiny_models, tiny_shards, tmp_path, capsys):
    spec = study_spec(tiny_models, tiny_shards, tmp_path / "res")
    spec["grid"] = {"seed": [0, 1, 2]}
    path = write_spec(spec, tmp_path / "study.yaml")
    assert main(["grid", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 of 6 runs" in out and "vae+fm-seed2" in out and "new" in out and "flow_matching" in out
    assert not (tmp_path / "res").exists()  # nothing ran, nothing written
    assert main(["grid", str(path), "--dry-run", "--only", "vae+fm*", "*mse-seed0"]) == 0
    out = capsys.readouterr().out
    assert "4 of 6 runs" in out and "vae+mse-seed1" not in out
    study = load_study(path)
    shards = [run_grid(study, shard=(i, 4), dry_run=True, echo=lambda *_: None) for i in range(4)]
    names = [o.cell.name for shard in shards for o in shard]
    assert sorted(names) == sorted(c.name for c in study.cells) and len(set(names)) == 6
    assert main(["grid", str(path), "--dry-run", "--shard", "4/4"]) == 2
    assert main(["grid", str(path), "--dry-run", "--only", "clip*"]) == 2
    assert "matches no cell" in capsys.readouterr().err


class Kill(BaseException):
    """Like a kill: not an Exception, so the grid stops instead of moving on."""


class KillOnce(L.Callback):
    def __init__(self, step: int, error: type = Kill):
        self.step, self.error, self.fired = step, error, False

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step and not self.fired:
            self.fired = True
            raise self.error("simulated kill")


def test_interrupted_grid_resumes_and_completes(tiny_models, tiny_shards, tmp_path):
    spec = study_spec(tiny_models, tiny_shards, tmp_path, max_steps=3, checkpoint_every_n_steps=2)
    study = parse_study(spec, "s.yaml")
    first, second = (c.run.run_dir for c in study.cells)
    with pytest.raises(Kill):
        run_grid(study, extra_callbacks=(KillOnce(2),), echo=lambda *_: None)
    assert read_status(first)["state"] == "failed" and not second.exists()
    outcomes = run_grid(parse_study(spec, "s.yaml"), echo=lambda *_: None)
    assert [(o.before, o.result) for o in outcomes] == [("resume", "finished"), ("new", "finished")]
    assert yaml.safe_load((first / "config.yaml").read_text())["provenance"]["resumed_from_step"] == 2
    assert list(pd.read_csv(first / "metrics.csv")["step"]) == [0, 1, 2]
    outcomes = run_grid(parse_study(spec, "s.yaml"), echo=lambda *_: None)
    assert [o.result for o in outcomes] == ["skipped", "skipped"]
    log = (tmp_path / "tiny" / "grid.log").read_text()
    assert "vae+mse-seed0\tinterrupted\tKill" in log and "vae+mse-seed0\tresume" in log
    assert yaml.safe_load((tmp_path / "tiny" / "study.yaml").read_text())["runs"][1]["name"] == "vae+fm-seed0"


@pytest.mark.parametrize("launcher", ["local", pytest.param("subprocess", marks=pytest.mark.slow)])
def test_failing_cell_is_recorded_and_others_run(tiny_models, tiny_shards, tmp_path, capsys, launcher):
    spec = study_spec(tiny_models, tiny_shards, tmp_path, cells=("vae+mse",), max_steps=1)
    spec["cells"]["broken"] = {"encoder": {"name": "vae", "model": str(tmp_path / "no-such-vae")}}
    spec["cells"] = {"broken": spec["cells"].pop("broken"), **spec["cells"]}  # fails first
    if launcher == "subprocess":
        spec["cells"].pop("vae+mse")  # the isolation path; a good cell costs a process start
    path = write_spec(spec, tmp_path / "study.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(["grid", str(path), "--launcher", launcher])
    assert exit_.value.code == 1
    assert "1 of" in capsys.readouterr().err
    status = read_status(tmp_path / "tiny" / "broken-seed0")
    assert status["state"] == "failed" and "no-such-vae" in status["error"]
    assert "broken-seed0\tfailed\t" in (tmp_path / "tiny" / "grid.log").read_text()
    if launcher == "local":
        assert read_status(tmp_path / "tiny" / "vae+mse-seed0")["state"] == "finished"
    else:
        assert (tmp_path / "tiny" / "specs" / "broken-seed0.yaml").is_file()
        assert "no-such-vae" in (tmp_path / "tiny" / "broken-seed0" / "fit.log").read_text()


@pytest.mark.slow
def test_workers_run_the_shards_side_by_side(tiny_models, tiny_shards, tmp_path, capsys):
    spec = study_spec(tiny_models, tiny_shards, tmp_path, cells=("vae+mse",), max_steps=1)
    spec["cells"] = {"broken": {"encoder": {"name": "vae", "model": str(tmp_path / "no-such-vae")}},
                     **spec["cells"]}
    path = write_spec(spec, tmp_path / "study.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(["grid", str(path), "--workers", "2", "--set", "train.log_every_n_steps=1"])
    assert exit_.value.code == 1 and "1 of 2 runs failed: broken-seed0" in capsys.readouterr().err
    study = tmp_path / "tiny"
    assert read_status(study / "vae+mse-seed0")["state"] == "finished"
    assert "no-such-vae" in read_status(study / "broken-seed0")["error"]
    # one shard each, the run-level --set passed on
    logs = [(study / f"worker{i}.log").read_text() for i in (0, 1)]
    assert "broken-seed0" in logs[0] and "vae+mse-seed0" not in logs[0]
    assert "vae+mse-seed0" in logs[1] and "broken-seed0" not in logs[1]
    assert yaml.safe_load((study / "vae+mse-seed0" / "config.yaml").read_text())["train"]["log_every_n_steps"] == 1
    assert main(["grid", str(path), "--workers", "2", "--shard", "0/2"]) == 2
    assert "--workers starts its own shards" in capsys.readouterr().err


# ---- sweep ---------------------------------------------------------------------------


def sweep_spec(models, shards, results, **sweep) -> dict:
    spec = study_spec(models, shards, results, cells=("vae+mse",), max_steps=2,
                      checkpoint_every_n_steps=1)
    spec["sweep"] = {"metric": "train/loss", "params": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}},
                     "sampler": {"name": "tpe", "seed": 0}, **sweep}
    return spec


def states(ostudy):
    return [t.state.name for t in ostudy.trials]


def test_sweep_tops_up_to_n_trials_on_sqlite(tiny_models, tiny_shards, tmp_path):
    path = write_spec(sweep_spec(tiny_models, tiny_shards, tmp_path), tmp_path / "sweep.yaml")
    assert main(["sweep", str(path), "--trials", "2"]) == 0
    ostudy = open_study(load_study(path))
    assert states(ostudy) == ["COMPLETE", "COMPLETE"]
    before = [(t.params, t.value) for t in ostudy.trials]
    assert main(["sweep", str(path), "--trials", "3"]) == 0
    ostudy = open_study(load_study(path))  # a fresh connection: counts come from the database
    assert states(ostudy) == ["COMPLETE"] * 3 and [(t.params, t.value) for t in ostudy.trials][:2] == before
    assert (tmp_path / "tiny" / "optuna.db").is_file()
    for t in ostudy.trials:  # the objective is the last logged train/loss of the trial's run
        run_dir = tmp_path / "tiny" / f"trial-{t.number:04d}"
        assert t.value == pd.read_csv(run_dir / "metrics.csv")["train/loss"].dropna().iloc[-1]
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["train"]["lr"] == t.params["train.lr"] and config["meta"]["trial"] == t.number
    assert len(pd.read_csv(tmp_path / "tiny" / "trials.csv")) == 3


def test_pruner_stops_a_bad_trial_from_its_logged_metric(tiny_models, tiny_shards, tmp_path):
    spec = sweep_spec(tiny_models, tiny_shards, tmp_path, pruner={"name": "threshold", "upper": 0.0})
    ostudy = run_sweep(parse_study(spec, "sweep.yaml"), 1, echo=lambda *_: None)
    trial = ostudy.trials[0]
    assert states(ostudy) == ["PRUNED"] and list(trial.intermediate_values) == [0]
    run_dir = tmp_path / "tiny" / "trial-0000"
    assert read_status(run_dir)["state"] == "pruned"
    assert trial.intermediate_values[0] == pd.read_csv(run_dir / "metrics.csv")["train/loss"].iloc[0]


def test_interrupted_trial_is_requeued_and_resumes(tiny_models, tiny_shards, tmp_path):
    study = parse_study(sweep_spec(tiny_models, tiny_shards, tmp_path), "sweep.yaml")
    # Ctrl-C inside Lightning surfaces as SystemExit(1)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(study, 2, extra_callbacks=(KillOnce(1, SystemExit),), echo=lambda *_: None)
    ostudy = run_sweep(study, 2, echo=lambda *_: None)
    assert states(ostudy) == ["FAIL", "COMPLETE", "COMPLETE"]
    assert ostudy.trials[1].params == ostudy.trials[0].params
    assert ostudy.trials[1].user_attrs["run"] == "trial-0000"
    config = yaml.safe_load((tmp_path / "tiny" / "trial-0000" / "config.yaml").read_text())
    assert config["provenance"]["resumed_from_step"] == 1
    assert not (tmp_path / "tiny" / "trial-0001").exists()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask() stands in for a worker
def test_dead_worker_trial_is_retried_after_its_heartbeat_stops(tiny_models, tiny_shards, tmp_path):
    study = parse_study(sweep_spec(tiny_models, tiny_shards, tmp_path, heartbeat_interval=1,
                                   grace_period=1), "sweep.yaml")
    ostudy = open_study(study)
    dead = ostudy.ask(study.distributions)  # a worker that started a trial, then was killed
    dead.set_user_attr("run", "trial-0000")
    ostudy._storage.record_heartbeat(dead._trial_id)
    time.sleep(2.2)
    ostudy = run_sweep(study, 1, echo=lambda *_: None)
    assert states(ostudy) == ["FAIL", "COMPLETE"]
    assert ostudy.trials[1].params == dead.params and ostudy.trials[1].user_attrs["run"] == "trial-0000"


# ---- results, plots, final table -------------------------------------------------------




@pytest.fixture(scope="module")
def finished_grid(tiny_models, tiny_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    spec = study_spec(tiny_models, tiny_shards, root, max_steps=2)
    spec["grid"] = {"seed": [0, 1]}
    spec["base"]["eval"] = {"every_n_steps": 1, "sample_prompts": [],
                            "metrics": [{"name": "conftest.FeatureMean"}]}
    outcomes = run_grid(parse_study(spec, "grid.yaml"), echo=lambda *_: None)
    assert [o.result for o in outcomes] == ["finished"] * 4
    return root / "tiny"


def test_collect_one_row_per_run_and_step(finished_grid):
    frame = collect(finished_grid)
    assert (finished_grid / "summary.csv").is_file()
    assert list(frame.columns[:9]) == ["study", "run", "cell", "seed", "state", "encoder", "objective",
                                       "step", "time/wall"]
    assert len(frame) == 4 * 3  # steps 0, 1 (train + eval) and 2 (the final eval)
    assert frame.groupby("run")["step"].apply(list).tolist() == [[0, 1, 2]] * 4
    assert frame["probe/mean"].notna().all() and frame["train/loss"].isna().sum() == 4
    assert set(frame["objective"]) == {"mse", "flow_matching"} and set(frame["seed"]) == {0, 1}


def test_plots_and_final_table(finished_grid, tmp_path):
    assert main(["plot", str(finished_grid), "--metrics", "train/loss", "probe/*", "fid/overall"]) == 0
    for name in ("curves_step.png", "curves_step.pdf", "curves_wall.png", "curves_wall.pdf",
                 "final_table.csv", "final_table.md"):
        assert (finished_grid / name).stat().st_size > 0, name
    table = pd.read_csv(finished_grid / "final_table.csv").set_index(["cell", "metric"])
    assert set(table.index.get_level_values("metric")) == {"train/loss", "probe/mean"}  # no FID: skipped
    for cell in ("vae+mse", "vae+fm"):
        runs = [pd.read_csv(finished_grid / f"{cell}-seed{s}" / "metrics.csv") for s in (0, 1)]
        loss = [r["train/loss"].dropna() for r in runs]
        probe = [r["probe/mean"].dropna() for r in runs]
        row = table.loc[(cell, "train/loss")]
        assert row["last"] == pytest.approx(sum(v.iloc[-1] for v in loss) / 2)
        assert row["best"] == pytest.approx(sum(v.min() for v in loss) / 2)  # lower is better
        assert row["seeds"] == 2 and row["better"] == "lower"
        row = table.loc[(cell, "probe/mean")]
        assert row["best"] == pytest.approx(sum(v.max() for v in probe) / 2)  # higher is better
        assert row["last"] == pytest.approx(sum(v.iloc[-1] for v in probe) / 2)
    assert "| vae+fm | 2 |" in (finished_grid / "final_table.md").read_text()


def test_plot_errors_are_clear(finished_grid, tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no runs found" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="none of the metrics"):
        plot(finished_grid, ["fid/overall"])


def test_optuna_study_name_is_the_study(tiny_models, tiny_shards, tmp_path):
    study = parse_study(sweep_spec(tiny_models, tiny_shards, tmp_path), "sweep.yaml")
    assert open_study(study).study_name == "tiny"
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 'tiny' / 'optuna.db'}") == ["tiny"]
