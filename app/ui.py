"""The web UI: upload (or paste) a photo, see the most similar gallery images; narrow the search to
a region of the photo, to labels or a path prefix; mark a result right or wrong on its tile and search
again at once;
open a result to see it larger with heat maps of why it matched.

`build_app(live, access)` makes the Gradio Blocks for a live index (see metrix.index.live), so a
rebuilt gallery shows up without a restart. Queries are embedded by the index's exported ONNX
model through metrix.export.runtime: the serving path imports no torch. Result images are shown
by URL from the API's image route (signed when access is controlled), so Gradio copies none of
them into its cache and serves no file of the gallery folder itself. Every search goes through
app/search.py, as the JSON API's do. The one endpoint listed for Gradio's clients is app/gradio_api.py's
`/search`, which answers plain JSON.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from metrix.index.live import LiveIndex

from .access import Access
from .batching import Batcher
from .gradio_api import search_endpoint
from .page import PROMPT, Page, drawn, header, label_choices
from .search import DEFAULT_K, MAX_K


def _components(live: LiveIndex, default_k: int) -> SimpleNamespace:
    """The page's components, laid out (called inside the Blocks)."""
    title = gr.Markdown(header(live.snapshot().index))
    hits_state, selected_state = gr.State([]), gr.State(None)
    query_state, marks_state, corner_state = gr.State(None), gr.State({}), gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            query = gr.Image(label="Query", type="filepath", sources=["upload", "clipboard"], height=320)
            # Hand the uploaded file over untouched: gr.Image would decode it first and turn an
            # unreadable upload into a bare "Error"; our decoder says what is wrong. (An instance
            # override, because subclassing a Gradio component writes a .pyi beside this file.)
            query.preprocess = lambda payload: None if payload is None else payload.path
            region = gr.Image(
                label="Region: click two opposite corners to search that part only",
                interactive=False,
                height=240,
                elem_id="region",
                buttons=[],
            )
            with gr.Row():
                box = gr.Textbox(label="Region x0,y0,x1,y1 (px; empty: the whole picture)", elem_id="box", scale=3)
                whole = gr.Button("Whole picture", scale=1, size="sm")
            k = gr.Slider(1, MAX_K, value=default_k, step=1, label="Results (k)")
            labels = gr.Dropdown(
                label="Only these labels",
                choices=label_choices(live.snapshot().index),
                multiselect=True,
                value=[],
                elem_id="labels",
            )
            prefix = gr.Textbox("", label="Only paths starting with (Enter to apply)", elem_id="prefix")
            status = gr.Markdown(PROMPT, elem_id="status")
        with gr.Column(scale=2):
            results = gr.Gallery(
                label="Most similar",
                columns=4,
                height="auto",
                object_fit="contain",
                allow_preview=False,
                elem_id="results",
            )
            forget = gr.Button("Forget feedback", size="sm", elem_id="forget")
    with gr.Row():
        with gr.Column(scale=1):
            large = gr.HTML(elem_id="selected")
        with gr.Column(scale=1):
            why = gr.HTML(elem_id="why")
        with gr.Column(scale=1):
            info = gr.Markdown(
                "Click a result to see it larger, with why it matched, and to mark it right or wrong: "
                "the search runs again at once with every mark, and each marked tile shows its mark."
            )
            with gr.Row():
                mark_right = gr.Button("✓ Right", elem_id="mark-right")
                mark_wrong = gr.Button("✗ Wrong", elem_id="mark-wrong")
                unmark = gr.Button("Unmark", size="sm", elem_id="unmark")
            again = gr.Button("Search with this image")
    return SimpleNamespace(
        title=title,
        hits_state=hits_state,
        selected_state=selected_state,
        query_state=query_state,
        marks_state=marks_state,
        corner_state=corner_state,
        query=query,
        region=region,
        box=box,
        whole=whole,
        k=k,
        labels=labels,
        prefix=prefix,
        status=status,
        results=results,
        marks={"right": mark_right, "wrong": mark_wrong, "none": unmark},
        forget=forget,
        large=large,
        why=why,
        info=info,
        again=again,
    )


def _wire(app: gr.Blocks, page: Page, ui: SimpleNamespace) -> None:
    """What each component's events run."""
    searched = [ui.results, ui.status, ui.hits_state]
    filters = [ui.k, ui.labels, ui.prefix]
    current = [ui.query_state, ui.box, *filters, ui.marks_state]
    # upload, not change: "Search with this image" sets the query's picture too, and must not search twice
    ui.query.upload(
        page.upload,
        [ui.query, *filters],
        [*searched, ui.query_state, ui.marks_state, ui.corner_state],
        api_name=False,
    ).then(page.show_query, [ui.query_state], [ui.region, ui.box], api_name=False)
    for event in (ui.k.release, ui.labels.input, ui.prefix.submit):
        event(page.rerun, current, searched, api_name=False)
    ui.region.select(
        page.click_region,
        [ui.query_state, ui.corner_state, *filters, ui.marks_state],
        [ui.region, ui.box, ui.corner_state, *searched],
        api_name=False,
    )
    ui.box.submit(page.typed_box, current, [ui.region, *searched], api_name=False)
    ui.whole.click(
        lambda q: (drawn(q, None, None) if q else None, "", None),
        [ui.query_state],
        [ui.region, ui.box, ui.corner_state],
        api_name=False,
    ).then(page.rerun, current, searched, api_name=False)
    for which, button in ui.marks.items():
        button.click(
            page.marker(which),
            [*current, ui.selected_state],
            [ui.marks_state, *searched],
            api_name=False,
        )
    ui.forget.click(
        page.clear_feedback, [ui.query_state, ui.box, *filters], [ui.marks_state, *searched], api_name=False
    )
    ui.results.select(
        page.select,
        [ui.hits_state, ui.query_state, ui.box],
        [ui.large, ui.why, ui.info, ui.selected_state],
        api_name=False,
    )
    ui.again.click(
        page.search_with,
        [ui.selected_state, *filters],
        [ui.query, ui.query_state, ui.marks_state, ui.corner_state, *searched],
        api_name=False,
    ).then(page.show_query, [ui.query_state], [ui.region, ui.box], api_name=False)
    app.load(page.on_load, None, [ui.title, ui.labels], api_name=False)


def build_app(
    live: LiveIndex,
    access: Access,
    default_k: int = DEFAULT_K,
    delete_cache: tuple[int, int] | None = None,
    batcher: Batcher | None = None,
) -> gr.Blocks:
    """`batcher`: what batches the page's queries with the API's (app/batching.py); None: each alone."""
    page = Page(live, access, batcher)
    with gr.Blocks(title="Metrix image search", delete_cache=delete_cache) as app:
        ui = _components(live, default_k)
        _wire(app, page, ui)
        gr.api(search_endpoint(live, access, batcher), api_name="search")
    return app
