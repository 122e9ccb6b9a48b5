"""Checkpoints: `accelerator.save_state` plus distgan's own state, sealed by a verifiable marker.

Layout of `RUN_DIR/checkpoints/step_0001000/`:
- accelerate's files: both models, both optimizers, and every process's RNG states;
- `ema_generator.safetensors`: the EMA of G;
- `trainer_state.json`: step, epoch, data position (`start_sample`), best FID, fp16 loss scalers;
- `config.yaml`: the resolved config the run was trained with;
- `COMPLETE`: written last, JSON: `{"format": "distgan-checkpoint/1", "step": N, "files": {RELATIVE_PATH:
  {"size": BYTES, "sha256": HEX}, ...}}` for every other file of the directory.

Saving (power-cut safe): everything is written into `checkpoints/.tmp_<name>`; every file and the directory
are fsynced; the marker is written and fsynced; the directory is renamed to `<name>` and `checkpoints/` is
fsynced. An existing `<name>` (`best`, or a step saved again after a fall-back) is replaced by two renames:
`<name>` -> `.old_<name>`, `.tmp_<name>` -> `<name>`, fsync, then `.old_<name>` is deleted. While (or if a
crash left) `<name>` absent, readers use `.old_<name>` in its place, and the next save renames it back
before it starts, so a checkpoint that existed is never lost. The next save deletes `.tmp_*` leftovers
and `step_*` directories without a marker (an interrupted copy, or a save of the old in-place layout).

Loading verifies every file's size and sha256 against the marker and that every weight is finite; a marker
over MAX_MARKER_BYTES or nested too deep to parse is damage too. `latest_checkpoint` (resume=auto) skips a
damaged checkpoint with a one-line warning; naming a damaged checkpoint explicitly is a one-line UserError.
Resuming also checks trainer_state.json's fields (`parse_train_state`): a file edited and resealed is one
line. A marker of the old format (a bare step number, written
before file lists existed) is accepted with a warning: its files cannot be verified, only checked for
presence and finite weights.

A full disk, a quota, a read-only or unwritable run directory during a save is one `WriteError` line
naming the checkpoint; the temporary directory is removed and earlier checkpoints are left as they were.
Writers that lose the errno (torch's zip writer: `RuntimeError: ... unexpected pos`) are told apart by
checking the disk itself (statvfs, then a small probe write).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import RNG_STATE_NAME
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from distgan.atomic import WriteError, fixable_errno, fsync_path, write_error, write_file_durably
from distgan.errors import UserError
from distgan.hashing import file_sha256

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
MARKER_FORMAT = "distgan-checkpoint/1"
STEP_DIR = re.compile(r"step_([0-9]+)")  # used with fullmatch: no "step_1\n", no non-ASCII digits
EMA_FILE = "ema_generator.safetensors"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
BEST = "best"
TMP_PREFIX = ".tmp_"  # a checkpoint being written (or left by a crash): never read, deleted by the next save
OLD_PREFIX = ".old_"  # a checkpoint being replaced: stands in for its name while that is absent
FULL_MARGIN = 64 << 10  # bytes: less free than this after a failed write is a full disk
MAX_MARKER_BYTES = 4 << 20  # a marker lists a few files per rank: ~150 bytes each; more is not one
MAX_STATE_BYTES = 1 << 20  # trainer_state.json: a few hundred bytes
MAX_COUNT = 2**63 - 1  # a step, epoch or sample count beyond int64 was not written by the trainer

_SAVE_REMEDY = {
    "space": "free space or set run.dir elsewhere (earlier checkpoints are intact)",
    "ro": "remount it read-write or set run.dir elsewhere (earlier checkpoints are intact)",
    "perm": "make the run directory writable for this user or set run.dir elsewhere (earlier checkpoints are intact)",
}


@dataclass
class TrainState:
    """Where training stands: G steps done, epoch, samples of this epoch consumed globally, best FID."""

    step: int = 0
    epoch: int = 0
    start_sample: int = 0
    best_fid: float | None = None


def _count_problem(state: dict[str, Any], name: str) -> str | None:
    value = state.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return f"state.{name} must be an integer from 0 to 2**63-1, got {value!r:.40}"
    return None


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def parse_train_state(data: Any) -> TrainState:
    """The TrainState of a trainer_state.json's data; ValueError naming the field that is not valid (counts:
    integers 0..2**63-1; best_fid: a finite number or null; no unknown fields; a missing one: its default)."""
    state = data.get("state") if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise ValueError("it holds no `state` mapping")
    unknown = sorted(set(state) - set(TrainState.__dataclass_fields__), key=str)
    if unknown:
        raise ValueError(f"state.{unknown[0]!s:.40} is not a field of the training state")
    problem = next(filter(None, (_count_problem(state, n) for n in ("step", "epoch", "start_sample"))), None)
    if problem:
        raise ValueError(problem)
    best = state.get("best_fid")
    if best is not None and not _is_finite_number(best):
        raise ValueError(f"state.best_fid must be a finite number or null, got {best!r:.40}")
    return TrainState(**{**state, "best_fid": None if best is None else float(best)})


def read_capped(path: Path, limit: int) -> bytes | None:
    """The bytes of the file `path`, or None when it holds more than `limit` (no more than that is read)."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return data if len(data) <= limit else None


