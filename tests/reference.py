"""A deliberately naive reference for the Metrix mixed losses: Python loops over anchors and
pairs, written straight from METRIX.md section 2 and docs/metrix.md, sharing no code with
metrix/. Slow; for small test batches only."""

import math

import torch.nn.functional as F


def reference_relations(embeddings, labels, k, anchor_positives=True):
    """(anchor, own, other) triples: own = each positive (or the anchor if it has none, or if
    anchor_positives is False), other = each of the anchor's k most similar negatives."""
    e = F.normalize(embeddings, dim=1).tolist()
    labels = labels.tolist()
    n = len(labels)

    def dot(i, j):
        return sum(a * b for a, b in zip(e[i], e[j]))

    triples = []
    for a in range(n):
        negatives = sorted((j for j in range(n) if labels[j] != labels[a]), key=lambda j: -dot(a, j))
        if k is not None:
            negatives = negatives[:k]
        positives = [p for p in range(n) if p != a and labels[p] == labels[a]] if anchor_positives else []
        for own in positives or [a]:
            for other in negatives:
                triples.append((a, own, other))
    return triples


def _mixed_vectors(embeddings, triples, lam):
    e = F.normalize(embeddings, dim=1)
    pairs = sorted({(own, other) for _, own, other in triples})
    return {pair: F.normalize(lam * e[pair[0]] + (1 - lam) * e[pair[1]], dim=0) for pair in pairs}


def _cos(u, v):
    return float(F.normalize(u, dim=0) @ F.normalize(v, dim=0))


def reference_mixed_ms(embeddings, labels, lam, k, beta=2.0, gamma=50.0, margin=0.5):
    triples = reference_relations(embeddings, labels, k)
    mixed = _mixed_vectors(embeddings, triples, lam)
    e = F.normalize(embeddings, dim=1)
    total = 0.0
    for a in range(len(labels)):
        pos_sum = neg_sum = 0.0
        for anchor, own, other in triples:
            if anchor != a:
                continue
            s = _cos(e[a], mixed[(own, other)])
            pos_sum += lam * math.exp(-beta * (s - margin))
            neg_sum += (1 - lam) * math.exp(gamma * (s - margin))
        total += math.log(1 + pos_sum) / beta + math.log(1 + neg_sum) / gamma
    return total / len(labels)


def reference_mixed_contrastive(embeddings, labels, lam, k, pos_margin=0.0, neg_margin=0.5, nonzero=False):
    """The plain mean over (anchor, mix) pairs; nonzero=True: the official code's reduction, the
    positive terms averaged over those that are not zero, plus the same for the negative terms."""
    triples = reference_relations(embeddings, labels, k)
    mixed = _mixed_vectors(embeddings, triples, lam)
    e = F.normalize(embeddings, dim=1)
    pos = neg = 0.0
    pos_count = neg_count = 0
    for a, own, other in triples:
        d = math.sqrt(max(2 - 2 * _cos(e[a], mixed[(own, other)]), 1e-12))
        pos_term = lam * max(d - pos_margin, 0.0)
        neg_term = (1 - lam) * max(neg_margin - d, 0.0)
        pos, neg = pos + pos_term, neg + neg_term
        pos_count, neg_count = pos_count + (pos_term > 0), neg_count + (neg_term > 0)
    if nonzero:
        return pos / max(pos_count, 1) + neg / max(neg_count, 1)
    return (pos + neg) / max(len(triples), 1)


def reference_mixed_proxy_anchor(embeddings, labels, proxies, lam, k, alpha=32.0, delta=0.1):
    """Proxies are the anchors: every example is a positive of its proxy and is mixed with its
    own k hardest negatives; every proxy sees every mix."""
    triples = reference_relations(embeddings, labels, k, anchor_positives=False)
    mixed = _mixed_vectors(embeddings, triples, lam)
    labels = labels.tolist()
    pos_total = neg_total = 0.0
    with_positive = 0
    for c in range(proxies.shape[0]):
        pos_sum = neg_sum = 0.0
        for (own, other), v in mixed.items():
            y = lam * (labels[own] == c) + (1 - lam) * (labels[other] == c)
            s = _cos(proxies[c], v)
            pos_sum += y * math.exp(-alpha * (s - delta))
            neg_sum += (1 - y) * math.exp(alpha * (s + delta))
        if any(lam * (labels[o] == c) + (1 - lam) * (labels[t] == c) > 0 for o, t in mixed):
            with_positive += 1
        pos_total += math.log(1 + pos_sum)
        neg_total += math.log(1 + neg_sum)
    return pos_total / max(with_positive, 1) + neg_total / proxies.shape[0]
