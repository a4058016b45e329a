"""`metrix search`, `explain`, `duplicates` and `index verify`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .base import app, fail, index_app

ImageOption = Annotated[Optional[Path], typer.Argument(help="The query image (or --id, or --vector).")]
LikeOption = Annotated[
    Optional[str], typer.Option("--id", help="More like this gallery image (an id or a gallery path), itself left out.")
]
MinProbabilityOption = Annotated[
    Optional[float],
    typer.Option(
        "--min-probability",
        min=0,
        max=1,
        help="Leave out results less likely a match (calibrated on a labelled gallery at build time).",
    ),
]
VectorOption = Annotated[
    Optional[Path],
    typer.Option(
        "--vector", help="Search with an embedding: a .npy or a JSON list, L2-normalised, the index's dimension."
    ),
]
IndexOption = Annotated[
    Optional[Path], typer.Option(help="Index folder. \\[default: the most recently built under indexes/]")
]
KOption = Annotated[int, typer.Option("-k", help="How many results.")]
QueryModelOption = Annotated[
    Optional[Path], typer.Option(help="The model to embed the query with. \\[default: the index's]")
]
BoxOption = Annotated[
    Optional[str],
    typer.Option(help="Search with this region of the image only: x0,y0,x1,y1 in pixels of the image as displayed."),
]
LabelOption = Annotated[
    Optional[list[str]], typer.Option(help="Only images with this label (top-level folder); repeat for several.")
]
PathPrefixOption = Annotated[
    Optional[str], typer.Option(help="Only images whose path (relative to the gallery) starts with this.")
]
RightOption = Annotated[
    Optional[list[str]],
    typer.Option(help="Relevance feedback: a right answer (id or gallery path); repeat for several."),
]
WrongOption = Annotated[
    Optional[list[str]],
    typer.Option(help="Relevance feedback: a wrong answer (id or gallery path); repeat for several."),
]
JsonOutputOption = Annotated[bool, typer.Option("--json", help="Print the results as JSON.")]


@app.command()
def search(
    image: ImageOption = None,
    like: LikeOption = None,
    vector: VectorOption = None,
    index: IndexOption = None,
    k: KOption = 10,
    model: QueryModelOption = None,
    box: BoxOption = None,
    label: LabelOption = None,
    path_prefix: PathPrefixOption = None,
    right: RightOption = None,
    wrong: WrongOption = None,
    min_probability: MinProbabilityOption = None,
    json_output: JsonOutputOption = False,
) -> None:
    """The gallery images most similar to IMAGE (or a region of it), to a gallery image (--id) or
    to an embedding (--vector): path, cosine score and label; within labels or a path prefix, and
    moved by feedback on earlier results."""
    import json

    from metrix.cli.models import newest_index
    from metrix.export.runtime import ModelError
    from metrix.images import ImageDecodeError, parse_box
    from metrix.index.filters import SearchFilter
    from metrix.index.query import (
        Refinement,
        check_probability,
        checked_vector,
        resolve_ids,
        search_image,
        search_like,
        search_vector,
    )
    from metrix.index.store import REBUILD_HINT, GalleryIndexError, open_with_model

    if sum(x is not None for x in (image, like, vector)) != 1:
        fail("give one query: IMAGE, --id or --vector")
    try:
        index = index or newest_index()
        opened, embedder = open_with_model(index, model)
        refinement = Refinement(
            parse_box(box) if box else None,
            SearchFilter(tuple(label or ()), path_prefix or ""),
            resolve_ids(opened, right or (), "--right"),
            resolve_ids(opened, wrong or (), "--wrong"),
            check_probability(min_probability or 0.0),
        )
        if like is not None:
            answer = search_like(opened, resolve_ids(opened, [like], "--id")[0], k, refinement)
        elif vector is not None:
            answer = search_vector(opened, checked_vector(opened, _read_vector(vector)), k, refinement)
        else:
            answer = search_image(opened, embedder, image, k, refinement=refinement)
    except (GalleryIndexError, ModelError, ImageDecodeError, ValueError) as error:
        fail(error)
    if json_output:
        typer.echo(
            json.dumps(
                {
                    "query": str(image) if image else f"id {like}" if like else str(vector),
                    "index": str(index),
                    "applied": refinement.describe(),
                    "results": [
                        {
                            "rank": r,
                            "path": h.path,
                            "score": h.score,
                            "label": h.label,
                            "id": h.id,
                            "match_probability": h.match_probability,
                        }
                        for r, h in enumerate(answer.hits, 1)
                    ],
                    "left_out": [{"path": path, "reason": reason} for path, reason in answer.left_out],
                },
                indent=1,
                ensure_ascii=False,
            )
        )
        return
    if refinement.describe():
        typer.echo(f"({refinement.describe()})")
    if not answer.hits and refinement.min_probability > 0:
        typer.echo(f"no good match: no result is a match with probability {refinement.min_probability:g} or more")
    for rank, hit in enumerate(answer.hits, 1):
        chance = f"  match {hit.match_probability:.2f}" if hit.match_probability is not None else ""
        typer.echo(
            f"{rank:>3}  {hit.score:.4f}  {hit.path}"
            + (f"  [{hit.label}]" if hit.label else "")
            + f"  id {hit.id}{chance}"
        )
    if answer.left_out:
        typer.echo(
            f"left out {len(answer.left_out)} result(s) whose file is gone or changed since indexing "
            f"(e.g. {answer.left_out[0][0]}: {answer.left_out[0][1]}); {REBUILD_HINT}",
            err=True,
        )


@app.command()
def explain(
    image: Annotated[Path, typer.Argument(help="The query image.")],
    result: Annotated[
        str,
        typer.Argument(help="A gallery image of the index: its id (from `metrix search`) or its path in the gallery."),
    ],
    index: Annotated[
        Optional[Path], typer.Option(help="Index folder. \\[default: the most recently built under indexes/]")
    ] = None,
    box: Annotated[Optional[str], typer.Option(help="The query's region, as in `metrix search --box`.")] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Write the picture: query, its heat map, the result's heat map, the result."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the heat maps as JSON.")] = False,
) -> None:
    """Why RESULT matched IMAGE: a heat map over each picture of where it looks like the other
    (each location's embedding against the other picture's embedding)."""
    import json

    from metrix.cli.models import newest_index
    from metrix.export.explain import side_by_side
    from metrix.export.runtime import ModelError
    from metrix.images import ImageDecodeError, parse_box
    from metrix.index.query import explain_hit, resolve_ids
    from metrix.index.store import GalleryIndexError, open_with_model

    try:
        index = index or newest_index()
        opened, embedder = open_with_model(index, None)
        (image_id,) = resolve_ids(opened, [result], "RESULT")
        hit, explanation = explain_hit(opened, embedder, image, None, parse_box(box) if box else None, image_id)
        if out is not None:
            side_by_side(explanation).save(out)
    except (GalleryIndexError, ModelError, ImageDecodeError, ValueError, LookupError, OSError) as error:
        fail(error)
    if json_output:
        body = explanation.to_json()
        del body["query_overlay"], body["result_overlay"]
        typer.echo(json.dumps({"query": str(image), "id": hit.id, "path": hit.path, **body}, indent=1))
        return
    low, high = explanation.scale
    typer.echo(
        f"{hit.path} (id {hit.id}): cosine {explanation.score:.4f}; heat = each location's cosine with the other "
        f"picture, from {low:.2f} to {high:.2f}"
    )
    for title, grid in (("query", explanation.query_map), ("result", explanation.result_map)):
        typer.echo(f"  {title}:")
        for row in grid:
            typer.echo("    " + " ".join(f"{value:5.2f}" for value in row))
    if out is not None:
        typer.echo(f"wrote {out}")


@app.command()
def duplicates(
    index: Annotated[
        Optional[Path], typer.Argument(help="Index folder. \\[default: the most recently built under indexes/]")
    ] = None,
    threshold: Annotated[
        Optional[float],
        typer.Option(
            help="Group every pair at this cosine similarity in (0, 1] or above, unchecked. \\[default: calibrated on the gallery's own edited copies, each pair confirmed on its pixels (docs/duplicates.md)]"
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the groups as JSON.")] = False,
    html: Annotated[
        Optional[Path],
        typer.Option("--html", help="Also write a page of the groups' pictures (thumbnails embedded) to this file."),
    ] = None,
) -> None:
    """Groups of near-identical images in an index, largest first: ids, paths, labels, similarities."""
    import json

    from metrix.app.duplicates_html import calibration_line
    from metrix.cli.models import newest_index
    from metrix.export.runtime import ModelError
    from metrix.index.duplicates import find_duplicates
    from metrix.index.store import GalleryIndexError, open_with_model

    try:
        index = index or newest_index()
        opened, embedder = open_with_model(index)
        result = find_duplicates(opened, threshold, embedder=embedder).to_json()
    except (GalleryIndexError, ModelError, ValueError) as error:
        fail(error)
    if html is not None:
        from metrix.app.duplicates_html import embedded_thumbnail, render_page

        page = render_page(
            result, lambda image: embedded_thumbnail(opened.source, image["path"]), title=f"Near-duplicates in {index}"
        )
        try:
            html.write_text(page, encoding="utf-8")
        except OSError as error:
            fail(f"{html}: cannot write ({error.strerror or error})")
    if json_output:
        typer.echo(json.dumps(result, indent=1, ensure_ascii=False))
        return
    typer.echo(f"{index} ({result['generation']}): {result['images']:,} images, search {result['search']}")
    how = calibration_line(result["calibration"]) if result["calibration"] else f"cosine >= {result['threshold']:g}"
    typer.echo(how)
    typer.echo(
        f"{len(result['groups'])} groups of near-duplicates ({result['grouped_images']} images), every two "
        f"images of a group alike ({result['seconds']:.1f} s)" + (f"; pictures in {html}" if html else "")
    )
    for number, group in enumerate(result["groups"], 1):
        typer.echo(f"\ngroup {number}: {group['size']} images; least similar pair {group['min_similarity']:.4f}")
        for image in group["images"]:
            typer.echo(
                f"  {image['similarity']:.4f}  {image['path']}" + (f"  [{image['label']}]" if image["label"] else "")
            )


@index_app.command("verify")
def index_verify(
    index: Annotated[Path, typer.Argument(help="An index folder written by build-index.")],
) -> None:
    """Check every generation of an index: manifest and file checksums, faiss readability, SQLite's integrity check. Exit status 1 on any problem."""
    from metrix.index.store import GalleryIndexError
    from metrix.index.verify import verify_index

    try:
        result = verify_index(index)
    except GalleryIndexError as error:
        fail(error)
    for line in result.problems:
        typer.echo(line)
    for generation, files in result.checked.items():
        typer.echo(f"ok: {generation}{' (current)' if generation == result.current else ''}: {files} files verified")
    if result.problems:
        raise typer.Exit(code=1)


def _read_vector(path: Path):
    """A .npy array or a JSON list of numbers; ValueError naming the file."""
    import json

    import numpy as np

    try:
        return np.load(path) if path.suffix == ".npy" else json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a .npy array or a JSON list of numbers ({str(error).splitlines()[0]})") from None
