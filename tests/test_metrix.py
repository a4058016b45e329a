"""Metrix mixing: against the loop reference, the lambda endpoints, continuity, gradient flow
through both mixed sources at each level, and the Beta(alpha, alpha) draw."""

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from metrix.losses import ContrastiveLoss, MultiSimilarityLoss, ProxyAnchorLoss
from metrix.mixup import EmbeddingOnly, Metrix
from metrix.pairs import choose_pairs

from .conftest import make_labels
from .reference import (
    reference_mixed_contrastive,
    reference_mixed_ms,
    reference_mixed_proxy_anchor,
    reference_relations,
)


class TinySplitModel(torch.nn.Module):
    """A real conv backbone split as features -> head (GAP + GMP, linear, L2 norm), as in the paper."""

    def __init__(self, dim=6):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, dim)

    def features(self, images):
        return torch.relu(self.conv(images))

    def head(self, features):
        pooled = features.mean(dim=(2, 3)) + features.amax(dim=(2, 3))
        return F.normalize(self.fc(pooled), dim=1)


def _batch(n=12, d=5, layout="balanced", seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), make_labels(layout, n, g)


def _embed_mixed_loss(loss, x, y, lam, k):
    return Metrix(loss, mode="embed", negatives_per_anchor=k)(EmbeddingOnly(), x, y, lam=lam).mixed


REFERENCES = {
    "ms": (MultiSimilarityLoss, lambda loss, x, y, lam, k: reference_mixed_ms(x, y, lam, k)),
    "contrastive": (ContrastiveLoss, lambda loss, x, y, lam, k: reference_mixed_contrastive(x, y, lam, k)),
    "contrastive-nonzero": (
        lambda: ContrastiveLoss(mixed_reduction="nonzero"),
        lambda loss, x, y, lam, k: reference_mixed_contrastive(x, y, lam, k, nonzero=True),
    ),
    "pa": (
        lambda: ProxyAnchorLoss(14, 5).double(),  # 12 classes in the all-distinct layout
        lambda loss, x, y, lam, k: reference_mixed_proxy_anchor(x, y, loss.proxies.detach(), lam, k),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("explicit_vectors", [False, True], ids=["closed-form", "explicit"])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.77, 1.0])
@pytest.mark.parametrize("k", [1, 3, None])
@pytest.mark.parametrize("layout", ["balanced", "random", "distinct"])
@pytest.mark.parametrize("name", list(REFERENCES))
def test_mixed_loss_matches_loop_reference(name, layout, k, lam, explicit_vectors):
    """Embedding mixing through the closed form, and through explicit mixed vectors (the path
    feature and input mixing take), against the loop reference."""
    make_loss, reference = REFERENCES[name]
    torch.manual_seed(0)
    loss = make_loss()
    x, y = _batch(layout=layout, seed=3)
    if explicit_vectors:
        plan = choose_pairs(x, y, lam, k, loss.mix_anchor_positives)
        ours = _mixed_at(loss, x, y, plan, lam)
    else:
        ours = _embed_mixed_loss(loss, x, y, lam, k)
    assert ours.item() == pytest.approx(reference(loss, x, y, lam, k), rel=1e-9, abs=1e-12)


def test_single_class_batch_has_nothing_to_mix():
    x, y = _batch(layout="single")
    out = Metrix(MultiSimilarityLoss(), mode="embed")(EmbeddingOnly(), x, y, lam=0.5)
    assert out.num_mixes == 0 and out.mixed.item() == 0 and torch.equal(out.loss, out.clean)


@pytest.mark.parametrize("lam, side", [(1.0, 0), (0.0, 1)])
def test_lambda_endpoints_give_the_positive_or_the_negative_exactly(lam, side):
    x, y = _batch()
    plan = choose_pairs(x, y, lam, negatives_per_anchor=3)
    assert len(plan) > 0
    for level in (x, torch.randn(12, 3, 4, 4, dtype=torch.float64)):  # embeddings, feature maps
        assert torch.equal(plan.apply(level), level[plan.sources[:, side]])


