"""Server-free sweeps: sweep files, `distgan sweep overrides/list/summary`, and launch/slurm/sweep.sbatch as a
real 2-task array job on the local SLURM cluster (one task preempted with USR1, requeued and resumed).

`distgan sweep overrides/list` run in-process here (distgan.cli.main with the repository as the working
directory, output captured by capsys): they need no process boundary. Training, the alias bomb (an address-space
cap), the W&B agent and the SLURM job stay real processes. tests/test_sweep_unit.py has distgan.sweep's units."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO, child_env, run_cli, timed_call, yaml_alias_bomb
from slurm_support import job_info

from distgan.cli import main
from distgan.config import load_config
from distgan.sweep import format_summary, summarize, summary_table, write_summary_csv


def write_sweep(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def in_repo(monkeypatch) -> None:
    """The repository as the working directory, as for `distgan` and sbatch (sweep files name configs/...)."""
    monkeypatch.chdir(REPO)


def cli(capsys, args: list[str]) -> tuple[int, str, str]:
    """`distgan ARGS` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed before
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def trial_args(capsys, sweep: Path, index: int, root: Path) -> list[str]:
    code, out, err = cli(capsys, ["sweep", "overrides", str(sweep), "--index", str(index), "--root", str(root),
                                  "--with-config"])
    assert code == 0 and err == "", err
    return out.splitlines()


@pytest.mark.usefixtures("in_repo")
def test_grid_trials_dirs_and_values_reach_the_config(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.yaml", {
        "name": "grid", "base": "configs/debug.yaml", "overrides": ["train.steps=7"],
        "grid": {"train.betas": [[0.0, 0.9], [0.5, 0.999]], "loss.kind": ["bce", "wgan-gp"],
                 "mixed_precision": ["no"]}})
    root = tmp_path / "runs"
    expected = [([0.0, 0.9], "bce"), ([0.0, 0.9], "wgan-gp"), ([0.5, 0.999], "bce"), ([0.5, 0.999], "wgan-gp")]
    dirs = []
    for i, (betas, kind) in enumerate(expected):
        args = trial_args(capsys, sweep, i, root)
        assert args[0] == "configs/debug.yaml" and args[-1].startswith(f"run.dir={root}/grid/{i}-")
        cfg = load_config(args[0], args[1:])  # what `distgan train --config BASE ARGS...` gets
        assert (cfg.train.betas, cfg.loss.kind, cfg.mixed_precision, cfg.train.steps) == (betas, kind, "no", 7)
        dirs.append(Path(cfg.run.dir).name)
    assert dirs == ["0-betas=0.0,0.9-kind=bce-mixed_precision=no", "1-betas=0.0,0.9-kind=wgan-gp-mixed_precision=no",
                    "2-betas=0.5,0.999-kind=bce-mixed_precision=no",
                    "3-betas=0.5,0.999-kind=wgan-gp-mixed_precision=no"]
    # The same file and index give the same directory (what a requeued task needs); sweep.json lists all.
    assert trial_args(capsys, sweep, 2, root)[-1] == f"run.dir={root}/grid/{dirs[2]}"
    manifest = json.loads((root / "grid" / "sweep.json").read_text())
    assert [t["run_dir"] for t in manifest["trials"]] == dirs
    code, out, err = cli(capsys, ["sweep", "list", str(sweep), "--root", str(root)])
    listed = out.splitlines()
    assert code == 0 and err == "", err
    assert "sbatch --array=0-3 launch/slurm/sweep.sbatch" in listed[0] and len(listed) == 5


@pytest.mark.usefixtures("in_repo")
def test_trials_list_and_yaml_1_1_numbers(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "lr.yaml", {"base": "configs/debug.yaml", "trials": [
        {"train.lr_g": "1e-4"}, {"train.lr_g": 0.0003, "model.g_hidden": [8, 16]}, {}]})
    root = tmp_path / "runs"
    first, second, third = (trial_args(capsys, sweep, i, root) for i in range(3))
    assert first[1:] == ["train.lr_g=1e-4", f"run.dir={root}/lr/0-lr_g=1e-4"]
    assert load_config(first[0], first[1:]).train.lr_g == 1e-4
    cfg = load_config(second[0], second[1:])
    assert (cfg.train.lr_g, cfg.model.g_hidden) == (0.0003, [8, 16])
    assert third[1:] == [f"run.dir={root}/lr/2"]


