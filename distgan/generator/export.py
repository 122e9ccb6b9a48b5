"""Exported generators: a self-contained folder with the EMA G of a checkpoint, loadable without the run.

Layout of an export folder (`distgan export --checkpoint RUN_OR_CKPT --out DIR`):
- `model.safetensors`: the EMA generator's state_dict;
- `config.json`: `{"format": "distgan-generator/1", "arch", "z_dim", "image_shape": [C, H, W],
  "conditional": true and "num_classes": K (conditional generators only), "model": {the model config},
  "step", "weights_sha256", "scores", "classifier_sha256", "data_manifest_sha256", "source", "onnx"}`;
- `training_config.yaml`: the resolved config the run was trained with;
- `samples.png`: an 8x8 grid of samples (noise seed 0); for a conditional generator, one row of 8 per class;
- `README.md`: a model card (front matter for the Hugging Face Hub, samples, usage, scores, hashes, config);
- `generator.onnx` (with `--onnx`): input `z` (B, z_dim) float32 (and, for a conditional generator, `labels`
  (B,) int64 in 0..K-1), output `images` (B, C, H, W) in [-1, 1].

A conditional generator's weights include its training class frequencies (`inputs.class_freqs`).

The folder is written under a temporary name beside DIR (`.DIR.tmp-<pid>@<host>`) and renamed into place,
so DIR is either the complete previous export or the complete new one; a temporary folder left by an export
killed on this host is deleted by the next export into the same parent.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import re
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image

from distgan.atomic import fsync_path, write_file_durably
from distgan.config import Config, config_from_dict, dump_config, load_yaml_text
from distgan.errors import UserError
from distgan.generator.architectures import build_generator
from distgan.generator.grids import fixed_grid
from distgan.generator.sampling import class_freqs_of, cycle_labels, fixed_noise, is_clustered, num_classes_of
from distgan.hashing import file_sha256

FORMAT = "distgan-generator/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_JSON = "config.json"
TRAINING_CONFIG = "training_config.yaml"
SAMPLES_PNG = "samples.png"
CARD = "README.md"
ONNX_FILE = "generator.onnx"
EXPORT_EXTRA_HINT = 'pip install "distgan[export]"'
EXPORT_FILES = frozenset({WEIGHTS_FILE, CONFIG_JSON, TRAINING_CONFIG, SAMPLES_PNG, CARD, ONNX_FILE})
_TMP_FOLDER = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(?:@(?P<host>[^@/]+))?$")  # see _write_folder

log = logging.getLogger(__name__)


def is_export_dir(path: str | Path) -> bool:
    """True when `path` is a folder written by `export_generator` (it has config.json of our format)."""
    path = Path(path)
    try:
        return json.loads((path / CONFIG_JSON).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_export_config(path: str | Path) -> dict[str, Any]:
    """The `config.json` of an export folder; UserError (one line) when it is missing or not ours."""
    file = Path(path) / CONFIG_JSON
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is not an exported generator (no {CONFIG_JSON})") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {file}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{file} is not a distgan export (format {FORMAT!r} expected)")
    return meta


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """The generator (eval mode) and config of an export folder; weights checked against config.json."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_export_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{weights} is missing; export the checkpoint again")
    if meta.get("weights_sha256") and file_sha256(weights) != meta["weights_sha256"]:
        raise UserError(f"{weights} is corrupt (its sha256 differs from {CONFIG_JSON}); export it again")
    try:
        data = load_yaml_text((path / TRAINING_CONFIG).read_text(), str(path / TRAINING_CONFIG)) \
            if (path / TRAINING_CONFIG).is_file() \
            else {"model": meta["model"]}
        cfg = config_from_dict(data, source=str(path))
        shape = [int(v) for v in meta["image_shape"]]
        if hasattr(cfg.model, "image_shape"):
            cfg.model.image_shape = shape
        g = build_generator(cfg.model, tuple(shape))
        g.load_state_dict(load_file(str(weights)))
    except (KeyError, TypeError, ValueError, RuntimeError, yaml.YAMLError) as e:
        raise UserError(f"cannot load the exported generator {path}: {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]}") from None
    return g.to(device).eval(), cfg


