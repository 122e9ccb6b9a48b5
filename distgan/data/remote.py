"""Shards from a URL: a local, verified, on-demand cache of a `distgan prepare` output served remotely.

`open_dataset(location, cache_dir)` takes what `data.dir` (or a `--shards` option) holds. A local path
comes back unchanged. A URL (`http://`, `https://`, `file://`, `pipe:`, `s3://`, `gs://`...) names the
*root* of a prepare output: its manifest.json is fetched and validated, and a cache directory laid out
exactly like a prepare output comes back:

    CACHE/remote.json           where the shards come from: {"format", "version", "url", "manifest_sha256"}
    CACHE/manifest.json         the served manifest, byte for byte (its sha256 names the default CACHE)
    CACHE/train/, CACHE/test/   empty at first; each shard appears when a process first needs it
    CACHE/.locks/<shard>.lock   one flock per shard: one download per shard per node

CACHE is `cache_dir` if given, else `$XDG_CACHE_HOME/distgan/<manifest sha256>` (`~/.cache/...`); a
cache directory holds one dataset, and the loader only ever reads verified files from it.
`shard_path(split_dir, name)` is the loader's one hook: for a prepare output it is `split_dir / name`;
for a cache it calls `ensure_shard`, which returns the shard once its sha256 matches the manifest,
downloading it first (temporary file, sha256, rename) under the shard's lock if it is absent or corrupt.
A file already verified in this process is re-checked by size (plus mtime and inode) only.

Standard webdataset shards (a format-version-4 manifest, distgan.data.standard) go through the same cache:
each shard entry's `url` says where it is (relative ones under the manifest's URL or directory). A local
manifest (data.dir = its directory, or the manifest.json itself) whose shards are URLs gets a cache too,
its remote.json naming the manifest's directory; shards that are local files are read in place (verified
by sha256, never copied).

Transport is webdataset's `gopen` (file://, pipe:, sftp:...) and fsspec (s3://, gs://, ...). For
http(s) we run curl through gopen's `Pipe` as `gopen` does, but with a bounded time: gopen's own curl
has `--retry 30` and no stall limit, so a server that accepts and never answers hangs it forever and a
500 takes minutes to surface. Every download is retried with exponential back-off inside a total time
limit, then fails with one line naming the URL (see FetchPolicy for the knobs and their environment
variables).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from distgan.atomic import atomic_path, write_bytes_atomic, write_json_atomic
from distgan.data.shards import (
    MANIFEST,
    MAX_KEY_BYTES,
    MAX_MANIFEST_BYTES,
    SPLITS,
    Layout,
    is_standard,
    is_url,
    load_manifest_json,
    manifest_layout,
    read_manifest,
    read_manifest_bytes,
    resolve_location,
    validate_manifest,
    verify_file,
)
from distgan.errors import UserError
from distgan.hashing import file_sha256
from distgan.locks import wait_for_lock

REMOTE = "remote.json"
REMOTE_FORMAT = "distgan-remote-cache"
REMOTE_VERSION = 1
LOCKS = ".locks"
_TAR_MEMBER_OVERHEAD = 2048  # a tar member's header (512 bytes) and padding (< 512), with room to spare
_TAR_END = 64 << 10  # the end-of-archive blocks and the record padding (10 KiB), with room to spare
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):")
# Schemes read through fsspec (with the package that implements each), even where gopen has a handler.
_FSSPEC: dict[str, str] = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
                           "abfs": "adlfs", "abfss": "adlfs"}
_HTTP_STATUS = re.compile(r"returned error: (\d{3})\b")  # curl's message for an HTTP error status


@dataclass(frozen=True)
class FetchPolicy:
    """How hard one download tries: `attempts` tries, waiting backoff_s * 2**k (capped at max_backoff_s,
    with jitter) between them, each try aborted after `stall_s` seconds without a byte (or `connect_s`
    to connect), and all tries of one file within `deadline_s`. Each field can be set by an environment
    variable: DISTGAN_FETCH_ATTEMPTS, _BACKOFF_S, _MAX_BACKOFF_S, _CONNECT_S, _STALL_S, _DEADLINE_S."""

    attempts: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    connect_s: float = 20.0
    stall_s: float = 60.0
    deadline_s: float = 900.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> FetchPolicy:
        """The defaults, overridden by any DISTGAN_FETCH_<FIELD> variable set (UserError if invalid)."""
        values: dict[str, Any] = {}
        for name, default in cls().__dict__.items():
            var = f"DISTGAN_FETCH_{name.upper()}"
            if environ.get(var, "").strip():
                try:
                    value = type(default)(environ[var])
                except ValueError:
                    value = None
                if value is None or not value > 0 or value == float("inf"):
                    raise UserError(f"{var}={environ[var]!r}: must be a positive "
                                    f"{'integer' if isinstance(default, int) else 'number'}")
                values[name] = value
        return cls(**values)


def join_url(base: str, relative: str) -> str:
    """The URL of `relative` (e.g. "train/train-000000.tar") under dataset URL `base`; a `pipe:` command
    may say where the path goes with `{path}` (`pipe:aws s3 cp s3://b/mnist/{path} -`), else it is
    appended."""
    if base.startswith("pipe:") and "{path}" in base:
        return base.replace("{path}", relative)
    return base.rstrip("/") + "/" + relative


class _Failure(Exception):
    """One failed try; `permanent` ones (404, missing file) are not tried again."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def _kill(proc: Any) -> None:
    """SIGKILL a download subprocess and, when it leads a session of its own, everything it started."""
    if proc is None or proc.poll() is not None:
        return
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
            return
    except OSError:
        pass
    with contextlib.suppress(OSError):
        proc.kill()


