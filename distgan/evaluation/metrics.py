"""The scores, from features already extracted by the classifier (no images here).

Nothing here depends on the dataset: the number of classes K is the width of the logits.
FID, KID and the classifier Inception Score ("MNIST score" on MNIST) are torchmetrics' implementations, fed the
classifier's features through an identity feature module; FID's statistics are float64 (KID runs
torchmetrics' kernel maths subset by subset here, so that a `check` can stop it). Precision and
recall (Kynkäänniemi et al. 2019, k=3) and class coverage are written here (torchmetrics has neither).
Every random choice (KID subsets, IS split order, the real subset for precision/recall) is seeded, so
the same features always give the same scores.

For class-conditional generators (fakes drawn for requested labels) two more: label accuracy (how often the
classifier agrees with the requested class) and intra-class FID (the mean over classes of the FID between
the fakes and the reals of that class; Miyato & Koyama 2018).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

# torchmetrics is imported by the functions that use it: it pulls in matplotlib.pyplot (a second, and a log
# line on its first run in an environment), which every `distgan train` would pay at start-up otherwise.

K_NEAREST = 3
MIN_SAMPLES = K_NEAREST + 1  # precision/recall: each point's k-th nearest other point needs k + 1 points
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10
# a class is "present" if at least a tenth of its uniform share (1/K) of the samples is classified as it:
# 1% for K = 10 classes
CLASS_PRESENT_MIN_FRACTION_OF_UNIFORM = 0.1
Check = Callable[[], None]  # called between the costly parts; it may raise to abandon the computation


def _no_check() -> None:
    return None


@dataclass
class FeatureSet:
    """Classifier outputs for a set of images: penultimate features (N, D) and logits (N, K), on CPU; and
    their class labels (N,) when known (the true class of real images, the requested one of fakes)."""

    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])


class Precomputed(nn.Module):
    """Identity "feature extractor" for torchmetrics: the inputs already are features; returns float64."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torchmetrics' "will save all extracted features in buffer" notices."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        yield


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted (float64) to two feature sets (N, D)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    with _quiet():
        m = FrechetInceptionDistance(feature=Precomputed(real.shape[1]), sync_on_compute=False)
        m.update(real, real=True)
        m.update(fake, real=False)
        return float(m.compute())


def kid(real: torch.Tensor, fake: torch.Tensor, *, seed: int = 0, subsets: int | None = None,
        subset_size: int | None = None, check: Check = _no_check) -> tuple[float, float]:
    """Unbiased KID (cubic polynomial kernel, float64): (mean, std) over `subsets` (default KID_SUBSETS)
    random subsets of KID_SUBSET_SIZE samples (fewer if a set is smaller) from each set.

    torchmetrics' KernelInceptionDistance.compute, subset by subset (the same draws and kernel, so the
    same numbers), with `check()` before each subset."""
    from torchmetrics.image.kid import poly_mmd

    subsets = KID_SUBSETS if subsets is None else subsets
    size = min(KID_SUBSET_SIZE if subset_size is None else subset_size, len(real), len(fake))
    real, fake = real.double(), fake.double()
    scores = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(subsets):
            check()
            f_real = real[torch.randperm(len(real))[:size]]
            f_fake = fake[torch.randperm(len(fake))[:size]]
            scores.append(poly_mmd(f_real, f_fake))
    stacked = torch.stack(scores)
    return float(stacked.mean()), float(stacked.std(unbiased=False))


def inception_score(logits: torch.Tensor, *, seed: int = 0, splits: int = IS_SPLITS) -> tuple[float, float]:
    """Classifier Inception Score exp(E KL(p(y|x) || p(y))): (mean, std) over `splits` splits."""
    from torchmetrics.image.inception import InceptionScore

    with _quiet():
        m = InceptionScore(feature=Precomputed(logits.shape[1]), splits=splits, sync_on_compute=False)
        m.update(logits)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = m.compute()
        return float(mean), float(std)


