"""Near-duplicates of the index being served:

    GET /duplicates?threshold=T       a page of picture groups (thumbnails through the API's image route)
    GET /api/duplicates?threshold=T   the same groups as JSON (index/duplicates.py's, plus each image's URL)

Without a threshold the groups are calibrated on the gallery and confirmed on their pixels
(index/calibration.py, index/copy_check.py). Both follow the live index and keep the result per
(generation, threshold), so a reload or a
second visitor does not search the gallery again. With access control on, both need the API's
credentials (the page asks the browser for the login as HTTP Basic); a bad threshold is a one-line 400.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from metrix.index.duplicates import check_threshold, find_duplicates
from metrix.index.live import LiveIndex, Snapshot

from .access import Access
from .api import error, image_url
from .duplicates_html import THUMBNAIL, render_page

#: Results kept, the most recently asked for: one per threshold a visitor tried.
CACHED = 16
THRESHOLD = Query(
    None,
    description="cosine similarity in (0, 1], every pair at or above it grouped [default: calibrated on the "
    "gallery, each pair confirmed on its pixels]",
)


class DuplicateResults:
    """find_duplicates(...).to_json() of the live index's current generation, per threshold, cached."""

    def __init__(self, live: LiveIndex, size: int = CACHED):
        self.live, self.size = live, size
        self._results: OrderedDict[tuple[str, float | None], dict] = OrderedDict()
        self._lock = threading.Lock()  # one search at a time; a second asker of the same result waits for it

    def get(self, threshold: float | None) -> dict:
        """The groups at `threshold` (parse_threshold's); IndexUnavailable when no generation verifies.
        Its other errors are the server's (a gallery that cannot be read): a 500, never a 400."""
        return self.live.answer(lambda snapshot: self._groups(snapshot, threshold))

    def _groups(self, snapshot: Snapshot, threshold: float | None) -> dict:
        key = (snapshot.index.generation, threshold)
        with self._lock:
            if key not in self._results:
                self._results[key] = find_duplicates(snapshot.index, threshold, embedder=snapshot.embedder).to_json()
                while len(self._results) > self.size:
                    self._results.popitem(last=False)
            self._results.move_to_end(key)
            return self._results[key]


def parse_threshold(threshold: str | None) -> float | None:
    """The query's threshold (None: calibrated); ValueError, the client's, for a bad one."""
    return None if threshold in (None, "") else check_threshold(threshold)


def duplicates_router(live: LiveIndex, access: Access) -> APIRouter:
    router = APIRouter(tags=["duplicates"])
    results = DuplicateResults(live)

    def allowed(request: Request) -> bool:
        return access.allows(request.headers.get("authorization"))

    @router.get("/duplicates", response_class=HTMLResponse, summary="Near-duplicate groups, as a page of pictures")
    def page(request: Request, threshold: str | None = THRESHOLD):
        if not allowed(request):
            scheme = 'Basic realm="metrix"' if access.users else "Bearer"
            return PlainTextResponse(
                "this page needs the server's login (HTTP Basic) or its API token",
                401,
                headers={"WWW-Authenticate": scheme},
            )
        try:
            value = parse_threshold(threshold)
        except ValueError as failure:
            return PlainTextResponse(str(failure), 400)
        result = results.get(value)
        base = str(request.base_url)
        return HTMLResponse(
            render_page(
                result,
                lambda image: image_url(base, access, image["id"], THUMBNAIL),
                lambda image: image_url(base, access, image["id"]),
                form=True,
            )
        )

    @router.get("/api/duplicates", summary="Near-duplicate groups of the gallery, as JSON")
    def groups(request: Request, threshold: str | None = THRESHOLD):
        if not allowed(request):
            return error(
                401,
                "this server needs `Authorization: Bearer <token>` (or the page's login as HTTP Basic)",
                **{"WWW-Authenticate": "Bearer"},
            )
        try:
            value = parse_threshold(threshold)
        except ValueError as failure:
            return error(400, str(failure))
        result = results.get(value)
        base = str(request.base_url)
        return {
            **result,
            "groups": [
                {
                    **group,
                    "images": [{**image, "url": image_url(base, access, image["id"])} for image in group["images"]],
                }
                for group in result["groups"]
            ],
        }

    return router
