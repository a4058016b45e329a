"""The endpoint the page lists under "Use via API": `/search` for gradio_client and Gradio's other
clients, answering the same plain JSON as `POST /api/search` (rank, id, label, score, image URL,
...) with one difference: a result's gallery path is `gallery_path`, not `path`, because
gradio_client takes any object with a string `path` for a file on the server and tries to download
it. The page's own upload event is not exposed: its outputs (a gallery of links to the image route)
are for the browser.

Type hints, not components, give the endpoint its signature (gr.api), so no
`from __future__ import annotations` here: Gradio reads the hints at run time.
"""

from pathlib import Path

import gradio as gr
from gradio import FileData

from metrix.images import ImageDecodeError
from metrix.index.errors import IndexUnavailable
from metrix.index.live import LiveIndex
from metrix.index.query import Refinement
from metrix.index.store import GalleryIndexError

from .access import Access
from .api import result_json
from .batching import Batcher
from .page import request_base
from .search import DEFAULT_K, MAX_K, MAX_UPLOAD_BYTES, run_query


def search_endpoint(live: LiveIndex, access: Access, batcher: Batcher | None = None):
    """The function gr.api exposes as `/search`, over one live index and its access rules."""

    def search(
        image: FileData,
        request: gr.Request,
        k: int = DEFAULT_K,
        box: str = "",
        labels: list[str] | None = None,
        path_prefix: str = "",
        right: list[int] | None = None,
        wrong: list[int] | None = None,
    ) -> dict:
        """The gallery images most similar to an image, or to a region of it.

        Args:
            image: the query image (JPEG, PNG, WebP, ...)
            k: how many results, 1-50
            box: search this region only, "x0,y0,x1,y1" in pixels; empty for the whole picture
            labels: only images with these labels (top-level folders; "" is the gallery root)
            path_prefix: only images whose gallery path starts with this
            right: relevance feedback, ids of earlier results marked right
            wrong: relevance feedback, ids of earlier results marked wrong
        """
        path = Path(image["path"])  # gr.api hands the uploaded FileData over as its dict
        name = image.get("orig_name") or path.name
        if not 1 <= k <= MAX_K:
            raise gr.Error(f"k must be 1-{MAX_K}, not {k}")
        if path.stat().st_size > MAX_UPLOAD_BYTES:
            raise gr.Error(f"{name}: larger than the {MAX_UPLOAD_BYTES // 2**20} MB upload limit")
        try:
            refinement = Refinement.from_form(box, labels, path_prefix, right, wrong)
            result = run_query(live, name, k, path.read_bytes(), refinement, batcher)
        except ImageDecodeError as failure:
            raise gr.Error(f"{name}: {failure.reason}") from None
        except (GalleryIndexError, ValueError, IndexUnavailable) as failure:
            raise gr.Error(str(failure)) from None
        answer = result_json(result, k, request_base(request), access)
        for item in (*answer["results"], *answer["left_out"]):
            item["gallery_path"] = item.pop("path")
        return answer

    return search
