"""The web UI: upload (or paste) a photo, see the most similar gallery images.

`build_app(live, access)` makes the Gradio Blocks for a live index (see metrix.index.live), so a
rebuilt gallery shows up without a restart. Queries are embedded by the index's exported ONNX
model through metrix.export.runtime: the serving path imports no torch. Result images are shown
by URL from the API's image route (signed when access is controlled), so Gradio copies none of
them into its cache and serves no file of the gallery folder itself.
"""

from __future__ import annotations

import html
import logging

import gradio as gr

from metrix.images import ImageDecodeError, decode_rgb
from metrix.index.live import LiveIndex
from metrix.index.store import GalleryIndex, Hit

from .access import Access
from .api import image_url
from .search import DEFAULT_K, MAX_K, run_query

log = logging.getLogger("metrix.app")
PROMPT = "Upload or paste a photo to search the gallery."
THUMBNAIL, QUERY_PREVIEW = 320, 512


#: What each path measured with the CPU recipe on the unseen test classes of cub100 (photos) and
#: omniglot_small (handwriting), MAP@R (docs/benchmarks.md, issues 4 and 17).
PATH_EFFECTS = {
    "floor": "Untrained, it measured MAP@R 37.1 on cub100 and 21.0 on omniglot_small; training on your images raises that.",
    "without labels": "Trained without labels, it measured MAP@R 41.0 on cub100 and 30.8 on omniglot_small "
                      "(untrained: 37.1 and 21.0).",
    "with labels": "Trained with labels, it measured MAP@R 42.4 on cub100 and 35.4 on omniglot_small (untrained: 37.1 and 21.0).",
}


def caption(hit: Hit) -> str:
    return f"{hit.score:.3f} · {hit.label or '-'} · {hit.path}"


def header(index: GalleryIndex) -> str:
    manifest, model = index.manifest, index.manifest["model"]
    kind = manifest["index"]["type"] + (f" (nprobe {manifest['index']['nprobe']}, recall@10 "
                                        f"{manifest['index']['recall_at_10']:.3f})" if "nprobe" in manifest["index"] else "")
    return (f"## Metrix image search\n"
            f"**{len(index):,} images** from `{manifest['gallery_root']}` · model **{model['backbone']}** "
            f"({model['loss']}, mixup {model['mixup']}, {model['embedding_size']}-d, weights "
            f"`{model['weights_sha256'][:12]}`) · index {kind} ({index.generation}) · built {manifest['updated']}"
            + (f"\n\nModel: {model['provenance']}. {PATH_EFFECTS[model['training_path']]}"
               if "training_path" in model else ""))



def details(hit: dict) -> str:
    return "\n".join([f"**{hit['path']}**", "", f"- similarity: {hit['score']:.4f}", f"- label: {hit['label'] or '-'}",
                      f"- size: {hit['width']} x {hit['height']} px", f"- id: {hit['id']}"])


def request_base(request: gr.Request | None) -> str:
    inner = getattr(request, "request", None)
    if inner is not None and hasattr(inner, "base_url"):
        return str(inner.base_url)
    headers = getattr(request, "headers", {}) or {}
    return f"{headers.get('x-forwarded-proto', 'http')}://{headers.get('host', '127.0.0.1')}/"


def build_app(live: LiveIndex, access: Access, default_k: int = DEFAULT_K,
              delete_cache: tuple[int, int] | None = None) -> gr.Blocks:

    def run(image_path, k, request: gr.Request):
        return answer(image_path, k, request)

    def answer(image_path, k, request: gr.Request, data: bytes | None = None):
        """Search with a file (an upload) or, given `data`, with those bytes (`image_path` names them)."""
        if not image_path:
            return [], PROMPT, []
        try:
            result = run_query(live, image_path, int(k), data)
        except ImageDecodeError as error:
            return [], f"That upload cannot be searched: {error.reason}. Try a JPEG, PNG or WebP photo.", []
        except Exception:  # never show a stack trace in the UI; the server log has it
            log.exception("search failed")
            return [], "The search failed on the server; the log says why.", []
        base = request_base(request)
        hits = [{**vars(hit), "url": image_url(base, access, hit.id)} for hit in result.hits]
        items = [(image_url(base, access, hit.id, THUMBNAIL), caption(hit)) for hit in result.hits]
        return items, result.status(), hits

    def select(hits: list[dict], event: gr.SelectData):
        if not hits or event.index is None or event.index >= len(hits):
            return "", "", None
        hit = hits[event.index]
        return f'<img src="{html.escape(hit["url"])}" alt="{html.escape(hit["path"])}" class="selected-result">', details(hit), hit

    def search_with(hit: dict | None, k, request: gr.Request):
        """Search with a result: read from the gallery on the server (the page only has its URL)."""
        if not hit:
            return None, [], PROMPT, []
        source = live.snapshot().index.source
        try:
            data = source.read(hit["path"])
            preview, _ = decode_rgb(source.name(hit["path"]), data)
        except OSError as error:
            return None, [], f"{hit['path']} cannot be read: {error.strerror or error}.", []
        except ImageDecodeError as error:
            return None, [], f"{hit['path']} cannot be searched: {error.reason}.", []
        preview.thumbnail((QUERY_PREVIEW, QUERY_PREVIEW))
        return (preview, *answer(source.name(hit["path"]), k, request, data))

    with gr.Blocks(title="Metrix image search", delete_cache=delete_cache) as app:
        title = gr.Markdown(header(live.snapshot().index))
        hits_state, selected_state = gr.State([]), gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                query = gr.Image(label="Query", type="filepath", sources=["upload", "clipboard"], height=320)
                # Hand the uploaded file over untouched: gr.Image would decode it first and turn an
                # unreadable upload into a bare "Error"; our decoder says what is wrong. (An instance
                # override, because subclassing a Gradio component writes a .pyi beside this file.)
                query.preprocess = lambda payload: None if payload is None else payload.path
                k = gr.Slider(1, MAX_K, value=default_k, step=1, label="Results (k)")
                status = gr.Markdown(PROMPT, elem_id="status")
            with gr.Column(scale=2):
                results = gr.Gallery(label="Most similar", columns=4, height="auto", object_fit="contain",
                                     allow_preview=False, elem_id="results")
        with gr.Row():
            with gr.Column(scale=1):
                large = gr.HTML(elem_id="selected")
            with gr.Column(scale=1):
                info = gr.Markdown("Click a result to see it larger.")
                again = gr.Button("Search with this image")

        outputs = [results, status, hits_state]
        # upload, not change: "Search with this image" sets the query's picture too, and must not search twice
        query.upload(run, [query, k], outputs, api_name="search")
        k.release(run, [query, k], outputs, api_name=False)
        results.select(select, [hits_state], [large, info, selected_state], api_name=False)
        again.click(search_with, [selected_state, k], [query, *outputs], api_name=False)
        app.load(lambda: header(live.snapshot().index), None, title, api_name=False)
    return app
