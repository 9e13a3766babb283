"""Sessions: ``nox -s demo`` (the toy study end to end), ``nox -s tests``, ``nox -s lint``."""

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"

TEST_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite on CPU, offline."""
    session.install("-e", ".[test,postgres]")  # postgres: the sweep test on a local server
    session.run("pytest", "-q", *session.posargs, env=TEST_ENV)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.6")
    session.run("ruff", "check", "ablate", "tests", "benchmarks", "research", "noxfile.py")


@nox.session
def demo(session: nox.Session) -> None:
    """The toy CLIP-vs-VAE x MSE-vs-flow-matching study, trained and plotted on CPU."""
    session.install("-e", ".")
    session.run("ablate", "demo", *session.posargs)
