"""One image -> one uint8 C x H x W array, the same way for every source: optional channel conversion
(`--channels`), optional square resize (`--resolution`), else a check that it matches the others.

Resize: the central square (side = the shorter side, offsets rounded down) is resized to R x R with
Pillow's LANCZOS filter, which is antialiased (its kernel widens with the reduction factor). That is
"resize the shorter side to R, then center-crop", done in one resampling step. An image that already is
R x R is not resampled. Channels: Pillow's convert() to "L" (ITU-R 601-2 luma) or "RGB" (alpha and
palettes dropped). The manifest records all of it (`transform`), since FID depends on the filter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from distgan.data.shards import CHANNELS, MAX_SIDE
from distgan.errors import UserError

FILTER = "PIL.Image.LANCZOS"
_MODE_CHANNELS = {"L": 1, "RGB": 3}


@dataclass(frozen=True)
class Transform:
    """What `prepare` does to every image: None leaves that property as the source has it."""

    resolution: int | None = None
    channels: int | None = None

    def __post_init__(self) -> None:
        if self.resolution is not None and not 1 <= self.resolution <= MAX_SIDE:
            raise UserError(f"--resolution {self.resolution}: must be 1..{MAX_SIDE}")
        if self.channels is not None and self.channels not in CHANNELS:
            raise UserError(f"--channels {self.channels}: must be 1 (grayscale) or 3 (RGB)")

    @property
    def identity(self) -> bool:
        return self.resolution is None and self.channels is None

    def describe(self) -> dict[str, object]:
        """The manifest's `transform` entry."""
        return {"resolution": self.resolution, "channels": self.channels,
                "filter": FILTER if self.resolution is not None else None,
                "crop": "center square" if self.resolution is not None else None}

    def apply(self, img: Image.Image, where: str) -> np.ndarray:
        """`img` as uint8 (C, H, W) after this transform; a one-line UserError naming `where` for a
        mode that needs --channels."""
        img = _eight_bit(img)
        if self.channels is not None:
            want = "L" if self.channels == 1 else "RGB"
            if img.mode != want:
                img = img.convert(want)
        elif img.mode not in _MODE_CHANNELS:
            raise UserError(f"{where}: image mode {img.mode} (not grayscale or RGB); pass --channels 1 "
                            f"or --channels 3 to convert")
        if self.resolution is not None:
            r = self.resolution
            w, h = img.size
            if (w, h) != (r, r):
                s = min(w, h)
                left, top = (w - s) // 2, (h - s) // 2
                img = img.resize((r, r), Image.Resampling.LANCZOS, box=(left, top, left + s, top + s))
        arr = np.asarray(img, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grayscale (PNG, TIFF), as Pillow opens it


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit grayscale scaled to 8 bits (the top byte): Pillow's convert("L") clips every value above 255
    instead, which turns a 16-bit image almost all white."""
    if img.mode not in _WIDE_GRAY:
        return img
    arr = np.asarray(img).astype(np.int64)
    return Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8), mode="L")


def apply_to_array(images: np.ndarray, transform: Transform, where: str) -> np.ndarray:
    """Transform uint8 (N, C, H, W) images (C 1 or 3) one by one; returned unchanged if `transform` is
    the identity."""
    if transform.identity:
        return images
    if not len(images):
        c = transform.channels or images.shape[1]
        r = transform.resolution
        return np.empty((0, c, r or images.shape[2], r or images.shape[3]), np.uint8)
    gray = images.shape[1] == 1  # fromarray: 2-D uint8 -> mode L, H x W x 3 uint8 -> mode RGB
    out = [transform.apply(Image.fromarray(img[0] if gray else np.ascontiguousarray(img.transpose(1, 2, 0))),
                           where) for img in images]
    return np.stack(out)


__all__ = ["FILTER", "Transform", "apply_to_array"]