def checkpoints_dir(run_dir: str | Path) -> Path:
    """RUN_DIR/checkpoints."""
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    """The directory name of the checkpoint at `step`."""
    return f"step_{step:07d}"


def _stand_in(path: Path) -> Path:
    """`path`, or `.old_<name>` beside it while a replacement of `path` is half done (or was cut by a crash)."""
    if not path.exists():
        old = path.parent / f"{OLD_PREFIX}{path.name}"
        if (old / MARKER).is_file():
            return old
    return path


def complete_checkpoints(run_dir: str | Path, warn: bool = True) -> list[tuple[int, Path]]:
    """Step checkpoints that have a marker, oldest first (cheap: files are not verified here).

    Directories without a marker (an interrupted save) are skipped with a warning. A `.old_step_*` left by
    an interrupted replacement stands in for its step while `step_*` itself is absent.
    """
    root = checkpoints_dir(run_dir)
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            name = entry.name
            if name.startswith(OLD_PREFIX):
                name = name[len(OLD_PREFIX):]
                if (root / name).exists():
                    continue  # the replacement finished; the next save deletes this copy
            m = STEP_DIR.fullmatch(name)
            if not m or not entry.is_dir():
                continue
            if (entry / MARKER).is_file():
                found.append((int(m.group(1)), entry))
            elif warn:
                log.warning("ignoring incomplete checkpoint %s (no %s marker)", entry, MARKER)
    return sorted(found)