def _kth_nn_radius(x: torch.Tensor, k: int, chunk: int, check: Check = _no_check) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    out = []
    for i in range(0, len(x), chunk):
        check()
        d = torch.cdist(x[i:i + chunk], x)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])  # column 0 is the point itself
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, *, k: int = K_NEAREST,
                     chunk: int = 1000, check: Check = _no_check) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of
    balls reaching each point's k-th nearest neighbour. Precision: share of fakes inside the real
    manifold; recall: share of reals inside the fake manifold. `check` runs before each chunk. Each set needs
    more than k points (ValueError otherwise)."""
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision and recall with k={k} need at least {k + 1} real and {k + 1} generated "
                         f"samples, got {len(real)} and {len(fake)}")
    real, fake = real.float(), fake.float()
    r_real = _kth_nn_radius(real, k, chunk, check)
    r_fake = _kth_nn_radius(fake, k, chunk, check)
    fake_in_real = torch.zeros(len(fake), dtype=torch.bool)
    real_in_fake = torch.zeros(len(real), dtype=torch.bool)
    for i in range(0, len(fake), chunk):
        check()
        d = torch.cdist(fake[i:i + chunk], real)  # (c, n_real)
        fake_in_real[i:i + chunk] = (d <= r_real[None, :]).any(dim=1)
        real_in_fake |= (d <= r_fake[i:i + chunk, None]).any(dim=0)
    return float(fake_in_real.float().mean()), float(real_in_fake.float().mean())


def class_mix(logits: torch.Tensor) -> torch.Tensor:
    """Share of samples the classifier assigns to each of the K = logits.shape[1] classes (float64, sums
    to 1)."""
    counts = torch.bincount(logits.argmax(dim=1), minlength=logits.shape[1]).double()
    return counts / counts.sum().clamp(min=1)


def class_coverage(fake_logits: torch.Tensor, real_mix: torch.Tensor) -> tuple[int, float]:
    """(classes with at least 0.1/K of the samples (1% for K = 10), KL(sample class mix || real class mix)
    in nats), for K = fake_logits.shape[1] classes.

    The KL is finite even when classes are missing (a one-class generator scores -ln(that class's real
    share): ln K for balanced classes, ln 10 = 2.3 for MNIST)."""
    if real_mix.shape != (fake_logits.shape[1],):
        raise ValueError(f"real class mix has shape {tuple(real_mix.shape)}; expected ({fake_logits.shape[1]},) "
                         f"like the logits")
    p = class_mix(fake_logits)
    q = real_mix.double().clamp(min=1e-12)
    present = p > 0
    kl = float((p[present] * (p[present] / q[present]).log()).sum())
    min_share = CLASS_PRESENT_MIN_FRACTION_OF_UNIFORM / len(p)
    return int((p >= min_share - 1e-12).sum()), max(kl, 0.0)


def label_accuracy(fake_logits: torch.Tensor, requested: torch.Tensor) -> float:
    """Share of samples whose classifier argmax is the class they were generated for."""
    return float((fake_logits.argmax(dim=1) == requested.long()).double().mean())


def intra_fid(real: FeatureSet, fake: FeatureSet) -> float:
    """Mean over classes of the FID between the fakes of class k and the reals of class k (both labelled).

    Classes with fewer than 2 fakes or 2 reals have no FID and are left out of the mean; nan if none has."""
    if real.labels is None or fake.labels is None:
        raise ValueError("intra-class FID needs the labels of the real and of the generated samples")
    real_y, fake_y = real.labels.long(), fake.labels.long()
    scores = []
    for k in torch.unique(fake_y).tolist():
        r, f = real.features[real_y == k], fake.features[fake_y == k]
        if len(r) >= 2 and len(f) >= 2:
            scores.append(fid(r, f))
    return sum(scores) / len(scores) if scores else float("nan")


def conditional_metrics(real: FeatureSet, fake: FeatureSet) -> dict[str, float]:
    """label_accuracy and intra_fid of fakes generated for `fake.labels`, against reals with true labels."""
    if fake.labels is None or len(fake.labels) != len(fake):
        raise ValueError("conditional metrics need one requested label per generated sample")
    return {"label_accuracy": label_accuracy(fake.logits, fake.labels), "intra_fid": intra_fid(real, fake)}


def compute_metrics(real: FeatureSet, fake: FeatureSet, *, seed: int = 0,
                    check: Check = _no_check) -> dict[str, float]:
    """All scores of `fake` against `real`; `check()` runs between the costly parts (it may raise to stop).

    Keys: fid, kid, kid_std, is, is_std, precision, recall, classes, class_kl, n; and, when `fake.labels`
    (the requested classes) is set, label_accuracy and intra_fid (which need `real.labels`). FID uses every
    real feature; precision/recall use a seeded random subset of the reals as large as the fake set, so both
    manifolds are estimated from equally many points.
    """
    n = len(fake)
    if n < MIN_SAMPLES or len(real) < MIN_SAMPLES:
        raise ValueError(f"need at least {MIN_SAMPLES} real and {MIN_SAMPLES} generated samples (precision and "
                         f"recall use each one's {K_NEAREST} nearest neighbours), got {len(real)} and {n}")
    if real.features.shape[1] != fake.features.shape[1] or real.logits.shape[1] != fake.logits.shape[1]:
        raise ValueError(f"real and generated sets come from different classifiers: features "
                         f"{real.features.shape[1]} vs {fake.features.shape[1]}, classes {real.logits.shape[1]} vs "
                         f"{fake.logits.shape[1]}")
    gen = torch.Generator().manual_seed(seed)
    real_pr = real.features
    if len(real) > n:
        real_pr = real.features[torch.randperm(len(real), generator=gen)[:n]]
    kid_mean, kid_std = kid(real.features, fake.features, seed=seed, check=check)
    check()
    is_mean, is_std = inception_score(fake.logits, seed=seed, splits=min(IS_SPLITS, n))
    precision, recall = precision_recall(real_pr, fake.features, check=check)
    classes, class_kl = class_coverage(fake.logits, class_mix(real.logits))
    check()
    out = {
        "fid": fid(real.features, fake.features),
        "kid": kid_mean,
        "kid_std": kid_std,
        "is": is_mean,
        "is_std": is_std,
        "precision": precision,
        "recall": recall,
        "classes": classes,
        "class_kl": class_kl,
        "n": n,
    }
    if fake.labels is not None:
        check()
        out.update(conditional_metrics(real, fake))
    return out
