"""The self-conditioned GAN (Liu et al., CVPR 2020, "Diverse Image Generation via Self-Conditioned GANs"):
the class-conditional G and projection D trained on pseudo-labels instead of the data's labels.

The recipe, as in the paper's reference implementation (github.com/stevliu/self-conditioned-gan):
- A fixed set of `model.cluster_images` training images (the first of a shuffle of the train split seeded
  by `seed`, the same whatever the world size) is clustered by k-means on D's features phi(x) (the last
  hidden layer, which D's logit and projection read), K = `model.clusters`. The first clustering, at step 0,
  uses the freshly initialised D and the best of several k-means++ starts.
- Every `model.recluster_every` steps a snapshot of the current D is taken and the set clustered again,
  k-means starting from the means its old clusters have in the new features; the new clusters are renamed
  to the old ones they overlap most (Hungarian matching, clustering.py), so classes do not shuffle.
- A real image's label is the nearest centroid of its features under the snapshot D (the D the clusters
  were made with, not the D being trained). Fake labels are drawn from the clusters' frequencies (their
  sizes in the clustering set), which G keeps in its `class_freqs` buffer: checkpoints and exports carry them.

N processes: the main process reads the clustering set, computes the features and runs k-means; the
centroids and the set's assignments are broadcast, so every rank holds the same clustering. The state
(snapshot D, centroids, assignments, step of the clustering) is a custom object of accelerate's
save_state/load_state (`custom_checkpoint_0.pkl` in a checkpoint): a resumed run labels exactly as the
uninterrupted one. Never clustered with the evaluation classifier.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list

from distgan.config import Config
from distgan.data.loader import build_loader, samples_per_epoch
from distgan.errors import UserError
from distgan.pixels import to_signed
from distgan.training.clustering import apply_matching, assign, induced_means, kmeans, match_clusters
from distgan.training.discriminators import build_discriminator
from distgan.training.networks import Networks
from distgan.training.precision import Precision

log = logging.getLogger(__name__)

FIRST_N_INIT = 5  # k-means++ starts of the first clustering (the reference uses 10 with scikit-learn)
FEATURE_BATCH = 500  # images per D forward when computing the clustering set's features
SEED_SALT = 0x5E1FC0  # the clustering set's shuffle and k-means seeds differ from the training stream's


def read_cluster_images(train_split: Path, n: int, seed: int, key: str = "image") -> torch.Tensor:
    """The first `n` uint8 images (N, C, H, W) of a shuffle of the train split seeded by `seed` (one reader,
    whatever the world size; fewer when the split is smaller). Labels, if the data has any, are not read for
    training; `key="label"` gives those of the same images (-1 where unlabelled), for diagnostics only."""
    total = samples_per_epoch(train_split)
    batch = max(1, min(FEATURE_BATCH, n, total))
    loader = build_loader(train_split, batch_size=batch, rank=0, world_size=1, num_workers=0, seed=seed, epoch=0)
    parts, have = [], 0
    for b in loader:
        parts.append(torch.as_tensor(b[key]))
        have += len(parts[-1])
        if have >= n:
            break
    return torch.cat(parts)[:n] if parts else torch.empty(0, dtype=torch.uint8)


class SelfConditioning:
    """Pseudo-labels for the real images of a self-conditioned GAN, and their frequencies for the fakes."""

    def __init__(self, cfg: Config, accelerator: Any, precision: Precision, images: torch.Tensor | None) -> None:
        self.acc, self.precision, self.seed = accelerator, precision, cfg.seed
        self.k = int(cfg.model.clusters)
        self.images = images  # uint8 (N, C, H, W) on the CPU, main process only
        shape = cfg.model.image_shape
        self.snapshot = build_discriminator(cfg.model, shape).to(accelerator.device).eval().requires_grad_(False)
        dim = self.features(torch.zeros(1, *shape, device=accelerator.device)).shape[1]
        self.centroids = torch.zeros(self.k, dim, device=accelerator.device)
        self.assignments = torch.empty(0, dtype=torch.long)  # the clustering set's clusters (CPU, every rank)
        self.freqs = torch.full((self.k,), 1.0 / self.k, device=accelerator.device)
        self.clustered_at = -1  # the step of the last clustering; -1: none yet

    @classmethod
    def start(cls, cfg: Config, accelerator: Any, precision: Precision, train_split: Path) -> SelfConditioning:
        """Read the clustering set (main process) and register the state for checkpoints (call before a resume
        loads one)."""
        images = None
        if accelerator.is_main_process:
            images = read_cluster_images(train_split, cfg.model.cluster_images, cfg.seed ^ SEED_SALT)
            if len(images) < int(cfg.model.clusters):
                raise UserError(f"model.clusters={cfg.model.clusters} but the train split {train_split} has only "
                                f"{len(images)} images to cluster; use fewer clusters")
        self = cls(cfg, accelerator, precision, images)
        accelerator.register_for_checkpointing(self)
        return self

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The snapshot D's features phi(x) (B, F) in float32, under the run's autocast."""
        with self.precision.autocast():
            return self.snapshot.features(x).float()

    @torch.no_grad()
    def labels(self, real: torch.Tensor) -> torch.Tensor:
        """The clusters (B,) of real images (B, C, H, W) in [-1, 1]: their nearest centroids."""
        return assign(self.features(real), self.centroids)

    def recluster(self, nets: Networks, step: int) -> dict[str, float]:
        """Collective: snapshot D, cluster the set again (main process), match the new clusters to the old,
        share the result with every rank, and set G's (and the EMA's) class frequencies. Returns stats to log."""
        self.snapshot.load_state_dict(self.acc.unwrap_model(nets.d).state_dict())
        box: list[Any] = [None]
        if self.acc.is_main_process:
            box = [self._cluster(step)]
        if self.acc.num_processes > 1:
            broadcast_object_list(box, from_process=0)
        centroids, labels = box[0]
        changed = float((labels != self.assignments).float().mean()) if len(self.assignments) else 1.0
        self._set(centroids, labels, step)
        for g in (self.acc.unwrap_model(nets.g), nets.ema.module):
            g.inputs.class_freqs.copy_(self.freqs)
        return {"clusters/changed": changed, "clusters/nonempty": float((self.freqs > 0).sum()),
                "clusters/largest": float(self.freqs.max())}

    def _cluster(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Main process: k-means of the clustering set's snapshot features, matched to the old assignments."""
        assert self.images is not None
        feats = torch.cat([self.features(to_signed(chunk.to(self.acc.device))) for chunk in
                           self.images.split(FEATURE_BATCH)])
        seed = (self.seed ^ SEED_SALT) * 1_000_003 + step
        old = self.assignments.to(feats.device) if len(self.assignments) else None
        if old is None:
            result = kmeans(feats, self.k, seed=seed, n_init=FIRST_N_INIT)
        else:  # warm start from the old clusters' means in the new features, then keep their names
            init = induced_means(feats, old, self.k, torch.Generator().manual_seed(seed))
            result = kmeans(feats, self.k, seed=seed, init=init)
            result = apply_matching(result, match_clusters(result.labels, old, self.k))
        return result.centroids.cpu(), result.labels.cpu()

    def _set(self, centroids: torch.Tensor, labels: torch.Tensor, step: int) -> None:
        self.centroids = centroids.to(self.acc.device).float()
        self.assignments = labels.cpu().long()
        counts = torch.bincount(self.assignments, minlength=self.k).double()
        self.freqs = (counts / counts.sum()).float().to(self.acc.device)
        self.clustered_at = int(step)

    # accelerate's register_for_checkpointing: saved by the main process, loaded on every rank
    def state_dict(self) -> dict[str, Any]:
        return {"snapshot": {k: v.detach().cpu() for k, v in self.snapshot.state_dict().items()},
                "centroids": self.centroids.cpu(), "assignments": self.assignments.cpu(),
                "clustered_at": self.clustered_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshot.load_state_dict(state["snapshot"])
        self._set(state["centroids"], state["assignments"], state["clustered_at"])


__all__ = ["SEED_SALT", "SelfConditioning", "read_cluster_images"]
