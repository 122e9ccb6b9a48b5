"""Checkpoint faults, made for real: damaged files on disk, a process SIGKILLed at each rename of a
replacement (strace fault injection), the syscall order of a save (strace), a genuinely full tmpfs, a
read-only remount, and a directory the (capability-less) process may not write. Training runs are real
`distgan train` subprocesses; the save/load probe is a real Accelerate process on CPU."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, child_env, run_cli, tmpfs
from safetensors.torch import load_file, save_file

from distgan.atomic import WriteError
from distgan.config import load_config
from distgan.errors import UserError
from distgan.hashing import file_sha256
from distgan.run.checkpoint import (
    BEST,
    EMA_FILE,
    MARKER,
    TrainState,
    checkpoint_problem,
    complete_checkpoints,
    latest_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from distgan.run.run_dir import RunDir

pytestmark = pytest.mark.slow  # real processes, signals, servers or file systems (unit tier: -m "not slow")

DEBUG = "configs/debug.yaml"
STEP10, STEP20 = "step_0000010", "step_0000020"


def distgan(args: list[str], *, prefix: tuple[str, ...] = (), timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m distgan ARGS`, optionally under a wrapper (setpriv), with a hard timeout; never checked."""
    return subprocess.run([*prefix, sys.executable, "-m", "distgan", *args], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=timeout)


