"""The JSON API as an app of its own, without the page: what each process of `metrix serve
--workers N` and each Ray Serve replica runs (app/workers.py, app/ray_serve.py). It imports no
Gradio, so those processes start faster and stay smaller.

The page cannot run in several processes behind one port: Gradio keeps a page session's queue,
its event stream and its gr.State values in the process that opened it, and neither the kernel
nor Ray Serve's proxy sends a session's later requests back to that process. So `/` of those
processes says where the page is instead (page_elsewhere).
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from metrix import __version__
from metrix.index.errors import IndexUnavailable
from metrix.index.live import LiveIndex

from .access import Access
from .api import Service, error, unknown_routes
from .api import router as api_routes
from .batching import Batcher
from .duplicates import duplicates_router
from .metrics import record_request
from .metrics import router as metrics
from .probes import router as probes
from .search import MAX_UPLOAD_BYTES


def make_api(live: LiveIndex, access: Access, batcher: Batcher | None = None, lifespan=None) -> FastAPI:
    """The API's routes, limits and one-line errors, as make_app (app/server.py) serves them beside
    the page."""
    api = FastAPI(
        title="Metrix image search",
        version=__version__,
        description="Search a gallery index by image. This is the JSON API; the page, where one is served, is at `/`.",
        lifespan=lifespan,
    )

    @api.middleware("http")
    async def refuse_large_uploads(request: Request, call_next):
        length = request.headers.get("content-length", "")
        if request.url.path.endswith("/api/search") and length.isdigit() and int(length) > MAX_UPLOAD_BYTES + 65536:
            return error(413, f"upload of {int(length):,} bytes: larger than the {MAX_UPLOAD_BYTES // 2**20} MB limit")
        return await call_next(request)

    @api.middleware("http")
    async def count(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", None) or "other"
        record_request(request.method, route, response.status_code, time.perf_counter() - start)
        return response

    @api.exception_handler(StarletteHTTPException)
    async def framework_error(request: Request, failure: StarletteHTTPException):
        detail = str(failure.detail or "").strip().splitlines()
        return error(failure.status_code, detail[0] if detail else f"HTTP {failure.status_code}")

    @api.exception_handler(IndexUnavailable)
    async def unavailable(request: Request, failure: IndexUnavailable):
        return error(503, str(failure))

    @api.exception_handler(Exception)
    async def server_fault(request: Request, failure: Exception):  # the traceback goes to the server's log
        return error(500, "the server failed to answer; its log says why")

    @api.exception_handler(RequestValidationError)
    async def one_line(request: Request, failure: RequestValidationError):
        first = failure.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return error(400, f"{where}: {first.get('msg', 'invalid')}")

    api.state.batcher = batcher
    api.state.service = Service(live, access, batcher)
    api.include_router(api_routes)
    api.include_router(duplicates_router(live, access))
    api.include_router(probes)
    api.include_router(metrics)
    api.include_router(unknown_routes)
    return api


#: glibc's mallopt parameter for the most malloc arenas (malloc.h's M_ARENA_MAX).
M_ARENA_MAX, SERVING_ARENAS = -8, 2


def limit_malloc_arenas(arenas: int = SERVING_ARENAS) -> bool:
    """At most `arenas` glibc malloc arenas in this process; call it before any thread allocates
    (glibc fixes its arena limit then). By default glibc gives each new thread of the request pool
    an arena of its own, up to 8 per core, and each keeps the peak it reached: in a 10-minute soak at
    32 users a server's RSS crept from 614 to 675 MB, with 2 arenas it stayed at 618 MB after the
    first 90 s (docs/app.md). False where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


def page_elsewhere(api: FastAPI, page_at: str | None) -> FastAPI:
    """`/` of an API served without the page says where the page is, if anywhere."""

    @api.get("/", include_in_schema=False)
    def no_page():
        where = f"the page is on {page_at}" if page_at else "no page is served (metrix serve --page-port serves one)"
        return error(404, f"this address serves the JSON API (/api, docs at /docs); {where}")

    return api


def tag_responses(api: FastAPI, header: str, value: str) -> FastAPI:
    """Every response of `api` names the process (or replica) that answered it in `header`."""

    @api.middleware("http")
    async def tag(request: Request, call_next):
        response = await call_next(request)
        response.headers[header] = value
        return response

    return api