def _files(directory: Path) -> list[str]:
    """Relative POSIX paths of every file under `directory`, sorted."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def _weights_problem(path: Path, names: list[str]) -> str | None:
    """Why the safetensors files `names` of a checkpoint are unusable (unreadable or non-finite), or None."""
    for rel in names:
        try:
            with safe_open(str(path / rel), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open objects are not iterable)
                    t = f.get_tensor(key)
                    if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
                        return f"{rel} holds non-finite weights (NaN/inf in {key})"
        except Exception as e:  # SafetensorError, OSError: a file that does not parse
            if isinstance(e, FileNotFoundError):
                return f"{rel} is missing"
            return f"{rel} is not a readable safetensors file ({str(e).splitlines()[0][:120]})"
    return None


def checkpoint_problem(path: str | Path, warn: bool = True) -> str | None:
    """Why the checkpoint directory `path` cannot be used (missing, truncated, corrupt or unexpected files,
    a garbled marker, non-finite weights), or None when it is intact.

    Reads every file once to check its sha256 against the marker (about a second for 1 GB); nothing is
    cached, so a file damaged after an earlier check is still caught. Old-format markers (a bare step
    number) cannot be verified: accepted with a warning (if `warn`), after a presence and finite check.
    """
    path = Path(path)
    try:
        data = read_capped(path / MARKER, MAX_MARKER_BYTES)
    except FileNotFoundError:
        return f"it has no {MARKER} marker (an interrupted save)"
    except OSError as e:
        return f"its {MARKER} marker cannot be read ({e.strerror or e})"
    if data is None:
        return f"its {MARKER} marker is over {MAX_MARKER_BYTES >> 20} MiB (a marker is a small JSON file)"
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError):  # not UTF-8 or not JSON; RecursionError: JSON nested 1,000s deep
        return f"its {MARKER} marker is garbled"
    if isinstance(manifest, int) and not isinstance(manifest, bool):
        if warn:
            log.warning("checkpoint %s has an old-format %s marker (no file list): its files cannot be "
                        "verified; accepting it", path, MARKER)
        missing = [n for n in (STATE_FILE, CONFIG_FILE, EMA_FILE) if not (path / n).is_file()]
        if missing:
            return f"{missing[0]} is missing"
        return _weights_problem(path, [n for n in _files(path) if n.endswith(".safetensors")])
    try:
        if manifest["format"] != MARKER_FORMAT:
            return f"its {MARKER} marker has an unknown format {manifest['format']!r}"
        files = {str(rel): (int(meta["size"]), str(meta["sha256"])) for rel, meta in manifest["files"].items()}
    except (TypeError, KeyError, ValueError, AttributeError, OverflowError):  # OverflowError: a size of 1e400
        return f"its {MARKER} marker is garbled"
    for rel, (size, digest) in sorted(files.items()):
        if Path(rel).is_absolute() or ".." in Path(rel).parts or rel == MARKER:
            return f"its {MARKER} marker is garbled (file {rel!r})"
        try:
            actual = (path / rel).stat().st_size
        except FileNotFoundError:
            return f"{rel} is missing"
        except OSError as e:
            return f"{rel} cannot be read ({e.strerror})"
        if actual != size:
            return f"{rel} is {actual} bytes, {size} were saved (truncated or overwritten)"
        try:
            if file_sha256(path / rel) != digest:
                return f"{rel} is corrupt (its sha256 differs from the one recorded when it was saved)"
        except OSError as e:
            return f"{rel} cannot be read ({e.strerror})"
    unexpected = [rel for rel in _files(path) if rel not in files and rel != MARKER]
    if unexpected:
        return f"{unexpected[0]} was not part of the saved checkpoint"
    return _weights_problem(path, [rel for rel in files if rel.endswith(".safetensors")])


def latest_checkpoint(run_dir: str | Path, warn: bool = True) -> Path | None:
    """The newest intact checkpoint of a run, or None; damaged ones are skipped with a one-line warning."""
    for _, path in reversed(complete_checkpoints(run_dir, warn)):
        problem = checkpoint_problem(path, warn)
        if problem is None:
            return path
        if warn:
            log.warning("skipping damaged checkpoint %s: %s", path, problem)
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory (verified), or a run directory (then its newest intact checkpoint)."""
    path = _stand_in(Path(path))
    if (path / MARKER).is_file():
        problem = checkpoint_problem(path)
        if problem is not None:
            raise UserError(f"checkpoint {path} is damaged: {problem}; use an earlier checkpoint, or the run "
                            "directory to pick its newest intact one")
        return path
    if path.is_dir() and (path / STATE_FILE).is_file():
        raise UserError(f"checkpoint {path} is incomplete (no {MARKER} marker); use an earlier one")
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise UserError(f"{path} is neither an intact checkpoint nor a run directory with one "
                        "(expected RUN_DIR/checkpoints/step_*/COMPLETE)")
    return latest


def _first_error(accelerator: Any, error: tuple[str, int] | None) -> tuple[str, int] | None:
    """Collective: the first rank's error, if any rank has one (so that all ranks stop together)."""
    if int(getattr(accelerator, "num_processes", 1)) <= 1:
        return error
    from accelerate.utils import gather_object

    return next((e for e in gather_object([error]) if e is not None), None)


def _full_disk_errno(directory: Path, margin: int = FULL_MARGIN) -> int | None:
    """ENOSPC or EDQUOT if the file system of `directory` is (nearly) out of space for us, else None.

    Less than `margin` bytes free (statvfs) is full; otherwise a `margin`-byte probe file is written and
    fsynced (which also meets a quota, invisible to statvfs), then deleted.
    """
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    if st.f_bavail * st.f_frsize < margin:
        return errno.ENOSPC
    probe = directory / f"{TMP_PREFIX}space_probe_{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * margin)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e.errno if e.errno in (errno.ENOSPC, errno.EDQUOT) else None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def _write_failure_errno(e: Exception, directory: Path) -> int | None:
    """The errno of a user-fixable write failure `e`, including writers that lose the errno (torch's zip
    writer raises `RuntimeError: ... unexpected pos` on a full disk): then the disk itself is checked."""
    code = fixable_errno(e)
    if code is None and (isinstance(e, RuntimeError | SafetensorError) or
                         (isinstance(e, OSError) and e.errno is None)):
        code = _full_disk_errno(directory)
    return code


