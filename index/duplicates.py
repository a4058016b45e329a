"""Near-duplicate images in an index: every stored vector is searched against the index for the
images at cosine similarity >= a threshold, and the pairs found are grouped by complete linkage, so
that every two images of a group are alike (A like B and B like C do not put A and C together
unless A is like C). By default the thresholds are calibrated on the gallery's own edited copies
and the pairs checked here (index/calibration.py), and every pair is confirmed on its pixels
(index/copy_check.py).

How each kind of index is searched:
- flat (`IDMap2,Flat`): faiss range search, exact;
- IVF-Flat: range search at the index's nprobe, approximate: a pair is missed only when neither
  image's probed lists hold the other; the similarities it reports are exact (the lists hold the
  full vectors);
- IVF-PQ: the codes give each image its `rerank` nearest candidates, confirmed with the exact full
  vectors (FullVectors), so the similarities reported are exact; an image whose candidates all
  pass is searched again with 4x as many, so a large group is not cut at the candidate depth.

Memory: the queries go BLOCK vectors at a time, and the pairs found are kept (20 bytes each) until
they pass MAX_PAIRS, when they are reduced to the strongest links that hold each component together
(a maximum spanning forest); groups are then joined along those links only. No N x N matrix.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np

from .calibration import CANDIDATES, LOOKALIKE_RANK, Calibration, CopySample, sample_copies
from .integrity import check_scores
from .store import INDEX_FILE, GalleryIndex
from .vectors import stored_blocks

#: A manual threshold's example in messages (the default is calibrated per gallery).
EXAMPLE_THRESHOLD = 0.9
BLOCK = 4096
MAX_PAIRS = 4_000_000
#: float32 rounding: an image embedded twice may score 0.99999994 against itself.
EPS = 1e-6


@dataclass
class Member:
    id: int
    path: str
    label: str
    width: int
    height: int
    similarity: float  # its strongest link to another image of the group


@dataclass
class Group:
    images: list[Member]  # by path
    min_similarity: float  # the least similar two images: never below the threshold
    weakest_link: float  # the weakest of the links that joined it
    links: list[tuple[int, int, float]]  # (id, id, similarity): the links that joined it, strongest first


@dataclass
class Duplicates:
    generation: str
    images: int
    threshold: float
    search: str
    seconds: float
    groups: list[Group]  # largest first, then by first path
    calibration: Calibration | None = None  # None: a threshold was given, no copy check
    checked_pairs: int = 0  # pairs the copy check looked at

    def to_json(self) -> dict:
        return {
            "generation": self.generation,
            "images": self.images,
            "threshold": self.threshold,
            "search": self.search,
            "seconds": round(self.seconds, 3),
            "calibration": self.calibration.to_json() if self.calibration is not None else None,
            "checked_pairs": self.checked_pairs,
            "grouped_images": sum(len(g.images) for g in self.groups),
            "groups": [
                {
                    "size": len(g.images),
                    "min_similarity": _round(g.min_similarity),
                    "weakest_link": _round(g.weakest_link),
                    "images": [
                        {
                            "id": m.id,
                            "path": m.path,
                            "label": m.label,
                            "width": m.width,
                            "height": m.height,
                            "similarity": _round(m.similarity),
                        }
                        for m in g.images
                    ],
                    "links": [{"a": a, "b": b, "similarity": _round(s)} for a, b, s in g.links],
                }
                for g in self.groups
            ],
        }


def check_threshold(value) -> float:
    """A cosine similarity threshold in (0, 1], from a number or text; ValueError in one line."""
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"threshold {value!r}: not a number; give a cosine similarity in (0, 1], e.g. {EXAMPLE_THRESHOLD}"
        ) from None
    if not 0 < threshold <= 1:  # also refuses nan
        raise ValueError(f"threshold {value}: must be in (0, 1] (a cosine similarity), e.g. {EXAMPLE_THRESHOLD}")
    return threshold


def find_duplicates(
    index: GalleryIndex,
    threshold: float | None = None,
    block: int = BLOCK,
    embedder=None,
    copies: CopySample | None = None,
) -> Duplicates:
    """Groups of at least 2 images of `index` in which every two images are copies of each other.
    With a threshold: every pair at cosine >= threshold, nothing else checked. Without (the
    default): the candidate threshold from copies of the gallery's own images (index/calibration.py,
    made with `embedder`, the index's model, unless `copies` is given), and every pair confirmed on
    its pixels by the copy check (index/copy_check.py) at a threshold calibrated on those copies and
    on the look-alikes among the pairs checked."""
    started = time.perf_counter()
    check = calibration = None
    if threshold is None:
        copies = copies or sample_copies(index, embedder)
        threshold, check = copies.candidate_threshold, _CopyPairs(index)
    threshold = check_threshold(threshold)
    links = _Links()
    for a, b, similarity in _pairs(index, threshold, block):
        links.add(a, b, similarity)
    pairs = links.all()
    if check is not None:
        *pairs, rank = _strongest_per_image(*pairs, CANDIDATES)
        order = np.lexsort((pairs[1], pairs[0]))  # in id order: each picture read once
        ncc = np.array([check.ncc(a, b) for a, b in zip(pairs[0][order].tolist(), pairs[1][order].tolist())])
        lookalikes = ncc[rank[order] >= LOOKALIKE_RANK - 1]
        calibration = copies.thresholds(lookalikes.astype(np.float32), len(ncc) / max(1, len(index)))
        check.threshold = calibration.copy_threshold
    groups = _groups(index, *pairs, threshold, check)
    return Duplicates(
        index.generation,
        len(index),
        threshold,
        _method(index),
        time.perf_counter() - started,
        groups,
        calibration,
        check.checked if check is not None else 0,
    )


class _CopyPairs:
    """The copy check of pairs of gallery ids, each pair checked once; a pair passes at >= threshold."""

    def __init__(self, index: GalleryIndex):
        from .copy_check import CopyCheck

        self.threshold = 1.0
        self.check = CopyCheck(index=index)
        self.known: dict[tuple[int, int], float] = {}

    @property
    def checked(self) -> int:
        return len(self.known)

    def ncc(self, a: int, b: int) -> float:
        key = (min(a, b), max(a, b))
        if key not in self.known:
            self.known[key] = self.check.similarity(*key)
        return self.known[key]

    def __call__(self, a: int, b: int) -> bool:
        return self.ncc(a, b) >= self.threshold


def _strongest_per_image(a: np.ndarray, b: np.ndarray, similarity: np.ndarray, most: int):
    """The pairs that are among the `most` strongest of either of their images (a copy is among an
    image's few nearest, and the copy check's work stays linear in the gallery), with each pair's
    rank at the image that holds it nearer (0: the nearest)."""
    order = np.lexsort((b, a, -similarity))  # strongest first
    a, b, similarity = a[order], b[order], similarity[order]
    ends = np.stack([a, b], axis=1).ravel()  # pair i's images at 2i and 2i + 1: in strength order
    by_image = np.argsort(ends, kind="stable")
    _, counts = np.unique(ends, return_counts=True)
    rank = np.empty(len(ends), np.int64)
    rank[by_image] = np.arange(len(ends)) - np.repeat(np.cumsum(counts) - counts, counts)
    nearer = rank.reshape(-1, 2).min(axis=1)
    keep = nearer < most
    return a[keep], b[keep], similarity[keep], nearer[keep]


def _method(index: GalleryIndex) -> str:
    params = index.manifest["index"]
    if params["kind"] == "ivf":
        return (
            f"approximate: IVF range search at nprobe {params['nprobe']} of {index.index.nlist} lists "
            "(similarities exact)"
        )
    if params["kind"] == "ivfpq":
        return (
            f"IVF-PQ candidates ({params['rerank']}+ per image, nprobe {params['nprobe']}) confirmed with the "
            "exact vectors"
        )
    return "exact (flat index)"


def _pairs(index: GalleryIndex, threshold: float, block: int):
    """(ids, ids, similarities) of the pairs at >= threshold, one block of query images at a time;
    a similarity outside the cosine range stops the search (index/integrity.py)."""
    for a, b, similarity in _candidate_pairs(index, threshold, block):
        check_scores(similarity, b, index.dir / index.generation / INDEX_FILE, index.manifest)
        yield a, b, similarity


def _candidate_pairs(index: GalleryIndex, threshold: float, block: int):
    full = index.full
    if full is not None:
        depth = index.manifest["index"]["rerank"]
        for start in range(0, len(full), block):
            queries = np.ascontiguousarray(full.vectors[start : start + block], dtype=np.float32)
            yield _confirmed(index.index, full, np.asarray(full.ids[start : start + block]), queries, threshold, depth)
        return
    for ids, queries in stored_blocks(index.index, block):
        limits, similarity, found = index.index.range_search(np.ascontiguousarray(queries), threshold - EPS)
        live = found >= 0  # an HNSW index keeps removed vectors in its graph under id -1 (index/hnsw.py)
        yield np.repeat(ids, np.diff(limits).astype(np.int64))[live], found[live], similarity[live]


def _confirmed(index, full, ids: np.ndarray, queries: np.ndarray, threshold: float, depth: int):
    """The pairs among each query's `depth` nearest candidates by code whose exact similarity passes;
    a query whose candidates all pass is searched again, 4x deeper."""
    parts = []
    todo = np.arange(len(ids))
    while len(todo):
        _, candidates = index.search(queries[todo], depth)
        similarity, found = full.rerank(queries[todo], candidates, depth)
        passed = similarity >= threshold - EPS
        again = passed[:, -1] & (depth < index.ntotal)
        rows, columns = np.nonzero(passed & ~again[:, None])
        parts.append((ids[todo[rows]], found[rows, columns], similarity[rows, columns]))
        todo, depth = todo[again], depth * 4
    return tuple(np.concatenate(part) for part in zip(*parts))


class _Links:
    """The pairs found so far, reduced to a maximum spanning forest whenever they pass MAX_PAIRS."""

    def __init__(self):
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.count = 0

    def add(self, a: np.ndarray, b: np.ndarray, similarity: np.ndarray) -> None:
        other = a != b
        self.parts.append((a[other].astype(np.int64), b[other].astype(np.int64), similarity[other].astype(np.float32)))
        self.count += int(other.sum())
        if self.count > MAX_PAIRS:
            self.parts = [self.forest()]
            self.count = len(self.parts[0][0])

    def forest(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.parts:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
        return strongest_links(*(np.concatenate(column) for column in zip(*self.parts)))

    def all(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair once (a < b), or the forest once they passed MAX_PAIRS."""
        if not self.parts:
            return self.forest()
        a, b, similarity = (np.concatenate(column) for column in zip(*self.parts))
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        _, first = np.unique(np.stack([lo, hi], axis=1), axis=0, return_index=True)
        return lo[first], hi[first], similarity[first]


