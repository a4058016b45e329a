"""`metrix serve` and `metrix demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .base import app, fail


@app.command()
def serve(
    index: Annotated[
        Optional[Path], typer.Option(help="Index folder. \\[default: the most recently built under indexes/]")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the app to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
    model: Annotated[
        Optional[Path], typer.Option(help="The model to embed queries with. \\[default: the index's]")
    ] = None,
    auth: Annotated[
        Optional[str], typer.Option(help="USER:PASSWORD for the page (and HTTP Basic on the API). [env: METRIX_AUTH]")
    ] = None,
    auth_file: Annotated[Optional[Path], typer.Option(help="A file of USER:PASSWORD lines, one per user.")] = None,
    token: Annotated[
        Optional[str], typer.Option(help="Bearer token the JSON API requires. [env: METRIX_API_TOKEN]")
    ] = None,
    cache_ttl: Annotated[
        int, typer.Option(help="Seconds the page's uploads stay in Gradio's cache before they are swept.")
    ] = 600,
) -> None:
    """The search service: the web page at / and the JSON API at /api (docs at /docs). Follows the
    index's CURRENT generation, so a rebuilt gallery is served without a restart."""
    import logging
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from metrix.app.access import AccessError, is_loopback, load_access
    from metrix.cli.models import newest_index
    from metrix.export.runtime import ModelError
    from metrix.index.live import LiveIndex
    from metrix.index.store import GalleryIndexError

    try:
        access = load_access(auth, auth_file, token)
        live = LiveIndex(index or newest_index(), model)
    except (GalleryIndexError, ModelError, AccessError) as error:
        fail(error)
    from metrix.app.server import Server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    opened = live.snapshot().index
    if not is_loopback(host) and not access.enabled:
        typer.echo(
            f"warning: serving {opened.gallery_root} to the network ({host}) with no login or token: anyone who "
            "can reach this port can search it and fetch its images; pass --auth and/or --token",
            err=True,
        )
    typer.echo(
        f"serving {opened.dir} ({len(opened):,} images from {opened.gallery_root}, {opened.generation}) on "
        f"http://{host}:{port} (page /, API /api, docs /docs)" + (" with access control" if access.enabled else "")
    )
    Server(live, access, host, port, delete_cache=(min(60, cache_ttl), cache_ttl)).run()


@app.command()
def demo(
    data: Annotated[
        Optional[Path],
        typer.Option(help="Your image folder (one sub-folder per class). \\[default: the built-in synthetic dataset]"),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option(help="Where the run, gallery and index go. \\[default: runs/demo-<time>]")
    ] = None,
    serve_: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the web UI at the end.")] = True,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
) -> None:
    """Train Metrix, export it, index the unseen classes, compare with the untrained backbone, serve the UI."""
    from metrix.backbones import BackboneError
    from metrix.cli.demo import run_demo
    from metrix.datasets import DataError
    from metrix.export.onnx_export import ExportError
    from metrix.index.store import GalleryIndexError
    from metrix.training.checkpoint import CheckpointError
    from metrix.training.config import ConfigError

    try:
        _, index_dir = run_demo(data, out)
    except (ConfigError, DataError, BackboneError, CheckpointError, ExportError, GalleryIndexError) as error:
        fail(error)
    if serve_:
        serve(index=index_dir, host=host, port=port, model=None)