def _save_error(final: Path, fn: Callable[[], Any]) -> tuple[str, int] | None:
    """Run `fn`; a user-fixable write failure becomes (one-line message, errno), anything else propagates."""
    try:
        fn()
    except Exception as e:
        code = _write_failure_errno(e, final.parent)
        if code is None:
            raise
        kind = {errno.ENOSPC: "space", errno.EDQUOT: "space", errno.EROFS: "ro"}.get(code, "perm")
        return str(write_error(f"save checkpoint {final}", code, _SAVE_REMEDY[kind])), code
    return None


def _remove(entry: Path) -> None:
    """Delete a leftover file or directory tree, ignoring errors (the next save tries again)."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            entry.unlink()


def _clean_leftovers(root: Path) -> None:
    """Before a save: put back a checkpoint whose replacement a crash cut short, delete temporary copies.

    A `step_*` directory without its marker is deleted too: saves write into `.tmp_*` and rename it sealed,
    so one can only be left by an interrupted copy or a save of an older layout, never be in progress.
    """
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(OLD_PREFIX):
            final = root / entry.name[len(OLD_PREFIX):]
            if final.exists():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                log.warning("restoring %s from %s (a replacement was interrupted)", final, entry.name)
                os.rename(entry, final)
                fsync_path(root)
        elif entry.name.startswith(TMP_PREFIX):
            _remove(entry)
        elif STEP_DIR.fullmatch(entry.name) and entry.is_dir() and not (entry / MARKER).exists():
            log.warning("removing incomplete checkpoint %s (no %s marker: an interrupted save or copy)",
                        entry, MARKER)
            shutil.rmtree(entry, ignore_errors=True)


def rng_state_file(process_index: int) -> str:
    """The file in which `accelerator.save_state` keeps the RNG states of rank `process_index`."""
    return f"{RNG_STATE_NAME}_{process_index}.pkl"


def _fsync_tree(directory: Path) -> None:
    """fsync every file under `directory` and every directory in it, deepest first."""
    dirs = [directory]
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            fsync_path(p)
        elif p.is_dir():
            dirs.append(p)
    for d in reversed(dirs):
        fsync_path(d)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the sealed `tmp` to `final` durably; an existing `final` is moved aside, never deleted first."""
    root = final.parent
    if not final.exists():
        os.rename(tmp, final)
        fsync_path(root)
        return
    old = root / f"{OLD_PREFIX}{final.name}"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(final, old)  # readers use `old` in place of `final` until the next rename
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    fsync_path(root)  # both renames on disk before the old copy goes
    shutil.rmtree(old, ignore_errors=True)


def _seal(tmp: Path, *, state: TrainState, ema: Any, precision: Any, config_yaml: str, world_size: int) -> None:
    """Main process: add distgan's files to `tmp`, fsync everything, then write and fsync the marker."""
    save_file({k: v.detach().contiguous().cpu() for k, v in ema.state_dict().items()}, str(tmp / EMA_FILE))
    fsync_path(tmp / EMA_FILE)
    extra = {"state": asdict(state), "scalers": precision.state_dict(), "world_size": world_size}
    write_file_durably(tmp / STATE_FILE, (json.dumps(extra, indent=2, sort_keys=True) + "\n").encode())
    write_file_durably(tmp / CONFIG_FILE, config_yaml.encode())
    _fsync_tree(tmp)  # the main process's own files (every rank has fsynced its RNG state already)
    files = {rel: {"size": (tmp / rel).stat().st_size, "sha256": file_sha256(tmp / rel)} for rel in _files(tmp)}
    marker = {"format": MARKER_FORMAT, "step": state.step, "files": files}
    write_file_durably(tmp / MARKER, (json.dumps(marker, indent=1, sort_keys=True) + "\n").encode())
    fsync_path(tmp)


