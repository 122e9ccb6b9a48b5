"""Sampling, evaluation and export of class-conditional generators: `--labels` parsing, evaluation labels in
the training class frequencies, one-row-per-class grids, `distgan sample` on a real conditional checkpoint,
label accuracy and intra-class FID on real MNIST, and the conditional ONNX export."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from conftest import REPO, require_module, run_cli
from torch import nn

from distgan.errors import UserError
from distgan.evaluation import metrics as M
from distgan.generator.grids import GRID_MAX_CLASSES, class_grid, grid_inputs
from distgan.generator.loading import load_generator, write_samples
from distgan.generator.sampling import eval_labels, fixed_noise, generate_images, parse_labels, sample_images

# -- --labels ------------------------------------------------------------------------------------------------


def test_parse_labels_all_one_and_list():
    assert parse_labels("all", 10, 23).tolist() == [i % 10 for i in range(23)]
    assert parse_labels(" ALL ", 3, 4).tolist() == [0, 1, 2, 0]
    assert parse_labels("7", 10, 5).tolist() == [7] * 5
    assert parse_labels("1, 4,9", 10, 7).tolist() == [1, 4, 9, 1, 4, 9, 1]
    assert parse_labels("0,2", 3, 1).tolist() == [0]
    assert parse_labels("3", 10, 2).dtype == torch.long


@pytest.mark.parametrize("spec, k, fragment", [
    ("10", 10, "class 10 is out of range"),
    ("-1", 10, "class -1 is out of range"),
    ("2,12", 10, "class 12 is out of range"),
    ("cats", 10, "is not understood"),
    ("1,,2", 10, "is not understood"),
    ("", 10, "is not understood"),
    ("1.5", 10, "is not understood"),
])
def test_parse_labels_errors_are_one_line_with_the_range(spec, k, fragment):
    with pytest.raises(UserError) as e:
        parse_labels(spec, k, 4)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--labels") and fragment in msg and "0..9" in msg


def test_labels_for_an_unconditional_generator_are_refused():
    with pytest.raises(UserError, match=r"^--labels all: this generator is unconditional"):
        parse_labels("all", 0, 4)


# -- evaluation labels ---------------------------------------------------------------------------------------


def test_eval_labels_follow_the_frequencies_exactly_and_are_seeded():
    freqs = torch.tensor([0.5, 0.3, 0.2])
    # quotas 3.5, 2.1, 1.4: floors 3, 2, 1, the one left goes to the largest remainder (class 0)
    assert torch.bincount(eval_labels(freqs, 7, seed=0), minlength=3).tolist() == [4, 2, 1]
    mnist = torch.tensor([1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978], dtype=torch.float32)
    mnist = mnist / mnist.sum()
    for n in (1, 9, 10, 997, 10000):
        y = eval_labels(mnist, n, seed=3)
        counts = torch.bincount(y, minlength=10)
        assert len(y) == n and counts.sum() == n and y.dtype == torch.long
        assert (counts.double() - mnist.double() * n).abs().max() < 1.0  # within one of the exact quota
    assert torch.bincount(eval_labels(mnist, 10000, 0), minlength=10).tolist() == \
        [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    a, b, c = eval_labels(mnist, 500, 5), eval_labels(mnist.double().tolist(), 500, 5), eval_labels(mnist, 500, 6)
    assert a.equal(b) and not a.equal(c) and torch.bincount(a).equal(torch.bincount(c))
    assert not a.equal(a.sort().values)  # shuffled, not class by class
    assert eval_labels(torch.tensor([0.0, 1.0, 0.0]), 5, 0).tolist() == [1] * 5
    with pytest.raises(ValueError):
        eval_labels(torch.tensor([0.0, 0.0]), 5, 0)


# -- grids ---------------------------------------------------------------------------------------------------


def test_class_grid_has_one_row_per_class_in_order_and_blank_cells():
    images = np.stack([np.full((3, 4), 10 * (i + 1), np.uint8) for i in range(6)])  # image i is all 10(i+1)
    labels = np.array([2, 0, 2, 5, 2, 0])
    grid = class_grid(images, labels)
    pad, h, w = 2, 3, 4
    assert grid.shape == (3 * (h + pad) + pad, 3 * (w + pad) + pad)  # classes 0, 2, 5; class 2 has 3 images

    def cell(r: int, c: int) -> np.ndarray:
        return grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w]

    expected = [[20, 60, 0], [10, 30, 50], [40, 0, 0]]  # in the given order within a class; 0 = blank
    assert [[int(cell(r, c).max()) for c in range(3)] for r in range(3)] == expected
    assert (cell(0, 0) == 20).all() and (cell(0, 2) == 0).all()
    rgb = class_grid(np.repeat(images[..., None], 3, axis=3), torch.as_tensor(labels))
    assert rgb.shape == (*grid.shape, 3) and np.array_equal(rgb[..., 1], grid)


def test_grid_inputs_rows_are_classes():
    cond, plain = _mlp(num_classes=4), _mlp(num_classes=0)
    z, y = grid_inputs(cond, 3, 8, seed=5)
    assert z.equal(fixed_noise(12, 8, 5)) and y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    z, y = grid_inputs(plain, 3, 8, seed=5)
    assert z.equal(fixed_noise(9, 8, 5)) and y is None
    many = _mlp(num_classes=300)  # 300 rows of samples would make a grid nobody can look at
    z, y = grid_inputs(many, 2, 8, seed=5)
    rows = y[::2].tolist()
    assert len(rows) == GRID_MAX_CLASSES and rows[0] == 0 and rows[-1] == 299 and rows == sorted(set(rows))
    assert z.equal(fixed_noise(2 * GRID_MAX_CLASSES, 8, 5)) and y.tolist() == [r for r in rows for _ in range(2)]


# -- generating ----------------------------------------------------------------------------------------------


def _mlp(num_classes: int) -> nn.Module:
    from distgan.config import ModelConfig
    from distgan.generator.architectures import build_generator

    torch.manual_seed(0)
    cfg = ModelConfig(arch="mlp", z_dim=8, g_hidden=[16], conditional=num_classes > 0,
                      num_classes=num_classes or None)
    return build_generator(cfg, (1, 6, 6)).eval()


def test_generate_images_passes_labels_chunk_wise_and_checks_them():
    g = _mlp(num_classes=3)
    z = fixed_noise(7, 8, 0)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    whole = generate_images(g, z, y)
    assert whole.shape == (7, 6, 6) and whole.equal(generate_images(g, z, y.tolist(), batch_size=3))
    with torch.no_grad():
        assert whole.equal(((g(z, y).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0])
    assert not generate_images(g, z, torch.zeros(7, dtype=torch.long)).equal(whole)  # labels matter
    assert sample_images(g, 5, seed=1).equal(generate_images(g, fixed_noise(5, 8, 1), [0, 1, 2, 0, 1]))
    for bad, match in [(None, "class-conditional .3 classes.: pass labels"), (torch.tensor([0, 3] * 3 + [0]),
                       "classes are 0..2"), (torch.zeros(6, dtype=torch.long), r"shape \(7,\)"),
                       (torch.zeros(7), r"integers of shape \(7,\)")]:
        with pytest.raises(UserError, match=match):
            generate_images(g, z, bad)
    with pytest.raises(UserError, match="unconditional"):
        generate_images(_mlp(num_classes=0), z, y)


@pytest.fixture(scope="module")
def cond_run(mnist_shards, tmp_path_factory):
    """A conditional MLP trained for 3 steps on MNIST (a real checkpoint with class frequencies)."""
    from distgan.config import load_config
    from distgan.training.trainer import train

    run_dir = tmp_path_factory.mktemp("cond_run")
    cfg = load_config(REPO / "configs" / "debug.yaml", [
        f"data.dir={mnist_shards}", f"run.dir={run_dir}", "train.steps=3", "wandb.mode=disabled",
        "log.progress=false", "eval.every=0", "model.conditional=true"])
    assert train(cfg).status == "finished"
    return run_dir


def test_sample_a_conditional_checkpoint(cond_run, mnist_shards, tmp_path):
    g, cfg = load_generator(cond_run)
    manifest = json.loads((mnist_shards / "manifest.json").read_text())
    counts = torch.tensor(manifest["classes"]["counts"]["train"], dtype=torch.float64)
    assert cfg.model.conditional and cfg.model.num_classes == 10 and g.num_classes == 10
    assert torch.allclose(g.inputs.class_freqs.double(), counts / counts.sum(), atol=1e-6)

    out = tmp_path / "all.npz"
    images = write_samples(cond_run, n=23, seed=4, out=out, grid=tmp_path / "all.png")
    with np.load(out) as npz:
        assert sorted(npz.files) == ["images", "labels"] and np.array_equal(npz["images"], images)
        assert npz["labels"].tolist() == [i % 10 for i in range(23)] and npz["labels"].dtype == np.int64
    from PIL import Image

    with Image.open(tmp_path / "all.png") as im:  # 10 rows (classes), 3 columns (classes 0-2 have 3 images)
        assert im.size == (3 * 30 + 2, 10 * 30 + 2)
    assert np.array_equal(images, sample_images(g, 23, seed=4).numpy())

    # The CLI: two classes in turn, one row each.
    run_cli(["sample", "--checkpoint", str(cond_run), "--n", "6", "--seed", "4", "--labels", "3,7", "--out",
             str(tmp_path / "two.npz"), "--grid", str(tmp_path / "two.png")], timeout=120)
    with np.load(tmp_path / "two.npz") as npz:
        assert npz["labels"].tolist() == [3, 7, 3, 7, 3, 7]
        assert np.array_equal(npz["images"], generate_images(g, fixed_noise(6, 16, 4), npz["labels"]).numpy())
    with Image.open(tmp_path / "two.png") as im:
        assert im.size == (3 * 30 + 2, 2 * 30 + 2)
    with pytest.raises(UserError, match=r"^--labels 10: class 10 is out of range; .* 0\.\.9$"):
        write_samples(cond_run, n=4, seed=0, out=tmp_path / "x.npz", labels="10")
    assert not (tmp_path / "x.npz").exists()


def onnx_parity(folder, batch_sizes=(1, 5), seed: int = 0) -> float:
    """Largest |ONNX Runtime - PyTorch| over the images of an export folder's generator.onnx and weights."""
    import onnxruntime as ort

    from distgan.generator.export import ONNX_FILE, load_exported, onnx_inputs

    g, _ = load_exported(folder)
    session = ort.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
    worst = 0.0
    for b in batch_sizes:
        inputs = onnx_inputs(g, b, seed + b)
        with torch.no_grad():
            ref = g(*inputs.values()).numpy()
        got = session.run(["images"], {k: v.numpy() for k, v in inputs.items()})[0]
        assert got.shape == ref.shape, f"ONNX output shape {got.shape} != PyTorch {ref.shape}"
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def test_export_a_conditional_checkpoint_with_onnx(cond_run, tmp_path):
    require_module("onnxruntime", 'pip install -e ".[export]"')
    import onnxruntime as ort

    from distgan.exporting import export_checkpoint
    from distgan.generator.export import load_exported

    folder = tmp_path / "model"
    meta = export_checkpoint(cond_run, folder, onnx=True)
    saved = json.loads((folder / "config.json").read_text())
    assert meta["conditional"] is True and saved["num_classes"] == 10 and saved["model"]["conditional"] is True
    assert saved["model"]["num_classes"] == 10
    card = (folder / "README.md").read_text()
    assert "Conditional on 10 classes" in card and "labels=[3] * 16" in card and '"labels": y' in card
    g, _ = load_generator(cond_run)
    exported, cfg = load_exported(folder)
    assert exported.num_classes == 10 and exported.inputs.class_freqs.equal(g.inputs.class_freqs)
    z, y = fixed_noise(5, 16, 0), torch.tensor([0, 9, 3, 3, 1])
    assert generate_images(exported, z, y).equal(generate_images(g, z, y))
    session = ort.InferenceSession(str(folder / "generator.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["z", "labels"]
    assert onnx_parity(folder, batch_sizes=(1, 7)) < 1e-5
    from PIL import Image

    with Image.open(folder / "samples.png") as im:  # 10 classes x 8 samples
        assert im.size == (8 * 30 + 2, 10 * 30 + 2)
    # An export samples like the checkpoint it came from.
    a = write_samples(folder, n=5, seed=2, out=tmp_path / "a.npz", labels="4")
    assert np.array_equal(a, write_samples(cond_run, n=5, seed=2, out=tmp_path / "b.npz", labels="4"))


# -- label accuracy and intra-class FID ----------------------------------------------------------------------


@pytest.fixture()
def quick_kid(monkeypatch):
    """KID over 2 subsets instead of 100: its cost dominates a scoring; the other scores are exact."""
    monkeypatch.setattr(M, "KID_SUBSETS", 2)


SINGLE_PROCESS = types.SimpleNamespace(num_processes=1, process_index=0, is_main_process=True,
                                       device=torch.device("cpu"))


def test_real_images_with_their_labels_score_as_a_perfect_conditional_model(eval_classifier, mnist_shards,
                                                                            tmp_path, quick_kid):
    """1000 real training images as 'samples' of their true classes: the classifier agrees with almost all
    and each class matches the test images of that class; with shuffled labels neither holds."""
    from distgan.data.splits import load_split_images
    from distgan.evaluation.classifier import embed_images
    from distgan.evaluation.evaluate import labelled_real_features, load_classifier
    from distgan.evaluation.report import format_table, score

    images, labels = load_split_images(mnist_shards / "train")
    images, labels = images[:1000], labels[:1000].astype(np.int64)
    samples = tmp_path / "real.npz"
    np.savez(samples, images=images, labels=labels)
    result = score(SINGLE_PROCESS, samples=samples, n=1000, classifier=eval_classifier)
    assert result["label_accuracy"] >= 0.95 and result["intra_fid"] < 3.0, result
    assert result["fid"] < result["intra_fid"] and result["n"] == 1000
    table = format_table(result, result["reference"])
    assert "label accuracy" in table and "intra-class FID" in table and f"{result['label_accuracy']:.3f}" in table

    clf = load_classifier(eval_classifier)
    real = labelled_real_features(clf, None)
    assert real.labels is not None and len(real.labels) == len(real)
    features = M.FeatureSet(*embed_images(clf.model, images))
    shuffled = torch.as_tensor(labels)[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    wrong = M.conditional_metrics(real, M.FeatureSet(features.features, features.logits, shuffled))
    assert wrong["label_accuracy"] < 0.2 and wrong["intra_fid"] > 10 * result["intra_fid"], wrong
    right = M.conditional_metrics(real, M.FeatureSet(features.features, features.logits, torch.as_tensor(labels)))
    assert right == pytest.approx({k: result[k] for k in ("label_accuracy", "intra_fid")})


class LookupConditional(nn.Module):
    """A conditional generator over real images: for class y, a real image of class y picked by the noise.
    Records the labels it was asked for, in order."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, freqs: torch.Tensor, z_dim: int = 8) -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.image_shape = z_dim, len(freqs), (1, 28, 28)
        self.bank = [torch.as_tensor(images[labels == k]).float().div(127.5).sub(1.0) for k in range(len(freqs))]
        self.inputs = nn.Module()
        self.inputs.register_buffer("class_freqs", freqs)
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[int] = []

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.seen += labels.tolist()
        pick = (z[:, 0].abs() * 1e6).long()
        out = [self.bank[int(y)][int(i) % len(self.bank[int(y)])] for y, i in zip(labels, pick, strict=True)]
        return torch.stack(out).unsqueeze(1) * self.scale


def test_evaluate_generator_asks_for_the_training_frequencies(eval_classifier, mnist_shards, quick_kid):
    from distgan.data.splits import load_split_images
    from distgan.evaluation.evaluate import evaluate_generator

    images, labels = load_split_images(mnist_shards / "train")
    freqs = torch.tensor([0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03])
    g = LookupConditional(images[:5000], labels[:5000], freqs).train()
    scores = evaluate_generator(None, g, n=600, seed=7, classifier_path=eval_classifier, test_split=None,
                                batch_size=64)
    assert g.seen[1:] == eval_labels(freqs, 600, 7).tolist()  # sample i gets label i (after the shape check)
    assert g.training  # mode restored
    assert scores["label_accuracy"] >= 0.95 and scores["intra_fid"] < 5.0, scores
    assert scores["n"] == 600 and {"fid", "kid", "is", "classes"} <= scores.keys()
    g.inputs.class_freqs = torch.full((4,), 0.25)
    g.num_classes = 4
    with pytest.raises(UserError, match="conditional on 4 classes but the classifier .* has 10"):
        evaluate_generator(None, g, n=10, seed=0, classifier_path=eval_classifier, test_split=None)


def test_samples_file_labels_are_checked(eval_classifier, tmp_path):
    from distgan.evaluation.evaluate import evaluate_images
    from distgan.evaluation.report import format_table, load_labelled_samples, load_samples

    images = np.zeros((5, 28, 28), np.uint8)
    np.savez(tmp_path / "ok.npz", images=images, labels=np.array([0, 1, 2, 3, 4], np.uint8))
    got, labels = load_labelled_samples(tmp_path / "ok.npz", 3, (1, 28, 28))
    assert got.shape == (3, 28, 28) and labels.tolist() == [0, 1, 2] and labels.dtype == np.int64
    assert load_samples(tmp_path / "ok.npz", None, (1, 28, 28)).shape == (5, 28, 28)
    np.savez(tmp_path / "plain.npz", images=images)
    assert load_labelled_samples(tmp_path / "plain.npz", None, (1, 28, 28))[1] is None
    for bad in (np.zeros(4, np.int64), np.zeros(5, np.float32), np.zeros((5, 1), np.int64)):
        np.savez(tmp_path / "bad.npz", images=images, labels=bad)
        with pytest.raises(UserError, match="'labels' has dtype .* expected 5 integers"):
            load_labelled_samples(tmp_path / "bad.npz", None, (1, 28, 28))
    with pytest.raises(UserError, match=r"labels range from 0 to 10 but the classifier has 10 classes \(0\.\.9\)"):
        evaluate_images(None, images, labels=np.array([0, 1, 2, 3, 10]), classifier_path=eval_classifier,
                        test_split=None)
    assert "label accuracy" not in format_table({"fid": 1.0}, {})
