"""`metrix info` and `metrix backbones`: what this machine has."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Optional

import typer

from metrix import __version__

from .base import app, fail

#: Packages whose versions matter for reproducing a result.
REPORTED_PACKAGES = ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "faiss-cpu", "gradio", "typer")


@app.command()
def info() -> None:
    """Print versions, threads and accelerator: what a bug report or a benchmark needs."""
    import torch

    typer.echo(f"metrix {__version__}")
    from metrix.machine import cpu_name

    typer.echo(f"python {platform.python_version()} on {platform.platform()}")
    typer.echo(f"cpu {cpu_name()}")
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


@app.command()
def backbones(
    search: Annotated[
        Optional[str], typer.Option(help="List timm's pretrained model names that match this pattern (* wildcards).")
    ] = None,
    download: Annotated[
        Optional[str],
        typer.Option(
            help="Fetch timm:NAME's pretrained weights into the local cache (needs internet) for later offline use."
        ),
    ] = None,
) -> None:
    """The backbones --backbone accepts, and which pretrained weights are on this machine."""
    from metrix.backbones import TIMM_PREFIX, BackboneError, list_backbones, local_weights
    from metrix.backbones.timm_backbone import RECOMMENDED, cached_timm_models, pretrained_config, weights_file

    if search is not None:
        import timm

        pattern = search if "*" in search else f"*{search}*"
        for name in timm.list_pretrained(pattern):
            typer.echo(f"{TIMM_PREFIX}{name}")
        return
    if download is not None:
        name = download.removeprefix(TIMM_PREFIX)
        try:
            path = weights_file(name, pretrained_config(name), None)
        except BackboneError as error:
            fail(error)
        typer.echo(f"{TIMM_PREFIX}{name}: weights in {path}")
        return
    typer.echo("registered (--backbone NAME):")
    for name in list_backbones():
        found = local_weights(name)
        typer.echo(
            f"  {name:<20} " + (f"weights on this machine: {found}" if found else "weights downloaded on first use")
        )
    typer.echo("any timm model (--backbone timm:NAME[.TAG]; `metrix backbones --search PATTERN` lists the names):")
    cache_dir, cached = cached_timm_models()
    typer.echo(f"  weights cached in {cache_dir}: " + (", ".join(TIMM_PREFIX + n for n in cached) or "none"))
    typer.echo("  recommended (docs/backbones.md): " + ", ".join(TIMM_PREFIX + n for n in RECOMMENDED))
