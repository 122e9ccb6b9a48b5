"""k-means and the Hungarian matching of the self-conditioned GAN (distgan.training.clustering): pure unit tests."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from distgan.training.clustering import (
    KMeansResult,
    apply_matching,
    assign,
    hungarian,
    induced_means,
    kmeans,
    match_clusters,
    overlap,
)


def blobs(k: int = 4, per: int = 50, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """k well-separated Gaussian blobs (N, dim) and each point's blob."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, dim, generator=g) * 20
    truth = torch.arange(k).repeat_interleave(per)
    return centers[truth] + torch.randn(k * per, dim, generator=g), truth


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two labellings group the points the same way (ids may differ)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_hungarian_is_exact_against_brute_force_and_scipy():
    g = torch.Generator().manual_seed(1)
    for n in (1, 2, 3, 5):
        for _ in range(5):
            cost = torch.randint(0, 9, (n, n), generator=g).tolist()  # integer costs: ties happen
            best = min(sum(cost[i][p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
            perm = hungarian(cost)
            assert sorted(perm) == list(range(n)) and sum(cost[i][perm[i]] for i in range(n)) == best
    for n in (10, 40):
        cost = torch.rand(n, n, generator=g).double()
        rows, cols = linear_sum_assignment(cost.numpy())
        perm = hungarian(cost.tolist())
        assert sum(cost[i, perm[i]] for i in range(n)) == pytest.approx(float(cost[rows, cols].sum()), abs=1e-9)
    with pytest.raises(ValueError, match="square"):
        hungarian([[1.0, 2.0]])


def test_permuted_clusters_are_matched_back():
    g = torch.Generator().manual_seed(2)
    old = torch.randint(0, 7, (500,), generator=g)
    shuffle = torch.randperm(7, generator=g)  # new id of old cluster c: shuffle[c]
    new = shuffle[old]
    noisy = new.clone()
    noisy[:40] = torch.randint(0, 7, (40,), generator=g)  # some points moved: the matching still holds
    for labels in (new, noisy):
        perm = match_clusters(labels, old, 7)
        assert torch.equal(perm[shuffle], torch.arange(7))  # new id shuffle[c] goes back to c
    assert torch.equal(match_clusters(new, old, 7)[new], old)
    assert int(overlap(new, old, 7).sum()) == 500 and int(overlap(old, old, 7).trace()) == 500


def test_apply_matching_renames_centroids_with_their_points():
    x, _ = blobs()
    result = kmeans(x, 4, seed=0)
    perm = torch.tensor([2, 0, 3, 1])
    renamed = apply_matching(result, perm)
    assert torch.equal(renamed.labels, perm[result.labels])
    assert torch.equal(assign(x, renamed.centroids), renamed.labels)  # each centroid moved with its points
    assert renamed.inertia == result.inertia


def test_kmeans_finds_separated_blobs_and_is_deterministic_given_the_seed():
    x, truth = blobs()
    a, b = kmeans(x, 4, seed=5), kmeans(x, 4, seed=5)
    assert isinstance(a, KMeansResult) and same_partition(a.labels, truth)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    assert torch.equal(assign(x, a.centroids), a.labels)  # converged: every point at its nearest centroid
    # a warm start from the old clusters' means keeps their ids (nothing to match)
    init = induced_means(x, truth, 4, torch.Generator().manual_seed(0))
    warm = kmeans(x, 4, seed=1, init=init)
    assert torch.equal(warm.labels, truth)
    with pytest.raises(ValueError, match="initial centroids"):
        kmeans(x, 4, seed=1, init=init[:3])
    with pytest.raises(ValueError, match="into 9 clusters"):
        kmeans(x[:5], 9, seed=0)


def test_an_empty_cluster_takes_a_random_point():
    x = torch.arange(12, dtype=torch.float32).view(6, 2)
    labels = torch.tensor([0, 0, 0, 2, 2, 2])  # cluster 1 is empty
    means = induced_means(x, labels, 3, torch.Generator().manual_seed(0))
    assert torch.allclose(means[0], x[:3].mean(0)) and torch.allclose(means[2], x[3:].mean(0))
    assert any(torch.equal(means[1], row) for row in x)
    result = kmeans(torch.zeros(5, 2), 3, seed=0)  # identical points: k-means++ still picks k seeds
    assert result.centroids.shape == (3, 2) and result.inertia == 0.0
