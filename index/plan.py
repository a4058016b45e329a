"""Choosing and sizing the faiss index of a gallery from its size and a memory budget
(`--max-index-memory 4GB`, in the spirit of autofaiss).

Exact `IDMap2,Flat` for small galleries; above FLAT_LIMIT IVF-Flat or HNSW, whichever the build
measures faster at the recall target (index/choose.py) among those that fit the budget; IVF-PQ when
neither fits. An IVF-PQ index keeps only short codes in RAM, so its top candidates are
re-ranked exactly from the full vectors, memory-mapped from disk (vectors.FullVectors): the codes
find the neighbourhood, the full vectors order it. The memory-mapped file is read through the page
cache and is not counted in the budget.

The estimates are the RAM of the index once loaded, including the id hash tables faiss keeps
beside the arrays (measured at about 40 bytes per entry with libstdc++ and glibc malloc, while
they take 16 bytes per entry in the serialized file and none in IDMap2's, which rebuilds its map on
load). Search-time buffers are not counted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from .vectors import FLAT_LIMIT

KINDS = ("auto", "fastest", "flat", "ivf", "ivfpq", "hnsw")
#: The kinds index/choose.py measures against each other ("fastest" adds flat at any size).
MEASURED = ("ivf", "hnsw")
#: HNSW links per vector on the upper levels (twice as many on level 0), and the candidates kept
#: while linking a new vector. M 32 is faiss's default for HNSWFlat and the usual choice for
#: 128-1024-d embeddings; efConstruction 80 rather than faiss's 40 builds a graph that reaches
#: recall@10 0.99 at a smaller efSearch, for about twice the build time.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
#: Candidates an IVF-PQ search hands to the exact re-rank (the caller may take more, e.g. 4 k).
RERANK = 100
PQ_BITS = 8
#: The fewest sub-quantizers tried: 8 bytes of code per vector, the coarsest PQ in common use;
#: a budget that cannot hold that much needs a bigger machine or a sharded gallery.
MIN_PQ_M = 8
#: RAM per entry of a std::unordered_map<int64, int64> (IDMap2's rev_map, IVF's Hashtable direct
#: map): a 24-byte node rounded to 32 by malloc, plus an 8-byte bucket.
HASH_ENTRY_BYTES = 40
ID_BYTES = 8

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(i)?b?|b)?", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """Bytes from "4GB", "512MB", "1.5GiB", "800M" or plain bytes; decimal units (GB = 1e9),
    binary with an i (GiB = 2**30), case ignored."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"--max-index-memory {text}: not a size; write e.g. 4GB or 512MB")
    number, unit, binary = match.groups()
    unit = (unit or "").lower()
    scale = 1024 ** ("kmgt".index(unit) + 1) if binary else _UNITS[unit]
    size = int(Fraction(number) * scale)
    if size <= 0:
        raise ValueError(f"--max-index-memory {text}: must be more than zero; write e.g. 4GB or 512MB")
    return size


