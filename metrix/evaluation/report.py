"""`metrix evaluate RUN --report FILE`: one self-contained HTML page on a run's test split.

The metrics next to the untrained floor, R@1 per class, the class pairs most often confused and
the worst queries with their top-8 neighbours. Everything comes from one search of the test split,
the one `metrix evaluate` does (its per-query values, metrix.evaluation.metrics.PerQuery); report_data
computes the page's content, render_html writes it (thumbnails as base64 JPEG, the chart as SVG).
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..files import write_atomically
from ..images import ImageDecodeError, decode_rgb
from .run import embed_run, evaluate_run, retrieval_metrics, summarise

TOP = 8  # neighbours shown per worst query
WORST = 10
PAIRS = 10
THUMB = 96
SAME, OTHER = "#2e9e44", "#d62728"  # as bench/retrieval_examples.py


class ReportError(Exception):
    """The report cannot be written; the message is one line."""


@dataclass
class Report:
    trained: dict  # metrix evaluate's result for the run's model
    floor: dict  # and for the untrained backbone
    root: Path  # the data's root: paths are shown relative to it
    lone_queries: int  # queries whose class has no other image: left out of R@1, MAP@R, the pairs and the worst
    per_class: list[tuple[str, float, int]]  # (class, R@1 in percent, queries), lowest R@1 first
    confused: list[dict]  # a, b (class names), a_to_b, b_to_a, example_a, example_b (paths)
    worst: list[dict]  # path, label, ap_at_r, recall_at_1 (percent), neighbours [(path, label, same class)]
    worst_tied: int  # queries with an AP@R no higher than the last one shown


def per_class_recall_at_1(labels: np.ndarray, hits_at_1: np.ndarray, counted: np.ndarray) -> dict:
    """{label: (R@1 as a fraction, number of queries)} over the counted (non-lone) queries; R is a
    property of the class, so a class is counted whole or not at all."""
    result = {}
    for label in np.unique(labels[counted]):
        mine = labels == label
        result[label.item()] = (float(hits_at_1[mine].mean()), int(mine.sum()))
    return result


def confused_pairs(labels: np.ndarray, top1_labels: np.ndarray, counted: np.ndarray, top: int = PAIRS) -> list:
    """[(a, b, a_to_b, b_to_a)] for a < b: how many counted queries of a have a top-1 neighbour of b
    and the reverse; the `top` pairs with the largest sum, ties by (a, b)."""
    wrong = counted & (labels != top1_labels)
    directed, counts = np.unique(np.stack([labels[wrong], top1_labels[wrong]], axis=1), axis=0, return_counts=True)
    pairs: dict[tuple, list[int]] = {}
    for (source, target), count in zip(directed.tolist(), counts.tolist()):
        key = (min(source, target), max(source, target))
        pairs.setdefault(key, [0, 0])[source != key[0]] += count
    ranked = sorted(pairs.items(), key=lambda item: (-sum(item[1]), item[0]))
    return [(a, b, a_to_b, b_to_a) for (a, b), (a_to_b, b_to_a) in ranked[:top]]


def worst_queries(ap_at_r: np.ndarray, counted: np.ndarray, n: int = WORST) -> np.ndarray:
    """Indices of the n counted queries with the lowest AP@R. Values within 1e-12 are ties (equal
    fractions can be summed in different orders), broken by index."""
    candidates = np.flatnonzero(counted)
    order = np.lexsort((candidates, np.round(ap_at_r[candidates], 12)))
    return candidates[order[:n]]


def report_data(
    run_dir: Path,
    checkpoint: str = "best",
    data: str | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    log=print,
) -> Report:
    run = embed_run(run_dir, checkpoint, data, dataset, data_root, log=log)
    retrieval = retrieval_metrics(run, per_query=True, neighbours=TOP)
    trained = summarise(run, retrieval)
    floor = evaluate_run(run_dir, checkpoint, data, dataset, data_root, floor=True, log=log)

    per_query = retrieval.per_query
    queries = run.data.test.samples
    references = queries if run.gallery is None else run.data.gallery.samples
    labels = run.query_labels
    reference_labels = labels if run.gallery is None else run.gallery_labels
    counted = per_query.r > 0
    names = run.data.class_names

    per_class = sorted(
        per_class_recall_at_1(labels, per_query.hits[:, 0], counted).items(), key=lambda item: (item[1][0], item[0])
    )
    first_image = {}
    for sample in [*queries, *references]:
        first_image.setdefault(sample.label, sample.path)
    confused = [
        dict(a=names[a], b=names[b], a_to_b=ab, b_to_a=ba, example_a=first_image[a], example_b=first_image[b])
        for a, b, ab, ba in confused_pairs(labels, reference_labels[per_query.neighbours[:, 0]], counted)
    ]
    worst, shown = [], worst_queries(per_query.ap_at_r, counted)
    ap = np.round(per_query.ap_at_r, 12)  # as worst_queries compares them
    for i in shown:
        worst.append(
            dict(
                path=queries[i].path,
                label=names[labels[i]],
                ap_at_r=100 * per_query.ap_at_r[i],
                recall_at_1=100 * float(per_query.hits[i, 0]),
                neighbours=[
                    (references[j].path, names[reference_labels[j]], bool(reference_labels[j] == labels[i]))
                    for j in per_query.neighbours[i]
                ],
            )
        )
    return Report(
        trained=trained,
        floor=floor,
        root=run.data.root,
        lone_queries=int((~counted).sum()),
        per_class=[(names[label], 100 * r1, n) for label, (r1, n) in per_class],
        confused=confused,
        worst=worst,
        worst_tied=int((ap[counted] <= ap[shown[-1]]).sum()) if len(shown) else 0,
    )


def thumbnail(path: Path) -> str:
    """A THUMB x THUMB centre crop as a data: URI (grey when the file cannot be decoded)."""
    try:
        image = ImageOps.fit(decode_rgb(path, min_short_side=THUMB)[0], (THUMB, THUMB))
    except ImageDecodeError:
        image = Image.new("RGB", (THUMB, THUMB), "#bbbbbb")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def render_html(report: Report) -> str:
    trained, floor = report.trained, report.floor
    thumbs: dict[Path, str] = {}

    def img(path: Path, label: str, css: str = "") -> str:
        if path not in thumbs:
            thumbs[path] = thumbnail(path)
        return (
            f'<img src="{thumbs[path]}" class="{css}" width="{THUMB}" height="{THUMB}" '
            f'alt="{escape(label)}" title="{escape(label)}: {escape(_shown(path, report.root))}">'
        )

    keys = [k for k, v in trained.items() if isinstance(v, float)]
    metric_rows = "".join(
        f"<tr><th>{key}</th><td>{trained[key]:.2f}</td><td>{floor[key]:.2f}</td><td>{trained[key] - floor[key]:+.2f}</td></tr>"
        for key in keys
    )
    lone = f", {report.lone_queries} alone in their class (left out)" if report.lone_queries else ""
    pair_rows = "".join(
        f"<tr><td>{rank}</td><td><div class=cls>{img(p['example_a'], p['a'])}{escape(p['a'])}</div></td>"
        f"<td><div class=cls>{img(p['example_b'], p['b'])}{escape(p['b'])}</div></td>"
        f"<td class=num>{p['a_to_b'] + p['b_to_a']}</td><td class=num>{p['a_to_b']}</td><td class=num>{p['b_to_a']}</td></tr>"
        for rank, p in enumerate(report.confused, 1)
    )
    rows = []
    for rank, q in enumerate(report.worst, 1):
        cells = "".join(
            img(path, label, "neighbour " + ("same" if same else "other")) for path, label, same in q["neighbours"]
        )
        correct = sum(same for _, _, same in q["neighbours"])
        rows.append(
            f'<figure class="query-row"><div class="pictures">{img(q["path"], q["label"], "query")}'
            f'<span class="gap"></span>{cells}</div><figcaption>{rank}. {escape(_shown(q["path"], report.root))} '
            f"&middot; class {escape(q['label'])} &middot; AP@R {q['ap_at_r']:.1f} &middot; R@1 {q['recall_at_1']:.0f} "
            f"&middot; {correct}/{len(q['neighbours'])} of its class in the top {len(q['neighbours'])}</figcaption></figure>"
        )
    return PAGE.format(
        title=escape(f"Evaluation of {trained['run']}"),
        style=STYLE,
        run=escape(trained["run"]),
        data=escape(f"{trained['data']} ({report.root})"),
        split=escape(trained["split"]),
        choice=escape(trained["checkpoint_choice"]),
        queries=trained["num_queries"],
        classes=trained["num_classes"],
        lone=lone,
        trained_title=escape(trained["checkpoint"]),
        floor_title=escape(floor["checkpoint"]),
        metric_rows=metric_rows,
        chart=_chart(report.per_class, trained["recall_at_1"]),
        num_pairs=len(report.confused),
        pair_rows=pair_rows,
        num_worst=len(report.worst),
        top=TOP,
        same=SAME,
        other=OTHER,
        tied=_tied(report),
        worst_rows="\n".join(rows),
    )


def _tied(report: Report) -> str:
    if report.worst_tied <= len(report.worst):
        return ""
    return (
        f" {report.worst_tied} queries have an AP@R of {report.worst[-1]['ap_at_r']:.1f} or less; "
        "these are the first of them in the test split's order."
    )


def _shown(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _chart(per_class: list[tuple[str, float, int]], overall: float) -> str:
    """One bar per class (lowest R@1 first) and a dashed line at the overall R@1. Names under the
    bars while they fit; every bar has its name, R@1 and query count as a hover title."""
    n = max(len(per_class), 1)
    bar = min(16.0, 960 / n)
    left, top, height = 36, 10, 220
    labels = bar >= 10
    longest = max((len(name) for name, _, _ in per_class), default=0)
    width, total_height = left + n * bar + 10, top + height + (min(6 * longest, 300) + 14 if labels else 20)

    def y(value):
        return top + height * (1 - value / 100)

    parts = [
        f'<svg id="per-class" width="{width:.0f}" height="{total_height}" viewBox="0 0 {width:.0f} {total_height}" '
        'role="img" aria-label="R@1 per test class">'
    ]
    for tick in (0, 25, 50, 75, 100):
        parts.append(
            f'<line x1="{left}" x2="{width - 10:.0f}" y1="{y(tick)}" y2="{y(tick)}" class="grid"/>'
            f'<text x="{left - 4}" y="{y(tick) + 4}" text-anchor="end">{tick}</text>'
        )
    for i, (name, r1, count) in enumerate(per_class):
        x = left + i * bar
        parts.append(
            f'<rect class="bar" x="{x + 0.1 * bar:.2f}" y="{y(r1):.2f}" width="{0.8 * bar:.2f}" '
            f'height="{height * r1 / 100:.2f}"><title>{escape(name)}: R@1 {r1:.1f} ({count} queries)</title></rect>'
        )
        if labels:
            parts.append(
                f'<text class="name" transform="translate({x + bar / 2 + 3:.1f},{top + height + 6}) rotate(-90)" '
                f'text-anchor="end">{escape(name)}</text>'
            )
    parts.append(
        f'<line class="overall" x1="{left}" x2="{width - 10:.0f}" y1="{y(overall):.2f}" y2="{y(overall):.2f}"/>'
        f'<text class="overall" x="{left + 4}" y="{y(overall) - 4:.2f}">overall R@1 {overall:.2f}</text></svg>'
    )
    return "\n".join(parts)


def write_report(path: Path, html: str) -> None:
    """Write beside the target, then rename: an existing report is replaced only by a complete one."""
    try:
        write_atomically(path, html)
    except OSError as error:
        raise ReportError(f"cannot write the report {path}: {error.strerror or error}") from None


def check_writable(path: Path) -> None:
    """Fail before minutes of embedding when the report could not be written anyway."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.probe-{os.getpid()}")
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise ReportError(f"cannot write the report {path}: {error.strerror or error}") from None
    if path.is_dir():
        raise ReportError(f"cannot write the report {path}: it is a folder")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; }
