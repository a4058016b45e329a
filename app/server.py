"""The one process that serves both the page and the JSON API: a FastAPI app with the API's routes
and the Gradio page mounted at `/`, run by uvicorn. `Server.start()` runs it in a thread (tests,
notebooks); `Server.run()` blocks (`metrix serve`)."""

from __future__ import annotations

import logging
import signal
import threading
import time

import gradio as gr
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from metrix import __version__
from metrix.index.live import LiveIndex

from .access import Access
from .api import Service, error, unknown_routes
from .api import router as api_routes
from .duplicates import duplicates_router
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
) -> FastAPI:
    api = FastAPI(
        title="Metrix image search",
        version=__version__,
        description="Search a gallery index by image. The page is at `/`; this is its JSON API.",
    )

    @api.middleware("http")
    async def refuse_large_uploads(request: Request, call_next):
        length = request.headers.get("content-length", "")
        if request.url.path.endswith("/api/search") and length.isdigit() and int(length) > MAX_UPLOAD_BYTES + 65536:
            return error(413, f"upload of {int(length):,} bytes: larger than the {MAX_UPLOAD_BYTES // 2**20} MB limit")
        return await call_next(request)

    @api.exception_handler(StarletteHTTPException)
    async def framework_error(request: Request, failure: StarletteHTTPException):
        """The framework's own refusals (a body that does not parse, an unknown route) in the
        API's shape too: {"error": one line}."""
        detail = str(failure.detail or "").strip().splitlines()
        return error(failure.status_code, detail[0] if detail else f"HTTP {failure.status_code}")

    @api.exception_handler(RequestValidationError)
    async def one_line(request: Request, failure: RequestValidationError):
        first = failure.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return error(400, f"{where}: {first.get('msg', 'invalid')}")

    api.state.service = Service(live, access)
    api.include_router(api_routes)
    api.include_router(duplicates_router(live, access))
    api.include_router(unknown_routes)
    page = build_app(live, access, default_k, delete_cache)
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
        self.live, self.host, self.port = live, host, port
        app = make_app(live, access or Access(), **app_options)
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
        self.live.start()
        if threading.current_thread() is threading.main_thread():
            # uvicorn handles the signal, then raises it again once it has shut down: with these
            # handlers in place that second delivery ends nothing, and the process exits normally.
            for number in (signal.SIGTERM, signal.SIGINT):
                signal.signal(number, lambda received, frame: log.info("stopped by %s", signal.Signals(received).name))
        try:
            self._server.run()
        finally:
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
