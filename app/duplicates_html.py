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
    calibration = result.get("calibration")
    if form:
        value = "" if calibration else f"{result['threshold']:g}"
        parts.append(
            "<p><a href='./' id='back'>&larr; back to search</a></p>"
            "<form method='get' action='duplicates' id='threshold-form'><label>cosine similarity at least "
            f"<input type='number' name='threshold' id='threshold' min='0.01' max='1' step='0.01' "
            f"value='{value}' placeholder='calibrated'></label> <button type='submit'>Find</button> "
            "(empty: calibrated on this gallery, each pair confirmed on its pixels)</form>"
        )
    how = (
        f"{e(calibration_line(calibration))}"
        if calibration
        else f"at similarity &ge; {result['threshold']:g}, a threshold given by hand (no copy check)"
    )
    parts.append(
        f"<p id='summary'>{len(groups)} group{'s' * (len(groups) != 1)} ({result['grouped_images']} images) "
        f"among {result['images']:,} images ({e(result['generation'])}); search: {e(result['search'])}.</p>"
        f"<p id='calibration'>{how}.</p>"
        "<p>Every two images of a group passed (no chains of look-alikes). Under each picture: its path, "
        "label and its strongest similarity in the group.</p>"
        "</header>"
    )
    for number, group in enumerate(groups, 1):
        parts.append(
            f"<section class='group'><h2>Group {number}: {group['size']} images &middot; least similar pair "
            f"{group['min_similarity']:.4f}</h2><div class='images'>"
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


def calibration_line(calibration: dict) -> str:
    """What the calibrated thresholds are and what they measured, in one sentence (CLI and page)."""
    line = (
        f"calibrated on {calibration['copies']:,} edited copies of {calibration['originals']} of this gallery's "
        f"images and {calibration['lookalike_pairs']:,} look-alike pairs: cosine >= "
        f"{calibration['candidate_threshold']:.3f}, then aligned pixels (NCC) >= {calibration['copy_threshold']:.2f}; "
        f"{100 * calibration['copies_found']:.1f}% of the copies found, "
        f"{100 * calibration['lookalikes_passed']:.2f}% of the look-alikes passed, about "
        f"{calibration['false_pairs_per_1000']:.1f} false pairs per 1,000 images"
    )
    if not calibration["separable"]:
        line += "; this model and check cannot tell copies from look-alikes in this gallery"
    return line


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
