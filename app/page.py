"""The page's handlers: what each upload, click and tick does (class Page, over a live index and its
access rules), and the pieces of the page they render: the header, captions, the query preview
with its region, the feedback boxes and the heat maps. app/ui.py lays the page out and wires its
events to these handlers."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import gradio as gr
from PIL import ImageDraw

from metrix.export.explain import data_url
from metrix.export.runtime import ModelError
from metrix.images import ImageDecodeError, decode_rgb, format_box, parse_box
from metrix.index.errors import IndexUnavailable
from metrix.index.live import LiveIndex
from metrix.index.query import Refinement
from metrix.index.store import GalleryIndex, GalleryIndexError, Hit

from .access import Access
from .api import image_url
from .batching import Batcher
from .search import explain_match, public_location, run_query

log = logging.getLogger("metrix.app")
PROMPT = "Upload or paste a photo to search the gallery."
THUMBNAIL, QUERY_PREVIEW, HEATMAP = 320, 512, 256
#: The labels menu's value for images directly in the gallery root (whose label is ""): no folder is called "/".
ROOT = "/"
BOX_COLOUR = "#ff2d55"


#: What each path measured with the CPU recipe on the unseen test classes of cub100 (photos) and
#: omniglot_small (handwriting), MAP@R (docs/benchmarks.md, issues 4 and 17).
PATH_EFFECTS = {
    "floor": "Untrained, it measured MAP@R 37.1 on cub100 and 21.0 on omniglot_small; training on your images raises that.",
    "without labels": "Trained without labels, it measured MAP@R 41.0 on cub100 and 30.8 on omniglot_small "
    "(untrained: 37.1 and 21.0).",
    "with labels": "Trained with labels, it measured MAP@R 42.4 on cub100 and 35.4 on omniglot_small (untrained: 37.1 and 21.0).",
}


#: How a marked result's tile shows its mark, before its caption.
MARK_BADGES = {"right": "✓ right", "wrong": "✗ wrong"}


#: Where the gallery is calibrated (index/match_probability.py) and no result is at least this
#: likely a match, the page says "No good match" above them. It still shows them: at any cut-off
#: some queries lose their true match (measured in docs/search.md).
NO_GOOD_MATCH = 0.3


def no_good_match(hits: list[Hit]) -> str:
    chances = [hit.match_probability for hit in hits if hit.match_probability is not None]
    if not chances or max(chances) >= NO_GOOD_MATCH:
        return ""
    return f"No good match: none of these is likely a match (the most likely {max(chances):.0%}). "


def caption(hit: Hit, mark: str | None = None) -> str:
    badge = f"{MARK_BADGES[mark]} · " if mark in MARK_BADGES else ""
    chance = f" · match {hit.match_probability:.0%}" if hit.match_probability is not None else ""
    return f"{badge}{hit.score:.3f}{chance} · {hit.label or '-'} · {hit.path}"


#: An approximate index's search setting, as the page's header names it (manifest key, name).
SETTINGS = (("nprobe", "nprobe"), ("ef_search", "efSearch"))


def header(index: GalleryIndex) -> str:
    manifest, model = index.manifest, index.manifest["model"]
    params = manifest["index"]
    setting = next((f"{name} {params[key]}" for key, name in SETTINGS if key in params), None)
    kind = params["type"] + (f" ({setting}, recall@10 {params['recall_at_10']:.3f})" if setting else "")
    return (
        f"## Metrix image search\n"
        f"**{len(index):,} images** from `{public_location(manifest['gallery_root'])}` · model **{model['backbone']}** "
        f"({model['loss']}, mixup {model['mixup']}, {model['embedding_size']}-d, weights "
        f"`{model['weights_sha256'][:12]}`) · index {kind} ({index.generation}) · built {manifest['updated']}"
        f" · [near-duplicates](duplicates)"
        + (
            f"\n\nModel: {model['provenance']}. {PATH_EFFECTS[model['training_path']]}"
            if "training_path" in model
            else ""
        )
        + (
            f" Replaced {upgrade.get('old_model', 'the model before')}: {upgrade['verdict']} ({upgrade['why']})."
            if (upgrade := manifest.get("upgrade_check"))
            else ""
        )
    )


def label_choices(index: GalleryIndex) -> list[tuple[str, str]]:
    return [(f"{label or '(gallery root)'} ({count:,})", label or ROOT) for label, count in index.labels()]


def details(hit: dict) -> str:
    return "\n".join(
        [
            f"**{hit['path']}**",
            "",
            f"- similarity: {hit['score']:.4f}",
            f"- label: {hit['label'] or '-'}",
            f"- size: {hit['width']} x {hit['height']} px",
            f"- id: {hit['id']}",
        ]
    )


def request_base(request: gr.Request | None) -> str:
    inner = getattr(request, "request", None)
    if inner is not None and hasattr(inner, "base_url"):
        return str(inner.base_url)
    headers = getattr(request, "headers", {}) or {}
    return f"{headers.get('x-forwarded-proto', 'http')}://{headers.get('host', '127.0.0.1')}/"


def new_query(name: str, data: bytes) -> dict:
    """What the page keeps of a query: its bytes (Gradio's cache is swept), its size as displayed
    and a preview to select a region on. ImageDecodeError for a picture that cannot be read."""
    preview, size = decode_rgb(name, data, min_short_side=QUERY_PREVIEW // 2)
    preview.thumbnail((QUERY_PREVIEW, QUERY_PREVIEW))
    return {"name": name, "data": data, "size": size, "preview": preview}


def drawn(query: dict, box, corner) -> object:
    """The query's preview with the selected region (or the first corner clicked) drawn on it."""
    picture = query["preview"].copy()
    scale = picture.width / query["size"][0]
    draw = ImageDraw.Draw(picture)
    if box is not None:
        draw.rectangle([v * scale for v in box], outline=BOX_COLOUR, width=3)
    elif corner is not None:
        x, y = corner[0] * scale, corner[1] * scale
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=BOX_COLOUR, width=3)
    return picture


