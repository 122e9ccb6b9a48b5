"""distgan.sweep in-process on sweep files and run directories in tmp_path: `load_sweep` (grid expansion order,
trial lists, the default name, each one-line refusal), `render` round trips through the override parser,
trial overrides, slugs and directories, `check_trials`, the sweep.json manifest, `default_root`, `valid_fid`,
and `summarize` reading hand-made runs (checkpoint state, status, NaN/negative/inf FIDs never best).
tests/test_sweep.py has the CLI, the metrics.jsonl NaN ranking, real training runs and the SLURM array job."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from distgan.config import load_config, parse_override
from distgan.errors import UserError
from distgan.sweep import (
    MANIFEST,
    default_root,
    format_summary,
    load_sweep,
    render,
    summarize,
    trial_slug,
    valid_fid,
    write_manifest,
)

BASE = str(REPO / "configs" / "debug.yaml")


def sweep_file(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


# -- load_sweep ---------------------------------------------------------------------------------------------------


def test_grid_is_every_combination_in_key_order_the_last_key_fastest(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path / "g.yaml", {
        "base": BASE, "overrides": ["train.steps=3", "log.every=1"],
        "grid": {"train.lr_g": [0.1, 0.2], "loss.kind": ["bce", "hinge", "wgan-gp"], "seed": [7]}}))
    assert (sweep.name, sweep.base, sweep.fixed, sweep.path) == ("g", Path(BASE), ["train.steps=3", "log.every=1"],
                                                                tmp_path / "g.yaml")
    assert sweep.trials == [{"train.lr_g": lr, "loss.kind": kind, "seed": 7}
                            for lr in (0.1, 0.2) for kind in ("bce", "hinge", "wgan-gp")]
    assert sweep.trial_overrides(4) == ["train.steps=3", "log.every=1", "train.lr_g=0.2", "loss.kind=hinge", "seed=7"]
    assert sweep.trial_dir(4, "R") == Path("R/g/4-lr_g=0.2-kind=hinge-seed=7")


def test_a_trial_list_keeps_its_order_and_its_empty_trials(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path / "t.yaml", {"name": "lst", "base": BASE, "trials": [
        {"model.g_hidden": [8, 16]}, {}, {"augment.policy": "", "log.with": []}]}))
    assert sweep.trials == [{"model.g_hidden": [8, 16]}, {}, {"augment.policy": "", "log.with": []}]
    assert [sweep.trial_overrides(i) for i in range(3)] == [
        ["model.g_hidden=[8, 16]"], [], ["augment.policy=''", "log.with=[]"]]
    assert [sweep.trial_dir(i, "/r").name for i in range(3)] == ["0-g_hidden=8,16", "1", "2-policy=-with"]
    cfg = load_config(BASE, sweep.train_args(2, "/r"))
    assert (cfg.augment.policy, cfg.log.with_, cfg.run.dir) == ("", [], "/r/lst/2-policy=-with")


@pytest.mark.parametrize("stem, name", [("my sweep!", "my-sweep-"), (".hidden", "hidden"), ("__", "sweep")])
def test_the_default_name_is_the_files_stem_made_safe(tmp_path, stem, name):
    assert load_sweep(sweep_file(tmp_path / f"{stem}.yaml", {"base": BASE, "trials": [{}]})).name == name


def test_trial_directories_are_zero_padded_and_stable(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path / "w.yaml", {"base": BASE, "grid": {"seed": list(range(11))}}))
    assert [sweep.trial_dir(i, tmp_path).name for i in (0, 9, 10)] == ["00-seed=0", "09-seed=9", "10-seed=10"]
    again = load_sweep(tmp_path / "w.yaml")
    assert [again.trial_dir(i, tmp_path) for i in range(11)] == [sweep.trial_dir(i, tmp_path) for i in range(11)]


def test_trial_slug_keeps_path_safe_characters_and_stops_at_80():
    assert trial_slug({"train.betas": [0.0, 0.9], "name": "a/b c", "log.with": ["wandb"]}) == \
        "betas=0.0,0.9-name=abc-with=wandb"
    long = trial_slug({f"k{i}": "v" * 9 for i in range(10)})
    assert len(long) <= 80 and long.startswith("k0=vvvvvvvvv-k1=") and not long.endswith(("-", "="))
    assert trial_slug({}) == ""


def test_index_out_of_range(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path / "r.yaml", {"base": BASE, "grid": {"seed": [0, 1, 2]}}))
    for index in (3, -1):
        with pytest.raises(UserError) as info:
            sweep.trial(index)
        assert str(info.value) == (f"--index {index} is out of range: {tmp_path / 'r.yaml'} has 3 trial(s), "
                                   "indices 0 to 2 (sbatch --array=0-2)")


def test_train_args_check_the_trial_against_the_base_config(tmp_path):
    path = sweep_file(tmp_path / "a.yaml", {"base": BASE, "trials": [{"train.lr_g": 5.0}, {"ema.decay": 0.5}]})
    sweep = load_sweep(path)
    with pytest.raises(UserError) as info:
        sweep.train_args(0, "R")
    assert str(info.value) == f"{path}, trial 0: config key 'train.lr_g': must be at most 1, got 5.0"
    assert sweep.train_args(1, "R") == ["ema.decay=0.5", "run.dir=R/a/1-decay=0.5"]


def refusal(tmp_path: Path, data: dict | str) -> str:
    path = sweep_file(tmp_path / "bad.yaml", data)
    with pytest.raises(UserError) as info:
        load_sweep(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"sweep file {path}"), message
    return message[len(f"sweep file {path}"):]


@pytest.mark.parametrize("data, rest", [
    ("- a\n- b\n", ": the top level must be a mapping (name, base, overrides, grid or trials)"),
    ("base: [unclosed\n", " is not valid YAML"),
    ({"base": BASE, 1: 2, "grid": {"seed": [0]}}, ": unknown key 1 (known: name, base, overrides, grid, trials)"),
    ({"name": "a b", "base": BASE, "grid": {"seed": [0]}}, ": name 'a b' must be letters, digits, '.', '_' or '-'"),
    ({"name": "x" * 101, "base": BASE, "grid": {"seed": [0]}}, f": name '{'x' * 101}' must be letters, digits, "
                                                               "'.', '_' or '-'"),
    ({"name": True, "base": BASE, "grid": {"seed": [0]}}, ": name True must be letters, digits, '.', '_' or '-'"),
    ({"grid": {"seed": [0]}}, ": `base` must name the training config, e.g. base: configs/debug.yaml"),
    ({"base": ["a"], "grid": {"seed": [0]}}, ": `base` must name the training config, e.g. base: configs/debug.yaml"),
    ({"base": BASE, "overrides": "seed=1", "grid": {"seed": [0]}},
     ": `overrides` must be a list of key=value strings"),
    ({"base": BASE, "overrides": ["seed"], "grid": {"seed": [0]}}, ": `overrides` must be a list of key=value strings"),
    ({"base": BASE, "overrides": ["train..lr=1"], "grid": {"seed": [0]}},
     ", overrides: 'train..lr' is not a dotted config key such as train.lr_g"),
    ({"base": BASE, "overrides": ["run.dir=x"], "grid": {"seed": [0]}},
     ", overrides: run.dir is set by the sweep (ROOT/<name>/<index>-<values>); remove it"),
    ({"base": BASE}, ": give exactly one of `grid` (key: [values]) or `trials` (a list)"),
    ({"base": BASE, "grid": {}}, ": `grid` must map config keys to lists of values"),
    ({"base": BASE, "grid": [1]}, ": `grid` must map config keys to lists of values"),
    ({"base": BASE, "grid": {"seed": 3}}, ": grid key seed needs a non-empty list of values"),
    ({"base": BASE, "grid": {3: [1]}}, ", grid: 3 is not a dotted config key such as train.lr_g"),
    ({"base": BASE, "grid": {"a": list(range(400)), "b": list(range(400))}},
     ": the grid has 160000 trials, more than 100000"),
    ({"base": BASE, "trials": []}, ": `trials` must be a non-empty list of mappings (key: value)"),
    ({"base": BASE, "trials": [{}, "seed=1"]}, ": `trials` must be a non-empty list of mappings (key: value)"),
    ({"base": BASE, "trials": [{}, {"x-y": 1}]}, ", trial 1: 'x-y' is not a dotted config key such as train.lr_g"),
])
def test_bad_sweep_files_are_one_line(tmp_path, data, rest):
    assert refusal(tmp_path, data) == rest


def test_a_base_that_is_not_a_file(tmp_path):
    assert refusal(tmp_path, {"base": str(tmp_path), "grid": {"seed": [0]}}) == (
        f": base config {tmp_path} not found (paths are relative to the repo root, where you run distgan and sbatch)")


def test_a_sweep_file_that_cannot_be_read(tmp_path):
    for path, message in ((tmp_path / "none.yaml", f"sweep file {tmp_path / 'none.yaml'} not found (see "
                                                   "configs/sweeps/)"),
                          (tmp_path, f"cannot read sweep file {tmp_path}: Is a directory")):
        with pytest.raises(UserError) as info:
            load_sweep(path)
        assert str(info.value) == message
    (tmp_path / "bin.yaml").write_bytes(b"base: \xff\n")
    with pytest.raises(UserError, match=r"^cannot read sweep file .*bin\.yaml: 'utf-8' codec can't decode"):
        load_sweep(tmp_path / "bin.yaml")


def test_values_that_are_not_one_override_are_refused(tmp_path):
    for value, shown in (("a\nb", r"'a\nb'"), (float("nan"), "nan")):
        path = sweep_file(tmp_path / "v.yaml", {"base": BASE, "grid": {"train.lr_g": [value]}})
        with pytest.raises(UserError) as info:
            load_sweep(path)
        assert str(info.value) == (f"sweep value {shown} cannot be written as one override; use a plain number, "
                                   "string, boolean or list")


# -- render -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "1e-4", 0.0001, 1.0, 3, 10**20, True, "true", "yes", "no", "null", "~", None, "", [8, 16], [True, 1],
    {"a": [1]}, "a: b", "#x", "- x", "[1", "{a}", "x # y", " lead", "é", "0x10", "1_000", "2001-01-01", "*x",
    "&x", "!x", "|", "a\tb", "hinge",
])
def test_render_reads_back_as_the_same_value(value):
    text = render(value)
    key, back = parse_override(f"k={text}")
    assert key == ["k"] and back == value and type(back) is type(value) and "\n" not in text


def test_render_keeps_plain_text_plain():
    assert [render(v) for v in ("hinge", "1e-4", 0.0001, True, None, [0.0, 0.9], "true", "")] == \
        ["hinge", "1e-4", "0.0001", "true", "null", "[0.0, 0.9]", "'true'", "''"]


# -- checking every trial -------------------------------------------------------------------------------------------


def test_check_trials_names_at_most_three_bad_trials(tmp_path):
    path = sweep_file(tmp_path / "c.yaml", {"base": BASE, "trials": [
        {"train.lr_g": 2.0}, {"seed": -1}, {}, {"model.zdim": 3}, {"ema.decay": 1}, {"loss.kind": "x"}]})
    with pytest.raises(UserError) as info:
        load_sweep(path).check_trials(tmp_path)
    assert str(info.value) == (
        f"sweep file {path}: 5 of 6 trials are invalid: trial 0: config key 'train.lr_g': must be at most 1, got "
        "2.0; trial 1: config key 'seed': must be at least 0, got -1; trial 3: unknown config key 'model.zdim' "
        "(known keys here: arch, cluster_images, clusters, conditional, d_hidden, d_width, g_hidden, g_width, "
        "image_shape, num_classes, recluster_every, spectral_norm, sync_batchnorm, z_dim); did you mean "
        "'model.z_dim'?; and 2 more")


def test_check_trials_warns_once_per_repeated_trial(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path / "rep.yaml", {"base": BASE, "trials": [
        {}, {"seed": 0}, {"seed": 1}, {}, {"seed": 1, "name": "other"}]}))
    assert sweep.check_trials(tmp_path) == [  # debug.yaml has seed 0; `name` is a label, but part of the config
        "trial 1 trains the same config as trial 0 (seed=0): the run is repeated",
        "trial 3 trains the same config as trial 0 (the base config): the run is repeated"]
    distinct = load_sweep(sweep_file(tmp_path / "d.yaml", {"base": BASE, "grid": {"seed": [0, 1]}}))
    assert distinct.check_trials(tmp_path) == []


# -- sweep.json and the run root --------------------------------------------------------------------------------------


def test_manifest_lists_every_trial_and_is_rewritten_only_when_it_changes(tmp_path):
    path = sweep_file(tmp_path / "m.yaml", {"base": BASE, "overrides": ["train.steps=2"],
                                            "grid": {"seed": [0, 1]}})
    sweep, root = load_sweep(path), tmp_path / "runs"
    written = write_manifest(sweep, root)
    assert written == root / "m" / MANIFEST
    assert json.loads(written.read_text()) == {
        "format": "distgan-sweep/1", "name": "m", "sweep_file": str(path), "base": BASE,
        "overrides": ["train.steps=2"],
        "trials": [{"index": i, "values": {"seed": i}, "overrides": ["train.steps=2", f"seed={i}"],
                    "run_dir": f"{i}-seed={i}"} for i in (0, 1)]}
    inode = written.stat().st_ino
    assert write_manifest(sweep, root) == written and written.stat().st_ino == inode  # every array task: no rewrite
    sweep.fixed.append("log.every=1")
    write_manifest(sweep, root)
    assert json.loads(written.read_text())["overrides"] == ["train.steps=2", "log.every=1"]


def test_default_root(monkeypatch):
    monkeypatch.delenv("DISTGAN_RUN_ROOT", raising=False)
    assert default_root() == "runs"
    monkeypatch.setenv("DISTGAN_RUN_ROOT", "")
    assert default_root() == "runs"
    monkeypatch.setenv("DISTGAN_RUN_ROOT", "/scratch/me")
    assert default_root() == "/scratch/me"


# -- the summary ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, fid", [
    (0, 0.0), (3, 3.0), (2.5, 2.5), (1e300, 1e300), (float("nan"), None), (float("inf"), None),
    (float("-inf"), None), (-0.5, None), (-1, None), (True, None), (False, None), ("3", None), (None, None),
    ([1.0], None), (10**400, None),
])
def test_valid_fid(value, fid):
    assert valid_fid(value) == fid


def run_with(root: Path, name: str, *, steps: int | None = 4, step: int | None = None, best_fid=None) -> Path:
    """A run directory as the trainer leaves it: config.yaml (train.steps) and, at `step`, a sealed checkpoint
    whose trainer_state.json records `best_fid` (json.dumps writes NaN/Infinity literals)."""
    run = root / name
    run.mkdir(parents=True)
    if steps is not None:
        (run / "config.yaml").write_text(yaml.safe_dump({"train": {"steps": steps}}))
    if step is not None:
        ckpt = run / "checkpoints" / f"step_{step:07d}"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text(json.dumps({"state": {"step": step, "best_fid": best_fid}}))
        (ckpt / "COMPLETE").write_text("{}")
    return run


def test_summary_ranks_checkpoint_fids_and_never_a_nan_negative_or_inf_one(tmp_path):
    root = tmp_path / "sw"
    run_with(root, "0-a", step=4, best_fid=float("nan"))
    run_with(root, "1-b", step=4, best_fid=-2.0)
    run_with(root, "2-c", step=2, best_fid=9.0)
    run_with(root, "3-d", step=4, best_fid=float("inf"))
    run_with(root, "4-e", step=4, best_fid=1.5)
    run_with(root, "5-f", step=4, best_fid=9.0)  # ties: by index
    rows = summarize(root)
    assert [(r["index"], r["best_fid"], r["status"], r["step"]) for r in rows] == [
        (4, 1.5, "finished", 4), (2, 9.0, "stopped", 2), (5, 9.0, "finished", 4), (0, None, "finished", 4),
        (1, None, "finished", 4), (3, None, "finished", 4)]
    assert all(r["best_step"] is None and r["scores"] == {} for r in rows)  # no metrics.jsonl
    table = format_summary(rows)
    assert "nan" not in table.lower() and "inf" not in table.lower() and "-2" not in table


def test_summary_status_and_trials_not_started(tmp_path):
    root = tmp_path / "sw"
    run_with(root, "0-seed=0", step=4)
    run_with(root, "1-seed=1", step=2)
    run_with(root, "2-seed=2")  # config.yaml, no checkpoint yet
    run_with(root, "9-stray", steps=None, step=3)  # not in sweep.json: its index from its name, no step target
    (root / "notes").mkdir()  # neither config.yaml nor checkpoints/: not a trial
    manifest = {"trials": [{"index": i, "values": {"seed": i}, "run_dir": f"{i}-seed={i}"} for i in range(4)]}
    (root / MANIFEST).write_text(json.dumps(manifest))
    rows = {r["trial"]: r for r in summarize(root)}
    assert {name: (r["index"], r["status"], r["step"], r["steps"], r["overrides"]) for name, r in rows.items()} == {
        "0-seed=0": (0, "finished", 4, 4, "seed=0"), "1-seed=1": (1, "stopped", 2, 4, "seed=1"),
        "2-seed=2": (2, "no checkpoint", 0, 4, "seed=2"), "3-seed=3": (3, "not started", 0, None, "seed=3"),
        "9-stray": (9, "stopped", 3, None, "")}
    assert rows["3-seed=3"]["run_dir"] == str(root / "3-seed=3") and not (root / "3-seed=3").exists()
    assert [r["trial"] for r in summarize(root)] == ["0-seed=0", "1-seed=1", "2-seed=2", "3-seed=3", "9-stray"]


def test_summary_marks_a_locked_run_as_running(tmp_path):
    from distgan.locks import DirLock

    root = tmp_path / "sw"
    run = run_with(root, "0-a", step=4)
    with DirLock(run, "test"):
        assert summarize(root)[0]["status"] == "running"
    assert summarize(root)[0]["status"] == "finished"  # released: the lock file alone means nothing


def test_summary_of_a_root_without_trials_is_one_line(tmp_path):
    with pytest.raises(UserError) as info:
        summarize(tmp_path / "absent")
    assert str(info.value) == f"{tmp_path / 'absent'} is not a directory; pass the sweep's run root, e.g. " \
                              "runs/<sweep name>"
    (tmp_path / "empty" / "x").mkdir(parents=True)
    with pytest.raises(UserError) as info:
        summarize(tmp_path / "empty")
    assert str(info.value) == f"{tmp_path / 'empty'} holds no sweep trials (no sweep.json and no run directories)"


def test_summary_survives_an_unreadable_run_config(tmp_path):
    root = tmp_path / "sw"
    run_with(root, "0-a", steps=None, step=4, best_fid=2.0)
    (root / "0-a" / "config.yaml").write_text("train: {steps: [unclosed\n")
    run_with(root, "1-b", steps=None, step=4)
    (root / "1-b" / "config.yaml").write_bytes(b"\xff\xfe")
    rows = summarize(root)
    assert [(r["index"], r["status"], r["steps"], r["best_fid"]) for r in rows] == [
        (0, "stopped", None, 2.0), (1, "stopped", None, None)]
    assert os.path.exists(root / "0-a" / "config.yaml")


@pytest.mark.parametrize("text", ["train:\n", "train: 5\n", "train: {steps: many}\n", "train: {steps: [4]}\n"])
def test_summary_survives_a_run_config_of_another_shape(tmp_path, text):
    root = tmp_path / "sw"
    run_with(root, "0-a", steps=None, step=4)
    (root / "0-a" / "config.yaml").write_text(text)
    run_with(root, "1-b", step=4, best_fid=3.0)
    rows = summarize(root)
    assert [(r["index"], r["status"]) for r in rows] == [(1, "finished"), (0, "stopped")]


@pytest.mark.parametrize("text", [
    "[1, 2]", '{"state": [1]}', '{"state": {"step": "abc"}}', '{"state": {"step": 1e400}}', '{"state": {"step": -5}}',
    '{"state": {"step": 1.5}}', "[" * 100_000, "not json"], ids=lambda text: text[:30])
def test_summary_flags_a_damaged_trainer_state_and_goes_on(tmp_path, text):
    root = tmp_path / "sw"
    run_with(root, "0-a", step=4)
    (root / "0-a" / "checkpoints" / "step_0000004" / "trainer_state.json").write_text(text)
    run_with(root, "1-b", step=4, best_fid=3.0)
    rows = summarize(root)
    assert [(r["index"], r["status"], r["step"], r["best_fid"]) for r in rows] == [
        (1, "finished", 4, 3.0), (0, "damaged trainer_state.json", None, None)]
    assert "damaged trainer_state.json" in format_summary(rows)


@pytest.mark.parametrize("manifest", [
    {"trials": 5}, {"trials": "abc"}, {"trials": [{"run_dir": ["x"]}]}, {"trials": [{"nope": 1}]}, [1, 2],
    {"trials": [{"run_dir": "0-a", "values": [1, 2]}]}, {"trials": [{"run_dir": "0-a", "values": {}, "index": [1]}]},
    {"trials": [{"run_dir": "0-a", "values": {"name": "a\nb", "x": float("nan")}, "index": True}]},
    {"trials": [{"run_dir": "../escape", "index": 7}, {"run_dir": "", "index": 8}, "0-a"]},
])
def test_summary_survives_a_damaged_sweep_json(tmp_path, manifest):
    root = tmp_path / "sw"
    run_with(root, "0-a", step=2)
    run_with(root, "1-b", step=4, best_fid=3.0)
    (root / MANIFEST).write_text(json.dumps(manifest))
    rows = summarize(root)
    assert [(r["trial"], r["index"], r["status"]) for r in rows] == [("1-b", 1, "finished"), ("0-a", 0, "stopped")]
    table = format_summary(rows)
    assert len(table.splitlines()) == 3 and "escape" not in table
    assert rows[1]["overrides"] in ("", "name='a\\nb' x=nan")


def test_summary_streams_metrics_jsonl(tmp_path):
    """A metrics.jsonl of hundreds of MB (here a 64 MB line of NULs, sparse, between rows) was read whole:
    3 GB was a MemoryError. It is streamed, a line at a time, and the best valid FID still found."""
    import tracemalloc

    root = tmp_path / "sw"
    run = run_with(root, "0-a", step=4)
    rows = [{"step": 2, "eval/fid": 5.0, "eval/kid": 0.5}, {"step": 3, "eval/fid": float("nan")}]
    with open(run / "metrics.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.truncate(f.tell() + (64 << 20))  # a hole: NUL bytes, no newline
        f.seek(0, os.SEEK_END)
        f.write("\n" + json.dumps({"step": 4, "eval/fid": 4.0, "eval/kid": 0.25}) + "\n{\"step\": 5, \"eval/fid\": 1")
    tracemalloc.start()
    try:
        row, = summarize(root)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (row["best_fid"], row["best_step"], row["scores"]) == (4.0, 4, {"kid": 0.25})  # the torn last line: no row
    assert peak < 8 << 20, f"peak {peak >> 20} MiB while summarising a 64 MB metrics.jsonl"


def test_summary_skips_a_fifo_sweep_json_and_metrics_jsonl(tmp_path):
    """Opening a FIFO blocks until a writer comes: a sweep.json or metrics.jsonl that is one is no file."""
    root = tmp_path / "sw"
    run = run_with(root, "0-a", step=4, best_fid=2.0)
    os.mkfifo(root / MANIFEST)
    os.mkfifo(run / "metrics.jsonl")
    assert [(r["trial"], r["status"], r["best_fid"]) for r in summarize(root)] == [("0-a", "finished", 2.0)]