def test_lambda_one_mixed_ms_is_the_clean_positive_term():
    """k = 1 and every anchor has positives: at lambda = 1 each mix is a positive, once per pair."""
    x, y = _batch(layout="balanced")
    ms = MultiSimilarityLoss()
    e = F.normalize(x, dim=1)
    sim = e @ e.T
    positive = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool)
    clean_positive_term = (torch.log1p((torch.exp(-ms.beta * (sim - ms.margin)) * positive).sum(1)) / ms.beta).mean()
    torch.testing.assert_close(_embed_mixed_loss(ms, x, y, 1.0, 1), clean_positive_term, atol=1e-12, rtol=1e-12)


def test_lambda_zero_mixed_ms_is_the_negative_term_of_the_hardest_negative():
    x, y = _batch(layout="balanced")
    ms = MultiSimilarityLoss()
    e = F.normalize(x, dim=1)
    sim = e @ e.T
    same = y[:, None] == y[None, :]
    hardest = sim.masked_fill(same, -torch.inf).amax(1)
    num_positives = (same.sum(1) - 1).to(x.dtype)  # each positive was paired with that negative
    expected = (torch.log1p(num_positives * torch.exp(ms.gamma * (hardest - ms.margin))) / ms.gamma).mean()
    torch.testing.assert_close(_embed_mixed_loss(ms, x, y, 0.0, 1), expected, atol=1e-12, rtol=1e-12)


def _mixed_at(loss, x, y, plan, lam):
    at = dataclasses.replace(plan, lam=lam)
    return loss.mixed(loss.similarities(x, y), F.normalize(at.apply(F.normalize(x, dim=1)), dim=1), at)


CONTINUITY_LOSSES = [MultiSimilarityLoss, ContrastiveLoss, lambda: ProxyAnchorLoss(8, 5).double()]


@pytest.mark.slow
@pytest.mark.parametrize("make_loss", CONTINUITY_LOSSES)
def test_mixed_loss_is_continuous_in_lambda_inside(make_loss):
    """On a fine grid inside (0, 1), each step of the loss is bounded by the step times its slope
    (autograd d/dlambda at both ends): a jump, as PML's non-zero-pair average would make, fails."""
    torch.manual_seed(0)
    loss = make_loss()
    x, y = _batch(layout="random", seed=7)
    plan = choose_pairs(x, y, 0.5, 3, loss.mix_anchor_positives)
    values, slopes = [], []
    grid = torch.linspace(0.01, 0.99, 393, dtype=torch.float64)
    for lam in grid:
        lam = lam.clone().requires_grad_(True)
        value = _mixed_at(loss, x, y, plan, lam)
        (slope,) = torch.autograd.grad(value, lam)
        values.append(value.item())
        slopes.append(abs(slope.item()))
    h = float(grid[1] - grid[0])
    steps = [abs(b - a) for a, b in itertools.pairwise(values)]
    bounds = [2 * h * max(s0, s1) + 1e-9 for s0, s1 in itertools.pairwise(slopes)]
    worst = max(step / bound for step, bound in zip(steps, bounds))
    assert worst <= 1, f"a step of the mixed loss is {worst:.1f}x what its slope allows: not continuous"
    assert max(steps) > 1e-4  # the loss does depend on lambda


@pytest.mark.parametrize(
    "make_loss, end",
    # Proxy anchor averages its positive term over proxies with y > 0; at lambda = 0 exactly a class
    # that is only an anchor's own side drops out of that count (METRIX.md's definition), so its
    # guarantee is (0, 1].
    [(loss, end) for loss in CONTINUITY_LOSSES for end in (0.0, 1.0) if (loss, end) != (CONTINUITY_LOSSES[2], 0.0)],
)
def test_mixed_loss_is_continuous_at_the_ends(make_loss, end):
    """MS approaches its ends like log(1 + eps * e^(gamma (s - m))): steep, so eps must be tiny."""
    torch.manual_seed(0)
    loss = make_loss()
    x, y = _batch(layout="random", seed=7)
    plan = choose_pairs(x, y, 0.5, 3, loss.mix_anchor_positives)
    eps = 1e-15
    at_end = _mixed_at(loss, x, y, plan, end).item()
    near_end = _mixed_at(loss, x, y, plan, abs(end - eps)).item()
    assert near_end == pytest.approx(at_end, abs=1e-4)


def _source_rows_with_gradient(grad):
    return set(torch.nonzero(grad.flatten(1).abs().sum(1) > 0).flatten().tolist())