def heatmaps(hit: dict, explanation) -> str:
    query, result = explanation.overlays(HEATMAP)
    low, high = explanation.scale
    figure = 'style="flex: 1; margin: 0"'
    return (
        f'<div class="why"><div style="display: flex; gap: 8px">'
        f'<figure {figure}><img src="{data_url(query)}" alt="query heat map" class="why-query" style="width: 100%">'
        f"<figcaption>the query: where it looks like this result</figcaption></figure>"
        f'<figure {figure}><img src="{data_url(result)}" alt="result heat map" class="why-result" style="width: 100%">'
        f"<figcaption>{html.escape(hit['path'])}: where it looks like the query</figcaption></figure></div>"
        f"<p>Why this match: each location's cosine with the other picture's embedding, "
        f"from {low:.2f} (dark blue) to {high:.2f} (yellow); the two pictures' cosine is {explanation.score:.3f}.</p></div>"
    )


class Page:
    """The page's handlers, over one live index, its access rules and the batcher of its queries."""

    def __init__(self, live: LiveIndex, access: Access, batcher: Batcher | None = None):
        self.live, self.access, self.batcher = live, access, batcher

    def search(self, query: dict | None, box_text: str, k, labels, prefix: str, marks: dict, request: gr.Request):
        """-> gallery items, status line, hits (the page's state)."""
        if not query:
            return [], PROMPT, []
        try:
            refinement = Refinement.from_form(
                box_text,
                ["" if label == ROOT else label for label in labels or ()],
                prefix,
                [i for i, m in marks.items() if m == "right"],
                [i for i, m in marks.items() if m == "wrong"],
            )
            result = run_query(self.live, query["name"], int(k), query["data"], refinement, self.batcher)
        except ImageDecodeError as error:
            return [], f"That query cannot be searched: {error.reason}.", []
        except (ValueError, GalleryIndexError) as error:
            return [], f"That search cannot be run: {error}.", []
        except IndexUnavailable as error:
            return [], f"The server cannot search now: {error}.", []
        except Exception:  # never show a stack trace in the UI; the server log has it
            log.exception("search failed")
            return [], "The search failed on the server; the log says why.", []
        base = request_base(request)
        hits = [{**vars(hit), "url": image_url(base, self.access, hit.id)} for hit in result.hits]
        items = [
            (image_url(base, self.access, hit.id, THUMBNAIL), caption(hit, marks.get(str(hit.id))))
            for hit in result.hits
        ]
        return items, no_good_match(result.hits) + result.status(), hits

    def upload(self, path, k, labels, prefix, request: gr.Request):
        """A new query from an upload: whole picture, no feedback yet."""
        if not path:
            return [], PROMPT, [], None, {}, None
        try:
            query = new_query(Path(path).name, Path(path).read_bytes())
        except ImageDecodeError as error:
            return (
                [],
                f"That upload cannot be searched: {error.reason}. Try a JPEG, PNG or WebP photo.",
                [],
                None,
                {},
                None,
            )
        return (*self.search(query, "", k, labels, prefix, {}, request), query, {}, None)

    def show_query(self, query: dict | None):
        return (drawn(query, None, None) if query else None), ""

    def rerun(self, query, box_text, k, labels, prefix, marks, request: gr.Request):
        return self.search(query, box_text, k, labels, prefix, marks, request)

    def click_region(
        self, query: dict | None, corner, k, labels, prefix, marks, event: gr.SelectData, request: gr.Request
    ):
        """First click: a corner; second click: the opposite corner, and the region is searched."""
        unchanged = (gr.skip(),) * 3  # results, status, hits
        if not query or not event.index:
            return gr.skip(), gr.skip(), None, *unchanged
        scale = query["size"][0] / query["preview"].width
        point = (round(event.index[0] * scale), round(event.index[1] * scale))
        if corner is None:
            return (
                drawn(query, None, point),
                gr.skip(),
                point,
                gr.skip(),
                "Now click the opposite corner of the region.",
                *unchanged[2:],
            )
        # both clicked pixels belong to the region: x1, y1 are exclusive
        box = (
            min(corner[0], point[0]),
            min(corner[1], point[1]),
            min(max(corner[0], point[0]) + 1, query["size"][0]),
            min(max(corner[1], point[1]) + 1, query["size"][1]),
        )
        box_text = format_box(box)
        return (
            drawn(query, box, None),
            box_text,
            None,
            *self.rerun(query, box_text, k, labels, prefix, marks, request),
        )

    def typed_box(self, query, box_text, k, labels, prefix, marks, request: gr.Request):
        try:
            box = parse_box(box_text) if box_text and box_text.strip() else None
        except ValueError as error:
            return gr.skip(), [], f"{error}.", []
        return (
            drawn(query, box, None) if query else None,
            *self.rerun(query, box_text, k, labels, prefix, marks, request),
        )

    def marker(self, which: str):
        """The handler of one mark button (right, wrong, or none to unmark), for the selected result."""

        def mark(query, box_text, k, labels, prefix, marks: dict, selected: dict | None, request: gr.Request):
            """Mark the selected result and search again with every mark at once; marks of earlier
            rounds stay. The tile shows its mark in its caption."""
            if not selected:
                return marks, gr.skip(), "Click a result first, then mark it right or wrong.", gr.skip()
            marks = {i: m for i, m in marks.items() if i != str(selected["id"])}
            if which in MARK_BADGES:
                marks[str(selected["id"])] = which
            return (marks, *self.search(query, box_text, k, labels, prefix, marks, request))

        return mark

    def clear_feedback(self, query, box_text, k, labels, prefix, request: gr.Request):
        return ({}, *self.search(query, box_text, k, labels, prefix, {}, request))

    def select(self, hits: list[dict], query: dict | None, box_text: str, event: gr.SelectData):
        if not hits or event.index is None or event.index >= len(hits):
            return "", "", "", None
        hit = hits[event.index]
        large = f'<img src="{html.escape(hit["url"])}" alt="{html.escape(hit["path"])}" class="selected-result">'
        why = ""
        if query:
            try:
                box = parse_box(box_text) if box_text and box_text.strip() else None
                _, explanation = explain_match(self.live, query["name"], query["data"], box, hit["id"])
                why = heatmaps(hit, explanation)
            except (LookupError, ModelError, ValueError, IndexUnavailable) as error:
                why = f"<p>No heat map: {html.escape(str(error.args[0] if error.args else error))}.</p>"
            except Exception:
                log.exception("explaining a match failed")
                why = "<p>No heat map: it failed on the server; the log says why.</p>"
        return large, why, details(hit), hit

    def search_with(self, hit: dict | None, k, labels, prefix, request: gr.Request):
        """Search with a result: read from the gallery on the server (the page only has its URL)."""
        if not hit:
            return gr.skip(), None, {}, None, [], PROMPT, []
        try:
            source = self.live.snapshot().index.source
            query = new_query(source.name(hit["path"]), source.read(hit["path"]))
        except IndexUnavailable as error:
            return gr.skip(), None, {}, None, [], f"The server cannot search now: {error}.", []
        except OSError as error:
            return gr.skip(), None, {}, None, [], f"{hit['path']} cannot be read: {error.strerror or error}.", []
        except ImageDecodeError as error:
            return gr.skip(), None, {}, None, [], f"{hit['path']} cannot be searched: {error.reason}.", []
        return (query["preview"], query, {}, None, *self.search(query, "", k, labels, prefix, {}, request))

    def on_load(self):
        try:
            index = self.live.snapshot().index
        except IndexUnavailable as error:
            return f"## Metrix image search\n\nThe server cannot search now: {error}.", gr.Dropdown(choices=[])
        return header(index), gr.Dropdown(choices=label_choices(index))