def save_checkpoint(accelerator: Any, run_dir: Path, *, state: TrainState, ema: Any, precision: Any,
                    config_yaml: str, keep: int, name: str | None = None) -> Path:
    """Collective: every rank calls it. Save everything for an exact resume into `checkpoints/<name>`.

    A full disk, a quota, a read-only or unwritable directory raises `WriteError` on every rank (one line,
    naming the checkpoint); the temporary directory is removed and earlier checkpoints stay intact.
    """
    root = checkpoints_dir(run_dir)
    name = name or step_dir_name(state.step)
    final, tmp = root / name, root / f"{TMP_PREFIX}{name}"
    main = accelerator.is_main_process
    try:
        error = None
        if main:
            def start() -> None:
                root.mkdir(parents=True, exist_ok=True)
                _clean_leftovers(root)
                tmp.mkdir()
            error = _save_error(final, start)
        error = _first_error(accelerator, error)
        if error is None:
            def write_state() -> None:  # models and optimizers from the main process, RNG from every rank
                accelerator.save_state(str(tmp))
                # Each rank makes durable only what it wrote: its RNG state file. Walking the directory here
                # raced with the main process's files still being written under temporary names (a crash of
                # a real SLURM job), and every rank walking it is slow on NFS/Lustre. The main process
                # fsyncs its own files in `_seal`, after every rank has finished (the collective below).
                fsync_path(tmp / rng_state_file(accelerator.process_index))
            error = _first_error(accelerator, _save_error(final, write_state))
        if error is None and main:
            def seal_and_publish() -> None:
                _seal(tmp, state=state, ema=ema, precision=precision, config_yaml=config_yaml,
                      world_size=accelerator.num_processes)
                _publish(tmp, final)
            error = _save_error(final, seal_and_publish)
        error = _first_error(accelerator, error)  # no rank goes on training after a failed save
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if error is not None:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(*error)
    if main and name != BEST:
        prune_checkpoints(run_dir, keep, protect=final)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(run_dir: Path, keep: int, protect: Path | None = None) -> None:
    """Delete all but the newest `keep` step checkpoints with a marker (never `best`, never `protect`)."""
    for _, path in complete_checkpoints(run_dir, warn=False)[:-keep]:
        if path != protect:
            shutil.rmtree(path, ignore_errors=True)


def read_train_state(path: Path) -> tuple[dict[str, Any], TrainState]:
    """A checkpoint's trainer_state.json: its data and its checked TrainState; a one-line UserError naming the
    checkpoint and the field otherwise (a marker resealed over a hand-edited file is no guarantee)."""
    file = Path(path) / STATE_FILE
    try:
        data = read_capped(file, MAX_STATE_BYTES)
        if data is None:
            raise ValueError(f"it is over {MAX_STATE_BYTES >> 20} MiB")
        extra = json.loads(data)
        return extra, parse_train_state(extra)
    except (OSError, ValueError, RecursionError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        if isinstance(e, json.JSONDecodeError | UnicodeDecodeError | RecursionError):
            reason = "it is not valid JSON"
        raise UserError(f"cannot resume from checkpoint {path}: {STATE_FILE}: {reason}; use an earlier checkpoint") \
            from None


def load_checkpoint(accelerator: Any, path: Path, *, ema: Any, precision: Any) -> TrainState:
    """Collective: verify the checkpoint, restore models, optimizers, RNG states, EMA and scalers; return
    the training state. A damaged checkpoint (or non-finite weights) is a one-line UserError on every rank."""
    path = Path(path)
    # Verify before anything is read: accelerate's load_state unpickles the optimizer and RNG files with
    # torch.load(weights_only=False), which would run whatever a corrupted or swapped file contains. Only
    # files whose size and sha256 match those recorded at save time reach it (this guards against damage
    # and accidental substitution; someone able to rewrite COMPLETE as well could defeat it).
    problem = checkpoint_problem(path, warn=accelerator.is_main_process)
    error = _first_error(accelerator, (problem, 0) if problem else None)
    if error is not None:
        raise UserError(f"cannot resume from checkpoint {path}: {error[0]}; use an earlier checkpoint")
    extra, state = read_train_state(path)  # before anything is restored
    try:
        accelerator.load_state(str(path))
        ema.load_state_dict(load_file(str(path / EMA_FILE)))  # copied onto the EMA's device
        precision.load_state_dict(extra.get("scalers", {}))
        return state
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError,
            SafetensorError) as e:
        # Reachable with an old-format (unverifiable) marker, or a checkpoint changed after verification.
        detail = (str(e).splitlines() or [""])[0][:160]
        raise UserError(f"cannot load checkpoint {path}: {type(e).__name__}: {detail}; "
                        "use an earlier checkpoint") from e


