"""Near-duplicate images in an index: every stored vector is searched against the index for the
images at cosine similarity >= a threshold, and the pairs found are grouped into connected
components (A like B and B like C put A, B and C in one group, even where A and C are less alike).

How each kind of index is searched:
- flat (`IDMap2,Flat`): faiss range search, exact;
- IVF-Flat: range search at the index's nprobe, approximate: a pair is missed only when neither
  image's probed lists hold the other; the similarities it reports are exact (the lists hold the
  full vectors);
- IVF-PQ: the codes give each image its `rerank` nearest candidates, confirmed with the exact full
  vectors (FullVectors), so the similarities reported are exact; an image whose candidates all
  pass is searched again with 4x as many, so a large group is not cut at the candidate depth.

Memory: the queries go BLOCK vectors at a time, and the pairs found are kept (20 bytes each) until
they pass MAX_PAIRS, when they are reduced to the strongest links that hold each group together (a
maximum spanning forest: fewer links than grouped images), which keeps the groups. No N x N matrix.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .integrity import check_scores
from .store import INDEX_FILE, GalleryIndex
from .vectors import stored_blocks

#: The best F1 on copies planted among photos of cub100's training classes, for the untrained
#: efficientnet_lite0 and for the model trained on those classes alike (bench/duplicates.py,
#: docs/duplicates.md); another model or kind of image may want another threshold.
DEFAULT_THRESHOLD = 0.88
BLOCK = 4096
MAX_PAIRS = 4_000_000
#: Above this many images, a group's least similar pair is not computed (n^2 dot products).
PAIRWISE_LIMIT = 10_000
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
    min_similarity: float | None  # the least similar two images (None above PAIRWISE_LIMIT images)
    weakest_link: float  # the group holds together at any threshold up to this
    links: list[tuple[int, int, float]]  # (id, id, similarity): the strongest links joining it, strongest first


@dataclass
class Duplicates:
    generation: str
    images: int
    threshold: float
    search: str
    seconds: float
    groups: list[Group]  # largest first, then by first path

    def to_json(self) -> dict:
        return {
            "generation": self.generation,
            "images": self.images,
            "threshold": self.threshold,
            "search": self.search,
            "seconds": round(self.seconds, 3),
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
            f"threshold {value!r}: not a number; give a cosine similarity in (0, 1], e.g. {DEFAULT_THRESHOLD}"
        ) from None
    if not 0 < threshold <= 1:  # also refuses nan
        raise ValueError(f"threshold {value}: must be in (0, 1] (a cosine similarity), e.g. {DEFAULT_THRESHOLD}")
    return threshold


def find_duplicates(index: GalleryIndex, threshold: float = DEFAULT_THRESHOLD, block: int = BLOCK) -> Duplicates:
    """The groups of images of `index` joined by similarities >= threshold, of at least 2 images."""
    started = time.perf_counter()
    threshold = check_threshold(threshold)
    links = _Links()
    for a, b, similarity in _pairs(index, threshold, block):
        links.add(a, b, similarity)
    groups = _groups(index, *links.forest())
    return Duplicates(index.generation, len(index), threshold, _method(index), time.perf_counter() - started, groups)


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
        check_scores(similarity, b, index.dir / index.generation / INDEX_FILE)
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
        yield np.repeat(ids, np.diff(limits).astype(np.int64)), found, similarity


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


def _groups(index: GalleryIndex, a: np.ndarray, b: np.ndarray, similarity: np.ndarray) -> list[Group]:
    """The connected components of a spanning forest as Groups, largest first, then by first path."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = np.unique(np.concatenate([a, b]))
    if len(nodes) == 0:
        return []
    pa, pb = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    _, component = connected_components(
        csr_matrix((np.ones(len(a)), (pa, pb)), shape=(len(nodes),) * 2), directed=False
    )
    strongest = np.full(len(nodes), -np.inf, dtype=np.float32)
    np.maximum.at(strongest, pa, similarity)
    np.maximum.at(strongest, pb, similarity)
    rows = index.rows(nodes.tolist())
    members: dict[int, list[Member]] = {}
    for position, node in enumerate(nodes.tolist()):
        path, label, width, height, *_ = rows[node]
        members.setdefault(int(component[position]), []).append(
            Member(node, path, label, width, height, float(strongest[position]))
        )
    links: dict[int, list[tuple[int, int, float]]] = {}
    for i in np.lexsort((b, a, -similarity)):  # strongest first; ties by id
        links.setdefault(int(component[pa[i]]), []).append((int(a[i]), int(b[i]), float(similarity[i])))
    groups = []
    for number, group in members.items():
        group.sort(key=lambda member: member.path)
        groups.append(
            Group(
                group, _least_similar(index, [m.id for m in group]), min(s for _, _, s in links[number]), links[number]
            )
        )
    groups.sort(key=lambda group: (-len(group.images), group.images[0].path))
    return groups


def _least_similar(index: GalleryIndex, ids: list[int]) -> float | None:
    """The similarity of the least similar two of these images, in blocks of rows."""
    if len(ids) > PAIRWISE_LIMIT:
        return None
    ids = np.array(ids, dtype=np.int64)
    if index.full is not None:
        vectors = index.full.lookup(ids)
    else:
        vectors = np.asarray(index.index.reconstruct_batch(ids), dtype=np.float32)
    least = math.inf
    rows = max(1, 2**22 // len(ids))
    for start in range(0, len(ids), rows):
        similarity = vectors[start : start + rows] @ vectors.T
        similarity[np.arange(len(similarity)), np.arange(start, start + len(similarity))] = np.inf  # not itself
        least = min(least, float(similarity.min()))
    return least


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
