"""The HTML of near-duplicate groups (index/duplicates.py's JSON), written once for both the
service's /duplicates page (thumbnails from the API's image route) and `metrix duplicates --html`
(thumbnails embedded as base64 JPEG, so the file stands alone)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable

from metrix.images import ImageDecodeError, decode_rgb

THUMBNAIL = 160

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
header p { margin: .3em 0; }
form { margin: .8em 0 1.2em; }
section.group { border-top: 1px solid #ccc; padding: .6em 0; }
section.group h2 { font-size: 1em; margin: .2em 0 .5em; }
.images { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 170px; }
figure img { max-width: 160px; max-height: 160px; display: block; background: #eee; }
figcaption { font-size: .8em; }
.path { word-break: break-all; }
.label { color: #555; }
"""


def render_page(
    result: dict,
    image_src: Callable[[dict], str],
    image_href: Callable[[dict], str] | None = None,
    form: bool = False,
    title: str = "Near-duplicates",
) -> str:
    """A page of `result`'s groups: each group's thumbnails (`image_src(image)`, linked to
    `image_href(image)` if given) with path, label and similarity. `form`: a threshold form and a
    link back to the search page (the service)."""
    e = html.escape
    groups = result["groups"]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{STYLE}</style>"
        f"</head><body><header><h1>{e(title)}</h1>"
    ]
    if form:
        parts.append(
            "<p><a href='./' id='back'>&larr; back to search</a></p>"
            "<form method='get' action='duplicates' id='threshold-form'><label>cosine similarity at least "
            f"<input type='number' name='threshold' id='threshold' min='0.01' max='1' step='0.01' "
            f"value='{result['threshold']:g}'></label> <button type='submit'>Find</button></form>"
        )
    parts.append(
        f"<p id='summary'>{len(groups)} group{'s' * (len(groups) != 1)} ({result['grouped_images']} images) "
        f"at similarity &ge; {result['threshold']:g} among {result['images']:,} images "
        f"({e(result['generation'])}); search: {e(result['search'])}.</p>"
        "<p>A group joins images linked by similarities above the threshold, so two images of one group "
        "may be less alike than that (its least similar pair); its weakest link is the threshold above "
        "which it splits. Under each picture: its path, label and its strongest link in the group.</p>"
        "</header>"
    )
    for number, group in enumerate(groups, 1):
        least = group["min_similarity"]
        parts.append(
            f"<section class='group'><h2>Group {number}: {group['size']} images &middot; least similar pair "
            f"{'-' if least is None else f'{least:.4f}'} &middot; weakest link {group['weakest_link']:.4f}"
            "</h2><div class='images'>"
        )
        for image in group["images"]:
            picture = f"<img src='{e(image_src(image))}' alt='{e(image['path'])}' loading='lazy'>"
            if image_href is not None:
                picture = f"<a href='{e(image_href(image))}'>{picture}</a>"
            parts.append(
                f"<figure>{picture}<figcaption><span class='path'>{e(image['path'])}</span><br>"
                f"<span class='label'>{e(image['label'] or '-')}</span> &middot; {image['similarity']:.4f}"
                "</figcaption></figure>"
            )
        parts.append("</div></section>")
    if not groups:
        parts.append("<p>No near-duplicates at this threshold.</p>")
    parts.append("</body></html>")
    return "".join(parts)


def embedded_thumbnail(source, path: str, size: int = THUMBNAIL) -> str:
    """A `data:` URL of a JPEG thumbnail of a gallery file (read through the index's source), or
    "" when it cannot be read any more."""
    try:
        picture, _ = decode_rgb(source.name(path), source.read(path), min_short_side=size)
    except (OSError, ImageDecodeError):
        return ""
    picture.thumbnail((size, size))
    encoded = io.BytesIO()
    picture.save(encoded, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(encoded.getvalue()).decode("ascii")