def train(shards: Path, run_dir: Path, *overrides: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return distgan(["train", "--config", DEBUG, f"data.dir={shards}", f"run.dir={run_dir}", "wandb.mode=disabled",
                    "log.progress=false", *overrides], prefix=prefix)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The CLI's one-line error (exit 2, no traceback), checked to contain every needle."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-6000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-6000:]
    last = proc.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, f"{needle!r} not in {last!r}"
    return last


def leftovers(ckpts: Path) -> list[str]:
    return sorted(p.name for p in ckpts.iterdir() if p.name.startswith((".tmp_", ".old_")))


@pytest.fixture(scope="module")
def base_run(mnist_shards, tmp_path_factory) -> Path:
    """A debug run of 20 steps: checkpoints step_0000010 and step_0000020 (each test damages a copy)."""
    run = tmp_path_factory.mktemp("ckpt_base") / "run"
    ok(train(mnist_shards, run))
    return run


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


# ---------------------------------------------------------------- the marker and damaged checkpoints


def test_marker_records_every_file_with_size_and_sha256(base_run):
    ckpt = base_run / "checkpoints" / STEP20
    marker = json.loads((ckpt / MARKER).read_text())
    assert marker["format"] == "distgan-checkpoint/1" and marker["step"] == 20
    on_disk = sorted(p.name for p in ckpt.iterdir() if p.name != MARKER)
    assert sorted(marker["files"]) == on_disk
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", EMA_FILE, "trainer_state.json"} <= set(on_disk)
    for name, meta in marker["files"].items():
        assert meta == {"size": (ckpt / name).stat().st_size, "sha256": file_sha256(ckpt / name)}, name
    assert checkpoint_problem(ckpt) is None


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _garble(path: Path) -> None:  # same size, different bytes: only the sha256 can tell
    data = bytearray(path.read_bytes())
    data[len(data) // 2:] = os.urandom(len(data) - len(data) // 2)
    path.write_bytes(bytes(data))


DAMAGE = {
    "model truncated": ("model.safetensors", _truncate),
    "optimizer garbage": ("optimizer.bin", _garble),
    "EMA missing": (EMA_FILE, Path.unlink),
    "trainer state garbage": ("trainer_state.json", lambda p: p.write_text("{not json")),
    "RNG file truncated": ("random_states_0.pkl", _truncate),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_is_named_and_skipped(run, damage, caplog):
    name, spoil = DAMAGE[damage]
    ckpt = run / "checkpoints" / STEP20
    spoil(ckpt / name)
    with pytest.raises(UserError) as info:
        resolve_checkpoint(ckpt)
    message = str(info.value)
    assert "\n" not in message and str(ckpt) in message and name in message, message
    with caplog.at_level(logging.WARNING, logger="distgan.run.checkpoint"):
        assert latest_checkpoint(run) == run / "checkpoints" / STEP10
    warnings = [r.getMessage() for r in caplog.records if STEP20 in r.getMessage()]
    assert len(warnings) == 1 and name in warnings[0] and "\n" not in warnings[0], warnings
    assert resolve_checkpoint(run) == run / "checkpoints" / STEP10  # a run directory: its newest intact one


def test_resume_auto_falls_back_to_the_previous_intact_checkpoint(run, mnist_shards):
    _garble(run / "checkpoints" / STEP20 / "optimizer.bin")  # a pickle accelerate would have unpickled
    proc = ok(train(mnist_shards, run, "train.steps=20"))
    skipped = [line for line in proc.stderr.splitlines() if "skipping damaged checkpoint" in line]
    assert len(skipped) == 1 and STEP20 in skipped[0] and "optimizer.bin" in skipped[0], proc.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / STEP10} at step 10" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert checkpoint_problem(run / "checkpoints" / STEP20) is None  # trained again and saved intact
    assert leftovers(run / "checkpoints") == []


def test_explicit_resume_of_a_damaged_checkpoint_is_one_line(run, mnist_shards, tmp_path):
    ckpt = run / "checkpoints" / STEP20
    _truncate(ckpt / "model.safetensors")
    proc = train(mnist_shards, tmp_path / "other", f"resume={ckpt}")
    one_line_error(proc, "distgan train: error:", str(ckpt), "model.safetensors", "truncated")
    proc = distgan(["sample", "--checkpoint", str(ckpt), "--n", "4", "--out", str(tmp_path / "s.npz")])
    one_line_error(proc, "distgan sample: error:", str(ckpt), "model.safetensors")


def _nan_into(ckpt: Path, name: str) -> None:
    """Put a NaN into a safetensors file and record its new size and sha256, as if saved like that."""
    tensors = load_file(str(ckpt / name))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(ckpt / name))
    marker = json.loads((ckpt / MARKER).read_text())
    marker["files"][name] = {"size": (ckpt / name).stat().st_size, "sha256": file_sha256(ckpt / name)}
    (ckpt / MARKER).write_text(json.dumps(marker))


def test_non_finite_weights_are_refused(run, mnist_shards, tmp_path):
    ckpt = run / "checkpoints" / STEP20
    _nan_into(ckpt, EMA_FILE)
    with pytest.raises(UserError, match="non-finite"):
        resolve_checkpoint(ckpt)
    assert latest_checkpoint(run) == run / "checkpoints" / STEP10
    one_line_error(train(mnist_shards, tmp_path / "other", f"resume={ckpt}"), str(ckpt), "non-finite", EMA_FILE)


def test_old_format_marker_is_accepted_with_a_warning(run, mnist_shards, caplog):
    ckpt = run / "checkpoints" / STEP20
    (ckpt / MARKER).write_text("20\n")  # what distgan wrote before markers listed files
    with caplog.at_level(logging.WARNING, logger="distgan.run.checkpoint"):
        assert latest_checkpoint(run) == ckpt
    assert any("old-format" in r.getMessage() and STEP20 in r.getMessage() for r in caplog.records)
    proc = ok(train(mnist_shards, run, "train.steps=25", "checkpoint.every=5"))
    assert f"resumed from {ckpt} at step 20" in proc.stdout + proc.stderr
    (ckpt / EMA_FILE).unlink()  # presence is still checked
    assert "missing" in checkpoint_problem(ckpt)


# ---------------------------------------------------------------- durability: fsync order, crash mid-replacement

PROBE = '''
"""Save (or load) a checkpoint of a tiny real model with a real Accelerator: probe for the checkpoint tests."""
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from distgan.errors import UserError
from distgan.run.checkpoint import TrainState, load_checkpoint, save_checkpoint
from distgan.training.precision import Precision

mode, path, step, name = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(step)
acc = Accelerator(cpu=True)
g, d = torch.nn.Linear(64, 64), torch.nn.Linear(64, 1)
opt = torch.optim.Adam([*g.parameters(), *d.parameters()])
g, d, opt = acc.prepare(g, d, opt)
ema = torch.nn.Linear(64, 64)  # the EMA's state_dict / load_state_dict
try:
    if mode == "save":
        save_checkpoint(acc, path, state=TrainState(step=step), ema=ema, precision=Precision("no", acc.device),
                        config_yaml="probe: true\\n", keep=100, name=name or None)
    else:
        print("loaded step", load_checkpoint(acc, path, ema=ema, precision=Precision("no", acc.device)).step)
except UserError as e:
    print(f"probe: error: {e}", file=sys.stderr)
    sys.exit(2)
'''


@pytest.fixture
def probe(tmp_path) -> list[str]:
    path = tmp_path / "ckpt_probe.py"
    path.write_text(PROBE)
    return [sys.executable, str(path)]


def probe_env() -> dict[str, str]:
    return child_env(PYTHONDONTWRITEBYTECODE="1")  # no .pyc renames to shift the rename count


def strace_or_skip() -> str:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (apt-get install strace): it injects the faults of this test")
    probe = subprocess.run([strace, "-f", "-qq", "-o", os.devnull, "true"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here (ptrace not permitted?): {probe.stderr.strip()[:200]}")
    return strace


def test_save_fsyncs_every_file_and_directory_before_and_after_the_rename(probe, tmp_path):
    strace = strace_or_skip()
    run = Path(os.path.realpath(tmp_path)) / "run"
    log = tmp_path / "strace.log"
    cmd = [strace, "-f", "-qq", "-y", "-e", "signal=none", "-o", str(log),
           "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", *probe, "save", str(run), "7", ""]
    proc = subprocess.run(cmd, env=probe_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    root = run / "checkpoints"
    tmp, final = root / ".tmp_step_0000007", root / "step_0000007"
    events = []  # ("fsync", path) | ("rename", old, new), in order
    for line in log.read_text().splitlines():
        if m := re.search(r"\b(?:fsync|fdatasync)\(\d+<(.*)>\)\s+= 0", line):
            events.append(("fsync", m.group(1)))
        elif re.search(r"\brename(?:at2?)?\(", line) and line.rstrip().endswith("= 0"):
            quoted = re.findall(r'"([^"]*)"', line)
            events.append(("rename", *quoted[:2]))
    renamed = events.index(("rename", str(tmp), str(final)))
    synced = {e[1]: i for i, e in reversed(list(enumerate(events[:renamed]))) if e[0] == "fsync"}  # first fsync
    files = sorted(p.name for p in final.iterdir())
    assert "model.safetensors" in files and "random_states_0.pkl" in files  # accelerate's files are covered too
    for name in sorted(files, key=lambda n: (n == MARKER, n != "model.safetensors")):  # the marker last
        assert str(tmp / name) in synced, f"{name} was not fsynced before the checkpoint was renamed into place"
    marker_at = synced[str(tmp / MARKER)]
    assert all(synced[str(tmp / n)] < marker_at for n in files if n != MARKER), "a file was fsynced after COMPLETE"
    assert any(e == ("fsync", str(tmp)) for e in events[marker_at:renamed]), "the directory was not fsynced"
    assert ("fsync", str(root)) in events[renamed:], "checkpoints/ was not fsynced after the rename"


def _best_step(ckpts: Path) -> int:
    """The step of `best` as a reader finds it (verified), after checking its EMA loads and is finite."""
    best = resolve_checkpoint(ckpts / BEST)
    assert all(torch.isfinite(t).all() for t in load_file(str(best / EMA_FILE)).values())
    return json.loads((best / "trainer_state.json").read_text())["state"]["step"]


def test_best_survives_a_kill_at_every_rename_of_its_replacement(probe, tmp_path):
    """SIGKILL the saving process at its 1st, 2nd, ... rename (strace injects the signal at the syscall, so
    the kill lands exactly between two steps of the replacement): `best` is always there and loadable,
    and the next save cleans up what the killed one left."""
    strace = strace_or_skip()
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    ok(subprocess.run([*probe, "save", str(run), "1", BEST], env=probe_env(), capture_output=True, text=True,
                      timeout=240))
    assert _best_step(ckpts) == 1
    kills, step = 0, 1
    for when in range(1, 12):
        step += 1
        cmd = [strace, "-f", "-qq", "-o", os.devnull, "-e", "trace=rename,renameat,renameat2",
               "-e", f"inject=rename,renameat,renameat2:signal=SIGKILL:when={when}",
               *probe, "save", str(run), str(step), BEST]
        proc = subprocess.run(cmd, env=probe_env(), capture_output=True, text=True, timeout=240)
        before = _best_step(ckpts)
        if proc.returncode == 0:
            assert before == step
            break
        assert proc.returncode in (-9, 137), proc.stderr[-3000:]  # killed at rename number `when`
        kills += 1
        assert before in range(1, step), before  # an earlier best, intact
    else:
        pytest.fail("the save never completed")
    assert kills >= 2  # both renames of the replacement were hit
    ok(subprocess.run([*probe, "save", str(run), "99", BEST], env=probe_env(), capture_output=True, text=True,
                      timeout=240))
    assert _best_step(ckpts) == 99 and leftovers(ckpts) == []


def test_a_crash_between_the_renames_leaves_a_stand_in_that_the_next_save_restores(probe, tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    for step, name in ((1, BEST), (2, "")):
        ok(subprocess.run([*probe, "save", str(run), str(step), name], env=probe_env(), capture_output=True,
                          text=True, timeout=240))
    # What a power cut between the two renames of a replacement leaves: the old copy aside, the new one sealed.
    os.rename(ckpts / BEST, ckpts / f".old_{BEST}")
    shutil.copytree(ckpts / "step_0000002", ckpts / f".tmp_{BEST}")
    os.rename(ckpts / "step_0000002", ckpts / ".old_step_0000002")
    assert _best_step(ckpts) == 1  # readers use the stand-in and change nothing
    assert [s for s, _ in complete_checkpoints(run)] == [2] and latest_checkpoint(run).name == ".old_step_0000002"
    ok(subprocess.run([*probe, "load", str(latest_checkpoint(run)), "0", ""], env=probe_env(), capture_output=True,
                      text=True, timeout=240))
    ok(subprocess.run([*probe, "save", str(run), "3", ""], env=probe_env(), capture_output=True, text=True,
                      timeout=240))
    assert leftovers(ckpts) == [] and _best_step(ckpts) == 1
    assert [s for s, _ in complete_checkpoints(run)] == [2, 3]


def test_load_refuses_non_finite_weights_and_damage_before_unpickling(probe, tmp_path):
    run = tmp_path / "run"
    ok(subprocess.run([*probe, "save", str(run), "5", ""], env=probe_env(), capture_output=True, text=True,
                      timeout=240))
    ckpt = run / "checkpoints" / "step_0000005"
    load = [*probe, "load", str(ckpt), "0", ""]
    assert "loaded step 5" in ok(subprocess.run(load, env=probe_env(), capture_output=True, text=True,
                                                timeout=240)).stdout
    good = (ckpt / "optimizer.bin").read_bytes()
    (ckpt / "optimizer.bin").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one bit flipped in a pickle
    one_line_error(subprocess.run(load, env=probe_env(), capture_output=True, text=True, timeout=240),
                   "probe: error:", str(ckpt), "optimizer.bin", "corrupt")
    (ckpt / "optimizer.bin").write_bytes(good)
    _nan_into(ckpt, "model.safetensors")
    one_line_error(subprocess.run(load, env=probe_env(), capture_output=True, text=True, timeout=240),
                   "probe: error:", str(ckpt), "non-finite", "model.safetensors")


# ---------------------------------------------------------------- full, read-only and unwritable run directories


def fill(directory: Path) -> None:
    """Write a file into `directory` until its file system has no space left."""
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e


def test_full_disk_during_a_save_is_one_line_and_keeps_earlier_checkpoints(mnist_shards, tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    with tmpfs(ckpts, "8m"):
        ok(train(mnist_shards, run, "train.steps=10"))
        fill(ckpts)
        last = one_line_error(train(mnist_shards, run, "train.steps=20"), "distgan train: error: cannot save "
                              f"checkpoint {ckpts / STEP20}: no space left on device;", "run.dir")
        assert "earlier checkpoints are intact" in last
        assert leftovers(ckpts) == [] and not (ckpts / STEP20).exists()
        assert latest_checkpoint(run) == ckpts / STEP10
        (ckpts / "filler").unlink()
        proc = ok(train(mnist_shards, run, "train.steps=20"))
        assert f"resumed from {ckpts / STEP10} at step 10" in proc.stdout + proc.stderr
        assert checkpoint_problem(ckpts / STEP20) is None


@pytest.fixture(scope="module")
def tiny() -> SimpleNamespace:
    """`tiny.save(run_dir, step)`: `save_checkpoint` of a tiny real model (one Adam step taken, so the
    optimizer file is tens of KB) with a real in-process CPU Accelerator `tiny.acc`."""
    from accelerate import Accelerator

    from distgan.training.precision import Precision

    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    g, d = torch.nn.Linear(64, 64), torch.nn.Linear(64, 1)
    opt = torch.optim.Adam([*g.parameters(), *d.parameters()])
    (g(torch.randn(2, 64)).sum() + d(torch.randn(2, 64)).sum()).backward()
    opt.step()
    g, d, opt = acc.prepare(g, d, opt)
    ema = torch.nn.Linear(64, 64)

    def save(run_dir: Path, step: int) -> Path:
        return save_checkpoint(acc, run_dir, state=TrainState(step=step), ema=ema,
                               precision=Precision("no", acc.device), config_yaml="probe: true\n", keep=100)

    return SimpleNamespace(acc=acc, save=save)


def test_full_disk_inside_torchs_zip_writer_is_one_line(tiny, tmp_path):
    """torch.save (accelerate's optimizer file) loses the errno of a full disk: `RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos`. On a 600 KB tmpfs left with room for the model files and half the
    optimizer file, that write fails for real; it must be the same one line as any full disk."""
    sizes = {p.name: p.stat().st_size for p in tiny.save(tmp_path / "sizes", 1).iterdir()}
    ckpts = tmp_path / "run" / "checkpoints"
    with tmpfs(ckpts, "600k"):
        tiny.save(tmp_path / "run", 1)
        fill(ckpts)
        page = os.statvfs(ckpts).f_frsize
        pages = sum(-(-n // page) for name, n in sizes.items() if name.startswith("model"))
        pages += -(-sizes["optimizer.bin"] // page) // 2
        os.truncate(ckpts / "filler", (ckpts / "filler").stat().st_size - pages * page)
        with pytest.raises(WriteError) as info:
            tiny.save(tmp_path / "run", 2)
        assert str(info.value) == (f"cannot save checkpoint {ckpts / 'step_0000002'}: no space left on device; "
                                   "free space or set run.dir elsewhere (earlier checkpoints are intact)")
        assert info.value.errno == errno.ENOSPC
        assert sorted(p.name for p in ckpts.iterdir()) == ["filler", "step_0000001"]  # no temporary, no probe
        assert latest_checkpoint(tmp_path / "run") == ckpts / "step_0000001"


def test_a_step_dir_without_marker_is_removed_by_the_next_save(tiny, tmp_path, caplog):
    """What an interrupted copy (or a save of the old in-place layout) leaves: a `step_*` with files but no
    marker. It was warned about at every resume and never removed; the next save deletes it, only it."""
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    tiny.save(run, 1)
    tiny.save(run, 3)
    shutil.copytree(ckpts / "step_0000001", ckpts / "step_0000005", ignore=shutil.ignore_patterns(MARKER, "opt*"))
    _truncate(ckpts / "step_0000003" / "model.safetensors")  # sealed but damaged: the user's to judge, kept
    (ckpts / "notes.txt").write_text("mine")
    with caplog.at_level(logging.WARNING, logger="distgan.run.checkpoint"):
        tiny.save(run, 7)
    removed = [r.getMessage() for r in caplog.records if "step_0000005" in r.getMessage()]
    assert len(removed) == 1 and "removing incomplete checkpoint" in removed[0], removed
    assert sorted(p.name for p in ckpts.iterdir()) == ["notes.txt", "step_0000001", "step_0000003", "step_0000007"]
    assert (ckpts / "notes.txt").read_text() == "mine" and "truncated" in checkpoint_problem(ckpts / "step_0000003")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="distgan.run.checkpoint"):
        assert [s for s, _ in complete_checkpoints(run)] == [1, 3, 7]
    assert not caplog.records  # no more "ignoring incomplete checkpoint" at each resume


def test_resume_auto_refuses_when_every_checkpoint_is_damaged(tiny, tmp_path):
    """Every checkpoint damaged used to mean two warnings and a silent restart from step 0 over the run."""
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    for step in (1, 2):
        tiny.save(run, step)
    _truncate(ckpts / "step_0000001" / "model.safetensors")
    _garble(ckpts / "step_0000002" / "optimizer.bin")
    before = {p: p.read_bytes() for p in ckpts.rglob("*") if p.is_file()}

    def resume_point(run_dir: Path, resume: str) -> Path | None:
        cfg = load_config(REPO / DEBUG, [f"run.dir={run_dir}", f"resume={resume}"])
        run_dir_obj = RunDir(run_dir, tiny.acc)
        try:
            return run_dir_obj.resume_point(cfg)
        finally:
            run_dir_obj.close()

    with pytest.raises(UserError) as info:
        resume_point(run, "auto")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot resume {run}: none of its 2 checkpoint(s) is intact")
    for needle in ("step_0000002", "optimizer.bin", "corrupt", "new run.dir", "resume=never", str(ckpts)):
        assert needle in message, (needle, message)
    with pytest.raises(UserError, match="resume=never but .* already has checkpoints"):
        resume_point(run, "never")  # unchanged: never is never, damaged checkpoints count
    assert {p: p.read_bytes() for p in ckpts.rglob("*") if p.is_file()} == before  # nothing touched
    assert resume_point(tmp_path / "fresh", "never") is None  # the way to start fresh on purpose
    assert resume_point(tmp_path / "fresh", "auto") is None  # no checkpoints at all: a new run, as before


def test_read_only_checkpoints_directory_is_one_line_and_stays_readable(mnist_shards, tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    with tmpfs(ckpts, "16m"):
        ok(train(mnist_shards, run, "train.steps=10"))
        subprocess.run(["mount", "-o", "remount,ro", str(ckpts)], check=True, capture_output=True, timeout=60)
        one_line_error(train(mnist_shards, run, "train.steps=20"),
                       f"cannot save checkpoint {ckpts / STEP20}: read-only file system;", "run.dir")
        assert latest_checkpoint(run) == ckpts / STEP10  # verifying and choosing write nothing
        ok(distgan(["sample", "--checkpoint", str(run), "--n", "4", "--out", str(tmp_path / "s.npz")]))


def test_unwritable_checkpoints_directory_is_one_line(mnist_shards, tmp_path):
    """Root ignores permission bits through CAP_DAC_OVERRIDE; `setpriv` drops every capability, so the
    child is an ordinary process for which a 0555 directory is genuinely unwritable."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    drop = (setpriv, "--bounding-set=-all", "--inh-caps=-all", "--")
    ckpts = tmp_path / "probe_dir"
    ckpts.mkdir(mode=0o555)
    probe = subprocess.run([*drop, sys.executable, "-c", f"open({str(ckpts / 'x')!r}, 'w')"], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode == 0 or "Permission denied" not in probe.stderr:
        pytest.skip(f"cannot run a process that permission bits apply to: {probe.stderr.strip()[-200:]}")
    run = tmp_path / "run"
    ok(train(mnist_shards, run, "train.steps=10"))
    (run / "checkpoints").chmod(0o555)
    try:
        one_line_error(train(mnist_shards, run, "train.steps=20", prefix=drop),
                       f"cannot save checkpoint {run / 'checkpoints' / STEP20}: permission denied;", "run.dir")
    finally:
        (run / "checkpoints").chmod(0o755)
    assert leftovers(run / "checkpoints") == [] and latest_checkpoint(run) == run / "checkpoints" / STEP10


def test_sample_command_reports_a_damaged_run_directory_in_one_line(run, tmp_path):
    for _, ckpt in complete_checkpoints(run):
        _truncate(ckpt / EMA_FILE)
    proc = run_cli(["sample", "--checkpoint", str(run), "--n", "4", "--out", str(tmp_path / "s.npz")], timeout=120,
                   check=False)
    one_line_error(proc, "distgan sample: error:", str(run), "intact")
