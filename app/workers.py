"""`metrix serve --workers N`: the JSON API in N processes answering on one port.

uvicorn's own supervisor (uvicorn.supervisors.Multiprocess) binds the socket once and spawns N
worker processes that accept from it; it restarts a worker that dies and, on SIGTERM or SIGINT,
stops them all gracefully. Each worker opens the index itself, memory-mapped read-only (so the
vectors are in memory once, in the page cache, not N times) and follows its CURRENT generation
with its own LiveIndex watcher, which also re-checks the served generation's files (a worker
that finds them damaged serves the newest generation that verifies). Every response names the
worker's pid in `X-Metrix-Worker`.

The page is not served by the workers (app/api_app.py says why); `page_port` serves it, with its
own copy of the API for its result images, from one more server in the supervising process.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import uvicorn
from uvicorn.supervisors import Multiprocess

from metrix.index.kept_queries import DEFAULT_KEEP
from metrix.index.live import DEFAULT_VERIFY_INTERVAL, LiveIndex

from .access import Access
from .api_app import limit_malloc_arenas, make_api, page_elsewhere, tag_responses
from .batching import DEFAULT_MAX_BATCH, DEFAULT_WAIT_MS, Batcher
from .metrics import MULTIPROCESS_DIR

log = logging.getLogger("metrix.app")
#: Seconds a stopping worker waits for the requests in flight (as app/server.py's SHUTDOWN_GRACE).
SHUTDOWN_GRACE = 10
WORKER_HEADER = "X-Metrix-Worker"


@dataclass
class ApiOptions:
    """What every API process needs to open the same service: the index folder (absolute), the
    model, and one Access, whose signing secret must be the same everywhere, since a result's
    image URL signed by one process is fetched from another."""

    index: str
    model: str | None = None
    access: Access = field(default_factory=Access)
    batch_wait_ms: float = DEFAULT_WAIT_MS
    max_batch: int = DEFAULT_MAX_BATCH
    page_at: str | None = None  # where the page is served, for the API's answer at /
    verify_interval: float = DEFAULT_VERIFY_INTERVAL  # seconds between checksum verifications (index/live.py)
    keep_queries: int = DEFAULT_KEEP  # query images kept with their marks (index/kept_queries.py)


def open_api(options: ApiOptions, header: str, value: str):
    """The API app of one process, its responses tagged with `header`: `value`; the index opened
    memory-mapped, and followed from the app's startup to its shutdown."""
    limit_malloc_arenas()
    live = LiveIndex(
        options.index,
        options.model,
        mmap=True,
        verify_interval=options.verify_interval,
        keep_queries=options.keep_queries,
    )
    batcher = Batcher(options.batch_wait_ms, options.max_batch) if options.max_batch != 1 else None

    @asynccontextmanager
    async def following(_):
        live.start(warm_batch=options.max_batch)
        log.info("%s %s serving %s", header, value, live.snapshot().index.generation)
        try:
            yield
        finally:
            if batcher is not None:
                batcher.close()
            live.stop()

    api = page_elsewhere(make_api(live, options.access, batcher, following), options.page_at)
    return tag_responses(api, header, value)


class WorkerApp:
    """The ASGI app handed to uvicorn's supervisor: pickled to each spawned worker, where the
    first ASGI call (lifespan startup, before the worker accepts) opens the index."""

    def __init__(self, options: ApiOptions):
        self.options = options
        self._app = None

    def __getstate__(self) -> dict:
        return {"options": self.options, "_app": None}

    async def __call__(self, scope, receive, send):
        if self._app is None:
            self._app = open_api(self.options, WORKER_HEADER, str(os.getpid()))
        await self._app(scope, receive, send)


class WorkerConfig(uvicorn.Config):
    def configure_logging(self) -> None:
        """uvicorn calls this first thing in each spawned worker: the place to set the worker up.
        uvicorn raises SIGTERM again once it has shut down gracefully; with a handler in place,
        that second delivery ends nothing and the worker exits 0, as `metrix serve` does."""
        super().configure_logging()
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        logging.getLogger("metrix").setLevel(logging.INFO)
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda received, frame: None)


def serve_workers(
    options: ApiOptions, host: str, port: int, workers: int, start_page: Callable[[], object] | None = None
) -> int:
    """Serve until SIGTERM or SIGINT; returns 0 when every worker stopped cleanly, else 1.
    `start_page`: starts the page's server (app.server.Server.start) and returns it, to stop()."""
    config = WorkerConfig(
        WorkerApp(options),
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
    counts_dir = None
    if not os.environ.get(MULTIPROCESS_DIR):  # each worker's counts, summed by a scrape (app/metrics.py)
        counts_dir = os.environ[MULTIPROCESS_DIR] = tempfile.mkdtemp(prefix="metrix-metrics-")
    sock = config.bind_socket()
    supervisor = Multiprocess(config, sockets=[sock])  # takes over SIGTERM and SIGINT in this process
    page = start_page() if start_page is not None else None
    try:
        supervisor.run()
    finally:
        if page is not None:
            page.stop()
        sock.close()
        if counts_dir is not None:
            shutil.rmtree(counts_dir, ignore_errors=True)
            del os.environ[MULTIPROCESS_DIR]
    failed = [(p.pid, p.exitcode) for p in supervisor.processes if p.exitcode != 0]
    for pid, code in failed:
        log.warning("worker %s exited with %s", pid, code)
    return 1 if failed else 0
