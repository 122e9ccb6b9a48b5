"""Sampling a self-conditioned generator (model.conditional=clusters): its classes are clusters, drawn in their
frequencies when no labels are given; an export keeps the flag and the frequencies; the evaluation scores it
as an unconditional G. In-process, no training (the trained path: training/test_selfcond.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distgan.config import load_config
from distgan.errors import UserError
from distgan.evaluation import metrics as M
from distgan.evaluation.classifier import FeatureClassifier, embed_images, save_classifier
from distgan.evaluation.evaluate import evaluate_generator
from distgan.generator.architectures import build_generator
from distgan.generator.export import load_exported, write_export
from distgan.generator.sampling import default_labels, eval_labels, is_clustered, parse_labels, sample_images

FREQS = [0.5, 0.0, 0.3, 0.2]


def clustered_g(conditional="clusters"):
    overrides = ["model.z_dim=8", "model.g_hidden=[16]", "model.d_hidden=[16]", "model.num_classes=4",
                 "model.image_shape=[1,28,28]"]
    overrides += ["model.conditional=clusters", "model.clusters=4"] if conditional == "clusters" \
        else ["model.conditional=true"]
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    g = build_generator(cfg.model, (1, 28, 28))
    g.inputs.class_freqs.copy_(torch.tensor(FREQS))
    return g.eval(), cfg


def test_without_labels_the_clusters_are_drawn_in_their_frequencies():
    g, _ = clustered_g()
    assert is_clustered(g) and not is_clustered(clustered_g("true")[0])
    labels = default_labels(g, 50, seed=3)
    assert torch.equal(labels, eval_labels(torch.tensor(FREQS), 50, 3))
    assert torch.bincount(labels, minlength=4).tolist() == [25, 0, 15, 10]  # cluster 1 is empty: never drawn
    assert torch.equal(sample_images(g, 50, seed=3), sample_images(g, 50, seed=3, labels=labels))
    assert default_labels(clustered_g("true")[0], 5, 0).tolist() == [0, 1, 2, 3, 0]  # classes: in turn


def test_labels_pick_clusters_and_are_checked():
    g, _ = clustered_g()
    one = sample_images(g, 6, seed=0, labels=parse_labels("2", 4, 6))
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.equal(g(z, torch.full((6,), 2)), g(z, torch.full((6,), 3)))  # the cluster matters
    assert one.shape == (6, 28, 28) and one.dtype == torch.uint8
    with pytest.raises(UserError, match="class 4 is out of range"):
        parse_labels("4", 4, 6)


def test_an_export_keeps_the_clusters_and_their_frequencies(tmp_path):
    g, cfg = clustered_g()
    meta = write_export(tmp_path / "export", g, cfg, step=7)
    assert meta["clusters"] is True and meta["class_freqs"] == pytest.approx(FREQS)
    assert json.loads((tmp_path / "export" / "config.json").read_text())["class_freqs"] == pytest.approx(FREQS)
    loaded, saved = load_exported(tmp_path / "export")
    assert is_clustered(loaded) and saved.model.conditional == "clusters"
    assert torch.equal(loaded.inputs.class_freqs, torch.tensor(FREQS))
    assert np.array_equal(sample_images(loaded, 20, seed=1).numpy(), sample_images(g, 20, seed=1).numpy())
    assert "clusters of its training images" in (tmp_path / "export" / "README.md").read_text()


def test_the_evaluation_scores_clusters_without_class_metrics(tmp_path):
    """A 10-class classifier scores a 4-cluster G: clusters are no classes (no label_accuracy, no refusal)."""
    torch.manual_seed(0)
    clf = FeatureClassifier((1, 28, 28), 10)
    test = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    feats = M.FeatureSet(*embed_images(clf, test))
    save_classifier(tmp_path / "c.pt", clf, test_features=feats.features, test_logits=feats.logits,
                    test_labels=torch.arange(40) % 10)
    scores = evaluate_generator(None, clustered_g()[0], n=20, seed=0, classifier_path=tmp_path / "c.pt",
                                test_split=None)
    assert np.isfinite(scores["fid"]) and "label_accuracy" not in scores and "intra_fid" not in scores
    with pytest.raises(UserError, match="conditional on 4 classes but the classifier"):
        evaluate_generator(None, clustered_g("true")[0], n=20, seed=0, classifier_path=tmp_path / "c.pt",
                           test_split=None)