table { border-collapse: collapse; } th, td { padding: 3px 10px; text-align: left; }
#metrics td, td.num { text-align: right; font-variant-numeric: tabular-nums; }
#metrics tr:nth-child(even), #confused tr:nth-child(even) { background: #f3f3f3; }
#per-class text { font-size: 10px; fill: #444; } #per-class .grid { stroke: #ddd; }
#per-class .bar { fill: #4c72b0; } #per-class .bar:hover { fill: #2a4d84; }
#per-class line.overall { stroke: #d62728; stroke-dasharray: 5 3; stroke-width: 1.5; }
#per-class text.overall { fill: #d62728; font-size: 11px; }
img { border: 4px solid transparent; display: block; }
#confused img { width: 64px; height: 64px; } .cls { display: flex; align-items: center; gap: 8px; }
img.query { border-color: #999; } img.same { border-color: %(same)s; } img.other { border-color: %(other)s; }
.query-row { margin: 14px 0; } .pictures { display: flex; gap: 4px; } .gap { width: 16px; }
figcaption { font-size: 13px; margin-top: 3px; } .note { color: #555; font-size: 14px; max-width: 900px; }
""" % {"same": SAME, "other": OTHER}

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>
<body>
<h1>{title}</h1>
<table id="summary">
<tr><th>run</th><td>{run}</td></tr>
<tr><th>data</th><td>{data}</td></tr>
<tr><th>split</th><td>{split}</td></tr>
<tr><th>checkpoint</th><td>{choice}</td></tr>
<tr><th>queries</th><td>{queries} in {classes} classes{lone}</td></tr>
</table>

<h2>Metrics</h2>
<table id="metrics">
<tr><th>metric</th><th>trained: {trained_title}</th><th>{floor_title}</th><th>difference</th></tr>
{metric_rows}
</table>
<p class="note">As <code>metrix evaluate --floor</code> prints them, in percent (utilization: mean squared
distance from each test embedding to the nearest training embedding). The floor is the untrained
backbone the run started from, on the same split and input size.</p>

<h2>R@1 per test class</h2>
<p class="note">The share of each class's queries whose nearest other image is of the same class;
lowest first. Hover a bar for its class.</p>
{chart}

<h2>Most confused class pairs</h2>
<p class="note">A &rarr; B: the queries of class A whose nearest other image is of class B; both: the
two directions summed. The {num_pairs} pairs with the most, one image of each class.</p>
<table id="confused">
<tr><th>#</th><th>class A</th><th>class B</th><th>both</th><th>A &rarr; B</th><th>B &rarr; A</th></tr>
{pair_rows}
</table>

<h2>Worst queries</h2>
<p class="note">The {num_worst} queries with the lowest AP@R (ties in query order): the query (grey), then
its top {top} neighbours, framed <span style="color:{same}">green</span> when of the query's class,
<span style="color:{other}">red</span> otherwise.{tied}</p>
<section id="worst">
{worst_rows}
</section>
</body></html>
"""
