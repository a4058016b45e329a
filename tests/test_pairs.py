"""Property tests of the pair chooser over random label layouts (hypothesis)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metrix.pairs import choose_pairs


@st.composite
def batches(draw):
    n = draw(st.integers(1, 40))
    layout = draw(st.sampled_from(["random", "single", "distinct", "balanced"]))
    if layout == "random":
        labels = draw(st.lists(st.integers(0, draw(st.integers(0, 8))), min_size=n, max_size=n))
    elif layout == "single":
        labels = [draw(st.integers(0, 1000))] * n
    elif layout == "distinct":
        labels = list(range(n))
    else:
        k = draw(st.integers(2, 5))
        labels = [i // k for i in range(n)]
    seed = draw(st.integers(0, 2**31 - 1))
    k = draw(st.sampled_from([1, 2, 3, None]))
    dim = draw(st.integers(1, 16))
    embeddings = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return embeddings, torch.tensor(labels), k, draw(st.booleans())


@settings(max_examples=300, deadline=None)
@given(batches())
def test_chooser_never_mixes_an_anchor_with_its_own_class_as_negative(batch):
    embeddings, labels, k, anchor_positives = batch
    plan = choose_pairs(embeddings, labels, 0.5, k, anchor_positives)
    anchors = plan.anchors
    own, other = plan.sources[plan.mixes, 0], plan.sources[plan.mixes, 1]
    assert (labels[other] != labels[anchors]).all(), "a negative shares the anchor's class"
    assert (labels[own] == labels[anchors]).all(), "the positive side is not of the anchor's class"


@settings(max_examples=300, deadline=None)
@given(batches())
def test_chooser_takes_every_positive_and_the_k_hardest_negatives(batch):
    embeddings, labels, k, anchor_positives = batch
    plan = choose_pairs(embeddings, labels, 0.5, k, anchor_positives)
    e = torch.nn.functional.normalize(embeddings, dim=1)
    sim = e @ e.T
    relations = [(a, tuple(src)) for a, src in zip(plan.anchors.tolist(), plan.sources[plan.mixes].tolist())]
    assert len(set(relations)) == len(relations), "an anchor sees the same mix twice"
    assert len(set(map(tuple, plan.sources.tolist()))) == len(plan), "a pair is mixed twice"
    n = len(labels)
    for a in range(n):
        negatives = {j for j in range(n) if labels[j] != labels[a]}
        positives = {p for p in range(n) if p != a and labels[p] == labels[a]} if anchor_positives else set()
        chosen = {other for anchor, (_, other) in relations if anchor == a}
        own_sides = {own for anchor, (own, _) in relations if anchor == a}
        assert chosen <= negatives
        assert len(chosen) == (len(negatives) if k is None else min(k, len(negatives)))
        if chosen and negatives - chosen:  # hardest: no unchosen negative is more similar (ties allowed)
            assert min(sim[a, j] for j in chosen) >= max(sim[a, j] for j in negatives - chosen)
        if chosen:
            assert own_sides == (positives or {a})
            assert sum(anchor == a for anchor, _ in relations) == len(own_sides) * len(chosen)


def test_single_class_and_single_example_batches_have_no_pairs():
    for labels in (torch.zeros(6, dtype=torch.long), torch.zeros(1, dtype=torch.long)):
        plan = choose_pairs(torch.randn(len(labels), 4), labels, 0.5, 3)
        assert len(plan) == 0 and len(plan.anchors) == 0


@settings(max_examples=200, deadline=None)
@given(batches())
def test_the_two_pair_kinds_split_the_plan(batch):
    """kinds= keeps exactly the positive-negative or the anchor-negative part of the full plan (the
    official code's coin flip picks one of them per iteration)."""
    embeddings, labels, k, anchor_positives = batch

    def relations(kinds):
        plan = choose_pairs(embeddings, labels, 0.5, k, anchor_positives, kinds=kinds)
        return {(a, tuple(s)) for a, s in zip(plan.anchors.tolist(), plan.sources[plan.mixes].tolist())}

    both, pos_neg, anchor_neg = relations("both"), relations("positive-negative"), relations("anchor-negative")
    assert pos_neg | anchor_neg == both and not pos_neg & anchor_neg
    assert all(own == a for a, (own, _) in anchor_neg)  # the anchor itself is the own side
    assert all(own != a for a, (own, _) in pos_neg)


def test_unknown_pair_kinds_are_refused():
    with pytest.raises(ValueError, match="kinds must be one of"):
        choose_pairs(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), 0.5, 1, kinds="positive")
