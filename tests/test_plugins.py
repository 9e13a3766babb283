"""Plugins outside the core: a pip-installed package registers through the ``ablate.plugins``
entry-point group (here a fake distribution: a ``*.dist-info`` folder on the path), an
unpackaged module through ``ABLATE_PLUGINS``; both are listed, and may add commands."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
from dataclasses import dataclass

from ablate.registry import register


@register("judge", "{name}")
class Judge:
    """{name}: says yes to everything."""

    def __init__(self, cfg=None, **_context):
        pass

    def answer(self, images, questions):
        return [["yes"] * len(q) for q in questions]


def add_commands(sub):
    p = sub.add_parser("{name}-hello", help="a plugin's own command")
    p.set_defaults(func=lambda args: print("hello from {name}"))
'''


def _fake_distribution(path: Path) -> None:
    (path / "fakeplug_mod.py").write_text(PLUGIN.format(name="fake-judge"))
    info = path / "fakeplug-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [ablate.plugins]
        fake = fakeplug_mod
        broken = no_such_plugin_module
    """))


def _ablate(args, path: Path, **env):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(path)]), **env}
    return subprocess.run([sys.executable, "-m", "ablate", *args], cwd=path, capture_output=True,
                          text=True, env=env, timeout=300)


def test_entry_point_plugins_register_list_and_add_commands(tmp_path):
    _fake_distribution(tmp_path)
    (tmp_path / "env_plugin.py").write_text(PLUGIN.format(name="env-judge"))
    out = _ablate(["list"], tmp_path, ABLATE_PLUGINS="env_plugin")
    assert out.returncode == 0, out.stderr
    judges = out.stdout.split("\njudge:\n")[1].split("\nmetric:\n")[0]
    assert "fake-judge" in judges and "fakeplug_mod.Judge  fake-judge: says yes" in judges
    assert "env_plugin.Judge  env-judge: says yes" in judges
    assert "toy-vqa" in judges  # the package's own entry point: the toy world
    plugins = out.stdout.split("plugins (")[1]
    assert "fakeplug_mod" in plugins and "entry point 'fake' of fakeplug 1.2" in plugins
    assert "env_plugin" in plugins and "ABLATE_PLUGINS" in plugins
    assert "ablate.toy.plugins" in plugins
    # a broken plugin is reported (warning + listed) and does not take the others down
    assert "no_such_plugin_module" in out.stderr and "FAILED: ModuleNotFoundError" in plugins

    hello = _ablate(["fake-judge-hello"], tmp_path)
    assert hello.returncode == 0 and hello.stdout.strip() == "hello from fake-judge", hello.stderr


def test_a_run_spec_uses_an_entry_point_plugin_by_name(tmp_path):
    _fake_distribution(tmp_path)
    code = ("from ablate.registry import get_registry; "
            "j = get_registry('judge').build('fake-judge'); print(j.answer([None], [['q1', 'q2']]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "[['yes', 'yes']]", out.stderr
