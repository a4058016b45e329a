"""Choosing an index kind by measurement, and tuning each kind to the recall target.

For `--index-type auto` on a gallery above FLAT_LIMIT (or whose flat index does not fit the
budget), and for `--index-type fastest` at any size, the build builds every candidate whose
estimated RAM fits `--max-index-memory` (plan.measured_candidates: IVF-Flat and HNSW, and flat too
for "fastest"), tunes each on the same queries to the smallest nprobe / efSearch whose recall@10
against exact search reaches `--target-recall`, times each at that setting, and keeps the one with
the lowest latency per query among those that reach the target (the highest recall when none
does). HNSW's latency is counted 1 / (1 - REBUILD_SHARE) times, its worst before a rebuild, when up
to that share of its graph may be masked removals.

Reproducible and bounded: the queries are RECALL_SAMPLE gallery vectors (a tenth of a gallery of
fewer than ten times as many) drawn with a fixed seed,
held out of the candidates until they are measured (so they are unseen queries, as a service's
are) and added to the winner after, and the exact answers are computed once for all candidates. Each candidate is built once on the whole gallery and searched at most
len(EF_SEARCH) = 7 (HNSW) or log2(nlist) + 1 (IVF) times for tuning plus LATENCY_REPEATS times for
timing, on one thread (as a service answers one query per request; the fastest of the repeats,
which is the least disturbed by other load). A loser is dropped as soon as it loses, so the build
holds at most two candidates at once. The choice is remembered in the manifest and later updates
keep its kind until the gallery has doubled or halved since, or the request, target or budget rule
it out; only then is it measured again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import hnsw
from .plan import IndexPlan, human, index_bytes, measured_candidates, plan_index
from .served_recall import exact_top, load_served
from .update import fresh_index, gallery_blocks, updated_index
from .vectors import RECALL_SAMPLE, _exact_ids, stored_blocks, tune_ivfpq, tune_nprobe

LATENCY_REPEATS = 3
#: Measured latency is multiplied by this before comparing (see the module docstring).
HANDICAP = {"hnsw": 1 / (1 - hnsw.REBUILD_SHARE)}


def check_target(target: float) -> float:
    if not (isinstance(target, (int, float)) and 0 < target <= 1):
        raise ValueError(f"--target-recall {target}: must be in (0, 1]")
    return float(target)


@dataclass
class Probe:
    """Queries drawn from the gallery (float32 [q, d]), their ids, and the ids of each one's exact
    11 nearest neighbours (its own among them)."""

    queries: np.ndarray
    ids: np.ndarray
    truth: np.ndarray


def make_probe(blocks, total: int, sample: int = RECALL_SAMPLE, seed: int = 0, held_out: bool = False) -> Probe:
    """A Probe of `sample` of the `total` vectors that `blocks()` yields as (ids, vectors); with
    `held_out`, the exact answers are found among the other vectors only (see choose_index)."""
    rows = np.sort(np.random.default_rng(seed).permutation(total)[:sample])
    queries, query_ids, all_ids, start = [], [], [], 0
    for ids, block in blocks():
        picked = rows[(rows >= start) & (rows < start + len(ids))] - start
        queries.append(np.asarray(block[picked], dtype=np.float32))
        query_ids.append(ids[picked])
        all_ids.append(ids)
        start += len(ids)
    if not rows.size:
        return Probe(np.empty((0, 0), np.float32), np.empty(0, np.int64), np.empty((0, 11), np.int64))
    queries, query_ids, all_ids = (
        np.ascontiguousarray(np.concatenate(queries)),
        np.concatenate(query_ids),
        np.concatenate(all_ids),
    )
    if held_out:
        blocks = _without(blocks, query_ids)
        all_ids = all_ids[~np.isin(all_ids, query_ids)]
    truth = _exact_ids((b for _, b in blocks()), all_ids, queries, 11)
    return Probe(queries, query_ids, truth)


def _without(blocks, ids: np.ndarray):
    """blocks() less the vectors of `ids`."""

    def rest():
        for block_ids, block in blocks():
            keep = ~np.isin(block_ids, ids)
            yield block_ids[keep], block[keep]

    return rest


def recall_of(found: np.ndarray, probe: Probe) -> float:
    """Recall@10 of `found` (ids [q, >= 11]) against the probe's exact answers, own ids left out."""
    hits = total = 0
    for own, want, got in zip(probe.ids, probe.truth, found):
        want = [i for i in want if i != own and i >= 0][:10]
        got = [i for i in got if i != own and i >= 0][:10]
        hits += len(set(want) & set(got))
        total += len(want)
    return hits / total if total else 1.0


def tune(search, values, probe: Probe, target: float) -> tuple[int, float]:
    """The first of `values` at which search(value, queries, k) reaches `target` recall@10 (else
    the last), and its recall."""
    for value in values:
        recall = recall_of(search(value, probe.queries, 11), probe)
        if recall >= target:
            break
    return value, recall


