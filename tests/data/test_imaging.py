"""distgan.data.imaging: Transform's option checks and manifest entry, channel conversion (Pillow's L and RGB,
alpha dropped, other modes refused in one line), the centre-square LANCZOS resize (no resampling when the
size already fits, antialiased when shrinking), and apply_to_array's shapes; on real MNIST digits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from distgan.data.idx import FILES, load_pair
from distgan.data.imaging import FILTER, Transform, apply_to_array
from distgan.errors import UserError


@pytest.fixture(scope="module")
def digits(mnist_raw) -> np.ndarray:
    """The first 8 real MNIST test digits, uint8 8 x 28 x 28."""
    images, _ = load_pair(mnist_raw / FILES["test_images"], mnist_raw / FILES["test_labels"])
    return images[:8].copy()


@pytest.mark.parametrize("kwargs, message", [
    ({"resolution": 0}, "--resolution 0: must be 1..1024"),
    ({"resolution": 1025}, "--resolution 1025: must be 1..1024"),
    ({"channels": 2}, "--channels 2: must be 1 (grayscale) or 3 (RGB)"),
])
def test_options_are_checked(kwargs, message):
    with pytest.raises(UserError) as exc:
        Transform(**kwargs)
    assert str(exc.value) == message


def test_identity_and_manifest_entry():
    assert Transform().identity and Transform(1024, 3).describe() == {
        "resolution": 1024, "channels": 3, "filter": FILTER, "crop": "center square"}
    assert not Transform(channels=1).identity and Transform(channels=1).describe() == {
        "resolution": None, "channels": 1, "filter": None, "crop": None}


def test_identity_keeps_pixels_in_c_h_w(digits):
    gray = Transform().apply(Image.fromarray(digits[0]), "d.png")
    assert gray.dtype == np.uint8 and gray.shape == (1, 28, 28) and np.array_equal(gray[0], digits[0])
    hwc = np.stack([digits[0], digits[1], digits[2]], axis=-1)
    rgb = Transform().apply(Image.fromarray(hwc), "d.png")
    assert rgb.shape == (3, 28, 28) and rgb.flags.c_contiguous and np.array_equal(rgb, hwc.transpose(2, 0, 1))


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "1", "F", "CMYK"])
def test_other_modes_need_channels(mode):
    with pytest.raises(UserError) as exc:
        Transform(resolution=4).apply(Image.new(mode, (2, 2)), "cats/x.png")
    assert str(exc.value) == f"cats/x.png: image mode {mode} (not grayscale or RGB); pass --channels 1 " \
                             f"or --channels 3 to convert"


def test_channel_conversion(digits):
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    luma = Transform(channels=1).apply(Image.fromarray(colours), "c")
    assert luma.tolist() == [[[76, 150, 29, 18]]]  # ITU-R 601-2: 299 R + 587 G + 114 B (per mille)
    rgb = Transform(channels=3).apply(Image.fromarray(digits[0]), "d")
    assert rgb.shape == (3, 28, 28) and all(np.array_equal(c, digits[0]) for c in rgb)
    rgba = np.stack([digits[0], digits[1], digits[2], digits[3]], axis=-1)
    dropped = Transform(channels=3).apply(Image.fromarray(rgba, "RGBA"), "a")
    assert np.array_equal(dropped, rgba[..., :3].transpose(2, 0, 1))  # alpha dropped, not composited


def test_a_fitting_size_is_not_resampled_and_a_larger_side_is_centre_cropped(digits):
    assert np.array_equal(Transform(28).apply(Image.fromarray(digits[0]), "d")[0], digits[0])
    wide = np.concatenate([digits[0], digits[1][:, :13]], axis=1)  # 28 x 41: offset (41 - 28) // 2 = 6
    assert np.array_equal(Transform(28).apply(Image.fromarray(wide), "d")[0], wide[:, 6:34])
    tall = wide.T.copy()  # 41 x 28
    assert np.array_equal(Transform(28).apply(Image.fromarray(tall), "d")[0], tall[6:34])


def test_shrinking_is_deterministic_and_antialiased(digits):
    small = Transform(14, 1).apply(Image.fromarray(digits[0]), "d")
    assert small.shape == (1, 14, 14) and small.dtype == np.uint8
    assert np.array_equal(small, Transform(14, 1).apply(Image.fromarray(digits[0]), "d"))
    assert not np.array_equal(small[0], digits[0][::2, ::2])  # resampled, not subsampled
    stripes = np.zeros((32, 32), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: a filter without antialiasing would alias them to 0 or 255
    shrunk = Transform(8).apply(Image.fromarray(stripes), "s")
    assert 100 < shrunk.min() <= shrunk.max() < 155
    flat = Transform(5).apply(Image.new("RGB", (17, 11), (200, 7, 99)), "f")
    assert flat.shape == (3, 5, 5) and flat.reshape(3, -1).tolist() == [[200] * 25, [7] * 25, [99] * 25]


def test_apply_to_array(digits):
    gray = digits[:, None]  # N x 1 x H x W
    assert apply_to_array(gray, Transform(), "x") is gray
    out = apply_to_array(gray, Transform(14, 3), "x")
    assert out.shape == (8, 3, 14, 14) and out.dtype == np.uint8
    for image, expected in zip(out, gray, strict=True):
        assert np.array_equal(image, Transform(14, 3).apply(Image.fromarray(expected[0]), "x"))
    colour = np.ascontiguousarray(np.repeat(gray, 3, axis=1))
    assert np.array_equal(apply_to_array(colour, Transform(channels=1), "x"), gray)  # equal R, G, B: the same L
    empty = np.empty((0, 1, 28, 28), np.uint8)
    assert apply_to_array(empty, Transform(channels=3), "x").shape == (0, 3, 28, 28)
    assert apply_to_array(empty, Transform(resolution=5), "x").shape == (0, 1, 5, 5)


def test_16_bit_grayscale_is_scaled_to_8_bits(tmp_path):
    """A 16-bit PNG (Pillow mode I;16) keeps its tones: the top byte of each value, not Pillow's convert("L"),
    which clips everything above 255 and made such images almost all white."""
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as img:
        assert img.mode == "I;16"
        for transform in (Transform(), Transform(channels=1)):
            out = transform.apply(img, "ramp.png")
            assert out.shape == (1, 16, 16) and np.array_equal(out[0], np.arange(256, dtype=np.uint8).reshape(16, 16))