@pytest.mark.parametrize("mode", ["input", "feature", "embed"])
def test_gradients_reach_both_mixed_sources(mode):
    torch.manual_seed(0)
    model = TinySplitModel().double()
    images = torch.randn(10, 3, 6, 6, dtype=torch.float64)
    labels = make_labels("balanced", 10, torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = model.features(images)
        embeddings = model.head(features)
    plan = choose_pairs(embeddings, labels, 0.6, negatives_per_anchor=2)
    if mode == "input":
        leaf = images.clone().requires_grad_(True)
        mixed = model.head(model.features(plan.apply(leaf)))
    elif mode == "feature":
        leaf = features.clone().requires_grad_(True)
        mixed = model.head(plan.apply(leaf))
    else:
        leaf = embeddings.clone().requires_grad_(True)
        mixed = F.normalize(plan.apply(leaf), dim=1)
    # Anchors detached: the only path to `leaf` is through the mixed examples.
    loss = MultiSimilarityLoss()
    loss.mixed(loss.similarities(embeddings, labels), mixed, plan).backward()
    used = set(plan.sources.flatten().tolist())
    assert set(plan.sources[:, 0].tolist()) and set(plan.sources[:, 1].tolist())
    assert _source_rows_with_gradient(leaf.grad) == used


@pytest.mark.parametrize("mode", ["none", "input", "feature", "embed"])
@pytest.mark.parametrize("make_loss", [MultiSimilarityLoss, ContrastiveLoss, lambda: ProxyAnchorLoss(5, 6)])
def test_metrix_trains_a_split_model_at_every_level(mode, make_loss):
    torch.manual_seed(0)
    model = TinySplitModel()
    metrix = Metrix(make_loss(), mode=mode, seed=1)
    images = torch.randn(10, 3, 6, 6)
    labels = make_labels("balanced", 10, torch.Generator().manual_seed(1))
    out = metrix(model, images, labels)
    torch.testing.assert_close(out.loss, out.clean + (0.4 * out.mixed if mode != "none" else 0))
    assert (out.num_mixes > 0) == (mode != "none")
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    if isinstance(metrix.loss, ProxyAnchorLoss):
        assert metrix.loss.proxies.grad.abs().sum() > 0


def test_zero_weight_is_the_clean_loss():
    x, y = _batch()
    out = Metrix(MultiSimilarityLoss(), mode="embed", weight=0.0)(EmbeddingOnly(), x, y)
    torch.testing.assert_close(out.loss, MultiSimilarityLoss()(x, y))


def test_default_hardest_negative_counts():
    assert Metrix(MultiSimilarityLoss(), mode="input").negatives_per_anchor == 1
    assert Metrix(MultiSimilarityLoss(), mode="feature").negatives_per_anchor == 3
    assert Metrix(MultiSimilarityLoss(), mode="embed", negatives_per_anchor=None).negatives_per_anchor is None


def test_lambda_is_beta_alpha_alpha_and_seeded():
    draws = [Metrix(MultiSimilarityLoss(), seed=0).sample_lambda() for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]
    metrix = Metrix(MultiSimilarityLoss(), alpha=2.0, seed=123)
    sample = [metrix.sample_lambda() for _ in range(4000)]
    assert stats.kstest(sample, stats.beta(2.0, 2.0).cdf).pvalue > 1e-3
    assert stats.kstest(sample, stats.beta(1.0, 1.0).cdf).pvalue < 1e-6  # the test can tell alphas apart


def test_lambda_stream_resumes_from_state_dict():
    a = Metrix(MultiSimilarityLoss(), seed=5)
    for _ in range(7):
        a.sample_lambda()
    state = a.state_dict()
    expected = [a.sample_lambda() for _ in range(5)]
    b = Metrix(MultiSimilarityLoss(), seed=99)
    b.load_state_dict(state)
    assert [b.sample_lambda() for _ in range(5)] == expected


@pytest.mark.parametrize("anchor_positives", [True, False])
def test_reference_relations_agree_with_vectorised_chooser(anchor_positives):
    x, y = _batch(layout="random", seed=11)
    plan = choose_pairs(x, y, 0.5, 2, anchor_positives)
    ours = {
        (a, int(plan.sources[m, 0]), int(plan.sources[m, 1]))
        for a, m in zip(plan.anchors.tolist(), plan.mixes.tolist())
    }
    assert ours == set(reference_relations(x, y, 2, anchor_positives))


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.81, 1.0])
@pytest.mark.parametrize("make_loss", CONTINUITY_LOSSES)
def test_closed_form_embedding_mix_equals_explicit_mixed_vectors(make_loss, lam):
    """mixed_embeddings() never builds the mixed vectors; it must equal building them, in value
    and in gradient (embeddings and, for proxy anchor, proxies)."""
    torch.manual_seed(0)
    loss = make_loss()
    x, y = _batch(layout="random", seed=13)
    plan = choose_pairs(x, y, lam, 3, loss.mix_anchor_positives)
    results = []
    for closed_form in (True, False):
        leaf = x.clone().requires_grad_(True)
        loss.zero_grad()
        if closed_form:
            value = loss.mixed_embeddings(loss.similarities(leaf, y), plan)
        else:
            value = loss.mixed(
                loss.similarities(leaf, y), F.normalize(plan.apply(F.normalize(leaf, dim=1)), dim=1), plan
            )
        value.backward()
        grads = [leaf.grad] + [p.grad.clone() for p in loss.parameters()]
        results.append((value.detach(), grads))
    (v1, g1), (v2, g2) = results
    torch.testing.assert_close(v1, v2, atol=1e-12, rtol=1e-10)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)