@pytest.mark.parametrize("data, index, message", [
    ({"base": "configs/debug.yaml", "grid": {"train.lr_gg": [0.1]}}, 0,
     "trial 0: unknown config key 'train.lr_gg'"),
    ({"base": "configs/debug.yaml", "grid": {"train.lr_g": [5.0]}}, 0, "config key 'train.lr_g': must be at most 1"),
    ({"base": "configs/debug.yaml", "grid": {"train.lr_g": [0.1, 0.2]}}, 2, "--index 2 is out of range"),
    ({"base": "configs/debug.yaml", "grid": {"train.lr_g": [0.1]}, "trials": [{}]}, 0, "exactly one of `grid`"),
    ({"base": "configs/debug.yaml", "grid": {"run.dir": ["x"]}}, 0, "run.dir is set by the sweep"),
    ({"base": "configs/debug.yaml", "grid": {"train.lr_g": []}}, 0, "needs a non-empty list"),
    ({"base": "configs/nope.yaml", "grid": {"train.lr_g": [0.1]}}, 0, "base config configs/nope.yaml not found"),
    ({"base": "configs/debug.yaml", "grids": {}}, 0, "unknown key 'grids'"),
    ({"base": "configs/debug.yaml", "trials": [{"train.lr_g": "a\nb"}]}, 0, "cannot be written as one override"),
    # `$` with re.match also matched before a trailing newline: this name passed, and went into run paths
    ({"name": "lr\n", "base": "configs/debug.yaml", "grid": {"train.lr_g": [0.1]}}, 0, r"name 'lr\n' must be"),
])
@pytest.mark.usefixtures("in_repo")
def test_bad_sweeps_are_one_line(tmp_path, capsys, data, index, message):
    sweep = write_sweep(tmp_path / "bad.yaml", data)
    code, out, err = cli(capsys, ["sweep", "overrides", str(sweep), "--index", str(index), "--root", str(tmp_path)])
    assert code == 2 and out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distgan sweep: error: ") and message in lines[0], err
    assert not (tmp_path / "bad" / "sweep.json").exists()  # a refused trial writes no manifest


@pytest.mark.usefixtures("in_repo")
def test_list_refuses_invalid_trials_and_warns_about_repeated_ones(tmp_path, capsys):
    """`sweep list` prints the sbatch line only when every trial's overrides suit the base config: else one line
    naming each bad trial's index and key; trials that train the same config get a warning line each."""
    bad = write_sweep(tmp_path / "bad.yaml", {"base": "configs/debug.yaml", "trials": [
        {"train.lr_g": 0.0001}, {"train.lr_gg": 0.1}, {}, {"train.lr_g": 5.0, "train.lr_gg": 1}]})
    code, out, err = cli(capsys, ["sweep", "list", str(bad), "--root", str(tmp_path)])
    assert code == 2 and out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"distgan sweep: error: sweep file {bad}: 2 of 4 trials are "
                                                   f"invalid: trial 1: unknown config key 'train.lr_gg'"), lines
    assert "; trial 3: " in lines[0] and "trial 0" not in lines[0] and "trial 2" not in lines[0]
    repeated = write_sweep(tmp_path / "rep.yaml", {"base": "configs/debug.yaml", "trials": [
        {"train.lr_g": 0.0001}, {"loss.kind": "hinge"}, {"train.lr_g": "1e-4"}, {}, {"loss.kind": "bce"}]})
    code, out, err = cli(capsys, ["sweep", "list", str(repeated), "--root", str(tmp_path)])
    assert code == 0
    assert out.splitlines()[0].endswith(f"sbatch --array=0-4 launch/slurm/sweep.sbatch {repeated}")
    warnings = err.strip().splitlines()
    assert warnings == [  # debug.yaml has lr_g 0.0002 by default and loss.kind bce
        "distgan sweep list: warning: trial 2 trains the same config as trial 0 (train.lr_g=1e-4): the run is "
        "repeated",
        "distgan sweep list: warning: trial 4 trains the same config as trial 3 (loss.kind=bce): the run is repeated"]