# -- what goes into an export --------------------------------------------------------------------------------


def generator_image_shape(generator: torch.nn.Module) -> tuple[int, int, int]:
    """(C, H, W) of a generator's images (every distgan generator has `image_shape`)."""
    return tuple(int(v) for v in generator.image_shape)


def sample_grid(generator: torch.nn.Module, grid_size: int = 8, seed: int = 0) -> Image.Image:
    """A grid_size x grid_size grid of samples of `generator` (noise from `seed`), grayscale or RGB; for a
    conditional generator, one row of grid_size samples per class."""
    grid = fixed_grid(generator, grid_size, seed)
    return Image.fromarray(grid, mode="L" if grid.ndim == 2 else "RGB")


def manifest_sha256(data_dir: str | Path) -> str | None:
    """sha256 of the data's `manifest.json` (which lists every shard's sha256), or None if it is not here."""
    path = Path(data_dir) / "manifest.json"
    return file_sha256(path) if path.is_file() else None


def onnx_inputs(generator: torch.nn.Module, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Example inputs of the ONNX graph by name: `z` (batch, z_dim) and, for a conditional G, `labels` (batch,)."""
    inputs = {"z": fixed_noise(batch, int(generator.z_dim), seed)}
    if num_classes_of(generator):
        inputs["labels"] = cycle_labels(batch, num_classes_of(generator))
    return inputs


def export_onnx(generator: torch.nn.Module, path: Path) -> None:
    """Write `generator` as ONNX (input `z`, and `labels` for a conditional G, with a dynamic batch; output
    `images`) to `path`, one file."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"--onnx needs the export extra ({e.name} is not installed): {EXPORT_EXTRA_HINT}") from None
    g = generator.cpu().eval()
    inputs = onnx_inputs(g, 2)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    # The exporter prints its progress, warns about torch internals and logs "torchvision is not installed.
    # Skipping torchvision::nms": keep the CLI's output to its own lines.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(g, tuple(inputs.values()), str(path), input_names=list(inputs),
                              output_names=["images"], dynamo=True,
                              dynamic_shapes=tuple({0: batch} for _ in inputs), external_data=False, verbose=False)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; one line names it
        raise UserError(f"ONNX export of the generator failed: {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:200]}") from None
    finally:
        quiet.setLevel(level)


def _scores_table(scores: dict[str, Any]) -> str:
    rows = [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(scores.items())]
    return "| score | value |\n| --- | ---: |\n" + "\n".join(rows)


