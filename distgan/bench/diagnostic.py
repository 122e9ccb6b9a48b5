"""The precision diagnostic of `distgan bench quality`: why a generator's precision is low.

Views of one checkpoint's EMA G, with the dataset's feature classifier:

- **Truncation sweep**: FID, precision and recall of n samples whose noise is scaled by psi (z -> psi * z,
  psi = 1 is the untruncated G). Precision that rises quickly as psi shrinks while recall falls means the
  off-manifold samples come from the tails of z (a G that spends its outer noise between the modes);
  precision that stays low at small psi means the modes themselves are off (blurry or wrong shapes).
- **Classifier confidence**: the histogram of the classifier's top softmax probability on the samples, next
  to that of the real test images. Mass at low confidence on samples and not on reals is the share of
  samples the classifier cannot place in any class: the in-between images of a G without a discrete latent.
- **Cluster purity** (a self-conditioned G on labelled data): how well its clusters match the true classes,
  which training never reads: the share of the clustering set in its cluster's majority class, and how many
  clusters each class leads. A class that leads no cluster is a class G can only draw mixed with another.

The samples are those of the evaluation (noise rows of `fixed_noise(n, z_dim, seed)`; a conditional G's
labels in the training class frequencies, a self-conditioned G's clusters in theirs, never scored as classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from distgan.data.info import dataset_info
from distgan.evaluation.classifier import embed_images
from distgan.evaluation.evaluate import evaluate_images, load_classifier, real_features
from distgan.evaluation.report import resolve_paths
from distgan.generator.loading import load_generator
from distgan.generator.sampling import (
    class_freqs_of,
    eval_labels,
    fixed_noise,
    generate_images,
    is_clustered,
    num_classes_of,
)
from distgan.run.resume import saved_config
from distgan.training.selfcond import SEED_SALT, read_cluster_images

CLUSTER_STATE = "custom_checkpoint_0.pkl"  # accelerate's file for SelfConditioning, the one registered object
TRUNCATIONS = (1.0, 0.8, 0.6, 0.4)
CONFIDENCE_BINS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0)  # top softmax probability; the last bin holds 1.0


def confidence_histogram(logits: torch.Tensor, bins: Sequence[float] = CONFIDENCE_BINS) -> list[float]:
    """Share of rows whose top softmax probability falls in each [bins[i], bins[i + 1]) (the last bin closed)."""
    top = torch.softmax(logits.double(), dim=1).max(dim=1).values
    edges = torch.tensor(bins, dtype=torch.float64)
    index = (torch.bucketize(top, edges, right=True) - 1).clamp(0, len(bins) - 2)
    counts = torch.bincount(index, minlength=len(bins) - 1).double()
    return (counts / counts.sum().clamp(min=1)).tolist()


def purity(assignments: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """{"purity": share of items in their cluster's majority class, "clusters_led": clusters per class (K,)}
    for cluster ids `assignments` (N,) and true class ids `labels` (N,) in 0..num_classes-1."""
    k = int(assignments.max()) + 1 if len(assignments) else 0
    counts = torch.zeros(k, num_classes, dtype=torch.long)
    counts.index_put_((assignments.long(), labels.long()), torch.ones(len(labels), dtype=torch.long), accumulate=True)
    led = counts.argmax(dim=1)[counts.sum(dim=1) > 0]
    return {"purity": counts.max(dim=1).values.sum().item() / max(len(labels), 1),
            "clusters_led": torch.bincount(led, minlength=num_classes).tolist()}


def cluster_purity(checkpoint: str | Path, train_split: str | Path) -> dict[str, Any] | None:
    """Purity of a self-conditioned checkpoint's last clustering against the train split's labels; None for
    another model or unlabelled data."""
    cfg = saved_config(Path(checkpoint))
    num_classes = dataset_info(Path(train_split).parent).num_classes
    if cfg.model.conditional != "clusters" or not num_classes:
        return None
    state = torch.load(Path(checkpoint) / CLUSTER_STATE, map_location="cpu", weights_only=True)
    assignments = state["assignments"]
    labels = read_cluster_images(Path(train_split), len(assignments), cfg.seed ^ SEED_SALT, key="label")
    return {"step": int(state["clustered_at"]), **purity(assignments, labels, num_classes)}


def _chw(images: torch.Tensor) -> torch.Tensor:
    """generate_images' (N, H, W) or (N, H, W, C) as the classifier's (N, H, W) or (N, C, H, W)."""
    return images.permute(0, 3, 1, 2).contiguous() if images.dim() == 4 else images


def precision_diagnostic(accelerator: Any, checkpoint: str | Path, *, shards: str | Path,
                         classifier: str | Path | None = None, n: int = 10000, seed: int = 0,
                         truncations: Sequence[float] = TRUNCATIONS) -> dict[str, Any]:
    """Collective: {"truncation": [{psi, fid, precision, recall, is}], "confidence": {"bins", "samples",
    "real"}, "clusters": cluster_purity or None} for the EMA G of `checkpoint` (a checkpoint directory; n
    samples from `seed`), scored against the real test split."""
    classifier_path, test_split = resolve_paths(shards, classifier)
    clf = load_classifier(classifier_path)
    g, _ = load_generator(checkpoint, accelerator.device)
    labels = eval_labels(class_freqs_of(g), n, seed) if num_classes_of(g) else None
    scored_labels = None if is_clustered(g) else labels  # clusters are not the classifier's classes
    noise = fixed_noise(n, int(g.z_dim), seed)
    rows, untruncated = [], None
    for psi in truncations:
        images = _chw(generate_images(g, noise * psi, labels))
        if psi == 1.0:
            untruncated = images
        scores = evaluate_images(accelerator, images, classifier_path=classifier_path, test_split=test_split,
                                 seed=seed, labels=scored_labels)
        rows.append({"psi": psi, **{k: scores[k] for k in ("fid", "precision", "recall", "is")}})
    if untruncated is None:
        untruncated = _chw(generate_images(g, noise, labels))
    _, fake_logits = embed_images(clf.model, untruncated)
    real_logits = real_features(clf, test_split).logits
    train = Path(str(shards)) / "train"
    return {"n": n, "truncation": rows, "confidence": {"bins": list(CONFIDENCE_BINS),
                                                       "samples": confidence_histogram(fake_logits),
                                                       "real": confidence_histogram(real_logits)},
            "clusters": cluster_purity(checkpoint, train) if train.is_dir() else None}  # a local split


def format_diagnostic(label: str, result: dict[str, Any]) -> list[str]:
    """The diagnostic as printed lines: the truncation table, the confidence histogram, the cluster purity."""
    lines = [f"precision diagnostic, {label} (n={result['n']}): truncation psi (z -> psi * z)",
             f"{'psi':>6} {'FID':>9} {'P':>9} {'R':>9} {'score':>9}"]
    for row in result["truncation"]:
        lines.append(f"{row['psi']:>6.2f} {row['fid']:>9.3f} {row['precision']:>9.3f} {row['recall']:>9.3f} "
                     f"{row['is']:>9.2f}")
    conf = result["confidence"]
    edges = conf["bins"]
    lines.append("classifier confidence (top softmax probability): share of samples, of real test images")
    for i, (fake, real) in enumerate(zip(conf["samples"], conf["real"], strict=True)):
        close = "]" if i == len(edges) - 2 else ")"
        lines.append(f"  [{edges[i]:.2f}, {edges[i + 1]:.2f}{close} {fake:>8.3f} {real:>8.3f}")
    clusters = result.get("clusters")
    if clusters:
        lines.append(f"clusters (step {clusters['step']}) against the true classes: purity {clusters['purity']:.3f}; "
                     f"clusters led by each class: {clusters['clusters_led']}")
    return lines
