"""distgan.run.run_dir in-process, without a training run: `auto_run_dir` naming, the exclusive claim of a new
`runs/<name>-<timestamp>[-N]` (a pinned timestamp makes "two runs in the same second" deterministic),
`resolve_run_path` on a CPU Accelerator, and RunDir itself: its lock, `write_config`, `write_rank_report` and
`resume_point` against hand-sealed checkpoints. (tests/run/test_run_dir.py has the real training runs and the
timing-based same-second check; tests/test_config.py the basic auto_run_dir cases.)"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from distgan.config import Config, dump_config, load_config
from distgan.errors import UserError
from distgan.hashing import state_dict_sha256
from distgan.run import run_dir as run_dir_module
from distgan.run.checkpoint import CONFIG_FILE, MARKER, MARKER_FORMAT
from distgan.run.resume import saved_config
from distgan.run.run_dir import RunDir, auto_run_dir, resolve_run_path

STAMP = "20240102-030405"
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")


@pytest.fixture(scope="module")
def acc() -> Accelerator:
    accelerator = Accelerator(cpu=True)
    accelerator.unwrap_model(torch.nn.Identity())  # its first call imports torch._dynamo: ~2 s once, here
    return accelerator


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """cwd = tmp_path (run.dir=auto is relative), outside SLURM, with the clock's timestamp pinned to STAMP."""
    monkeypatch.chdir(tmp_path)
    for var in SLURM_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(run_dir_module, "time", SimpleNamespace(strftime=lambda fmt: STAMP))
    return tmp_path


def cfg_of(*overrides: str) -> Config:
    return load_config(None, ["model.image_shape=[1,28,28]", *overrides])


def seal(ckpt: Path, cfg: Config, step: int) -> Path:
    """A checkpoint directory holding `cfg` as its config.yaml, sealed with a COMPLETE marker (documented format)."""
    ckpt.mkdir(parents=True)
    data = dump_config(cfg).encode()
    (ckpt / CONFIG_FILE).write_bytes(data)
    files = {CONFIG_FILE: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    (ckpt / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "step": step, "files": files}))
    return ckpt


# -- naming ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem, job_id, stamp, expected", [
    ("my exp\n", None, STAMP, f"runs/my-exp-{STAMP}"),  # a newline never reaches a path
    ("ünï", None, STAMP, f"runs/n-{STAMP}"),
    ("...hidden", "99", STAMP, "runs/hidden-99"),  # never a dot directory
    ("", "", "t", "runs/x-t"),
    ("a b", "123_4", STAMP, "runs/a-b-123_4"),  # an array task keeps its own id
    ("run", None, f"{STAMP}-3", f"runs/run-{STAMP}-3"),
    ("x", "a;rm -rf /", STAMP, "runs/x-a-rm--rf"),
])
def test_auto_run_dir_is_one_safe_directory_under_runs(stem, job_id, stamp, expected):
    assert auto_run_dir(stem, job_id, stamp) == expected


# -- claiming a new directory ------------------------------------------------------------------------------------


def test_runs_in_the_same_second_claim_distinct_directories(in_tmp, acc):
    cfg = cfg_of("run.dir=auto", "name=exp")
    first, second = resolve_run_path(cfg, acc), resolve_run_path(cfg, acc)
    assert (first, second) == (Path(f"runs/exp-{STAMP}"), Path(f"runs/exp-{STAMP}-2"))
    (in_tmp / "runs" / f"exp-{STAMP}-3").write_text("a file, not a run")  # anything in the way is skipped
    assert resolve_run_path(cfg, acc) == Path(f"runs/exp-{STAMP}-4")
    assert sorted(p.name for p in (in_tmp / "runs").iterdir() if p.is_dir()) == \
        [f"exp-{STAMP}", f"exp-{STAMP}-2", f"exp-{STAMP}-4"]
    assert not any((in_tmp / "runs" / f"exp-{STAMP}").iterdir())  # claimed empty


def test_a_config_without_a_name_is_called_run(in_tmp, acc):
    assert resolve_run_path(cfg_of("run.dir=auto"), acc) == Path(f"runs/run-{STAMP}")
    assert (in_tmp / "runs" / f"run-{STAMP}").is_dir()


def test_unclaimable_auto_run_dir_is_one_line(in_tmp, acc):
    (in_tmp / "runs").write_text("not a directory")
    with pytest.raises(UserError) as info:
        resolve_run_path(cfg_of("run.dir=auto", "name=exp"), acc)
    assert str(info.value) == (f"run.dir=auto: cannot create runs/exp-{STAMP} (File exists); run from a writable "
                               "directory or set run.dir")


def test_slurm_names_the_directory_after_the_job_and_creates_nothing(in_tmp, acc, monkeypatch):
    cfg = cfg_of("run.dir=auto", "name=exp")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_JOB_ID", "78")  # an array task's own job id: not the one a requeue keeps
    assert resolve_run_path(cfg, acc) == resolve_run_path(cfg, acc) == Path("runs/exp-77_3")
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert resolve_run_path(cfg, acc) == Path("runs/exp-78")
    assert not (in_tmp / "runs").exists()  # the trainer's RunDir creates it
    monkeypatch.setenv("SLURM_JOB_ID", "")  # empty: outside SLURM
    assert resolve_run_path(cfg, acc) == Path(f"runs/exp-{STAMP}") and (in_tmp / "runs" / f"exp-{STAMP}").is_dir()