def model_card(meta: dict[str, Any], config_yaml: str) -> str:
    """The README.md of an export folder: Hub front matter, samples, usage, scores with hashes, config."""
    c, h, w = meta["image_shape"]
    scores = meta.get("scores") or {}
    k = meta.get("num_classes")
    lines = [
        "---", "library_name: pytorch", "tags:", "- gan", "- distgan", "- image-generation", "---", "",
        f"# distgan {meta['arch']} generator ({c}x{h}x{w})", "",
        f"The EMA generator of a distgan run after {meta.get('step', '?')} steps: `z` ({meta['z_dim']} "
        f"standard normal values) to images of {c} channel(s), {h}x{w} pixels, in [-1, 1]."
        + (f" Conditional on {k} classes: it also takes labels `y` (B,), integers 0..{k - 1}." if k else "")
        + (" Its classes are clusters of its training images (a self-conditioned GAN, trained without labels); "
           "`config.json` has their frequencies (`class_freqs`)." if meta.get("clusters") else ""), "",
        f"![samples]({SAMPLES_PNG})" + (" (one row per class)" if k else ""), "",
        "## Use", "", "```python",
        "from distgan import load_generator, sample_images", "",
        'g, cfg = load_generator("THIS_FOLDER")   # also: distgan sample --checkpoint THIS_FOLDER ...',
    ]
    if k:
        lines += ["images = sample_images(g, 16, seed=0, labels=[3] * 16)  # uint8, 16 of class 3",
                  f"# without labels: every class in turn; in PyTorch: g(z, y), y a LongTensor (B,) in 0..{k - 1}",
                  "```", "",
                  "From the command line: `distgan sample --checkpoint THIS_FOLDER --labels 3` (or `all`, or "
                  "`0,2,5`); the npz has `images` and `labels`.", ""]
    else:
        lines += ["images = sample_images(g, 16, seed=0)    # uint8", "```", ""]
    if meta.get("onnx") and k:
        lines += ["With ONNX Runtime only: `onnxruntime.InferenceSession(\"generator.onnx\").run(None, "
                  f"{{\"z\": z, \"labels\": y}})[0]` (z: float32, B x z_dim; y: int64, B, in 0..{k - 1}).", ""]
    elif meta.get("onnx"):
        lines += ["With ONNX Runtime only: `onnxruntime.InferenceSession(\"generator.onnx\").run(None, "
                  "{\"z\": z})[0]` (z: float32, B x z_dim).", ""]
    lines += ["## Scores", ""]
    if scores:
        lines += [f"Against the real test split, n = {scores.get('n', '?')}; scores from different "
                  "classifiers are not comparable.", "", _scores_table(scores), ""]
    else:
        lines += ["No scores were recorded for this checkpoint (score it with `distgan eval --checkpoint "
                  "THIS_FOLDER --shards DATA`).", ""]
    lines += [f"- evaluation classifier sha256: `{meta.get('classifier_sha256') or 'unknown'}`",
              f"- data manifest sha256: `{meta.get('data_manifest_sha256') or 'unknown'}`",
              f"- weights (`{WEIGHTS_FILE}`) sha256: `{meta['weights_sha256']}`",
              f"- exported from: `{meta.get('source', '?')}`", "",
              "## Training config", "", "```yaml", config_yaml.rstrip("\n"), "```", ""]
    return "\n".join(lines)