class _Watchdog:
    """Kills a download subprocess that sends nothing for `stall_s` seconds or runs past `deadline`."""

    def __init__(self, proc: Any, stall_s: float, deadline: float) -> None:
        self.proc, self.stall_s, self.deadline = proc, stall_s, deadline
        self.last = time.monotonic()
        self.fired: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            if now - self.last > self.stall_s:
                self.fired = f"no data for {self.stall_s:g}s"
            elif now > self.deadline:
                self.fired = "out of time"
            else:
                continue
            _kill(self.proc)
            return

    def progress(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _scheme(url: str) -> str:
    m = _SCHEME.match(url)
    return m.group("scheme").lower() if m else ""


def _open_fsspec(url: str, scheme: str) -> BinaryIO:
    backend = _FSSPEC.get(scheme, f"the {scheme} backend")
    try:
        import fsspec
    except ImportError:
        raise UserError(f"{url}: reading {scheme}:// URLs needs fsspec; pip install fsspec {backend}") from None
    try:
        return fsspec.open(url, "rb").open()
    except ImportError as e:
        raise UserError(f"{url}: reading {scheme}:// URLs needs {backend} ({e}); pip install fsspec "
                        f"{backend}") from None
    except FileNotFoundError as e:
        raise _Failure(f"not found ({e})", permanent=True) from None
    except Exception as e:  # noqa: BLE001 - backends raise their own types (botocore, google.auth...)
        raise _Failure(f"{type(e).__name__}: {e}") from None


def _open(url: str, policy: FetchPolicy, stderr: BinaryIO) -> tuple[BinaryIO, Any]:
    """(stream, subprocess or None) reading `url`; raises _Failure or UserError."""
    from webdataset import utils as wds_utils
    from webdataset.gopen import Pipe, gopen, gopen_schemes  # (`webdataset.gopen` is also a function)

    scheme = _scheme(url)
    try:
        if scheme in ("http", "https"):
            # gopen's http handler, with a stall limit and without curl's own retries (ours are bounded).
            cmd = ["curl", "--fail", "--silent", "--show-error", "--location", "--connect-timeout",
                   f"{policy.connect_s:g}", "--speed-limit", "1", "--speed-time", f"{max(1, round(policy.stall_s))}",
                   url]
            pipe = Pipe(cmd, mode="rb", bufsize=1 << 16, stderr=stderr, start_new_session=True)
            return pipe, pipe.proc
        if scheme == "pipe":
            # gopen's pipe handler, in a session of its own so that the watchdog can stop the whole command
            # (killing only `sh` leaves `a` of `a | b` writing to our pipe)
            if getattr(wds_utils, "enforce_security", False):
                raise UserError(f"{url}: pipe: URLs are disabled by WDS_SECURE=1; unset it or use another URL")
            pipe = Pipe(url[len("pipe:"):], mode="rb", shell=True, bufsize=1 << 16, ignore_status=[141],
                        start_new_session=True)
            return pipe, pipe.proc
        if scheme in _FSSPEC:
            return _open_fsspec(url, scheme), None
        if scheme == "file" or scheme in gopen_schemes:
            stream = gopen(url, "rb")
            return stream, getattr(stream, "proc", None)
        try:
            from fsspec.registry import known_implementations
        except ImportError:
            known_implementations = {}
        if scheme in known_implementations:
            return _open_fsspec(url, scheme), None
    except FileNotFoundError as e:
        if scheme in ("http", "https"):
            raise UserError(f"{url}: curl not found; install curl (webdataset reads http(s) with it)") from None
        raise _Failure(f"not found ({e.strerror or e})", permanent=True) from None
    except (OSError, ValueError) as e:
        raise _Failure(f"{type(e).__name__}: {e}") from None
    raise UserError(f"{url}: unsupported URL scheme {scheme!r}; use a local path, http(s)://, file://, pipe:, "
                    f"or an fsspec scheme such as s3:// or gs:// (pip install fsspec s3fs)")


def _read(url: str, sink: Callable[[bytes], None], limit: int, policy: FetchPolicy, deadline: float, *,
          too_long_is_final: bool = False) -> int:
    """One try: stream `url` into `sink`; return the byte count; raise _Failure on any transport problem
    or more than `limit` bytes (final, not retried, with `too_long_is_final`: a manifest over the cap is the
    file itself; a shard longer than declared may be a damaged transfer, tried again like a bad sha256).
    Errors raised by `sink` (a full disk) pass through untouched."""
    with tempfile.TemporaryFile() as err:
        stream, proc = _open(url, policy, err)
        dog = _Watchdog(proc, policy.stall_s, deadline)
        # read1 returns what has arrived (a slow but live download keeps the watchdog fed); Pipe wraps its stream
        read = getattr(getattr(stream, "stream", stream), "read1", None) or stream.read
        n, failure, done = 0, None, False
        try:
            while True:
                try:
                    chunk = read(1 << 20)
                except (OSError, ValueError) as e:
                    failure = e
                    break
                if not chunk:
                    done = True
                    break
                dog.progress()
                n += len(chunk)
                if n > limit:
                    raise _Failure(f"sent more than the {limit} bytes expected", permanent=too_long_is_final)
                sink(chunk)
        finally:
            dog.stop()
            if not done:
                _kill(proc)  # we stop reading early: never wait on a command that may not exit
            try:
                stream.close()
            except (OSError, ValueError) as e:
                failure = failure or e
        if failure is None and dog.fired is None:
            return n
        err.seek(0)
        lines = [line.strip() for line in err.read().decode(errors="replace").splitlines() if line.strip()]
        rc = getattr(proc, "returncode", None)
        detail = dog.fired or (lines[-1] if lines else f"exit status {rc}" if rc else
                               f"{type(failure).__name__}: {failure}")
        if isinstance(failure, FileNotFoundError):
            raise _Failure(f"not found ({failure})", permanent=True)
        status = _HTTP_STATUS.search(detail)
        permanent = bool(status) and 400 <= int(status.group(1)) < 500 and int(status.group(1)) not in (408, 429)
        raise _Failure(detail.replace("\n", " "), permanent=permanent)


def _with_retries(url: str, attempt: Callable[[float], Any], policy: FetchPolicy, remedy: str) -> Any:
    """Call attempt(deadline) until it succeeds; back off between tries; one-line UserError at the end."""
    start = time.monotonic()
    deadline = start + policy.deadline_s
    errors: list[str] = []
    for k in range(policy.attempts):
        try:
            return attempt(deadline)
        except _Failure as e:
            errors.append(str(e))
            delay = min(policy.max_backoff_s, policy.backoff_s * 2 ** k) * random.uniform(0.5, 1.0)
            if e.permanent or k + 1 == policy.attempts or time.monotonic() + delay >= deadline:
                break
            print(f"distgan: {url}: {e}; retrying in {delay:.1f}s (try {k + 2} of {policy.attempts})",
                  file=sys.stderr, flush=True)
            time.sleep(delay)
    seen = list(dict.fromkeys(errors))
    detail = "; ".join(seen[-3:])
    raise UserError(f"{url}: download failed after {len(errors)} {'try' if len(errors) == 1 else 'tries'} in "
                    f"{time.monotonic() - start:.0f}s ({detail}); {remedy}")


_SERVER_REMEDY = ("check that the server is up and serves a `distgan prepare` output, then run again "
                  "(or copy the data to local disk and point data.dir at it)")


def fetch_bytes(url: str, *, limit: int, policy: FetchPolicy | None = None) -> bytes:
    """The bytes at `url` (at most `limit`), with retries; one-line UserError naming the URL."""
    policy = policy or FetchPolicy.from_env()

    def attempt(deadline: float) -> bytes:
        parts: list[bytes] = []
        _read(url, parts.append, limit, policy, deadline, too_long_is_final=True)
        return b"".join(parts)

    return _with_retries(url, attempt, policy, _SERVER_REMEDY)


# -- the cache ------------------------------------------------------------------------------------

class _UrlName:
    """Stands in for the manifest's Path in shards.validate_manifest's messages, so that they name the URL."""

    def __init__(self, text: str, parent: str) -> None:
        self.text, self._parent = text, parent

    def __str__(self) -> str:
        return self.text

    @property
    def parent(self) -> _UrlName:
        return _UrlName(self._parent, self._parent)


def default_cache_root() -> Path:
    """$XDG_CACHE_HOME/distgan (XDG_CACHE_HOME defaults to ~/.cache): distgan's downloads and caches."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root).expanduser() / "distgan"


def default_cache_dir(manifest_sha256: str) -> Path:
    """$XDG_CACHE_HOME/distgan/<sha256>: where a URL's shards are cached by default."""
    return default_cache_root() / manifest_sha256


# (location, cache_dir) -> cache dir opened in this process; cache dir -> the URL it was opened from here
_OPENED: dict[tuple[str, str | None], Path] = {}
_URL_OF: dict[str, str] = {}


def open_dataset(location: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None, *,
                 policy: FetchPolicy | None = None) -> Path:
    """The local directory to read a prepare output at `location` from (see the module docstring).

    A local path is returned as is (a manifest.json file: its directory), unless its manifest lists
    standard shards at URLs: then it gets a cache as a URL does (see `_open_local`). For a URL, the
    manifest is fetched (with retries) and validated, the cache directory is set up (once per process and
    arguments), and its path is returned; shards are fetched later, when first read.
    Raises a one-line UserError naming the URL or directory.
    """
    if not is_url(location):
        return _open_local(Path(location), cache_dir)
    base = str(location)
    key = (base, None if cache_dir is None else str(cache_dir))
    if key in _OPENED:
        return _OPENED[key]
    url = join_url(base, MANIFEST)
    data = fetch_bytes(url, limit=MAX_MANIFEST_BYTES, policy=policy)
    return _open_cache(key, base, url, data, cache_dir)


def _open_local(path: Path, cache_dir: str | os.PathLike[str] | None) -> Path:
    """A local data.dir: as is, unless its (version-4) manifest lists shards at URLs; then the cache of it."""
    if path.name == MANIFEST and path.is_file():
        path = path.parent
    manifest_file = path / MANIFEST
    if (path / REMOTE).is_file() or not manifest_file.is_file():
        return path
    key = (str(path.resolve()), None if cache_dir is None else str(cache_dir))
    if key in _OPENED:
        return _OPENED[key]
    manifest = load_manifest_json(manifest_file)
    if not (isinstance(manifest, dict) and is_standard(manifest)) or not any(
            is_url(resolve_location(path, s.get("url", ""))) for e in manifest.get("splits", {}).values()
            for s in e.get("shards", []) if isinstance(s, dict)):
        return path
    return _open_cache(key, key[0], str(manifest_file), read_manifest_bytes(manifest_file), cache_dir)


def _open_cache(key: tuple[str, str | None], base: str, url: str, data: bytes,
                cache_dir: str | os.PathLike[str] | None) -> Path:
    """The cache directory for the dataset whose manifest `data` was read from `url` (dataset root `base`)."""
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested 1,000s deep
        raise UserError(f"{url}: not JSON ({e}); {base} must serve the output of `distgan prepare`") from None
    validate_manifest(_UrlName(url, base), manifest)  # type: ignore[arg-type]
    if not is_standard(manifest):  # standard shards have no size bound: their sha256 and bytes are checked
        _check_shard_sizes(url, base, manifest)
    sha = hashlib.sha256(data).hexdigest()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(sha)
    _adopt(cache, base, data, sha, manifest)
    _check_free_space(cache, base, manifest)
    _OPENED[key] = cache
    _URL_OF[str(cache)] = base
    _SOURCES.pop(str(cache), None)
    return cache


def max_shard_bytes(layout: Layout, count: int) -> int:
    """The most bytes a `distgan prepare` shard of `count` images of `layout` can have (its packs' members
    at their caps, tar headers counted generously): a manifest that declares more was not written by it."""
    packs = -(-count // layout.pack_size)
    per_image = layout.image_bytes + layout.label_bytes + MAX_KEY_BYTES + 1
    return count * per_image + packs * len(layout.members) * _TAR_MEMBER_OVERHEAD + _TAR_END


def _check_shard_sizes(url: str, base: str, manifest: Mapping[str, Any]) -> None:
    """UserError (one line) for a shard declaring more bytes than prepare could write for its images: a
    download is stopped at its declared size, so this caps what one shard can put on disk."""
    layout = manifest_layout(manifest)
    for split, entry in manifest["splits"].items():
        for i, shard in enumerate(entry["shards"]):
            cap = max_shard_bytes(layout, shard["count"])
            if shard["bytes"] > cap:
                raise UserError(f"{url}: field 'splits.{split}.shards[{i}].bytes' declares {shard['bytes']:,} bytes "
                                f"for {shard['count']:,} images, more than the {cap:,} a `distgan prepare` shard of "
                                f"them can have; {base} must serve the output of `distgan prepare`")


def _missing_bytes(cache: Path, manifest: Mapping[str, Any], base: str = "") -> int:
    """Declared bytes of the shards not in `cache` yet (a file of the declared size counts as there; a standard
    shard that is a local file under `base` is never copied)."""
    total = 0
    for split, entry in manifest["splits"].items():
        for shard in entry["shards"]:
            if is_standard(manifest) and not is_url(resolve_location(base, shard["url"])):
                continue  # read in place
            try:
                there = (cache / split / shard["name"]).stat().st_size == shard["bytes"]
            except OSError:
                there = False
            total += 0 if there else shard["bytes"]
    return total


def _free_bytes(directory: Path) -> int | None:
    """Free bytes for this user on the file system of `directory`, or None if it cannot be told."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _check_free_space(cache: Path, base: str, manifest: Mapping[str, Any]) -> None:
    """UserError (one line) before any download when the shards still to fetch do not fit in `cache`."""
    need, free = _missing_bytes(cache, manifest, base), _free_bytes(cache)
    if free is not None and need > free:
        raise UserError(f"cache dir {cache}: the shards of {base} still to download need {need:,} bytes but its "
                        f"file system has {free:,} free; free space there or point data.cache_dir at a larger disk")


def _head(path: Path, n: int) -> bytes:
    """The first `n` bytes of regular file `path` (never more, however big it is)."""
    with open(path, "rb") as f:
        return f.read(n)


def _adopt(cache: Path, base: str, data: bytes, sha: str, manifest: Mapping[str, Any]) -> None:
    """Make `cache` the cache of the dataset whose manifest is `data` (under a lock, so that the ranks of a
    node can do it at once); refuse a directory that holds anything else."""
    with wait_for_lock(cache / LOCKS / "cache.lock", timeout=120, what=f"cache dir {cache}"):
        record = cache / REMOTE
        if not record.is_file():
            others = sorted(p.name for p in cache.iterdir() if p.name != LOCKS)
            if others:
                raise UserError(f"cache dir {cache} is not empty ({', '.join(others[:3])}) and is no distgan "
                                f"download cache; point data.cache_dir at an empty or new directory")
        else:
            held = cache / MANIFEST
            if held.is_file() and _head(held, len(data) + 1) != data:
                raise UserError(f"cache dir {cache} holds another dataset than {base} (its {MANIFEST} differs); "
                                f"point data.cache_dir at an empty or new directory, or unset it")
        want = {"format": REMOTE_FORMAT, "version": REMOTE_VERSION, "url": base, "manifest_sha256": sha}
        try:
            current = json.loads(record.read_text()) if record.is_file() else None
        except (OSError, ValueError):
            current = None
        if current != want:
            write_json_atomic(record, want)  # first: a manifest.json without remote.json is not ours
        if not (cache / MANIFEST).is_file():
            write_bytes_atomic(cache / MANIFEST, data)  # the served bytes, so that its sha256 is `sha`
        for split in manifest["splits"]:
            (cache / split).mkdir(exist_ok=True)


@dataclass(frozen=True)
class _Source:
    url: str
    shards: dict[str, dict[str, Mapping[str, Any]]]  # split -> shard name -> manifest entry
    standard: bool = False  # version 4: each entry's `url` says where the shard is


_SOURCES: dict[str, _Source] = {}


def _source(out: Path) -> _Source | None:
    """Where the shards of directory `out` come from, or None for a prepare output (no remote.json)."""
    hit = _SOURCES.get(str(out))
    if hit is not None:
        return hit
    record = out / REMOTE
    if not record.is_file():
        return None
    try:
        info = json.loads(record.read_text())
        url = info["url"]
        if info.get("format") != REMOTE_FORMAT or not isinstance(url, str):
            raise ValueError("not a distgan download cache record")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{record}: unreadable ({e}); delete {out} and run again to download it anew") from None
    manifest = read_manifest(out)
    shards = {split: {s["name"]: s for s in entry["shards"]} for split, entry in manifest["splits"].items()}
    source = _Source(url=_URL_OF.get(str(out), url), shards=shards, standard=is_standard(manifest))
    _SOURCES[str(out)] = source
    return source


def is_remote(out: str | os.PathLike[str]) -> bool:
    """True if directory `out` is a download cache made by open_dataset (its shards arrive on demand)."""
    return _source(Path(out)) is not None


def local_split(split_dir: str | os.PathLike[str]) -> Path:
    """A split directory to read: a local path as is (but a local dataset of standard shards at URLs: the split
    of its cache, see open_dataset); a URL such as http://host/mnist/train becomes the split of its dataset's
    cache (open_dataset with the default cache directory)."""
    if not is_url(split_dir):
        path = Path(split_dir)
        return open_dataset(path.parent) / path.name if (path.parent / MANIFEST).is_file() else path
    text = str(split_dir).rstrip("/")
    base, _, split = text.rpartition("/")
    if split not in SPLITS or not is_url(base):
        raise UserError(f"{split_dir}: a split URL ends in /{' or /'.join(SPLITS)} (e.g. {text}/train); or open "
                        f"the dataset with distgan.data.remote.open_dataset and use the directory it returns")
    return open_dataset(base) / split


def shard_path(split_dir: Path, name: str) -> Path:
    """The local file of shard `name` of split dir `split_dir`, ready to read: the file itself for a
    prepare output; for a download cache, the verified (if need be, freshly downloaded) copy."""
    source = _source(split_dir.parent)
    if source is None:
        return split_dir / name
    entry = source.shards.get(split_dir.name, {}).get(name)
    if entry is None:
        raise UserError(f"{split_dir / name}: not in {split_dir.parent / MANIFEST}; delete {split_dir.parent} "
                        f"and run again")
    if source.standard:
        location = resolve_location(source.url, entry["url"])
        if not is_url(location):  # a local shard of a cached dataset: verified where it is, never copied
            verify_file(Path(location), entry, split_dir.parent)
            return Path(location)
        return ensure_shard(split_dir.parent, split_dir.name, entry, source.url, url=location)
    return ensure_shard(split_dir.parent, split_dir.name, entry, source.url)


# path -> (size, mtime_ns, inode, sha256) of cached shards whose sha256 this process has checked
_VERIFIED: dict[str, tuple[int, int, int, str]] = {}


def _verified(path: Path, entry: Mapping[str, Any]) -> bool:
    """True if `path` holds the shard `entry` describes: by size (and stat signature) if this process has
    hashed it before, else by sha256."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if st.st_size != entry["bytes"]:
        return False
    sig = (st.st_size, st.st_mtime_ns, st.st_ino, entry["sha256"])
    if _VERIFIED.get(str(path)) == sig:
        return True
    if file_sha256(path) != entry["sha256"]:
        return False
    _VERIFIED[str(path)] = sig
    return True


def _failure_note(path: Path) -> tuple[float, str] | None:
    """(time, one-line error) written by the last process that gave up downloading a shard, if any."""
    try:
        note = json.loads(path.read_text())
        return float(note["time"]), str(note["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_shard(cache_dir: str | os.PathLike[str], split: str, shard_entry: Mapping[str, Any], base_url: str, *,
                 policy: FetchPolicy | None = None, url: str | None = None) -> Path:
    """CACHE/split/<name>, downloaded from <base_url>/<split>/<name> (or `url`, a standard shard's) unless a
    verified copy is there.

    The download holds CACHE/.locks/<name>.lock (other processes of the node wait, then find the file),
    writes a temporary file that is renamed into place only once its size and sha256 match `shard_entry`,
    and is retried (a corrupt copy too) with back-off within FetchPolicy's limits; then a one-line
    UserError names the URL. The processes that were waiting for that lock meanwhile raise the same
    error at once instead of trying again (a dead server costs a node one deadline, not one per process).
    """
    cache = Path(cache_dir)
    name, size, sha = shard_entry["name"], int(shard_entry["bytes"]), shard_entry["sha256"]
    path = cache / split / name
    if _verified(path, shard_entry):
        return path
    policy = policy or FetchPolicy.from_env()
    url = url or join_url(base_url, f"{split}/{name}")
    lock_wait = policy.deadline_s + 2 * policy.stall_s + 60  # the holder gives up within its deadline
    failed = cache / LOCKS / f"{name}.failed"  # the error of the last process that gave up on this shard
    waited_since = time.time()
    with wait_for_lock(cache / LOCKS / f"{name}.lock", timeout=lock_wait, what=f"download of {url} into {path}"):
        if _verified(path, shard_entry):  # another process fetched it while we waited
            return path
        note = _failure_note(failed)
        if note is not None and note[0] >= waited_since:  # it gave up while we waited: so do we, at once
            raise UserError(note[1])
        free = _free_bytes(path.parent)
        if free is not None and size > free:
            raise UserError(f"cache dir {cache}: shard {split}/{name} needs {size:,} bytes but its file system has "
                            f"{free:,} free; free space there or point data.cache_dir at a larger disk")
        if path.exists():
            print(f"distgan: {path}: the cached copy does not match the manifest's size and sha256; fetching it "
                  f"again from {url}", file=sys.stderr, flush=True)
        for stale in path.parent.glob(f".{name}.*.tmp"):  # left by a killed download (a live one writes often)
            with contextlib.suppress(OSError):
                if time.time() - stale.stat().st_mtime > policy.stall_s + 60:
                    stale.unlink()

        def attempt(deadline: float) -> None:
            digest = hashlib.sha256()
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                def sink(chunk: bytes) -> None:
                    f.write(chunk)
                    digest.update(chunk)

                n = _read(url, sink, size, policy, deadline)
                if n != size:
                    raise _Failure(f"got {n} bytes, the manifest says {size}")
                if digest.hexdigest() != sha:
                    raise _Failure(f"sha256 {digest.hexdigest()[:12]}... differs from the manifest's {sha[:12]}...")
                f.flush()

        try:
            _with_retries(url, attempt, policy, _SERVER_REMEDY + "; if the sha256 keeps differing, the server's "
                          "shards do not match its manifest.json: publish the prepare output again")
        except UserError as e:
            write_json_atomic(failed, {"time": time.time(), "error": str(e)})
            raise
        failed.unlink(missing_ok=True)
        st = path.stat()
        _VERIFIED[str(path)] = (st.st_size, st.st_mtime_ns, st.st_ino, sha)
    return path


__all__ = ["FetchPolicy", "is_url", "join_url", "fetch_bytes", "default_cache_dir", "open_dataset", "is_remote",
           "local_split", "shard_path", "ensure_shard", "REMOTE", "MAX_MANIFEST_BYTES"]
