"""The `metrix` command line, the one place that composes training, export, the index and the app.
Each command group lives in a module of its own and imports its heavy dependencies only when it runs."""

# isort: off  (the order of these imports is the order of the commands in --help)
from . import build, export, index, info, serve, train  # noqa: F401  (they register their commands on `app`)
from .base import app

# isort: on


def main() -> None:
    app()
