"""Weights & Biases through accelerate's wandb tracker: mode choice, a run id kept in the run directory,
and images logged as uint8 (a float tensor in [0, 1] comes out black in wandb 0.31)."""

from __future__ import annotations

import io
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from distgan.atomic import write_bytes_atomic, write_text_atomic

RUN_ID_FILE = "wandb_run_id"


def wandb_logged_in() -> bool:
    """True when an API key is configured (environment or ~/.netrc), i.e. online logging can work."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(config_mode: str) -> str:
    """The W&B mode: the config's, unless it is `auto`; then WANDB_MODE, else online iff logged in."""
    if config_mode != "auto":
        return config_mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if wandb_logged_in() else "offline"


def run_id(run_dir: Path) -> str:
    """The run's W&B id, created once and kept in RUN_DIR/wandb_run_id so a resume continues the same run."""
    path = run_dir / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    new_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    write_text_atomic(path, new_id + "\n")
    return new_id


def start_tracking(accelerator: Any, *, mode: str, project: str, entity: str | None, name: str | None,
                   run_dir: Path, config: dict[str, Any]) -> None:
    """Start the wandb tracker on the main process (accelerate's trackers log from the main process only)."""
    if mode == "disabled" or not accelerator.is_main_process:
        return
    init = {"id": run_id(run_dir), "resume": "allow", "dir": str(run_dir), "mode": mode,
            "name": name or run_dir.name, "entity": entity}
    accelerator.init_trackers(project, config=config, init_kwargs={"wandb": init})


def grid_image(images: np.ndarray, nrow: int, pad: int = 2) -> np.ndarray:
    """Tile uint8 images (N, H, W) into one uint8 (rows*H, nrow*W) grid with `pad` black pixels between."""
    n, h, w = images.shape
    rows = -(-n // nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return grid


def save_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 grayscale image as PNG atomically."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def wandb_image(image: np.ndarray, caption: str) -> Any:
    """A wandb.Image from a uint8 array (never a float tensor: those render black in wandb 0.31)."""
    import wandb

    assert image.dtype == np.uint8
    return wandb.Image(image, caption=caption)
