"""Sessions: ``nox -s tests`` (CI), ``nox -s lint``, ``nox -s floor`` (the oldest Python the
metadata allows), ``nox -s wheel`` (a built wheel in a fresh venv, run from an empty folder),
``nox -s demo`` (the toy study end to end).

Every install uses constraints.txt, the exact set tested together; pyproject.toml keeps
compatible ranges. ``nox -s floor --force-python 3.12`` tries another Python the same way.
"""

import re
import tempfile
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"

ROOT = Path(__file__).parent
CONSTRAINTS = ("-c", "constraints.txt")
TEST_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# requires-python = ">=3.11" -> "3.11": the floor is tested from the metadata itself
FLOOR = re.search(r'requires-python\s*=\s*">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text()).group(1)
# A fast subset that still loads every module, builds the CLI and trains/evaluates tiny runs.
SMOKE_TESTS = ("tests/test_packaging.py", "tests/test_plugins.py", "tests/test_config.py",
               "tests/test_registry.py", "tests/test_objectives.py", "tests/test_fit.py")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite on CPU, offline."""
    session.install(*CONSTRAINTS, "-e", ".[test,postgres]")  # postgres: the sweep test on a local server
    session.run("pytest", "-q", *session.posargs, env=TEST_ENV)


@nox.session(python=FLOOR)
def floor(session: nox.Session) -> None:
    """Install and a smoke subset of the suite on the oldest Python ``requires-python`` allows."""
    session.install(*CONSTRAINTS, "-e", ".[test]")
    session.run("pytest", "-q", *(session.posargs or SMOKE_TESTS), env=TEST_ENV)


@nox.session(reuse_venv=False)
def wheel(session: nox.Session) -> None:
    """``pip install`` of the built wheel (not editable) into a fresh venv; from an empty
    folder: ``ablate --help``, ``ablate list`` and ``ablate demo --smoke``."""
    dist = Path(tempfile.mkdtemp(prefix="ablate-dist-"))
    session.run("python", "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), ".")
    built = next(dist.glob("ablate-*.whl"))
    session.install(*CONSTRAINTS, str(built))
    work = Path(tempfile.mkdtemp(prefix="ablate-empty-"))
    session.chdir(work)
    session.run("ablate", "--help", silent=True)
    session.run("ablate", "list")
    session.run("ablate", "demo", "--smoke", *session.posargs, env=TEST_ENV)
    assert (work / "results" / "smoke" / "demo" / "summary.csv").is_file(), "the demo wrote no results/ here"


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*CONSTRAINTS, "ruff")
    session.run("ruff", "check", "ablate", "tests", "benchmarks", "research", "noxfile.py")


@nox.session
def demo(session: nox.Session) -> None:
    """The toy CLIP-vs-VAE x MSE-vs-flow-matching study, trained and plotted on CPU."""
    session.install(*CONSTRAINTS, "-e", ".")
    session.run("ablate", "demo", *session.posargs)