def test_an_explicit_run_dir_is_used_as_written(in_tmp, acc):
    assert resolve_run_path(cfg_of("run.dir=some/where/../run"), acc) == Path("some/where/../run")
    assert not (in_tmp / "some").exists()


# -- RunDir -------------------------------------------------------------------------------------------------------


def test_run_dir_creates_and_locks_its_directory(tmp_path, acc):
    path = tmp_path / "a" / "run"
    first = RunDir(path, acc)
    try:
        assert path.is_dir()
        holder = f"pid {os.getpid()} on host {socket.gethostname()}"
        assert (path / ".lock").read_text() == holder + "\n"
        with pytest.raises(UserError) as info:
            RunDir(path, acc)
        assert str(info.value) == (f"run.dir {path} is in use by {holder}; wait for it to finish or use another "
                                   "directory")
    finally:
        first.close()
    RunDir(path, acc).close()  # free again once closed
    first.close()  # closing twice is harmless


def test_run_dir_that_cannot_be_created_is_one_line(tmp_path, acc):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError) as info:
        RunDir(tmp_path / "file" / "run", acc)
    assert str(info.value) == f"run.dir {tmp_path / 'file' / 'run'}: cannot create it (Not a directory)"


@pytest.fixture
def run(tmp_path, acc):
    rd = RunDir(tmp_path / "run", acc)
    yield rd
    rd.close()


def test_write_config_is_what_a_checkpoint_reads_back(run):
    cfg = cfg_of("name=exp", "train.lr_g=0.001")
    run.write_config(cfg)
    assert (run.path / "config.yaml").read_text() == dump_config(cfg)
    assert saved_config(run.path) == cfg


def test_rank_report_records_the_world_and_the_weights(run):
    torch.manual_seed(0)
    g, d = torch.nn.Linear(3, 2), torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    run.write_rank_report(7, g, d)
    report = json.loads((run.path / "ranks" / "rank_0.json").read_text())
    assert {k: report[k] for k in ("rank", "world_size", "step", "device", "backend")} == \
        {"rank": 0, "world_size": 1, "step": 7, "device": "cpu", "backend": None}
    assert (report["g_sha256"], report["d_sha256"]) == (state_dict_sha256(g), state_dict_sha256(d))
    assert report["g_sha256"] != report["d_sha256"] and len(report["g_sha256"]) == 64
    with torch.no_grad():
        g.bias.add_(1)
    run.write_rank_report(8, g, d)
    again = json.loads((run.path / "ranks" / "rank_0.json").read_text())
    assert again["step"] == 8 and again["g_sha256"] == state_dict_sha256(g) != report["g_sha256"]
    assert again["d_sha256"] == report["d_sha256"]


def test_resume_point_of_a_new_run_dir(run):
    assert run.resume_point(cfg_of("resume=never")) is None
    assert run.resume_point(cfg_of("resume=auto")) is None


def test_resume_never_refuses_a_run_dir_with_checkpoints(run):
    seal(run.path / "checkpoints" / "step_0000010", cfg_of(), 10)
    with pytest.raises(UserError) as info:
        run.resume_point(cfg_of("resume=never"))
    assert str(info.value) == (f"resume=never but {run.path} already has checkpoints (step_0000010); use another "
                               "run.dir, or resume=auto")


def test_resume_auto_picks_the_newest_intact_checkpoint_of_the_same_experiment(run):
    saved = cfg_of("train.steps=10")
    seal(run.path / "checkpoints" / "step_0000010", saved, 10)
    newest = seal(run.path / "checkpoints" / "step_0000020", saved, 20)
    # more steps, other logging and a moved data.dir are the same experiment
    assert run.resume_point(cfg_of("train.steps=50", "log.every=1", "data.dir=/elsewhere")) == newest
    (newest / CONFIG_FILE).write_text(dump_config(saved).replace("steps: 10", "steps: 99"))  # damaged
    assert run.resume_point(cfg_of("train.steps=50")) == run.path / "checkpoints" / "step_0000010"


def test_resume_auto_refuses_another_experiment(run):
    seal(run.path / "checkpoints" / "step_0000010", cfg_of("train.lr_d=0.0004"), 10)
    with pytest.raises(UserError) as info:
        run.resume_point(cfg_of("train.lr_d=0.0002", "seed=7"))
    assert str(info.value) == (
        f"cannot resume {run.path}: the config differs in seed (0 -> 7), train.lr_d (0.0004 -> 0.0002); use a "
        "new run.dir, or resume=<checkpoint dir> to continue from it with the new values on purpose")


def test_explicit_resume_takes_new_values_but_not_another_model(run, tmp_path):
    ckpt = seal(tmp_path / "other" / "checkpoints" / "step_0000005", cfg_of("train.lr_d=0.0004"), 5)
    assert run.resume_point(cfg_of(f"resume={ckpt}", "train.lr_d=0.0002", "seed=7")) == ckpt
    assert run.resume_point(cfg_of(f"resume={tmp_path / 'other'}")) == ckpt  # a run directory: its newest
    with pytest.raises(UserError) as info:
        run.resume_point(cfg_of(f"resume={ckpt}", "model.z_dim=8"))
    assert str(info.value) == (f"cannot resume {ckpt}: it was trained with a different model.z_dim; use a new "
                               "run.dir (or the original config)")