def _pid_alive(pid: int) -> bool:
    """True if a process `pid` exists on this host (or the pid is not a plain positive one)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _remove_dead_temporaries(parent: Path) -> None:
    """Delete the temporary folders (`.<name>.tmp-<pid>[@<host>]`) that interrupted exports on this host left
    in `parent`: only when that process is gone and the folder holds nothing but files of an export."""
    host = socket.gethostname()
    try:
        entries = list(parent.iterdir())
    except OSError:
        return  # an unlistable parent: nothing to tidy, the export itself reports what is wrong
    for entry in entries:
        m = _TMP_FOLDER.match(entry.name)
        if not m or m.group("host") not in (None, host) or entry.is_symlink() or not entry.is_dir():
            continue
        if _pid_alive(int(m.group("pid"))):
            continue
        if all(p.name in EXPORT_FILES and p.is_file() and not p.is_symlink() for p in entry.iterdir()):
            log.warning("removing %s, left by an interrupted export (pid %s)", entry, m.group("pid"))
            shutil.rmtree(entry, ignore_errors=True)


def _write_folder(final: Path, write: Any) -> None:
    """Fill a temporary folder beside `final` with `write(tmp)`, fsync it, then rename it onto `final`.
    Temporary folders of earlier exports into the same parent whose process died are deleted first."""
    final = final.absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(final.parent)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}@{socket.gethostname()}"
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        mask = os.umask(0)
        os.umask(mask)
        for p in tmp.iterdir():
            os.chmod(p, 0o666 & ~mask)  # safetensors and mkstemp-style writers leave 0600
            fsync_path(p)
        fsync_path(tmp)
        if final.exists():
            check_out_dir(final)  # again: files added since the export started are not swept away with it
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_out_dir(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier export (a typo must not delete someone's files), or
    an earlier export that also holds files an export does not write (the whole folder is replaced)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_export_dir(out))):
        raise UserError(f"--out {out} exists and is not a distgan export; choose a new or empty folder")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir()
                        if p.name not in EXPORT_FILES or p.is_symlink() or not p.is_file())
        if others:
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise UserError(f"--out {out} is an earlier export but also holds files an export does not write "
                            f"({shown}); a new export replaces the whole folder: choose another folder, or move "
                            f"them out first")


def check_finite(generator: torch.nn.Module, what: str) -> None:
    """UserError (one line) when any floating-point weight or buffer of `generator` is NaN or infinite."""
    for name, t in generator.state_dict().items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UserError(f"{what} has non-finite weights ({bad:,} of the {t.numel():,} values of {name} are "
                            f"NaN/inf); not exporting it: export an earlier checkpoint")


def write_export(out: str | Path, generator: torch.nn.Module, cfg: Config, *, step: int | None,
                 scores: dict[str, Any] | None = None, classifier_sha256: str | None = None,
                 data_manifest_sha256: str | None = None, source: str = "", onnx: bool = False,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write an export folder for `generator` (its weights, shape and config); returns config.json's dict."""
    from safetensors.torch import save_file

    out = Path(out)
    check_out_dir(out)
    generator = copy.deepcopy(generator).cpu().eval()  # the caller's module (the trainer's EMA) stays as it is
    check_finite(generator, f"the generator of {source}" if source else "the generator")
    shape = generator_image_shape(generator)
    config_yaml = dump_config(cfg)
    meta: dict[str, Any] = {
        "format": FORMAT, "arch": cfg.model.arch, "z_dim": int(generator.z_dim), "image_shape": list(shape),
        "model": cfg.model.to_dict(), "step": step,
        "scores": dict(scores or {}), "classifier_sha256": classifier_sha256 or (scores or {}).get("classifier_sha256"),
        "data_manifest_sha256": data_manifest_sha256, "source": source, "onnx": ONNX_FILE if onnx else None,
        **(extra or {}),
    }
    meta["scores"].pop("classifier_sha256", None)
    if "image_shape" in meta["model"]:  # the config field, where the config has it
        meta["model"]["image_shape"] = list(shape)
    num_classes = getattr(generator, "num_classes", None)
    if num_classes:
        meta["conditional"], meta["num_classes"] = True, int(num_classes)
    if is_clustered(generator):  # a self-conditioned G: its classes are clusters, drawn in these frequencies
        meta["clusters"] = True
        meta["class_freqs"] = [float(f) for f in class_freqs_of(generator)]

    def write(tmp: Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in generator.state_dict().items()},
                  str(tmp / WEIGHTS_FILE))
        meta["weights_sha256"] = file_sha256(tmp / WEIGHTS_FILE)
        write_file_durably(tmp / TRAINING_CONFIG, config_yaml.encode())
        buf = io.BytesIO()
        sample_grid(generator).save(buf, format="PNG")
        write_file_durably(tmp / SAMPLES_PNG, buf.getvalue())
        if onnx:
            export_onnx(generator, tmp / ONNX_FILE)
        write_file_durably(tmp / CONFIG_JSON, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        write_file_durably(tmp / CARD, model_card(meta, config_yaml).encode())

    _write_folder(out, write)
    return meta


def push_to_hub(folder: str | Path, repo: str, *, private: bool = False) -> str:
    """Upload an export folder to the Hugging Face Hub model repo `repo`; returns its URL.

    Offline, without a login, or on any Hub error: one UserError line that says the folder is complete.
    """
    folder = Path(folder)
    later = f"the folder {folder} is complete; upload it later with `hf upload {repo} {folder}`"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise UserError(f"cannot push to the Hub: HF_HUB_OFFLINE is set (offline mode); {later}")
    try:
        from huggingface_hub import HfApi, get_token
    except ImportError:
        raise UserError(f"--push-to-hub needs huggingface_hub (pip install huggingface_hub); {later}") from None
    if not get_token():
        raise UserError(f"cannot push to the Hub: not logged in (run `hf auth login` or set HF_TOKEN); {later}")
    api = HfApi()
    try:
        url = api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          commit_message="distgan export")
    except Exception as e:  # noqa: BLE001 - network, auth, HTTP and validation errors all become one line
        detail = " ".join(str(e).split())[:200]
        raise UserError(f"cannot push to the Hub repo {repo}: {type(e).__name__}: {detail}; {later}") from None
    return str(url)


__all__ = ["FORMAT", "export_onnx", "is_export_dir", "load_exported", "model_card",
           "push_to_hub", "read_export_config", "write_export"]