def test_coin_pair_choice_makes_one_kind_per_iteration_and_both_over_time():
    """pair_choice="coin": each iteration mixes either the positive-negative pairs or the
    anchor-negative ones (anchors alone in their class), each about half the time, seeded; "all"
    mixes both every time."""
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 4])  # anchors 4-6 have no positive in the batch
    embeddings = torch.randn(7, 5)
    counts = {}
    for choice in ("all", "coin"):
        metrix = Metrix(MultiSimilarityLoss(), mode="embed", pair_choice=choice, seed=3)
        with torch.no_grad():
            counts[choice] = [metrix(EmbeddingOnly(), embeddings, labels).num_mixes for _ in range(40)]
    every = choose_pairs(embeddings, labels, 0.5, 3)
    pos_neg = len(choose_pairs(embeddings, labels, 0.5, 3, kinds="positive-negative"))
    anchor_neg = len(choose_pairs(embeddings, labels, 0.5, 3, kinds="anchor-negative"))
    assert set(counts["all"]) == {len(every)}
    assert set(counts["coin"]) == {pos_neg, anchor_neg} and pos_neg != anchor_neg
    assert 10 <= counts["coin"].count(pos_neg) <= 30
    again = Metrix(MultiSimilarityLoss(), mode="embed", pair_choice="coin", seed=3)
    with torch.no_grad():
        assert [again(EmbeddingOnly(), embeddings, labels).num_mixes for _ in range(40)] == counts["coin"]


def test_proxy_anchor_ignores_the_coin():
    """Proxy anchor's anchors are proxies: every example is mixed with its own negatives either way."""
    labels, embeddings = torch.tensor([0, 0, 1, 2]), torch.randn(4, 5)
    loss = ProxyAnchorLoss(num_classes=3, embedding_size=5)
    with torch.no_grad():
        sizes = {
            Metrix(loss, mode="embed", pair_choice=c, seed=s)(EmbeddingOnly(), embeddings, labels).num_mixes
            for c in ("all", "coin")
            for s in range(6)
        }
    assert len(sizes) == 1


def test_unknown_pair_choice_is_refused():
    with pytest.raises(ValueError, match="pair choice must be one of all, coin"):
        Metrix(MultiSimilarityLoss(), pair_choice="sometimes")


def test_anchor_negative_weight_weighs_only_the_anchor_negative_steps_of_the_coin():
    """The official code's 0.3 on embed anchor-negative steps, 0.4 on positive-negative ones: the
    weight each step used, read back from loss = clean + w * mixed, takes both values and only them."""
    x, y = _batch(n=12, layout="random", seed=5)
    metrix = Metrix(MultiSimilarityLoss(), mode="embed", pair_choice="coin", anchor_negative_weight=0.3, seed=1)
    weights = set()
    for _ in range(40):
        out = metrix(EmbeddingOnly(), x, y)
        if out.num_mixes:
            weights.add(round(((out.loss - out.clean) / out.mixed).item(), 9))
    assert weights == {0.3, 0.4}
