"""The JSON API beside the page, in the same process:

    POST /api/search        multipart `image` (+ form fields `k`, `box`, `label`, `path_prefix`,
                            `right`, `wrong`): the nearest gallery images to the image or a region
                            of it, within labels or a path prefix, moved by relevance feedback
    POST /api/search/vector JSON `{"vector": [...], "k", "label", "path_prefix"}`: the nearest gallery
                            images to an embedding made with the index's model elsewhere
    GET  /api/images/{id}/similar  more like an indexed image (`?k=`, `label`, `path_prefix`)
    POST /api/explain       multipart `image` + `id` (+ `box`): where the image and that gallery
                            image agree, as heat maps
    GET  /api/labels        the labels of the index, with their image counts
    GET  /api/info          index, model, counts, generation, query batching and its batch sizes, recall
                            measured on served queries (index/served_recall.py), and the model's
                            comparison with the one it replaced (index/upgrade_check.py)
    GET  /api/health        liveness, open to all (for load balancers and service managers)
    GET  /api/images/{id}   an indexed image (`?thumbnail=N` for one at most N px a side)

Errors are JSON `{"error": "one line"}` with 400 (bad request), 401 (no or wrong credentials),
404 (not an indexed image, or its file is gone), 413 (upload too large), 415 (not an image) or
503 (no generation of the index verifies: a server fault; index/live.py). No answer names a
folder or file of the server: an index by its folder's name, a generation by its own.
Only images of the current generation are served, and only while their file is as indexed: a
non-image file in the gallery folder has no id, so no URL reaches it. Images are read through the
gallery's source, so an object-store gallery is served from the store (the server needs read
access to it; nothing is copied at build time).
"""

from __future__ import annotations

import io
import logging
import mimetypes
from dataclasses import dataclass
from urllib.parse import urlencode

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from metrix import __version__
from metrix.export.runtime import ModelError
from metrix.images import ImageDecodeError, decode_rgb, parse_box
from metrix.index.live import LiveIndex
from metrix.index.query import Refinement
from metrix.index.store import REBUILD_HINT, GalleryIndexError, Hit

from .access import Access
from .batching import Batcher
from .search import (
    DEFAULT_K,
    MAX_K,
    MAX_UPLOAD_BYTES,
    Result,
    explain_match,
    public_location,
    public_model,
    run_query,
    run_without_upload,
)

log = logging.getLogger("metrix.app")
MAX_THUMBNAIL = 1024


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def image_url(request_base: str, access: Access, image_id: int, thumbnail: int | None = None) -> str:
    """Where a hit's image is fetched: absolute, and signed when access is controlled."""
    params = {**({"thumbnail": str(thumbnail)} if thumbnail else {}), **access.sign(image_id)}
    return f"{request_base.rstrip('/')}/api/images/{image_id}" + (f"?{urlencode(params)}" if params else "")


def hit_json(hit: Hit, rank: int, url: str) -> dict:
    return {
        "rank": rank,
        "id": hit.id,
        "path": hit.path,
        "score": hit.score,
        "label": hit.label,
        "width": hit.width,
        "height": hit.height,
        "bytes": hit.size,
        "url": url,
        "match_probability": hit.match_probability,  # None: the gallery has no labels to calibrate on
    }


def result_json(result: Result, k: int, base: str, access: Access) -> dict:
    """A search's answer as the API (and the page's own client endpoint) returns it."""
    return {
        "generation": result.generation,
        "images": result.images,
        "k": k,
        "took_ms": round(result.seconds * 1000, 2),
        "applied": result.refinement.describe(),
        "results": [hit_json(hit, rank, image_url(base, access, hit.id)) for rank, hit in enumerate(result.hits, 1)],
        "left_out": [{"path": path, "reason": reason} for path, reason in result.left_out],
        **({"hint": REBUILD_HINT} if result.left_out else {}),
        "no_good_match": result.no_good_match,
    }


@dataclass(frozen=True)
class Service:
    """What the routes serve: the live index, its access rules and the batcher of its queries (None:
    each query alone), on the app's state so that the routes can live at module level."""

    live: LiveIndex
    access: Access
    batcher: Batcher | None = None


def service(request: Request) -> Service:
    return request.app.state.service


router = APIRouter(prefix="/api", tags=["search"])