@pytest.mark.slow  # a child process capped at 2 GB of address space: without the bound the bomb fails there
@pytest.mark.parametrize("levels", [9, 10])
def test_sweep_file_alias_bomb_is_refused_at_once(tmp_path, levels):
    """Before the fix, render() compared the 9**levels values of the grid value with its YAML round trip."""
    path = tmp_path / "bomb.yaml"
    path.write_text(f"base: configs/debug.yaml\ngrid:\n  model.g_hidden: [{yaml_alias_bomb(levels)}]\n")
    error, seconds = timed_call("distgan.sweep", "load_sweep", str(path))
    assert error and "\n" not in error and error.startswith(f"sweep file {path}: ") and "aliases" in error, error
    assert seconds < 2, f"{seconds:.1f} s to refuse a {levels}-level alias bomb"


def _eval_rows(run_dir: Path, fids: list[float], *, nan_literals: bool) -> None:
    """RUN_DIR/config.yaml (train.steps 4) and metrics.jsonl with one eval row per FID, at steps 1, 2, ...

    Finite values go through MetricsFile.write, as the trainer writes them. With `nan_literals`, the rows are
    json.dumps lines in the same format that keep NaN/inf as the literals NaN/Infinity (MetricsFile writes
    null; another tool, an older distgan or a hand-edited file need not), which json.loads reads as floats.
    """
    from distgan.run.metrics_file import MetricsFile

    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"train": {"steps": 4}}))
    if not nan_literals:
        metrics = MetricsFile(run_dir, resume_step=0)
        for step, fid in enumerate(fids, 1):
            metrics.write(step, {"eval/fid": fid, "eval/kid": step / 10})
        return
    lines = [json.dumps({"step": step, "time": 1.0, "eval/fid": fid, "eval/kid": step / 10}, separators=(", ", ": "))
             for step, fid in enumerate(fids, 1)]
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))