def strongest_links(a: np.ndarray, b: np.ndarray, similarity: np.ndarray):
    """The maximum spanning forest of the graph whose edges join ids a[i] and b[i] with
    similarity[i] (an edge may come twice, once from each side): the links that hold each
    connected component together, as strong as possible. Returns (a, b, similarity), a < b."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    nodes = np.unique(np.concatenate([a, b]))
    if len(nodes) == 0:
        return a, b, similarity
    lo, hi = np.searchsorted(nodes, np.minimum(a, b)), np.searchsorted(nodes, np.maximum(a, b))
    # weights 2 - s: positive (scipy reads 0 as no edge), smallest for the most similar pairs;
    # a pair found from both sides is one edge, not the sum of two
    key = lo * len(nodes) + hi
    order = np.lexsort((-similarity, key))
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    graph = csr_matrix((2.0 - similarity[first].astype(np.float64), (lo[first], hi[first])), shape=(len(nodes),) * 2)
    tree = minimum_spanning_tree(graph).tocoo()
    return nodes[tree.row], nodes[tree.col], (2.0 - tree.data).astype(np.float32)


def _groups(index: GalleryIndex, a, b, similarity, threshold: float, check=None) -> list[Group]:
    """Complete-linkage clustering cut at the threshold: the two groups whose least similar pair
    across them is the most similar are joined first, and only while that pair is at >= threshold
    (and, with `check`, every pair across them passes the copy check). So every two images of a
    group are alike and no group chains look-alikes through a path of links. Groups are joined
    along the pairs found (a and b); largest first, then by first path."""
    nodes = np.unique(np.concatenate([a, b]))
    if len(nodes) == 0:
        return []
    vectors = index.vectors(nodes.tolist())
    members = {n: [n] for n in range(len(nodes))}
    neighbours: dict[int, set[int]] = {n: set() for n in range(len(nodes))}
    for x, y in zip(np.searchsorted(nodes, a).tolist(), np.searchsorted(nodes, b).tolist()):
        neighbours[x].add(y)
        neighbours[y].add(x)
    joins: dict[int, list[tuple[int, int, float]]] = {n: [] for n in range(len(nodes))}

    def linkage(x: int, y: int) -> float | None:
        """The least similarity across groups x and y, or None when they cannot join."""
        least = float((vectors[members[x]] @ vectors[members[y]].T).min())
        if least < threshold - EPS:
            return None
        if check is not None and not all(check(int(nodes[i]), int(nodes[j])) for i in members[x] for j in members[y]):
            return None
        return least

    heap = [(-value, x, y) for x in neighbours for y in neighbours[x] if x < y and (value := linkage(x, y)) is not None]
    heapq.heapify(heap)
    next_group = len(nodes)
    while heap:
        _, x, y = heapq.heappop(heap)
        if x not in members or y not in members:  # one side has joined another group since
            continue
        cross = vectors[members[x]] @ vectors[members[y]].T
        i, j = np.unravel_index(int(np.argmax(cross)), cross.shape)
        strongest = (int(nodes[members[x][i]]), int(nodes[members[y][j]]), float(cross[i, j]))
        z, next_group = next_group, next_group + 1
        members[z] = members.pop(x) + members.pop(y)
        joins[z] = [*joins.pop(x), *joins.pop(y), (min(strongest[:2]), max(strongest[:2]), strongest[2])]
        neighbours[z] = (neighbours.pop(x) | neighbours.pop(y)) - {x, y}
        for other in neighbours[z]:
            neighbours[other] -= {x, y}
            neighbours[other].add(z)
            if (value := linkage(z, other)) is not None:
                heapq.heappush(heap, (-value, min(z, other), max(z, other)))
    rows = index.rows(nodes.tolist())
    groups = []
    for number, positions in members.items():
        if len(positions) < 2:
            continue
        inside = vectors[positions] @ vectors[positions].T
        np.fill_diagonal(inside, -np.inf)
        group = []
        for row, position in enumerate(positions):
            path, label, width, height, *_ = rows[int(nodes[position])]
            group.append(Member(int(nodes[position]), path, label, width, height, float(inside[row].max())))
        group.sort(key=lambda member: member.path)
        np.fill_diagonal(inside, np.inf)
        links = sorted(joins[number], key=lambda link: (-link[2], link[0], link[1]))
        groups.append(Group(group, float(inside.min()), min(s for _, _, s in links), links))
    groups.sort(key=lambda group: (-len(group.images), group.images[0].path))
    return groups


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