def refused(request: Request) -> JSONResponse | None:
    if service(request).access.allows(request.headers.get("authorization")):
        return None
    return error(
        401,
        "this server needs `Authorization: Bearer <token>` (or the page's login as HTTP Basic)",
        **{"WWW-Authenticate": "Bearer"},
    )


async def upload(request: Request, image: UploadFile) -> tuple[str, bytes | JSONResponse]:
    """(the upload's name, its bytes), or a refusal in place of the bytes."""
    if (denied := refused(request)) is not None:
        return "", denied
    data = await image.read(MAX_UPLOAD_BYTES + 1)
    name = image.filename or "upload"
    if len(data) > MAX_UPLOAD_BYTES:
        return name, error(413, f"{name}: larger than the {MAX_UPLOAD_BYTES // 2**20} MB upload limit")
    return name, data


def failed(name: str, failure: Exception) -> JSONResponse:
    if isinstance(failure, ImageDecodeError):
        return error(415 if failure.reason.startswith("not an image") else 400, f"{name}: {failure.reason}")
    return error(400, str(failure))


@router.post("/search", summary="The gallery images most similar to an uploaded image (or a region of it)")
async def search(
    request: Request,
    image: UploadFile = File(description="the query image (JPEG, PNG, WebP, ...)"),
    k: int = Form(DEFAULT_K, ge=1, le=MAX_K, description="how many results"),
    box: str | None = Form(
        None, description="search this region only: x0,y0,x1,y1 in pixels of the image as displayed"
    ),
    label: list[str] | None = Form(
        None, description="only images with this label (top-level folder); repeat the field for several"
    ),
    path_prefix: str | None = Form(None, description="only images whose gallery path starts with this"),
    right: list[str] | None = Form(
        None, description="relevance feedback: ids marked right (repeat, or comma-separated)"
    ),
    wrong: list[str] | None = Form(
        None, description="relevance feedback: ids marked wrong (repeat, or comma-separated)"
    ),
    min_probability: float | None = Form(
        None, ge=0, le=1, description="leave out results less likely a match (a labelled gallery's calibration)"
    ),
):
    name, data = await upload(request, image)
    if isinstance(data, JSONResponse):
        return data
    try:
        refinement = Refinement.from_form(box, label, path_prefix, right, wrong, min_probability)
        served = service(request)
        result = await run_in_threadpool(run_query, served.live, name, k, data, refinement, served.batcher)
    except (ImageDecodeError, GalleryIndexError, ValueError) as failure:
        return failed(name, failure)
    return result_json(result, k, str(request.base_url), service(request).access)


class VectorQuery(BaseModel):
    vector: list[float] = Field(description="an L2-normalised embedding of the index's model, of its dimension")
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description="how many results")
    label: list[str] = Field(default_factory=list, description="only images with these labels")
    path_prefix: str = Field("", description="only images whose gallery path starts with this")
    min_probability: float = Field(0.0, ge=0, le=1, description="leave out results less likely a match")


@router.post("/search/vector", summary="The gallery images most similar to an embedding of the index's model")
async def search_by_vector(request: Request, query: VectorQuery):
    if (denied := refused(request)) is not None:
        return denied
    refinement = Refinement.from_form(
        labels=query.label, path_prefix=query.path_prefix, min_probability=query.min_probability
    )
    try:
        result = await run_in_threadpool(
            run_without_upload, service(request).live, query.k, refinement, None, query.vector
        )
    except (GalleryIndexError, ValueError) as failure:
        return error(400, str(failure))
    return result_json(result, query.k, str(request.base_url), service(request).access)


@router.get("/images/{image_id}/similar", summary="More like an indexed image (itself left out)")
def similar(
    request: Request,
    image_id: int,
    k: int = Query(DEFAULT_K, ge=1, le=MAX_K, description="how many results"),
    label: list[str] | None = Query(None, description="only images with this label; repeat for several"),
    path_prefix: str | None = Query(None, description="only images whose gallery path starts with this"),
    min_probability: float | None = Query(None, ge=0, le=1, description="leave out results less likely a match"),
):
    if (denied := refused(request)) is not None:
        return denied
    refinement = Refinement.from_form(labels=label, path_prefix=path_prefix, min_probability=min_probability)
    try:
        result = run_without_upload(service(request).live, k, refinement, image_id=image_id)
    except GalleryIndexError as failure:
        return error(404, str(failure))
    return result_json(result, k, str(request.base_url), service(request).access)