def human(size: int) -> str:
    """Bytes in decimal units, as a user would write them to --max-index-memory."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


@dataclass(frozen=True)
class IndexPlan:
    """What to build: `kind` ("flat" | "ivf" | "ivfpq" | "hnsw"), `nlist` inverted lists (ivf,
    ivfpq), `pq_m` sub-quantizers of `pq_bits` bits each and `opq` rotation (ivfpq only), `rerank`
    candidates re-ranked exactly from the full vectors (ivfpq only), `hnsw_m` links and
    `ef_construction` (hnsw only), and `bytes`, the estimated RAM of the index once loaded."""

    kind: str
    nlist: int = 0
    pq_m: int = 0
    pq_bits: int = PQ_BITS
    opq: bool = False
    rerank: int = 0
    hnsw_m: int = 0
    ef_construction: int = 0
    bytes: int = 0

    @property
    def factory(self) -> str:
        """The faiss index_factory description, for the manifest (and what ivfpq_index builds)."""
        if self.kind == "flat":
            return "IDMap2,Flat"
        if self.kind == "ivf":
            return f"IVF{self.nlist},Flat"
        if self.kind == "hnsw":
            return f"IDMap2,HNSW{self.hnsw_m}"
        bits = "" if self.pq_bits == 8 else f"x{self.pq_bits}"
        return f"{f'OPQ{self.pq_m},' if self.opq else ''}IVF{self.nlist},PQ{self.pq_m}{bits}"


def nlist_for(count: int) -> int:
    """Inverted lists for `count` vectors: about 4 sqrt(n), at least 39 training vectors per list
    (faiss's own minimum); the rule of vectors.ivf_index."""
    return max(1, min(int(4 * math.sqrt(count)), count // 39))


def use_opq(dim: int, pq_m: int) -> bool:
    """OPQ when each sub-quantizer covers more than 4 dimensions (pq_m < dim / 4): there the
    rotation's balancing of variance across sub-spaces pays; with finer sub-spaces plain PQ loses
    little and the OPQ training is not worth its time."""
    return pq_m * 4 < dim


def index_bytes(
    kind: str,
    count: int,
    dim: int,
    nlist: int = 0,
    pq_m: int = 0,
    opq: bool = False,
    pq_bits: int = PQ_BITS,
    hnsw_m: int = HNSW_M,
) -> int:
    """Estimated RAM of a loaded index of `count` vectors (see the module docstring)."""
    if kind == "flat":  # vectors, IDMap2's id array and its reverse hash map
        return count * (dim * 4 + ID_BYTES + HASH_ENTRY_BYTES)
    if kind == "hnsw":
        # 2M int32 links on level 0; a vector reaches level l with probability M**-l and has M
        # links there, so M / (M - 1) more on average; its level (int32) and offset (int64)
        links = 2 * hnsw_m + hnsw_m / (hnsw_m - 1)
        return int(count * (dim * 4 + links * 4 + 4 + 8 + ID_BYTES + HASH_ENTRY_BYTES))
    centroids = nlist * dim * 4
    if kind == "ivf":  # vectors and ids in the lists, ivf_index's Hashtable direct map
        return count * (dim * 4 + ID_BYTES + HASH_ENTRY_BYTES) + centroids
    # codes and ids in the lists (no direct map: see vectors.ivfpq_index), one codebook of
    # 2**bits centroids per sub-space, the OPQ rotation
    code = math.ceil(pq_m * pq_bits / 8)
    return count * (code + ID_BYTES) + centroids + 2**pq_bits * dim * 4 + (dim * dim * 4 if opq else 0)


def hnsw_plan(count: int, dim: int) -> IndexPlan:
    return IndexPlan("hnsw", hnsw_m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, bytes=index_bytes("hnsw", count, dim))


def measured_candidates(count: int, dim: int, requested: str) -> list[IndexPlan]:
    """The plans index/choose.py measures for "auto" or "fastest" (those that fit the budget):
    IVF-Flat and HNSW, and flat too for "fastest" up to FLAT_LIMIT (beyond, a scan of every vector
    is never the fastest way to a recall target)."""
    plans = [IndexPlan("ivf", nlist=nlist_for(count), bytes=index_bytes("ivf", count, dim, nlist_for(count)))]
    plans.append(hnsw_plan(count, dim))
    if requested == "fastest" and count <= FLAT_LIMIT:
        plans.insert(0, IndexPlan("flat", bytes=index_bytes("flat", count, dim)))
    return plans if count else []


def plan_index(count: int, dim: int, requested: str = "auto", max_memory: int | None = None) -> IndexPlan:
    """The index for `count` vectors of `dim` dimensions within `max_memory` bytes (None: no
    budget). "auto" and "fastest": flat up to FLAT_LIMIT, else IVF-Flat, else IVF-PQ with the most
    sub-quantizers that fit (a divisor of dim, at least MIN_PQ_M), each only when its estimate
    fits the budget; the build then measures which of measured_candidates() to keep. An explicit
    kind that does not fit, or a budget that not even the smallest IVF-PQ fits, raises ValueError
    with one line saying what the index needs."""
    if requested not in KINDS:
        raise ValueError(f"--index-type {requested}: choose one of {', '.join(KINDS)}")
    budget = max_memory if max_memory is not None else math.inf
    nlist = nlist_for(count)
    shape = f"{count:,} x {dim}"

    def too_small(needs: str) -> ValueError:
        return ValueError(f"--max-index-memory {human(max_memory)}: {needs}")

    if requested == "hnsw":
        plan = hnsw_plan(count, dim)
        if plan.bytes > budget:
            raise too_small(
                f"an HNSW index of {shape} needs {human(plan.bytes)}; raise the budget or use --index-type ivfpq"
            )
        return plan
    requested = "auto" if requested == "fastest" else requested
    flat = IndexPlan("flat", bytes=index_bytes("flat", count, dim))
    ivf = IndexPlan("ivf", nlist=nlist, bytes=index_bytes("ivf", count, dim, nlist))
    if requested == "flat" or (requested == "auto" and count <= FLAT_LIMIT and flat.bytes <= budget):
        if flat.bytes > budget:
            raise too_small(
                f"a flat index of {shape} needs {human(flat.bytes)}; raise the budget or use --index-type ivfpq"
            )
        return flat
    if count == 0:
        raise ValueError(f"--index-type {requested}: an IVF index needs vectors to train on; the gallery has none yet")
    if requested == "ivf" or (requested == "auto" and ivf.bytes <= budget):
        if ivf.bytes > budget:
            raise too_small(
                f"an IVF index of {shape} needs {human(ivf.bytes)}; raise the budget or use --index-type ivfpq"
            )
        return ivf

    if count < 2**PQ_BITS:
        raise ValueError(
            f"--index-type {requested}: an IVF-PQ index trains its codebooks on at least "
            f"{2**PQ_BITS} vectors; the gallery has {count}"
        )
    plans = [
        IndexPlan(
            "ivfpq",
            nlist=nlist,
            pq_m=m,
            opq=use_opq(dim, m),
            rerank=RERANK,
            bytes=index_bytes("ivfpq", count, dim, nlist, m, use_opq(dim, m)),
        )
        for m in range(min(MIN_PQ_M, dim), dim + 1)
        if dim % m == 0
    ]
    if max_memory is None:  # explicit ivfpq without a budget: 4 dimensions per sub-quantizer
        return max((p for p in plans if p.pq_m * 4 <= dim), key=lambda p: p.pq_m, default=plans[0])
    fitting = [p for p in plans if p.bytes <= budget]
    if not fitting:
        smallest = min(plans, key=lambda p: p.bytes)
        raise too_small(f"an IVF-PQ index of {shape} needs at least {human(smallest.bytes)} ({smallest.factory})")
    return fitting[-1]