def ms_per_query(search, value: int, queries: np.ndarray) -> float:
    """Milliseconds per query of search(value, queries, 10) on one thread, the fastest of LATENCY_REPEATS."""
    import faiss

    if not len(queries):
        return 0.0
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        best = math.inf
        for _ in range(LATENCY_REPEATS):
            started = time.perf_counter()
            search(value, queries, 10)
            best = min(best, time.perf_counter() - started)
    finally:
        faiss.omp_set_num_threads(threads)
    return 1000 * best / len(queries)


def searcher(kind: str, index):
    """(the parameter's manifest name, the values to try, search(value, queries, k) -> ids)."""
    if kind == "hnsw":
        return "ef_search", hnsw.EF_SEARCH, lambda value, queries, k: hnsw.search(index, queries, k, value)[1]
    if kind == "ivf":

        def search(value, queries, k):
            index.nprobe = value
            return index.search(queries, k)[1]

        nprobes = [2**i for i in range(index.nlist.bit_length()) if 2**i < index.nlist] + [index.nlist]
        return "nprobe", nprobes, search
    return None, [0], lambda value, queries, k: index.search(queries, k)[1]


def tune_hnsw(index, target: float, sample: int = RECALL_SAMPLE, seed: int = 0) -> tuple[int, float]:
    """(efSearch, recall@10): the smallest of EF_SEARCH, from the index's current efSearch up, whose
    recall@10 over the live vectors reaches `target`, the exact answers from the graph's stored
    vectors. The queries are stored vectors, which overstates recall (see choose_index); starting
    from the current efSearch (that of the generation an update started from, which choose_index
    measured on held-out queries) keeps an update from lowering it on that account."""
    probe = make_probe(lambda: stored_blocks(index), index.ntotal - hnsw.masked(index), sample, seed)
    _, values, search = searcher("hnsw", index)
    start = hnsw.graph(index).hnsw.efSearch
    return tune(search, [v for v in values if v >= start] or values[-1:], probe, target)


@dataclass
class Planned:
    """What to build: `plan`, or, when `candidates` is not empty, whichever of them measures best;
    `unfit`: candidates left out for the budget; `choice`: the earlier choice that `plan` keeps."""

    plan: IndexPlan
    candidates: list[IndexPlan] = field(default_factory=list)
    unfit: list[IndexPlan] = field(default_factory=list)
    choice: dict | None = None


def plan_with_choice(
    count: int, dim: int, requested: str, max_memory: int | None, target: float, old: dict | None
) -> Planned:
    """plan.plan_index's plan as it is, or the candidates to measure, or the kind an earlier
    measurement chose (`old`: the old manifest's index parameters) when it still stands."""
    plan = plan_index(count, dim, requested, max_memory)
    if requested not in ("auto", "fastest") or plan.kind == "ivfpq" or (requested == "auto" and plan.kind == "flat"):
        return Planned(plan)
    every = measured_candidates(count, dim, requested)
    budget = max_memory if max_memory is not None else math.inf
    fitting = [p for p in every if p.bytes <= budget]
    if not fitting:
        return Planned(plan)
    choice = (old or {}).get("choice")
    kept = [p for p in fitting if old and p.kind == old["kind"]]
    if (
        choice
        and kept
        and old.get("requested") == requested
        and choice["target_recall"] == target
        and 0.5 <= count / max(1, choice["count"]) <= 2
    ):
        return Planned(kept[0], choice=choice)
    return Planned(plan, fitting, [p for p in every if p.bytes > budget])


