"""distgan.run.checkpoint in-process on hand-sealed checkpoint directories in tmp_path: a COMPLETE marker
nested 100,000 deep or of 3 GB (sparse) is reported damaged in one line and skipped by resume=auto, and a
trainer_state.json edited and resealed (a list, a string step, a negative or huge count...) is one line naming
the checkpoint and the field when a run resumes from it. (tests/run/test_checkpoint.py has the real saves.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from distgan.errors import UserError
from distgan.run.checkpoint import (
    MARKER,
    MARKER_FORMAT,
    STATE_FILE,
    TrainState,
    checkpoint_problem,
    latest_checkpoint,
    load_checkpoint,
    parse_train_state,
    resolve_checkpoint,
)

STATE = {"step": 2, "epoch": 0, "start_sample": 32, "best_fid": None}


def seal(ckpt: Path, files: dict[str, bytes]) -> Path:
    """A checkpoint directory holding `files`, sealed with a COMPLETE marker in the documented format."""
    ckpt.mkdir(parents=True)
    listed = {}
    for rel, data in files.items():
        (ckpt / rel).write_bytes(data)
        listed[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "step": 1, "files": listed}))
    return ckpt


def state_file(state: object) -> dict[str, bytes]:
    return {STATE_FILE: json.dumps({"state": state, "scalers": {}, "world_size": 1}).encode()}


@pytest.mark.parametrize("marker, problem", [
    ("[" * 100_000, "its COMPLETE marker is garbled"),
    (None, "its COMPLETE marker is over 4 MiB (a marker is a small JSON file)"),
    (json.dumps({"format": MARKER_FORMAT, "files": {STATE_FILE: {"size": 1e400, "sha256": "0"}}}),
     "its COMPLETE marker is garbled"),
], ids=["deep", "3GB", "size-1e400"])
def test_a_damaged_marker_is_one_line_and_skipped_by_resume_auto(tmp_path, marker, problem):
    run = tmp_path / "run"
    good = seal(run / "checkpoints" / "step_0000001", state_file(STATE))
    bad = seal(run / "checkpoints" / "step_0000002", state_file(STATE))
    if marker is None:
        with open(bad / MARKER, "ab") as f:
            f.truncate(3 << 30)  # sparse: nothing is written, and only 4 MiB + 1 byte of it is read
    else:
        (bad / MARKER).write_text(marker)
    assert checkpoint_problem(bad) == problem
    with pytest.raises(UserError) as info:
        resolve_checkpoint(bad)  # `distgan sample --checkpoint`
    assert str(info.value) == (f"checkpoint {bad} is damaged: {problem}; use an earlier checkpoint, or the run "
                               "directory to pick its newest intact one")
    assert latest_checkpoint(run) == good == resolve_checkpoint(run)  # resume=auto, and a run directory


MAIN = SimpleNamespace(is_main_process=True, num_processes=1)


@pytest.mark.parametrize("data, field", [
    (b"[1]", "it holds no `state` mapping"),
    (json.dumps({"state": [1]}).encode(), "it holds no `state` mapping"),
    (b"[" * 100_000, "it is not valid JSON"),
    (b"\xff\xfe", "it is not valid JSON"),
    (b" " * (1 << 20) + b"{}", "it is over 1 MiB"),
    (state_file({**STATE, "step": "abc"})[STATE_FILE], "state.step must be an integer from 0 to 2**63-1, got 'abc'"),
    (state_file({**STATE, "step": -5})[STATE_FILE], "state.step must be an integer from 0 to 2**63-1, got -5"),
    (state_file({**STATE, "step": 10**30})[STATE_FILE], "state.step must be an integer from 0 to 2**63-1, got 1000"),
    (b'{"state": {"step": 1e30}}', "state.step must be an integer from 0 to 2**63-1, got 1e+30"),
    (b'{"state": {"step": 1e400}}', "state.step must be an integer from 0 to 2**63-1, got inf"),
    (state_file({**STATE, "epoch": 1.5})[STATE_FILE], "state.epoch must be an integer"),
    (state_file({**STATE, "start_sample": True})[STATE_FILE], "state.start_sample must be an integer"),
    (state_file({**STATE, "best_fid": "low"})[STATE_FILE], "state.best_fid must be a finite number or null, got 'low'"),
    (b'{"state": {"step": 2, "best_fid": NaN}}', "state.best_fid must be a finite number or null, got nan"),
    (state_file({**STATE, "foo": 1})[STATE_FILE], "state.foo is not a field of the training state"),
], ids=lambda v: v[:24].decode(errors="replace") if isinstance(v, bytes) else None)
def test_a_resealed_trainer_state_is_one_line_naming_the_field(tmp_path, data, field):
    ckpt = seal(tmp_path / "run" / "checkpoints" / "step_0000002", {STATE_FILE: data})
    assert checkpoint_problem(ckpt) is None  # the marker matches: only the state's own check can tell
    with pytest.raises(UserError) as info:
        load_checkpoint(MAIN, ckpt, ema=None, precision=None)  # refused before anything is restored
    message = str(info.value)
    assert message.startswith(f"cannot resume from checkpoint {ckpt}: {STATE_FILE}: {field}"), message
    assert message.endswith("; use an earlier checkpoint") and "\n" not in message


def test_a_valid_state_round_trips_and_missing_fields_take_their_defaults():
    assert parse_train_state({"state": STATE, "scalers": {}}) == TrainState(2, 0, 32, None)
    assert parse_train_state({"state": {"step": 7, "best_fid": 3}}) == TrainState(step=7, best_fid=3.0)
    assert parse_train_state({"state": {"step": 2**63 - 1, "best_fid": -1e-7}}).step == 2**63 - 1
