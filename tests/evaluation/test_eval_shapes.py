"""Evaluation for any image shape and number of classes: the classifier family per shape (exactly the old
MNIST LeNet for 28x28x1 and 10 classes), its file, samples files in every layout, and the scores on a
real colour dataset: MNIST digits resized to 32x32 (PIL antialiasing) and tinted per class into RGB."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from PIL import Image
from torch import nn

from distgan.data.idx import find_raw_files, load_pair
from distgan.data.splits import canonical_images
from distgan.errors import UserError
from distgan.evaluation import metrics as M
from distgan.evaluation.classifier import (
    FORMAT,
    FeatureClassifier,
    accuracy,
    block_plan,
    embed_images,
    load_classifier_file,
    save_classifier,
    train_classifier,
)
from distgan.evaluation.evaluate import evaluate_generator, evaluate_images, load_classifier
from distgan.evaluation.report import load_samples
from distgan.hashing import state_dict_sha256

# one colour per digit class (RGB in 0..1): the "tint" of the colour dataset
TINTS = np.array([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.3, 0.3, 1.0], [1.0, 1.0, 0.2], [1.0, 0.2, 1.0],
                  [0.2, 1.0, 1.0], [1.0, 0.6, 0.2], [0.6, 0.3, 1.0], [0.8, 0.8, 0.8], [0.5, 1.0, 0.5]])
SHAPE = (3, 32, 32)


class LegacyMnistClassifier(nn.Module):
    """The MNIST classifier exactly as it was before the shape generalisation (the reference for keys,
    shapes, initialisation and outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)
        self.register_buffer("feature_scale", torch.ones(()))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        feats = F.relu(self.fc1(h.flatten(1)))
        return feats * self.feature_scale, self.fc2(feats)


# the old classifier's state_dict keys, in order (the root's buffer comes before the submodules' weights)
LEGACY_KEYS = ["feature_scale", "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight",
               "fc1.bias", "fc2.weight", "fc2.bias"]