@router.post("/explain", summary="Where an uploaded image and a gallery image agree: a heat map over each")
async def explain(
    request: Request,
    image: UploadFile = File(description="the query image"),
    id: int = Form(description="the gallery image's id (from a search)"),
    box: str | None = Form(None, description="the query's region, as in /api/search"),
):
    name, data = await upload(request, image)
    if isinstance(data, JSONResponse):
        return data
    try:
        found = await run_in_threadpool(
            explain_match, service(request).live, name, data, parse_box(box) if box else None, id
        )
    except LookupError as failure:
        return error(404, str(failure.args[0]))
    except ModelError as failure:
        return error(409, str(failure))
    except (ImageDecodeError, ValueError) as failure:
        return failed(name, failure)
    hit, explanation = found
    return {"id": hit.id, "path": hit.path, "label": hit.label, **explanation.to_json()}


@router.get("/labels", summary="The labels (top-level folders) of the index, with their image counts")
def labels(request: Request):
    if (denied := refused(request)) is not None:
        return denied
    counts = service(request).live.answer(lambda snapshot: snapshot.index.labels())
    return {"labels": [{"label": label, "images": count} for label, count in counts]}


@router.get("/info", summary="What is being served")
def info(request: Request):
    if (denied := refused(request)) is not None:
        return denied
    live = service(request).live
    index = live.snapshot().index
    manifest = index.manifest
    batcher = service(request).batcher
    return {
        "version": __version__,
        "index": index.dir.name,
        "generation": index.generation,
        "images": len(index),
        "gallery_root": public_location(manifest["gallery_root"]),
        "updated": manifest["updated"],
        "index_type": manifest["index"],
        "model": public_model(manifest["model"]),
        "batching": batcher.stats() if batcher is not None else {"max_batch": 1},
        "served_recall": live.recall.stats(),
        "integrity": live.integrity(),
        "upgrade_check": manifest.get("upgrade_check"),  # index/upgrade_check.py, None: not a new model
    }


@router.get("/health", summary="Liveness")
def health(request: Request):
    index = service(request).live.snapshot().index
    return {"status": "ok", "generation": index.generation, "images": len(index)}


@router.get("/images/{image_id}", summary="An indexed image", response_class=Response)
def indexed_image(
    request: Request,
    image_id: int,
    thumbnail: int | None = Query(None, ge=16, le=MAX_THUMBNAIL, description="longest side, px"),
    expires: str | None = None,
    sig: str | None = None,
):
    access = service(request).access
    if access.enabled and not access.signed(image_id, expires, sig) and refused(request) is not None:
        return error(401, f"image {image_id}: the link has expired or is not valid; search again")
    index, row = service(request).live.answer(lambda snap: (snap.index, snap.index.rows([image_id]).get(image_id)))
    if row is None:
        return error(404, f"image {image_id}: not in the index being served")
    hit = Hit(image_id, 0.0, *row)
    if (reason := index.stale(hit)) is not None:
        return error(404, f"{hit.path}: {reason} since indexing; {REBUILD_HINT}")
    source = index.source
    try:
        data = source.read(hit.path)
    except OSError as failure:
        return error(404, f"{hit.path}: cannot read ({failure.strerror or failure})")
    if thumbnail is None:
        media_type = mimetypes.guess_type(hit.path)[0] or "application/octet-stream"
        return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})
    try:
        picture, _ = decode_rgb(source.name(hit.path), data, min_short_side=thumbnail)
    except ImageDecodeError as failure:
        return error(404, f"{hit.path}: {failure.reason}")
    picture.thumbnail((thumbnail, thumbnail))
    encoded = io.BytesIO()
    picture.save(encoded, "JPEG", quality=85)
    return Response(encoded.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


#: Included after every other /api router (app/server.py): any other /api path answers in the
#: API's shape, not the page's.
unknown_routes = APIRouter(prefix="/api")


@unknown_routes.api_route("/{unknown:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def unknown_route(unknown: str):
    return error(404, f"/api/{unknown}: no such route (the routes are listed at /docs)")
