"""`metrix serve` and `metrix demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .base import app, fail

RecallCheckOption = Annotated[
    float,
    typer.Option(
        min=0,
        help="Seconds between served queries searched again exactly, in the background, to measure the "
        "index's recall@10 on real queries (/api/info; docs/index.md); 0: off.",
    ),
]
NprobeOption = Annotated[
    Optional[int],
    typer.Option(
        min=1, help="Probe this many IVF lists instead of the build's tuned number (where served recall is short)."
    ),
]
EfSearchOption = Annotated[
    Optional[int], typer.Option(min=1, help="HNSW's efSearch instead of the build's tuned value.")
]
VerifyIntervalOption = Annotated[
    float,
    typer.Option(
        min=0,
        help="Seconds between re-verifications of the served generation's checksums, in the background, in "
        "every process (a changed file's stat is seen within a second regardless; docs/index.md); 0: off.",
    ),
]


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
    workers: Annotated[
        int,
        typer.Option(
            help="Processes answering the JSON API on --port (uvicorn workers sharing the index, memory-mapped). "
            "Above 1 the page is served only with --page-port, by one more process."
        ),
    ] = 1,
    engine: Annotated[
        str, typer.Option(help="local: this machine's processes; ray: Ray Serve replicas (needs the serve extra).")
    ] = "local",
    replicas: Annotated[
        Optional[int], typer.Option(help="With --engine ray: replicas of the JSON API behind Ray Serve's proxy.")
    ] = None,
    page_port: Annotated[
        Optional[int],
        typer.Option(help="With --workers above 1 or --engine ray: serve the page (and its API) on this port too."),
    ] = None,
    max_batch: Annotated[
        int, typer.Option(help="Concurrent queries embedded and searched together, at most; 1: no batching.")
    ] = 32,
    batch_wait_ms: Annotated[
        float,
        typer.Option(
            help="Milliseconds a query waits for others to share its model and index calls; 0: none, only "
            "queries that arrive while the previous batch runs share one (docs/app.md)."
        ),
    ] = 0.0,
    recall_check_s: RecallCheckOption = 1.0,
    nprobe: NprobeOption = None,
    ef_search: EfSearchOption = None,
    verify_interval: VerifyIntervalOption = 300.0,  # index/live.py DEFAULT_VERIFY_INTERVAL
    keep_queries: Annotated[
        int,
        typer.Option(
            min=0,
            help="Keep the newest N query images asked, with their right / wrong marks, in INDEX/kept-queries "
            "(a new model is tried on them before it serves; docs/app.md says what is stored); 0: keep none.",
        ),
    ] = 300,  # index/kept_queries.py DEFAULT_KEEP
) -> None:
    """The search service: the web page at / and the JSON API at /api (docs at /docs). Follows the
    index's CURRENT generation, so a rebuilt gallery is served without a restart."""
    import logging
    import os

    if (problem := scaling_problem(workers, engine, replicas, port, page_port, max_batch, batch_wait_ms)) is not None:
        fail(ValueError(problem))
    from metrix.app.api_app import limit_malloc_arenas

    limit_malloc_arenas()  # before the model's and the server's threads exist
    batching = {"max_batch": max_batch, "batch_wait_ms": batch_wait_ms}
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from metrix.app.access import AccessError, is_loopback, load_access
    from metrix.cli.models import newest_index
    from metrix.export.runtime import ModelError
    from metrix.index.live import LiveIndex
    from metrix.index.store import GalleryIndexError

    scaled = workers > 1 or engine == "ray"
    try:
        access = load_access(auth, auth_file, token)
        search = {"nprobe": nprobe, "ef_search": ef_search}
        live = LiveIndex(
            index or newest_index(),
            model,
            mmap=scaled,
            recall_interval=recall_check_s,
            search=search,
            verify_interval=verify_interval,
            keep_queries=keep_queries,
        )
    except (GalleryIndexError, ModelError, AccessError) as error:
        fail(error)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    opened = live.snapshot().index
    if not is_loopback(host) and not access.enabled:
        typer.echo(
            f"warning: serving {opened.gallery_root} to the network ({host}) with no login or token: anyone who "
            "can reach this port can search it and fetch its images; pass --auth and/or --token",
            err=True,
        )
    what = f"{opened.dir} ({len(opened):,} images from {opened.gallery_root}, {opened.generation})"
    guarded = " with access control" if access.enabled else ""
    delete_cache = (min(60, cache_ttl), cache_ttl)
    if scaled:
        code = serve_scaled(
            live, access, host, port, workers, engine, replicas or 1, page_port, delete_cache, what, batching
        )
        raise typer.Exit(code)
    from metrix.app.server import Server

    typer.echo(f"serving {what} on http://{host}:{port} (page /, API /api, docs /docs){guarded}")
    Server(live, access, host, port, delete_cache=delete_cache, **batching).run()


