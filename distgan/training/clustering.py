"""k-means and the exact matching of new clusters to old ones, for the self-conditioned GAN (selfcond.py).

- `kmeans`: Lloyd's algorithm from k-means++ seeds (the best of `n_init` tries by inertia) or from given
  centroids (the warm start of a re-clustering); an empty cluster takes a random point, as the reference
  implementation of Liu et al. (2020) does. Deterministic given `seed` (a CPU torch.Generator).
- `match_clusters`: the permutation of new cluster ids that maximises their overlap with the old ids
  (Hungarian algorithm, `hungarian`, exact, O(K^3)), so that a re-clustering does not shuffle the classes
  the conditional G and D have learnt.

Features are float32 (N, F) tensors on any device; labels are int64 (N,).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class KMeansResult:
    """Centroids (K, F), each point's cluster (N,), and the inertia (sum of squared distances)."""

    centroids: torch.Tensor
    labels: torch.Tensor
    inertia: float


def squared_distances(x: torch.Tensor, centroids: torch.Tensor, x_sq: torch.Tensor | None = None) -> torch.Tensor:
    """(N, K) squared Euclidean distances between the rows of `x` (N, F) and `centroids` (K, F); `x_sq`: the
    rows' squared norms (N,), when already known."""
    x, c = x.float(), centroids.float()
    x_sq = x.square().sum(1) if x_sq is None else x_sq
    d = x_sq[:, None] - (x @ c.T).mul_(2) + c.square().sum(1)[None, :]  # not (2 * x): a copy of x
    return d.clamp_min_(0)


def assign(x: torch.Tensor, centroids: torch.Tensor, x_sq: torch.Tensor | None = None,
           chunk: int = 4096) -> torch.Tensor:
    """The nearest centroid of every row of `x` (ties: the lower id), in chunks of rows."""
    if len(x) == 0:
        return torch.empty(0, dtype=torch.long, device=x.device)
    x_sq = x.float().square().sum(1) if x_sq is None else x_sq
    return torch.cat([squared_distances(part, centroids, sq).argmin(1)
                      for part, sq in zip(x.split(chunk), x_sq.split(chunk), strict=True)])


def induced_means(x: torch.Tensor, labels: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """The mean of the points of each of the k clusters; an empty cluster gets a random point of `x`."""
    x = x.float()
    sums = torch.zeros(k, x.shape[1], device=x.device).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k)
    means = sums / counts.clamp_min(1)[:, None]
    for j in (counts == 0).nonzero().flatten().tolist():
        means[j] = x[int(torch.randint(len(x), (1,), generator=generator))]
    return means


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeds (Arthur & Vassilvitskii 2007): each next one drawn with probability ~ D(x)^2."""
    x = x.float()
    x_sq = x.square().sum(1)
    centroids = [x[int(torch.randint(len(x), (1,), generator=generator))]]
    nearest = squared_distances(x, centroids[0][None], x_sq).squeeze(1).double().cpu()
    for _ in range(1, k):
        weights = nearest if float(nearest.sum()) > 0 else torch.ones_like(nearest)
        i = int(torch.multinomial(weights, 1, generator=generator))
        centroids.append(x[i])
        nearest = torch.minimum(nearest, squared_distances(x, x[i][None], x_sq).squeeze(1).double().cpu())
    return torch.stack(centroids)


def _lloyd(x: torch.Tensor, centroids: torch.Tensor, generator: torch.Generator, max_iter: int) -> KMeansResult:
    x_sq = x.square().sum(1)
    labels = assign(x, centroids, x_sq)
    for _ in range(max_iter):
        centroids = induced_means(x, labels, len(centroids), generator)
        new = assign(x, centroids, x_sq)
        if torch.equal(new, labels):
            break
        labels = new
    inertia = float(squared_distances(x, centroids, x_sq).gather(1, labels[:, None]).sum())
    return KMeansResult(centroids, labels, inertia)


def kmeans(x: torch.Tensor, k: int, *, seed: int, init: torch.Tensor | None = None, n_init: int = 3,
           max_iter: int = 100) -> KMeansResult:
    """k clusters of the rows of `x` (N, F): from `init` (K, F) when given, else the best of `n_init`
    k-means++ starts. Lloyd iterations stop when no point changes cluster (or after `max_iter`)."""
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means of {len(x)} points into {k} clusters")
    x = x.float()
    generator = torch.Generator().manual_seed(seed)  # CPU: the same draws on any device
    if init is not None:
        if tuple(init.shape) != (k, x.shape[1]):
            raise ValueError(f"initial centroids of shape {tuple(init.shape)}, expected {(k, x.shape[1])}")
        return _lloyd(x, init.to(x.device).float(), generator, max_iter)
    best: KMeansResult | None = None
    for _ in range(max(1, n_init)):
        result = _lloyd(x, kmeans_plus_plus(x, k, generator).to(x.device), generator, max_iter)
        if best is None or result.inertia < best.inertia:
            best = result
    assert best is not None
    return best


def hungarian(cost: Sequence[Sequence[float]]) -> list[int]:
    """The assignment of rows to columns of the square matrix `cost` with the smallest total cost: entry i
    is row i's column. Exact (Kuhn-Munkres with potentials, O(n^3)); ties are broken the same way every time."""
    n = len(cost)
    if any(len(row) != n for row in cost):
        raise ValueError("the cost matrix must be square")
    inf = float("inf")
    u, v = [0.0] * (n + 1), [0.0] * (n + 1)  # the potentials of rows and columns
    match, way = [0] * (n + 1), [0] * (n + 1)  # match[j]: the row (1-based) in column j; 0: none
    for i in range(1, n + 1):
        match[0], j0 = i, 0
        minv, used = [inf] * (n + 1), [False] * (n + 1)
        while True:  # grow an alternating tree from row i until it reaches a free column
            used[j0] = True
            i0, delta, j1 = match[j0], inf, 0
            row = cost[i0 - 1]
            for j in range(1, n + 1):
                if not used[j]:
                    cur = row[j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(n + 1):
                if used[j]:
                    u[match[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:  # flip the augmenting path
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    out = [0] * n
    for j in range(1, n + 1):
        out[match[j] - 1] = j - 1
    return out


def overlap(new: torch.Tensor, old: torch.Tensor, k: int) -> torch.Tensor:
    """(K, K) counts: entry [a, b] is how many points are in new cluster a and old cluster b."""
    return torch.bincount(new.long().cpu() * k + old.long().cpu(), minlength=k * k).view(k, k)


def match_clusters(new: torch.Tensor, old: torch.Tensor, k: int) -> torch.Tensor:
    """The permutation (K,) taking new cluster ids to old ones that keeps the most points in their old
    cluster: `perm[new]` are the matched labels, and centroid a becomes centroid perm[a]."""
    counts = overlap(new, old, k)
    return torch.tensor(hungarian((-counts).tolist()), dtype=torch.long)


def apply_matching(result: KMeansResult, perm: torch.Tensor) -> KMeansResult:
    """`result` with its cluster ids renamed by `perm` (new id a -> perm[a])."""
    centroids = torch.empty_like(result.centroids)
    centroids[perm.to(centroids.device)] = result.centroids
    return KMeansResult(centroids, perm.to(result.labels.device)[result.labels], result.inertia)


__all__ = ["KMeansResult", "apply_matching", "assign", "hungarian", "induced_means", "kmeans", "kmeans_plus_plus",
           "match_clusters", "overlap", "squared_distances"]
