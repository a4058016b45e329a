"""The web UI: upload (or paste) a photo, see the most similar gallery images.

`build_app(index, embedder)` makes the Gradio Blocks for any opened index, so tests can serve a
gallery they wrote. Queries are embedded by the index's exported ONNX model through
metrix.export.runtime: the serving path imports no torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from metrix.export.runtime import Embedder, load_for_model
from metrix.images import ImageDecodeError
from metrix.index.store import GalleryIndex, Hit

log = logging.getLogger("metrix.app")
DEFAULT_K, MAX_K = 8, 50
#: Uploads above this are refused by Gradio before they reach us; decoded images above
#: metrix.images.MAX_PIXELS are refused by the decoder.
MAX_UPLOAD = "20mb"
PROMPT = "Upload or paste a photo to search the gallery."


def search(index: GalleryIndex, embedder: Embedder, image_path: str | None, k: int) -> tuple[list, str, list[dict]]:
    """(gallery items [(file, caption)], status line, hits as dicts) for a query image file."""
    if not image_path:
        return [], PROMPT, []
    try:
        query, _ = load_for_model(image_path, embedder.metadata)
    except ImageDecodeError as error:
        return [], f"That upload cannot be searched: {error.reason}. Try a JPEG, PNG or WebP photo.", []
    hits = index.search(embedder.embed(query[None]), int(k))[0]
    items = [(str(index.gallery_root / hit.path), caption(hit)) for hit in hits]
    return items, f"{len(hits)} most similar of {len(index):,} gallery images.", [vars(hit) for hit in hits]


def caption(hit: Hit) -> str:
    return f"{hit.score:.3f} · {hit.label or '-'} · {hit.path}"


def header(index: GalleryIndex) -> str:
    manifest, model = index.manifest, index.manifest["model"]
    kind = manifest["index"]["type"] + (f" (nprobe {manifest['index']['nprobe']}, recall@10 "
                                        f"{manifest['index']['recall_at_10']:.3f})" if "nprobe" in manifest["index"] else "")
    return (f"## Metrix image search\n"
            f"**{len(index):,} images** from `{manifest['gallery_root']}` · model **{model['backbone']}** "
            f"({model['loss']}, mixup {model['mixup']}, {model['embedding_size']}-d, weights "
            f"`{model['weights_sha256'][:12]}`) · index {kind} · built {manifest['updated']}")


def details(hit: dict) -> str:
    return "\n".join([f"**{hit['path']}**", "", f"- similarity: {hit['score']:.4f}", f"- label: {hit['label'] or '-'}",
                      f"- size: {hit['width']} x {hit['height']} px", f"- id: {hit['id']}"])


def build_app(index: GalleryIndex, embedder: Embedder, default_k: int = DEFAULT_K) -> gr.Blocks:
    root = index.gallery_root

    def run(image_path, k):
        try:
            return search(index, embedder, image_path, k)
        except Exception:  # never show a stack trace in the UI; the server log has it
            log.exception("search failed")
            return [], "The search failed on the server; the log says why.", []

    def select(hits: list[dict], event: gr.SelectData):
        if not hits or event.index is None or event.index >= len(hits):
            return None, "", None
        hit = hits[event.index]
        return str(root / hit["path"]), details(hit), str(root / hit["path"])

    def search_with(selected: str | None, k):
        items, status, hits = run(selected, k)
        return selected, items, status, hits

    with gr.Blocks(title="Metrix image search") as app:
        gr.Markdown(header(index))
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
        with gr.Row(visible=True):
            with gr.Column(scale=1):
                large = gr.Image(label="Selected result", type="filepath", interactive=False, height=360)
            with gr.Column(scale=1):
                info = gr.Markdown("Click a result to see it larger.")
                again = gr.Button("Search with this image")

        outputs = [results, status, hits_state]
        query.change(run, [query, k], outputs, api_name="search")
        k.release(run, [query, k], outputs, api_name=False)
        results.select(select, [hits_state], [large, info, selected_state], api_name=False)
        again.click(search_with, [selected_state, k], [query, *outputs], api_name=False)
    return app


def launch(app: gr.Blocks, gallery_root: Path, host: str = "127.0.0.1", port: int = 7860,
           concurrency: int = 2, block: bool = True):
    """Serve through Gradio's queue; files are served from the gallery root only."""
    app.queue(default_concurrency_limit=concurrency, max_size=256)
    return app.launch(server_name=host, server_port=port, allowed_paths=[str(gallery_root)],
                      max_file_size=MAX_UPLOAD, show_error=False, prevent_thread_lock=not block,
                      footer_links=["api"], quiet=not block)
