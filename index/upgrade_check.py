"""Before a new model serves a gallery, it answers what the serving one was asked (issue 40).

When `build-index --rebuild --model NEW` is about to commit a generation embedded with another
model than the serving one, both generations are searched the same way:
- the kept queries (index/kept_queries.py) that carry marks are embedded with each model and
  searched for their REPLAY_K nearest: per query, the share of its right-marked images in them
  and the share of its wrong-marked images still in them;
- a labelled gallery (images in class sub-folders) is also measured on its own labels with each
  model: every image searched among the others (R@1 and MAP@R), on whole labels drawn at random up
  to MAX_LABELLED images, the same images for both models.
Each measure is a paired difference, new - old, with its bootstrap interval
(metrix.evaluation.bootstrap). The marks were made on the serving model's answers, so they favour
it: a right-marked image was in its answer, a better model may rank other true matches above it.

The verdict (docs/upgrades.md): "worse" when the gallery's own MAP@R is clearly lower, or when the
marks' score (right share minus wrong share) is clearly lower and the labels do not clearly say
better; "better" when the labels (else the marks) say so and nothing says worse; else "tied";
"not measured" with no marks and no labels. A worse model is refused unless the build accepts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from metrix.evaluation.bootstrap import Difference, paired_difference
from metrix.evaluation.metrics import query_scores
from metrix.images import ImageDecodeError

from .errors import GalleryIndexError
from .kept_queries import KeptQuery, read_kept
from .query import embed_query
from .store import GalleryIndex, current_generation, open_generation, open_index

#: Results a replayed query is judged on: the page's and the API's default k.
REPLAY_K = 8
#: At most this many labelled gallery images (whole labels) are measured with each model.
MAX_LABELLED = 5000


@dataclass(frozen=True)
class Side:
    """One generation with the model that embedded it."""

    index: GalleryIndex
    embedder: object  # metrix.export.runtime.Embedder


class UpgradeRefused(GalleryIndexError):
    """A new model measured worse than the serving one; `comparison` says how."""

    def __init__(self, message: str, comparison: dict):
        super().__init__(message)
        self.comparison = comparison


def upgrade_check(index_dir: Path, embedder, accept_worse: bool = False, report=None) -> Callable[[str], dict]:
    """The check write_generation runs on a staged generation before its commit: where the serving
    generation's model is another, the comparison (also put in report.upgrade), and UpgradeRefused
    for a worse new model unless `accept_worse`. Returns what the manifest adds ({} for the same
    model)."""

    def check(staged: str) -> dict:
        old = _serving(index_dir, embedder.metadata)
        if old is None:
            return {}
        if isinstance(old, str):
            comparison = {"verdict": "not measured", "why": old}
        else:
            new = Side(open_generation(index_dir, staged), embedder)
            try:
                comparison = compare_models(old, new, read_kept(index_dir))
            finally:
                old.index.close()
                new.index.close()
        if report is not None:
            report.upgrade = comparison
        if comparison["verdict"] == "worse" and not accept_worse:
            raise UpgradeRefused(
                f"{index_dir}: not committed, the new model measured worse than the serving one "
                f"({comparison['why']}); {old.index.generation} still serves; --accept-worse commits it anyway",
                comparison,
            )
        return {"upgrade_check": comparison}

    return check


def _serving(index_dir: Path, metadata) -> Side | str | None:
    """The serving generation with its model; None when it has the new model (or there is none);
    why not, where it cannot be compared."""
    from metrix.export.runtime import ModelError, load_embedder

    if current_generation(index_dir) is None:
        return None
    try:
        index = open_index(index_dir)
    except (GalleryIndexError, FileNotFoundError) as error:
        return f"not compared: the serving generation is unusable ({error})"
    try:
        index.check_model(metadata)
        index.close()
        return None
    except GalleryIndexError:
        pass
    try:
        old_embedder = load_embedder(index.manifest["model"]["path"])
        index.check_model(old_embedder.metadata)
    except (ModelError, GalleryIndexError, OSError) as error:
        index.close()
        return f"not compared: the serving model cannot be loaded ({str(error).splitlines()[0]})"
    return Side(index, old_embedder)


def compare_models(old: Side, new: Side, kept: list[KeptQuery], seed: int = 0) -> dict:
    """The comparison of the two sides, as saved in the new generation's manifest; `seed` draws
    the labels of a gallery larger than MAX_LABELLED."""
    marks, unusable = _mark_scores(old, new, kept)
    comparison = {
        "old_model": _model_name(old),
        "new_model": _model_name(new),
        "kept_queries": len(kept),
        "unusable_queries": unusable,
        "replay_k": REPLAY_K,
        "marks": marks,
        "labels": _label_scores(old, new, seed),
    }
    comparison["verdict"], comparison["why"] = verdict(comparison)
    return comparison


def verdict(comparison: dict) -> tuple[str, str]:
    labels, marks = comparison["labels"], comparison["marks"]
    by_labels = labels["map_at_r"]["verdict"] if labels else None
    by_marks = marks["score"]["verdict"] if marks else None
    if by_labels is None and by_marks is None:
        return "not measured", "no marked queries kept and no labelled gallery images to compare on"
    if by_labels == "worse":
        return "worse", "the gallery's own labels: MAP@R lower with the new model"
    if by_marks == "worse" and by_labels != "better":
        return "worse", "the marked queries: fewer right and more wrong images with the new model"
    primary = by_labels or by_marks
    if primary == "better":
        return "better", (
            "the gallery's own labels: MAP@R higher with the new model"
            if by_labels
            else "the marked queries: more right and fewer wrong images with the new model"
        )
    return "tied", "cannot be told apart on " + ("the gallery's own labels" if by_labels else "the marked queries")


def describe(comparison: dict) -> list[str]:
    """The comparison as lines a person reads."""
    if "new_model" not in comparison:
        return [f"model upgrade {comparison['why']}"]
    lines = [f"new model {comparison['new_model']} against serving model {comparison['old_model']}:"]
    labels, marks = comparison["labels"], comparison["marks"]
    if labels:
        lines.append(
            f"  gallery labels ({labels['queries']} images, {labels['labels']} labels): "
            + "; ".join(
                f"{name} {_measure(labels[key])}" for key, name in (("recall_at_1", "R@1"), ("map_at_r", "MAP@R"))
            )
        )
    if marks:
        parts = [
            f"{name} {_measure(marks[key])}"
            for key, name in (("right_kept", "right kept"), ("wrong_left", "wrong left"))
            if marks[key]
        ]
        lines.append(
            f"  marked queries ({marks['queries']} of {comparison['kept_queries']} kept, top {comparison['replay_k']}): "
            + "; ".join(parts)
        )
    lines.append(f"  verdict: {comparison['verdict'].upper()} ({comparison['why']})")
    return lines


def _measure(entry: dict) -> str:
    return f"{entry['new']:.2f} vs {entry['old']:.2f} ({Difference(**entry['difference'])})"


def _entry(new_values: np.ndarray, old_values: np.ndarray) -> dict:
    """Percent values of each model and their paired difference, new - old."""
    difference = paired_difference(100 * new_values, 100 * old_values)
    return {
        "old": 100 * float(old_values.mean()),
        "new": 100 * float(new_values.mean()),
        "difference": difference.to_dict(),
        "verdict": difference.verdict,
    }


def _mark_scores(old: Side, new: Side, kept: list[KeptQuery]) -> tuple[dict | None, int]:
    """Per marked query and model: the share of its right marks in the top REPLAY_K, of its wrong
    marks still there, and their difference (the score). Marks on images one of the generations
    does not hold are dropped. (None when no query keeps a mark, the number of queries that could
    not be decoded.)"""
    marked = {path for query in kept for path in (*query.right, *query.wrong)}
    present = set(_ids(new.index, marked)) & set(_ids(old.index, marked))
    shares = {"right": ([], []), "wrong": ([], []), "score": ([], [])}
    unusable = 0
    for query in kept:
        right, wrong = ([p for p in marks if p in present] for marks in (query.right, query.wrong))
        if not (right or wrong):
            continue
        try:
            answers = [_top_paths(side, query) for side in (new, old)]
        except ImageDecodeError:
            unusable += 1
            continue
        for side, top in enumerate(answers):
            right_share = sum(p in top for p in right) / len(right) if right else None
            wrong_share = sum(p in top for p in wrong) / len(wrong) if wrong else None
            if right_share is not None:
                shares["right"][side].append(right_share)
            if wrong_share is not None:
                shares["wrong"][side].append(wrong_share)
            shares["score"][side].append((right_share or 0.0) - (wrong_share or 0.0))
    if not shares["score"][0]:
        return None, unusable
    entries = {
        name: _entry(np.array(new_values), np.array(old_values)) if new_values else None
        for name, (new_values, old_values) in shares.items()
    }
    return {
        "queries": len(shares["score"][0]),
        "right_kept": entries["right"],
        "wrong_left": entries["wrong"],
        "score": entries["score"],
    }, unusable


def _top_paths(side: Side, query: KeptQuery) -> set[str]:
    vector = embed_query(side.embedder, query.name, query.data, query.box)
    return {hit.path for hit in side.index.search(vector[None], REPLAY_K)[0]}


def _label_scores(old: Side, new: Side, seed: int) -> dict | None:
    """R@1 and MAP@R of each model on the gallery's own labels: whole labels drawn at random up to
    MAX_LABELLED images, those both generations hold (None: fewer than two labels of two images)."""
    counts = dict(new.index.labels())
    usable = sorted(label for label, count in counts.items() if label and count >= 2)
    chosen, size = [], 0
    for label in np.random.default_rng(seed).permutation(usable) if len(usable) >= 2 else ():
        if len(chosen) >= 2 and size + counts[label] > MAX_LABELLED:
            break
        chosen.append(str(label))
        size += counts[label]
    rows = []
    for start in range(0, len(chosen), 500):
        part = chosen[start : start + 500]
        query = f"SELECT path, label FROM images WHERE label IN ({','.join('?' * len(part))}) ORDER BY path"
        rows += new.index.db.execute(query, part).fetchall()
    paths = [path for path, _ in rows]
    new_ids, old_ids = _ids(new.index, paths), _ids(old.index, paths)
    both = [(path, label) for path, label in rows if path in old_ids]
    labels = [label for _, label in both]
    if sum(count >= 2 for count in np.unique(labels, return_counts=True)[1]) < 2:
        return None
    scores = [
        query_scores(side.index.vectors(ids[path] for path, _ in both), labels)
        for side, ids in ((new, new_ids), (old, old_ids))
    ]
    return {
        "queries": len(both),
        "labels": len(set(labels)),
        "recall_at_1": _entry(scores[0]["r1"], scores[1]["r1"]),
        "map_at_r": _entry(scores[0]["map_at_r"], scores[1]["map_at_r"]),
    }


def _ids(index: GalleryIndex, paths) -> dict[str, int]:
    """{path: id} of those of `paths` the index holds."""
    paths, found = list(paths), {}
    for start in range(0, len(paths), 500):
        part = paths[start : start + 500]
        query = f"SELECT path, id FROM images WHERE path IN ({','.join('?' * len(part))})"
        found.update(index.db.execute(query, part).fetchall())
    return found


def _model_name(side: Side) -> str:
    record = side.index.manifest["model"]
    return f"{record['path'].rsplit('/', 1)[-1]} ({record['weights_sha256'][:12]})"