def choose_index(blocks, total: int, dim: int, planned: Planned, target: float, max_memory: int | None):
    """(plan, index, choice, measurement): the candidates of `planned` built from `blocks()`,
    measured on one Probe, and the best kept (see the module docstring). `choice` is the
    manifest's record, `measurement` the winner's entry in it."""
    # the queries are held out of the candidates until they are measured: a stored vector's own
    # links lead an HNSW walk straight to its neighbours, which overstates recall (by up to 0.05
    # on weakly clustered data) for the unseen queries a service answers; at most a tenth of a small
    # gallery, so that the candidates are built on most of it
    probe = make_probe(blocks, total, min(RECALL_SAMPLE, max(1, total // 10)), held_out=True)
    rest = _without(blocks, probe.ids)
    best = best_index = None
    measured = []
    for plan in planned.candidates:
        index = fresh_index(plan, rest, total - len(probe.ids), dim)
        name, values, search = searcher(plan.kind, index)
        value, recall = tune(search, values, probe, target)
        entry = {"kind": plan.kind, "type": plan.factory, "estimated_bytes": plan.bytes, "recall_at_10": recall}
        if name:
            entry[name] = value
        entry["ms_per_query"] = ms_per_query(search, value, probe.queries)
        measured.append(entry)
        if best is None or _rank(entry, target) < _rank(best, target):
            best, best_index = entry, index
        del index
    unfit = [{"kind": p.kind, "type": p.factory, "estimated_bytes": p.bytes, "fits": False} for p in planned.unfit]
    plan = next(p for p in planned.candidates if p.kind == best["kind"])
    if len(probe.ids):
        best_index.add_with_ids(probe.queries, probe.ids)
    choice = {
        "chosen": best["kind"],
        "count": total,
        "target_recall": target,
        "queries": len(probe.queries),
        "threads": 1,
        "candidates": measured + unfit,
        "reason": _reason(best, measured, planned.unfit, target, max_memory),
    }
    return plan, best_index, choice, best


def _rank(entry: dict, target: float) -> tuple:
    if entry["recall_at_10"] >= target:
        return (0, entry["ms_per_query"] * HANDICAP.get(entry["kind"], 1.0))
    return (1, -entry["recall_at_10"])


def _describe(entry: dict) -> str:
    setting = next(
        (f" at {label} {entry[k]}" for k, label in (("nprobe", "nprobe"), ("ef_search", "efSearch")) if k in entry), ""
    )
    return f"{entry['kind']} recall@10 {entry['recall_at_10']:.3f}{setting}, {entry['ms_per_query']:.3f} ms/query"


def _reason(best: dict, measured: list[dict], unfit: list[IndexPlan], target: float, max_memory) -> str:
    """One line: what was chosen, and the measurements that chose it."""
    why = "the fastest to reach" if best["recall_at_10"] >= target else "none reached, so the highest recall at"
    others = [_describe(e) for e in measured if e is not best]
    others += [f"{p.kind} needs {human(p.bytes)}, over the {human(max_memory)} budget" for p in unfit]
    line = f"chose {best['type']}, {why} recall@10 {target}: {_describe(best)}"
    return line + (f"; vs {'; '.join(others)}" if others else "") + " (one thread, gallery vectors as queries)"


def index_params(
    index,
    full,
    plan,
    requested: str,
    max_memory,
    target: float,
    choice: dict | None = None,
    tuned: dict | None = None,
    served: np.ndarray | None = None,
) -> dict:
    """The manifest's account of the index: its kind, the budget and target it was chosen for, the
    nprobe or efSearch measured to reach the target on the gallery's own vectors and that recall
    (`tuned`: as choose_index measured them on this very index), widened where the queries a
    server kept (`served`, index/served_recall.py) need more, and the measured choice that picked
    the kind, if one did."""
    params = {
        "type": plan.factory,
        "kind": plan.kind,
        "requested": requested,
        "max_memory": max_memory,
        "target_recall": target,
        "estimated_bytes": plan.bytes,
        "metric": "inner_product",
    }
    if plan.kind == "ivf":
        params["nprobe"], params["recall_at_10"] = (
            (tuned["nprobe"], tuned["recall_at_10"]) if tuned else tune_nprobe(index, target=target)
        )
        widen_for_served(plan.kind, index, params, served, target)
        index.nprobe = params["nprobe"]
    elif plan.kind == "ivfpq":
        params["nprobe"], params["recall_at_10"], params["rerank"] = tune_ivfpq(index, full, plan.rerank, target)
    elif plan.kind == "hnsw":
        params["ef_search"], params["recall_at_10"] = (
            (tuned["ef_search"], tuned["recall_at_10"]) if tuned else tune_hnsw(index, target)
        )
        widen_for_served(plan.kind, index, params, served, target)
        hnsw.graph(index).hnsw.efSearch = params["ef_search"]
        params.update(hnsw_m=plan.hnsw_m, ef_construction=plan.ef_construction, masked=hnsw.masked(index))
        params["estimated_bytes"] = index_bytes("hnsw", index.ntotal, index.d, hnsw_m=plan.hnsw_m)
    if choice:
        params["choice"] = choice
    return params


def widen_for_served(kind: str, index, params: dict, served: np.ndarray | None, target: float) -> None:
    """Raise the tuned nprobe or efSearch in `params` until the served queries' recall@10 against
    exact search reaches `target` too (never lower it), and record that recall."""
    if served is None:
        return
    name, values, search = searcher(kind, index)
    probe = Probe(served, np.full(len(served), -1, np.int64), exact_top(index, served, 11))
    value, recall = tune(search, [v for v in values if v >= params[name]] or values[-1:], probe, target)
    params.update({name: value, "served_queries": len(served), "served_recall_at_10": recall})


def planned_index(old, removed_ids, spool, count: int, planned: Planned, staging, requested: str, max_memory, target):
    """(index, FullVectors or None, manifest parameters) of a build of `count` vectors: the best of
    the planned candidates, measured, or the planned kind, updated from `old` (update.updated_index)."""
    if planned.candidates:
        blocks = gallery_blocks(old, removed_ids, spool)
        plan, index, choice, tuned = choose_index(blocks, count, spool.dim, planned, target, max_memory)
        full = None
    else:
        plan, choice, tuned = planned.plan, planned.choice, None
        index, full = updated_index(old, removed_ids, spool, plan, staging)
    served = load_served(old.dir, spool.dim) if old is not None else None
    return index, full, index_params(index, full, plan, requested, max_memory, target, choice, tuned, served)
