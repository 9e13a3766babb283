"""Specs are validated before anything heavy loads, with messages that name the key."""

import pytest
from conftest import write_spec

from ablate.config import ConfigError, apply_overrides, load_run, parse_run


def base_spec(**over):
    spec = {"backbone": {"model": "/nonexistent/llama"},
            "encoder": {"name": "clip", "model": "/nonexistent/clip"},
            "objective": {"name": "flow_matching", "depth": 2},
            "data": {"train": {"name": "webdataset", "urls": "x.tar"}}}
    spec.update(over)
    return spec


def test_valid_spec_parses_without_loading_anything():
    run = parse_run(base_spec())  # paths do not exist: nothing may have been loaded
    assert run.objective["depth"] == 2 and run.train.grad_clip == 1.0


@pytest.mark.parametrize("spec, needle", [
    (base_spec(trian={}), "trian: unknown key (did you mean 'train'?)"),
    (base_spec(train={"max_steps": "many"}), "train.max_steps: expected an integer, got 'many'"),
    (base_spec(train={"lr": True}), "train.lr: expected a number"),
    (base_spec(train={"precision": "fp8"}), "train.precision: 'fp8' is not valid; choose one of"),
    (base_spec(objective={"name": "flow_matchin"}), "did you mean 'flow_matching'"),
    (base_spec(objective={"name": "flow_matching", "dpeth": 3}), "objective.dpeth: unknown key"),
    (base_spec(objective={"name": "flow_matching", "sampler": "rk4"}), "objective.sampler: 'rk4'"),
    (base_spec(encoder={"name": "siglip9"}), "unknown encoder 'siglip9'"),
    (base_spec(data={"train": {"name": "webdataset", "url": "x"}}), "data.train.url: unknown key"),
])
def test_bad_specs_name_the_key(spec, needle):
    with pytest.raises(ConfigError) as err:
        parse_run(spec, "exp.yaml")
    assert needle in str(err.value) and str(err.value).startswith("exp.yaml: ")


def test_numeric_choices_read_as_yaml_numbers():
    # `precision: 32` in YAML (or `--set train.precision=32`) is an int; the choice is "32"
    run = parse_run(base_spec(train={"precision": 32}))
    assert run.train.precision == "32"
    with pytest.raises(ConfigError, match="train.precision: 16 is not valid"):
        parse_run(base_spec(train={"precision": 16}))
    with pytest.raises(ConfigError, match="train.precision: True is not valid"):
        parse_run(base_spec(train={"precision": True}))


def test_unknown_plugin_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"registered: \[.*'flow_matching'.*'mse'.*\]"):
        parse_run(base_spec(objective={"name": "diffusion"}))


def test_overrides_and_file_errors(tmp_path):
    path = write_spec(base_spec(), tmp_path / "run.yaml")
    run = load_run(path, ["train.max_steps=7", "objective.guidance=4.5", "encoder.grid=4"])
    assert run.train.max_steps == 7 and run.objective["guidance"] == 4.5 and run.encoder["grid"] == 4
    with pytest.raises(ConfigError, match="expected key=value"):
        load_run(path, ["train.max_steps"])
    with pytest.raises(ConfigError, match=r"train.max_stesp: unknown key"):
        load_run(path, ["train.max_stesp=3"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_run(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_run(tmp_path / "bad.yaml")


def test_apply_overrides_creates_nested_keys_on_a_copy():
    data = {"a": {"b": 1}}
    out = apply_overrides(data, ["a.c.d=[1, 2]", "e=x"])
    assert out == {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"} and data == {"a": {"b": 1}}


def test_dotted_class_path_selects_out_of_tree_plugins():
    run = parse_run(base_spec(objective={"name": "ablate.objectives.mse.MSE"}))
    assert run.objective["name"].endswith("MSE")
    with pytest.raises(ConfigError, match="cannot import 'nowhere.Thing'"):
        parse_run(base_spec(objective={"name": "nowhere.Thing"}))


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads `1e-4` as a string; in a spec or --set it means a number."""
    spec = base_spec(train={"lr": "1e-4"})
    assert parse_run(spec).train.lr == 1e-4
    path = write_spec(base_spec(), tmp_path / "run.yaml")
    assert load_run(path, ["train.min_lr=5e-6"]).train.min_lr == 5e-6
