"""A metric declares its title, direction and unit: `ablate plot` and the final table read
them, so a new metric is one file (here: one class in this test module)."""

from dataclasses import dataclass

import pandas as pd
import pytest
import yaml

from ablate.eval.metrics import Key, Metric
from ablate.eval.runner import append_metrics
from ablate.study.plots import draw, plot
from ablate.study.results import collect, describe_columns, read_run, run_configs


class Blur(Metric):
    """A new metric plugin (chosen by dotted path): lower is better, with a unit."""

    keys = (Key("blur/overall", "Blur on {dataset}", higher_is_better=False, unit="px"),)

    @dataclass
    class Config:
        dataset: str = "somewhere"

    def compute(self, generator, out_dir):
        return {"blur/overall": 0.0}


BLUR = {"name": "test_metric_keys.Blur", "dataset": "toy-set"}
FID = {"name": "fid", "data_dir": "toy/mjhq-like", "dataset_name": "toy-mjhq"}


def fake_run(study, name, objective, blur, loss):
    """A run folder as `ablate fit` leaves it (config.yaml, metrics.csv, status.json)."""
    run = study / name
    run.mkdir(parents=True)
    config = {"name": name, "study": study.name, "seed": 0, "objective": {"name": objective},
              "eval": {"metrics": [BLUR, FID]}, "meta": {"cell": name}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "status.json").write_text('{"state": "finished"}')
    rows = [{"step": s, "train/loss": loss[s], "time/wall": float(s)} for s in range(3)]
    rows += [{"step": s, "blur/overall": blur[i], "fid/overall": 50.0 - s} for i, s in enumerate((0, 2))]
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)


@pytest.fixture
def study(tmp_path):
    study = tmp_path / "study"
    fake_run(study, "a", "mse", blur=[3.0, 1.0], loss=[0.5, 0.4, 0.3])
    fake_run(study, "b", "flow_matching", blur=[2.0, 2.5], loss=[1.5, 1.4, 1.3])
    return study


def test_a_new_metric_is_read_from_its_declaration(study):
    keys = describe_columns(["blur/overall", "fid/overall", "train/loss", "mystery"],
                            run_configs(study).values())
    assert keys["blur/overall"] == Key("blur/overall", "Blur on toy-set", False, "px")
    assert keys["fid/overall"].title == "FID on toy-mjhq"  # the dataset of this study, not MJHQ
    assert keys["train/loss"].comparable_across_objectives is False
    assert keys["mystery"].higher_is_better is None


def test_plot_and_table_use_the_declared_direction(study):
    plot(study, ["blur/overall", "fid/overall", "train/loss"], xs=("step",))
    table = pd.read_csv(study / "final_table.csv").set_index(["cell", "metric"])
    assert table.loc[("a", "blur/overall"), "better"] == "lower"
    assert table.loc[("a", "blur/overall"), "best"] == 1.0 and table.loc[("b", "blur/overall"), "best"] == 2.0
    assert table.loc[("b", "blur/overall"), "last"] == 2.5
    markdown = (study / "final_table.md").read_text()
    assert "blur/overall (lower is better)" in markdown
    assert "train/loss: each objective's own loss, not comparable across objectives" in markdown


def test_panels_title_the_dataset_and_split_losses_by_objective(study):
    frame = collect(study)
    metrics = ["blur/overall", "fid/overall", "train/loss"]
    configs = run_configs(study)
    keys = describe_columns(metrics, configs.values())
    colours = {"a": "red", "b": "blue"}
    fig = draw(frame, metrics, "step", colours, keys=keys,
               objectives={r: c["objective"]["name"] for r, c in configs.items()})
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["Blur on toy-set ↓", "FID on toy-mjhq ↓", "training loss (smoothed) · mse ↓",
                      "training loss (smoothed) · flow_matching ↓"]
    assert fig.axes[0].get_ylabel() == "px"
    # each loss panel holds only its own objective's cell
    assert [len(ax.get_lines()) for ax in fig.axes[2:4]] == [1, 1]


def test_eval_rerun_at_a_step_replaces_its_values(study):
    """`ablate eval` at a step already measured: the new values win in the table, the sweep's
    objective reads them too, and the train values of that step stay."""
    from ablate.study.results import final_value

    append_metrics(study / "a", 2, {"blur/overall": 0.25, "time/eval/blur": 3.0})
    frame = read_run(study / "a").set_index("step")
    assert frame.loc[2, "blur/overall"] == 0.25 and frame.loc[2, "fid/overall"] == 48.0
    assert frame.loc[2, "train/loss"] == 0.3 and frame.loc[0, "blur/overall"] == 3.0
    assert final_value(study / "a", "blur/overall") == 0.25
    raw = pd.read_csv(study / "a" / "metrics.csv")
    assert raw["blur/overall"].notna().sum() == 2  # one value per step, not two at step 2
