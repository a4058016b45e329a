"""The one Typer app the command modules register on, and what they share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from metrix import __version__

app = typer.Typer(
    name="metrix",
    help="Image retrieval with deep metric learning and Metrix mixup: train, export, index, search, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"metrix {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version_: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Metrix: train an embedding model on a folder of images, index a gallery, search it."""


def fail(error: Exception) -> None:
    typer.secho(f"error: {error}", err=True, fg="red")
    raise typer.Exit(code=2)


index_app = typer.Typer(help="Look after an index folder.", no_args_is_help=True)

app.add_typer(index_app, name="index")


def path_str(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)
