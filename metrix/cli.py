"""The `metrix` command line. Commands import their heavy dependencies only when they run."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
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

#: Packages whose versions matter for reproducing a result.
REPORTED_PACKAGES = ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "faiss-cpu", "gradio", "typer")


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


@app.command()
def info() -> None:
    """Print versions, threads and accelerator: what a bug report or a benchmark needs."""
    import torch

    typer.echo(f"metrix {__version__}")
    typer.echo(f"python {platform.python_version()} on {platform.platform()}")
    for name in REPORTED_PACKAGES:
        try:
            typer.echo(f"{name} {version(name)}")
        except PackageNotFoundError:
            typer.echo(f"{name} (not installed)")
    typer.echo(f"torch threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        typer.echo(f"accelerator cuda: {torch.cuda.get_device_name(0)}")
    else:
        typer.echo("accelerator none (CPU)")


def main() -> None:
    app()