@pytest.fixture(scope="module")
def mnist(mnist_raw) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The real MNIST digits: the first 2,000 of the train file and 1,000 of the test file."""
    files = find_raw_files(mnist_raw)
    train = load_pair(files["train_images"], files["train_labels"])
    test = load_pair(files["test_images"], files["test_labels"])
    return {"train": (train[0][:2000], train[1][:2000].astype(np.int64)),
            "test": (test[0][:1000], test[1][:1000].astype(np.int64))}


def tinted_rgb(digits: np.ndarray, labels: np.ndarray, side: int = 32) -> np.ndarray:
    """Real digits resized to side x side with PIL's antialiasing (LANCZOS) filter, tinted by class:
    uint8 (N, 3, side, side)."""
    resized = np.stack([np.asarray(Image.fromarray(d).resize((side, side), Image.Resampling.LANCZOS))
                        for d in digits]).astype(np.float64)
    rgb = resized[:, None] * TINTS[labels][:, :, None, None]
    return rgb.round().clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def rgb(mnist) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {k: (tinted_rgb(x, y), y) for k, (x, y) in mnist.items()}


def _one_line_user_error(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert excinfo.type is UserError and "\n" not in msg, msg
    return msg


# --- the classifier family ---------------------------------------------------------------------------


def test_mnist_shape_is_exactly_the_old_architecture(mnist):
    new = FeatureClassifier((1, 28, 28), 10)
    old = LegacyMnistClassifier()
    assert list(new.state_dict()) == LEGACY_KEYS == list(old.state_dict())
    assert {k: v.shape for k, v in new.state_dict().items()} == {k: v.shape for k, v in old.state_dict().items()}
    torch.manual_seed(0)  # same seed, same initialisation: a retrained file keeps its recorded sha256
    a = FeatureClassifier((1, 28, 28), 10)
    torch.manual_seed(0)
    b = LegacyMnistClassifier()
    assert state_dict_sha256(a) == state_dict_sha256(b)
    x = torch.as_tensor(mnist["test"][0][:64].copy()).float().div(127.5).sub(1).unsqueeze(1)
    for got, want in zip(a.embed(x), b.embed(x), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("shape, convs, kernels, flat", [
    ((1, 16, 16), 2, [5, 5], 64 * 4 * 4),
    ((3, 32, 32), 2, [5, 5], 64 * 8 * 8),
    ((3, 48, 48), 3, [3, 5, 5], 64 * 6 * 6),
    ((3, 64, 64), 3, [3, 5, 5], 64 * 8 * 8),
    ((1, 128, 128), 4, [3, 3, 5, 5], 64 * 8 * 8),
    ((3, 64, 96), 4, [3, 3, 5, 5], 64 * 4 * 6),
    ((1, 16, 128), 4, [3, 3, 5, 5], 64 * 1 * 8),
])
def test_the_network_scales_with_the_shape(shape, convs, kernels, flat):
    model = FeatureClassifier(shape, 7)
    assert [k for _, _, k, _ in block_plan(shape)] == kernels
    assert [n for n in model.state_dict() if n.startswith("conv") and n.endswith(".weight")] == \
        [f"conv{i}.weight" for i in range(1, convs + 1)]
    assert model.conv1.in_channels == shape[0] and model.fc1.in_features == flat
    feats, logits = model.embed(torch.zeros(2, *shape))
    assert feats.shape == (2, 128) and logits.shape == (2, 7)


@pytest.mark.parametrize("shape, k", [((2, 32, 32), 10), ((3, 2, 32), 10), ((1, 28, 28), 1)])
def test_unsupported_shapes_and_class_counts_are_one_line_user_errors(shape, k):
    with pytest.raises(UserError) as e:
        FeatureClassifier(shape, k)
    _one_line_user_error(e)


def test_classifier_file_records_shape_classes_and_names(tmp_path):
    torch.manual_seed(0)
    model = FeatureClassifier((3, 40, 24), 4)
    names = ["cat", "dog", "car", "ship"]
    sha = save_classifier(tmp_path / "c.pt", model, class_names=names, note="x")
    loaded, blob = load_classifier_file(tmp_path / "c.pt")
    assert blob["format"] == FORMAT and blob["input_shape"] == [3, 40, 24] and blob["num_classes"] == 4
    assert blob["class_names"] == names and blob["sha256"] == sha == state_dict_sha256(loaded)
    assert loaded.input_shape == (3, 40, 24) and loaded.num_classes == 4 and not loaded.training
    clf = load_classifier(tmp_path / "c.pt")
    assert clf.input_shape == (3, 40, 24) and clf.num_classes == 4 and clf.class_names == names
    # the recorded shape must fit the weights
    blob["input_shape"] = [3, 64, 64]
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(UserError) as e:
        load_classifier_file(tmp_path / "bad.pt")
    assert "[3, 64, 64]" in _one_line_user_error(e)


def test_old_files_without_shape_keys_are_mnist_classifiers(tmp_path):
    """A file written before input_shape/num_classes were recorded loads as (1, 28, 28), 10 classes."""
    torch.manual_seed(1)
    old = LegacyMnistClassifier()
    sha = state_dict_sha256(old)
    torch.save({"format": "distgan-mnist-classifier/1", "state_dict": old.state_dict(), "sha256": sha},
               tmp_path / "old.pt")
    model, blob = load_classifier_file(tmp_path / "old.pt")
    assert model.input_shape == (1, 28, 28) and model.num_classes == 10 and blob["sha256"] == sha
    assert state_dict_sha256(model) == sha


# --- samples files and split arrays ------------------------------------------------------------------


def test_load_samples_accepts_the_four_layouts(rgb, mnist, tmp_path):
    chw = rgb["test"][0][:6]  # (6, 3, 32, 32)
    for name, arr in {"nchw": chw, "nhwc": chw.transpose(0, 2, 3, 1).copy()}.items():
        np.savez(tmp_path / f"{name}.npz", images=arr)
        got = load_samples(tmp_path / f"{name}.npz", 5, SHAPE)
        assert got.shape == (5, 3, 32, 32) and np.array_equal(got, chw[:5]), name
    gray = mnist["test"][0][:6]  # (6, 28, 28)
    for name, arr in {"nhw": gray, "n1hw": gray[:, None]}.items():
        np.savez(tmp_path / f"{name}.npz", images=arr)
        got = load_samples(tmp_path / f"{name}.npz", None, (1, 28, 28))
        assert got.shape == (6, 28, 28) and np.array_equal(got, gray), name
    # a non-square grayscale shape, both layouts
    np.savez(tmp_path / "rect.npz", images=np.zeros((3, 1, 16, 48), np.uint8))
    assert load_samples(tmp_path / "rect.npz", None, (1, 16, 48)).shape == (3, 16, 48)


@pytest.mark.parametrize("images, expected, file_shape", [
    (np.zeros((4, 28, 28), np.uint8), (3, 32, 32), "(4, 28, 28)"),  # grayscale for a colour classifier
    (np.zeros((4, 3, 32, 32), np.uint8), (1, 32, 32), "(4, 3, 32, 32)"),  # colour for a grayscale one
    (np.zeros((4, 32, 32, 3), np.uint8), (3, 64, 64), "(4, 32, 32, 3)"),  # wrong size
    (np.zeros((4, 32, 32, 1), np.uint8), (1, 32, 32), "(4, 32, 32, 1)"),  # not one of the four layouts
    (np.zeros((4, 32, 32), np.uint8), None, None),  # no classifier shape: any grayscale size passes
])
def test_load_samples_checks_the_classifier_shape_in_one_line(tmp_path, images, expected, file_shape):
    np.savez(tmp_path / "s.npz", images=images)
    if file_shape is None:
        assert load_samples(tmp_path / "s.npz", None, expected).shape == images.shape
        return
    with pytest.raises(UserError) as e:
        load_samples(tmp_path / "s.npz", None, expected)
    msg = _one_line_user_error(e)
    assert f"shape {file_shape}" in msg and str(expected) in msg and "s.npz" in msg


def test_split_arrays_from_the_loader_in_either_layout(rgb, mnist):
    gray = mnist["test"][0][:5]
    assert canonical_images(gray, "split").shape == (5, 28, 28)  # today's loader: (N, 28, 28)
    assert np.array_equal(canonical_images(gray[:, None], "split"), gray)  # (N, 1, H, W)
    colour = rgb["test"][0][:5]
    assert canonical_images(colour, "split") is colour  # (N, 3, H, W)
    with pytest.raises(UserError) as e:
        canonical_images(colour.transpose(0, 2, 3, 1), "split")
    _one_line_user_error(e)


# --- metrics with K != 10 ----------------------------------------------------------------------------


@pytest.mark.slow
def test_metrics_take_the_number_of_classes_from_the_logits():
    k = 4
    confident = torch.eye(k).repeat(2500, 1) * 30.0  # splits of 1,000: random class shares
    assert M.inception_score(confident)[0] == pytest.approx(k, rel=5e-3)
    real_mix = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    one = torch.zeros(300, k)
    one[:, 2] = 5.0
    assert M.class_coverage(one, real_mix) == (1, pytest.approx(-math.log(0.3)))
    # 0.1 / K = 2.5% of the samples makes a class present: 8 of 300 yes, 7 no
    mixed = torch.zeros(300, k)
    mixed[:, 0] = 5.0
    mixed[:8, 0], mixed[:8, 1] = 0.0, 5.0
    mixed[8:15, 0], mixed[8:15, 3] = 0.0, 5.0
    assert M.class_coverage(mixed, real_mix)[0] == 2
    with pytest.raises(ValueError):
        M.class_coverage(one, torch.full((10,), 0.1, dtype=torch.float64))
    many = torch.randn(600, 100, generator=torch.Generator().manual_seed(0)) * 10  # K = 100
    s = M.compute_metrics(M.FeatureSet(many[:, :16].relu(), many), M.FeatureSet(many[:, :16].relu(), many))
    assert s["class_kl"] == pytest.approx(0.0, abs=1e-12) and s["classes"] == len(many.argmax(1).unique())
    with pytest.raises(ValueError, match="different classifiers"):
        M.compute_metrics(M.FeatureSet(many[:, :16], many), M.FeatureSet(many[:, :16], many[:, :10]))


# --- a real colour dataset ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rgb_classifier(rgb, tmp_path_factory):
    """The (3, 32, 32), 10-class classifier trained for 2 epochs on the 2,000 tinted train digits, saved
    with the test features like `distgan train-classifier` does."""
    x, y = rgb["train"]
    tx, ty = rgb["test"]
    model = train_classifier(x, y, epochs=2, seed=0)
    test = M.FeatureSet(*embed_images(model, tx))
    path = tmp_path_factory.mktemp("rgb_classifier") / "classifier.pt"
    names = [f"digit {d}" for d in range(10)]
    save_classifier(path, model, class_names=names, test_accuracy=accuracy(model, tx, ty),
                    test_features=test.features, test_logits=test.logits, test_labels=torch.as_tensor(ty),
                    reference=M.compute_metrics(test, M.FeatureSet(*embed_images(model, x)), seed=0))
    return model, path


def _blur(images: np.ndarray, passes: int = 3) -> np.ndarray:
    """5x5 binomial blur, `passes` times (3: about a Gaussian of sigma 1.7 px), of each channel of uint8
    (N, C, H, W) images (the antialiased 32x32 digits are smooth already: one pass barely changes them)."""
    x = torch.as_tensor(images).float()
    c = x.shape[1]
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None, :]) / 256.0
    for _ in range(passes):
        x = F.conv2d(x, k[None, None].repeat(c, 1, 1, 1), padding=2, groups=c)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.mark.slow
def test_rgb_classifier_is_accurate_and_sized_to_the_shape(rgb_classifier, rgb):
    model, path = rgb_classifier
    tx, ty = rgb["test"]
    acc = accuracy(model, tx, ty)
    assert acc > 0.9, acc
    assert model.input_shape == SHAPE and model.num_classes == 10 and model.conv1.in_channels == 3
    feats, logits = embed_images(model, tx[:300])
    assert feats.shape == (300, 128) and logits.shape == (300, 10) and feats.dtype == torch.float32
    # the features of the training split have unit RMS
    f_train, _ = embed_images(model, rgb["train"][0])
    assert float(f_train.pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-4)
    loaded, blob = load_classifier_file(path)
    assert blob["input_shape"] == [3, 32, 32] and blob["num_classes"] == 10 and blob["class_names"][3] == "digit 3"
    assert torch.equal(embed_images(loaded, tx[:50])[0], feats[:50])
    with pytest.raises(UserError) as e:  # grayscale digits into the colour classifier
        embed_images(model, np.zeros((4, 28, 28), np.uint8))
    assert "(1, 28, 28)" in _one_line_user_error(e) and "(3, 32, 32)" in str(e.value)
    print(f"RGB 32x32 classifier: test accuracy {acc:.4f}")


@pytest.mark.slow
def test_rgb_scores_order_real_blurred_noise(rgb_classifier, rgb, monkeypatch):
    monkeypatch.setattr(M, "KID_SUBSETS", 20)
    _, path = rgb_classifier
    train_x = rgb["train"][0]
    rng = np.random.default_rng(0)
    sets = {
        "real": train_x[:1000],  # against the 1,000 real test images cached in the file
        "blurred": _blur(train_x[:1000]),
        "noise": rng.integers(0, 256, (1000, *SHAPE), dtype=np.uint8),
    }
    s = {k: evaluate_images(None, v, classifier_path=path, test_split=None) for k, v in sets.items()}
    for k, v in s.items():
        print(f"{k:>8}: FID {v['fid']:.3f} KID {v['kid']:.5f} IS {v['is']:.3f} P {v['precision']:.3f} "
              f"R {v['recall']:.3f} classes {v['classes']} KL {v['class_kl']:.4f}")
    # measured: real 1.01 (train vs test, n = 1,000), blurred 15.7, noise 137
    assert 10 * s["real"]["fid"] < s["blurred"]["fid"] and 5 * s["blurred"]["fid"] < s["noise"]["fid"]
    assert s["real"]["kid"] < s["blurred"]["kid"] < s["noise"]["kid"]
    assert s["real"]["classes"] == 10 and s["real"]["is"] > 8.0 and s["real"]["class_kl"] < 0.05
    assert s["noise"]["recall"] < 0.01
    # evaluate_images takes N x C x H x W (or N x H x W); channels-last arrays are refused in one line
    with pytest.raises(UserError) as e:
        evaluate_images(None, sets["real"].transpose(0, 2, 3, 1), classifier_path=path, test_split=None)
    _one_line_user_error(e)


class LookupRGB(nn.Module):
    """A generator that draws real tinted images (picked by the noise), of a given shape."""

    def __init__(self, images: np.ndarray) -> None:
        super().__init__()
        self.z_dim = 4
        self.register_buffer("images", torch.as_tensor(images).float().div(127.5).sub(1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.images[(z[:, 0].abs() * 1e6).long() % len(self.images)]


@pytest.mark.slow
def test_rgb_generator_one_class_and_shape_check(rgb_classifier, rgb, monkeypatch):
    monkeypatch.setattr(M, "KID_SUBSETS", 5)
    _, path = rgb_classifier
    x, y = rgb["train"]
    ty = rgb["test"][1]
    s = evaluate_generator(None, LookupRGB(x[y == 7]), n=500, seed=0, classifier_path=path, test_split=None)
    assert s["classes"] == 1 and s["is"] < 1.2
    assert s["class_kl"] == pytest.approx(-np.log(np.mean(ty == 7)), rel=0.05)  # against the real class mix
    gen = LookupRGB(np.zeros((3, 3, 28, 28), np.uint8))
    gen.train()
    with pytest.raises(UserError) as e:
        evaluate_generator(None, gen, n=10, seed=0, classifier_path=path, test_split=None)
    msg = _one_line_user_error(e)
    assert "(1, 3, 28, 28)" in msg and "(B, 3, 32, 32)" in msg and gen.training


@pytest.mark.slow
def test_cli_eval_scores_an_rgb_samples_file(rgb_classifier, rgb, tmp_path):
    _, path = rgb_classifier
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=rgb["train"][0][:600].transpose(0, 2, 3, 1))  # N x H x W x 3, as `sample` writes
    out = tmp_path / "scores.json"
    proc = run_cli(["eval", "--samples", str(samples), "--classifier", str(path), "--n", "500", "--json", str(out)],
                   timeout=300)
    scores = json.loads(out.read_text())
    assert scores["n"] == 500 and scores["classes"] == 10 and scores["classifier_input_shape"] == [3, 32, 32]
    assert scores["num_classes"] == 10 and scores["classifier_sha256"] in proc.stdout
    assert "classifier IS" in proc.stdout and "MNIST score" not in proc.stdout and "3x32x32" in proc.stdout
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((10, 28, 28), np.uint8))
    proc = run_cli(["eval", "--samples", str(bad), "--classifier", str(path)], timeout=120, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "(10, 28, 28)" in lines[0] and "(3, 32, 32)" in lines[0]