def scaling_problem(
    workers: int,
    engine: str,
    replicas: int | None,
    port: int,
    page_port: int | None,
    max_batch: int = 32,
    batch_wait_ms: float = 0.0,
) -> str | None:
    """What is wrong with --workers/--engine/--replicas/--page-port/--max-batch/--batch-wait-ms, in
    one line, or None."""
    if max_batch < 1:
        return f"--max-batch {max_batch}: must be at least 1 (1: no batching)"
    if not 0 <= batch_wait_ms <= 1000:
        return f"--batch-wait-ms {batch_wait_ms}: must be 0-1000"
    if workers < 1:
        return f"--workers {workers}: must be at least 1"
    if engine not in ("local", "ray"):
        return f"--engine {engine}: must be local or ray"
    if replicas is not None and replicas < 1:
        return f"--replicas {replicas}: must be at least 1"
    if engine == "local" and replicas is not None:
        return "--replicas is for --engine ray; on this machine alone use --workers"
    if engine == "ray" and workers > 1:
        return "--workers is for --engine local; with --engine ray use --replicas"
    if page_port is not None and workers == 1 and engine == "local":
        return "--page-port is for --workers above 1 or --engine ray; one process serves the page at --port already"
    if page_port is not None and page_port == port:
        return f"--page-port {page_port}: must differ from --port"
    if engine == "ray":
        try:
            import ray.serve  # noqa: F401
        except ImportError:
            return "--engine ray needs the serve extra: pip install 'metrix[serve]'"
    return None


def serve_scaled(live, access, host, port, workers, engine, replicas, page_port, delete_cache, what, batching) -> int:
    """The JSON API in several processes (uvicorn workers) or Ray Serve replicas on host:port, and
    the page, if page_port, served from this process; returns the exit status."""
    from metrix.app.workers import ApiOptions

    model = live.model and str(Path(live.model).resolve())
    page_at = f"port {page_port}" if page_port is not None else None
    options = ApiOptions(
        str(live.dir.resolve()),
        model,
        access,
        page_at=page_at,
        verify_interval=live.verify_interval,
        keep_queries=live.kept.limit,
        **batching,
    )

    def start_page():
        from metrix.app.server import Server

        return Server(live, access, host, page_port, delete_cache=delete_cache, **batching).start()

    if page_port is None:
        live.start()  # else this process would keep the generation it opened, and its disk space, forever

    many = f"{workers} processes" if engine == "local" else f"{replicas} Ray Serve replicas"
    typer.echo(
        f"serving {what} on http://{host}:{port} from {many} (API /api, docs /docs)"
        + (f"; the page on http://{host}:{page_port}/" if page_port is not None else "; no page (see --page-port)")
        + (" with access control" if access.enabled else "")
    )
    if engine == "ray":
        from metrix.app.ray_serve import serve_replicas

        return serve_replicas(options, host, port, replicas, start_page if page_port is not None else None)
    from metrix.app.workers import serve_workers

    return serve_workers(options, host, port, workers, start_page if page_port is not None else None)


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
