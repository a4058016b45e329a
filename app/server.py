"""The one process that serves both the page and the JSON API: a FastAPI app with the API's routes
and the Gradio page mounted at `/`, run by uvicorn. `Server.start()` runs it in a thread (tests,
notebooks); `Server.run()` blocks (`metrix serve`). Concurrent queries, from the API and the page
alike, are embedded and searched in batches (app/batching.py): `batch_wait_ms`, `max_batch`."""

from __future__ import annotations

import logging
import signal
import threading
import time

import gradio as gr
import uvicorn
from fastapi import FastAPI

from metrix.index.live import LiveIndex

from .access import Access
from .api_app import make_api
from .batching import DEFAULT_MAX_BATCH, DEFAULT_WAIT_MS, Batcher
from .search import DEFAULT_K, MAX_UPLOAD_BYTES
from .ui import build_app

log = logging.getLogger("metrix.app")
#: Gradio's cache (uploaded queries, the query preview of "search with this image") is swept every
#: minute of files older than ten (`metrix serve --cache-ttl`): long enough for a page to show them,
#: and a public server's disk use stays bounded by ten minutes of uploads.
DELETE_CACHE = (60, 600)
#: Seconds a stopping server waits for the requests in flight.
SHUTDOWN_GRACE = 10


def make_app(
    live: LiveIndex,
    access: Access,
    concurrency: int = 2,
    default_k: int = DEFAULT_K,
    delete_cache: tuple[int, int] = DELETE_CACHE,
    batch_wait_ms: float = DEFAULT_WAIT_MS,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> FastAPI:
    """`batch_wait_ms`: how long a query waits for others to share its model and index calls;
    `max_batch`: at most this many per batch, 1 for no batching. The batcher, if any, is
    `app.state.batcher`; whoever runs the app closes it (Server does)."""
    batcher = Batcher(batch_wait_ms, max_batch) if max_batch != 1 else None
    api = make_api(live, access, batcher)
    page = build_app(live, access, default_k, delete_cache, batcher)
    page.queue(default_concurrency_limit=concurrency, max_size=256)
    return gr.mount_gradio_app(
        api,
        page,
        path="/",
        auth=access.users or None,
        show_error=False,
        max_file_size=MAX_UPLOAD_BYTES,
        footer_links=["api"],
    )


class Server:
    def __init__(
        self, live: LiveIndex, access: Access | None = None, host: str = "127.0.0.1", port: int = 7860, **app_options
    ):
        """`app_options`: make_app's, e.g. batch_wait_ms=0.0, max_batch=32 (1: no batching)."""
        self.live, self.host, self.port = live, host, port
        app = make_app(live, access or Access(), **app_options)
        self.batcher: Batcher | None = app.state.batcher
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="warning",
                timeout_keep_alive=30,
                timeout_graceful_shutdown=SHUTDOWN_GRACE,
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT (what systemd, containers and Ctrl-C send): then stop
        accepting, let the requests in flight finish (at most SHUTDOWN_GRACE seconds) and return,
        so that `metrix serve` exits with status 0."""
        self.live.start(warm_batch=self.batcher.max_batch if self.batcher is not None else 1)
        if threading.current_thread() is threading.main_thread():
            # uvicorn handles the signal, then raises it again once it has shut down: with these
            # handlers in place that second delivery ends nothing, and the process exits normally.
            for number in (signal.SIGTERM, signal.SIGINT):
                signal.signal(number, lambda received, frame: log.info("stopped by %s", signal.Signals(received).name))
        try:
            self._server.run()
        finally:
            if self.batcher is not None:
                self.batcher.close()
            self.live.stop()

    def start(self, timeout: float = 60) -> "Server":
        self._thread = threading.Thread(target=self.run, name="metrix-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