def test_summary_never_ranks_nan_inf_or_negative_fids(tmp_path):
    """A NaN FID first in a run was its best (min() never replaces a NaN) and a negative FID ranked first;
    now such rows count as no FID: a run's best is its best valid FID, and a run without one sorts last."""
    root = tmp_path / "sw"
    _eval_rows(root / "0-a", [float("nan"), 5.0, 6.0], nan_literals=True)  # NaN first: the best is 5.0
    _eval_rows(root / "1-b", [-3.0, 8.0], nan_literals=False)  # a negative FID is no FID: the best is 8.0
    _eval_rows(root / "2-c", [float("nan"), float("inf"), float("-inf")], nan_literals=True)  # no valid FID
    _eval_rows(root / "3-d", [-1.0], nan_literals=False)  # no valid FID
    _eval_rows(root / "4-e", [7.0], nan_literals=False)
    assert "NaN" in (root / "0-a" / "metrics.jsonl").read_text()  # the defect's input, really on disk
    rows = summarize(root)
    assert [(r["index"], r["best_fid"], r["best_step"]) for r in rows] == \
        [(0, 5.0, 2), (4, 7.0, 1), (1, 8.0, 2), (2, None, None), (3, None, None)]
    assert rows[0]["scores"] == {"kid": 0.2}  # the other scores of the best row
    table = format_summary(rows).splitlines()
    assert not any(word in line.lower() for line in table for word in ("nan", "inf", "-3", "-1"))
    header, cells = summary_table(rows)
    assert [c[header.index("best_fid")] for c in cells] == ["5", "7", "8", "", ""]
    write_summary_csv(rows, tmp_path / "s.csv")
    with open(tmp_path / "s.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert [(r["index"], r["best_fid"]) for r in records] == [("0", "5"), ("4", "7"), ("1", "8"), ("2", ""),
                                                              ("3", "")]


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")
def test_summary_sorts_by_fid_and_reads_status(tmp_path, capsys, mnist_shards):
    """Three real tiny runs trained with the sweep's arguments, eval rows in their metrics.jsonl (written here
    as the trainer writes them), one run still holding its lock, one trial never started."""
    sweep = write_sweep(tmp_path / "s.yaml", {"name": "sum", "base": "configs/debug.yaml",
                                              "overrides": ["train.steps=4", "wandb.mode=disabled",
                                                            "log.progress=false", f"data.dir={mnist_shards}"],
                                              "grid": {"seed": [0, 1, 2, 3]}})
    root = tmp_path / "runs"
    run_dirs = []
    for i in range(3):
        args = trial_args(capsys, sweep, i, root)
        extra = ["train.steps=2"] if i == 2 else []  # trial 2 stops early: below train.steps when resumed
        run_cli(["train", "--config", args[0], *args[1:], *extra], timeout=300)
        run_dirs.append(Path(args[-1].split("=", 1)[1]))
    # Trial 2 ran 2 of its 4 steps: its config.yaml says 4 (as a preempted run's would).
    cfg2 = yaml.safe_load((run_dirs[2] / "config.yaml").read_text())
    cfg2["train"]["steps"] = 4
    (run_dirs[2] / "config.yaml").write_text(yaml.safe_dump(cfg2))
    rows = {0: [{"step": 2, "time": 1.0, "eval/fid": 9.5, "eval/kid": 0.5}, {"step": 4, "time": 2.0, "eval/fid": 7.0,
                                                                           "eval/kid": 0.25, "eval/is": 2.0}],
            1: [{"step": 2, "time": 1.0, "eval/fid": 3.0, "eval/kid": 0.125, "eval/is": 4.0},
                {"step": 4, "time": 2.0, "eval/fid": 3.5, "eval/kid": 0.2}]}
    for i, lines in rows.items():
        (run_dirs[i] / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    from distgan.locks import DirLock

    with DirLock(run_dirs[0], "test"):  # a live run holds its directory's lock
        proc = run_cli(["sweep", "summary", str(root / "sum"), "--csv", str(tmp_path / "s.csv")], timeout=60)
    table = proc.stdout.splitlines()
    assert table[0].split() == ["index", "trial", "status", "step", "steps", "best_fid", "best_step", "kid", "is",
                                "overrides"]
    got = [line.split() for line in table[1:5]]
    assert [r[0] for r in got] == ["1", "0", "2", "3"]  # best FID first, then no FID by index
    assert got[0][2:7] == ["finished", "4", "4", "3", "2"] and got[0][7:9] == ["0.125", "4"]
    assert got[1][2:7] == ["running", "4", "4", "7", "4"]
    assert got[2][2:5] == ["stopped", "2", "4"]
    assert got[3][2:4] == ["not", "started"]
    with open(tmp_path / "s.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert [r["index"] for r in records] == ["1", "0", "2", "3"] and records[0]["overrides"] == "seed=1"
    assert records[2]["best_fid"] == "" and records[0]["run_dir"] == str(run_dirs[1])


# -- the real array job -------------------------------------------------------------------------------------------

STEPS = 300


def _wait(what: str, predicate, timeout: float, array_job: str, logs: list[Path]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    subprocess.run(["scancel", array_job], timeout=30)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; tasks: "
                f"{[job_info(f'{array_job}_{i}') for i in (0, 1)]}\n{tails}")


@pytest.mark.slow
@pytest.mark.usefixtures("slurm")
def test_sweep_array_job_trains_each_trial_and_resumes_a_preempted_one(mnist_shards, tmp_path):
    sweep = write_sweep(tmp_path / "arr.yaml", {
        "name": "arr", "base": "configs/debug.yaml",
        "overrides": [f"train.steps={STEPS}", "log.every=10", "log.grid_every=1000", "checkpoint.every=1000",
                      "eval.every=0", "wandb.mode=offline", "dist.timeout_s=60", "log.progress=false"],
        "grid": {"train.lr_g": [0.0001, 0.0002]}})
    root = tmp_path / "runs"
    env = child_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DISTGAN_PROCS_PER_NODE="1",
                    DISTGAN_RUN_ROOT=str(root))
    submit = subprocess.run(
        ["sbatch", "--parsable", "--array=0-1", "--job-name=distgan-sweep-test", f"--output={tmp_path}/%x-%A_%a.out",
         "--time=10", "--cpus-per-task=1", "launch/slurm/sweep.sbatch", str(sweep), f"data.dir={mnist_shards}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    array_job = submit.stdout.strip().split(";")[0]
    logs = [tmp_path / f"distgan-sweep-test-{array_job}_{i}.out" for i in (0, 1)]
    run_dirs = [root / "arr" / "0-lr_g=0.0001", root / "arr" / "1-lr_g=0.0002"]
    task1 = f"{array_job}_1"
    done = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    try:
        # Task 1 is preempted as soon as it trains (its step-1 grid exists), as SLURM's USR1 would do it.
        _wait("trial 1 to train", lambda: (run_dirs[1] / "samples" / "step_0000001.png").exists(), 180,
              array_job, logs)
        subprocess.run(["scancel", "--signal=USR1", task1], check=True, timeout=30)
        _wait("trial 1's requeue", lambda: job_info(task1).get("Restarts") == "1"
              and job_info(task1).get("JobState") == "PENDING", 120, array_job, logs)
        subprocess.run(["scontrol", "update", f"JobId={task1}", "StartTime=now"], check=True, timeout=30)
        _wait("both tasks to finish", lambda: all(job_info(f"{array_job}_{i}").get("JobState") in done
                                                 for i in (0, 1)), 300, array_job, logs)
    except BaseException:
        subprocess.run(["scancel", array_job], timeout=30)
        raise
    for i in (0, 1):
        info = job_info(f"{array_job}_{i}")
        assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", \
            f"{info}\n{logs[i].read_text()[-4000:]}"
        log = logs[i].read_text()
        assert f"sweep.sbatch: {sweep} trial {i} (array job {array_job}" in log
        assert f"run.dir={run_dirs[i]}" in log and "1 node(s) x 1 process(es) (CPU, gloo)" in log
        assert (run_dirs[i] / "checkpoints" / f"step_{STEPS:07d}" / "COMPLETE").exists()
        saved = yaml.safe_load((run_dirs[i] / "config.yaml").read_text())
        assert saved["train"]["lr_g"] == [0.0001, 0.0002][i] and saved["data"]["dir"] == str(mnist_shards)

    # Trial 1: preempted, requeued under its own array task id, resumed in the same directory.
    log1 = logs[1].read_text()
    assert job_info(task1).get("Restarts") == "1"
    assert f"scontrol requeue {task1}" in log1
    assert "restart 0" in log1 and "restart 1" in log1
    stopped = int(log1.split("preempted by SIGUSR1; checkpoint saved at step ")[1].split()[0])
    assert 1 <= stopped < STEPS and f"step_{stopped:07d} at step {stopped}" in log1
    assert "restart 1" not in logs[0].read_text()

    proc = run_cli(["sweep", "summary", str(root / "arr")], timeout=60)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:7] == ["index", "trial", "status", "step", "steps", "best_fid", "best_step"]
    body = [line.split() for line in lines[1:3]]
    assert sorted(r[0] for r in body) == ["0", "1"]
    for r in body:
        # index, trial, status, step, steps, overrides: no FID column value (eval.every=0)
        assert r[2:5] == ["finished", str(STEPS), str(STEPS)] and r[5] == f"train.lr_g=0.000{int(r[0]) + 1}", r
    with open(root / "arr" / "summary.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert len(records) == 2 and all(r["best_fid"] == "" and r["status"] == "finished" for r in records)


# -- the W&B sweep config -----------------------------------------------------------------------------------------

WANDB_SWEEP = REPO / "launch" / "sweep" / "mnist_dcgan.yaml"
AGENT_PROBE = """
import json, sys, yaml
from wandb.wandb_agent import Agent
sweep_file, run_id, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
spec = yaml.safe_load(open(sweep_file))
command = list(spec["command"])
command[command.index("train") + 1:command.index("train") + 1] = sys.argv[4:]  # e.g. --print-config
agent = Agent(api=None, queue=None, sweep_id="local")  # no server: only the agent's own command building
agent._sweep_command = command
agent._command_run({"run_id": run_id, "program": spec.get("program"),
                    "args": {k: {"value": v} for k, v in values.items()}})
sys.exit(agent._run_processes[run_id].wait())
"""


def agent_run(tmp_path: Path, values: dict, *extra: str) -> subprocess.CompletedProcess:
    """wandb's Agent._command_run (the agent's code that expands `command:` macros and starts the trial) with
    `values` as the server would send them; returns the trial's output."""
    probe = tmp_path / "agent_probe.py"
    probe.write_text(AGENT_PROBE)
    return subprocess.run([str(BIN / "python"), str(probe), str(WANDB_SWEEP), "trial", json.dumps(values), *extra],
                          cwd=REPO, env=child_env(WANDB_DIR=str(tmp_path)), capture_output=True, text=True,
                          timeout=300)


def test_wandb_sweep_config_is_complete():
    spec = yaml.safe_load(WANDB_SWEEP.read_text())
    assert spec["method"] in ("grid", "random", "bayes")
    assert spec["metric"] == {"name": "eval/fid", "goal": "minimize"}
    assert spec["command"] == ["${env}", "distgan", "train", "--config", "configs/mnist_dcgan.yaml",
                               "${args_no_hyphens}"]
    params = spec["parameters"]
    assert params["eval.every"]["value"] > 0 and params["run.dir"]["value"] == "auto"  # FID logged; own run dirs
    for key, p in params.items():
        assert ("value" in p) + ("values" in p) + ("distribution" in p) == 1, key
        if "distribution" in p:
            assert p["distribution"] == "log_uniform_values" and 0 < p["min"] < p["max"], key
    # The documented way to run it from a batch job.
    assert "wandb agent --count 1" in WANDB_SWEEP.read_text()


def _corners() -> list[dict]:
    """Parameter values as the W&B server sends them (JSON numbers, strings, booleans): each end of every
    range and every listed value, plus a typical sampled float."""
    params = yaml.safe_load(WANDB_SWEEP.read_text())["parameters"]
    low, high = {}, {}
    for key, p in params.items():
        if "value" in p:
            low[key] = high[key] = p["value"]
        elif "values" in p:
            low[key], high[key] = p["values"][0], p["values"][-1]
        else:
            low[key], high[key] = float(p["min"]), float(p["max"])
    mid = {**low, "train.lr_g": 0.000123456789, "train.lr_d": 3.3e-05 * 10}
    return [low, high, mid]


@pytest.mark.parametrize("values", _corners(), ids=["low", "high", "typical"])
def test_agent_command_is_accepted_by_distgan_train(values, tmp_path):
    proc = agent_run(tmp_path, values, "--print-config")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = yaml.safe_load(proc.stdout)
    flat = {f"{section}.{k}": v for section, body in cfg.items() if isinstance(body, dict) for k, v in body.items()}
    for key, value in values.items():
        assert flat[key] == value, (key, flat[key], value)


@pytest.mark.slow
def test_agent_command_trains(tmp_path, mnist_shards):
    """The agent-built command line trains for real (tiny: a few DCGAN steps, offline W&B)."""
    values = {**_corners()[0], "train.steps": 3, "eval.every": 0, "run.dir": str(tmp_path / "run"),
              "data.dir": str(mnist_shards), "model.g_width": 8, "model.d_width": 8, "train.batch_size": 8,
              "wandb.mode": "offline", "log.progress": False}
    proc = agent_run(tmp_path, values)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished at step 3 (3 steps here" in proc.stdout
    assert (tmp_path / "run" / "checkpoints" / "step_0000003" / "COMPLETE").exists()
