"""distgan.run.resume in-process, on real files in tmp_path: which keys `resumable` lets change, the order and
text of `resume_conflicts` / `describe_conflicts` (the `limit`, how values are shown), `model_fingerprint`,
`check_same_model`'s one-line refusal, `saved_config` reading a checkpoint's config.yaml (round trip, missing,
unreadable, bad YAML, bounded YAML, a config without model.image_shape) and `refuse_all_damaged` on hand-sealed
checkpoints. (tests/test_config.py covers the resumable-key list against the real configs; not repeated here.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import yaml_alias_bomb

from distgan.config import Config, dump_config, load_config
from distgan.errors import UserError
from distgan.run.checkpoint import CONFIG_FILE, MARKER, MARKER_FORMAT
from distgan.run.resume import (
    check_same_model,
    describe_conflicts,
    model_fingerprint,
    refuse_all_damaged,
    resumable,
    resume_conflicts,
    saved_config,
)

SHAPE = "model.image_shape=[1,28,28]"
TAIL = "; use a new run.dir, or resume=<checkpoint dir> to continue from it with the new values on purpose"


def cfg_of(*overrides: str) -> Config:
    return load_config(None, [SHAPE, *overrides])


def seal(ckpt: Path, files: dict[str, bytes], step: int = 1) -> Path:
    """A checkpoint directory holding `files`, sealed with a COMPLETE marker in the documented format."""
    ckpt.mkdir(parents=True)
    listed = {}
    for rel, data in files.items():
        (ckpt / rel).write_bytes(data)
        listed[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "step": step, "files": listed}))
    return ckpt


# -- resumable keys and conflicts ---------------------------------------------------------------------------


@pytest.mark.parametrize("key, expected", [
    ("train.steps", True), ("train.nan_patience", True), ("log.every", True), ("log.with", True),
    ("checkpoint.keep", True), ("eval.classifier", True), ("wandb.entity", True), ("data.dir", True),
    ("data.num_workers", True), ("data.cache_dir", True), ("run.dir", True), ("resume", True), ("name", True),
    ("dist.timeout_s", True), ("preempt.requeue_signals", True), ("model.sync_batchnorm", True),
    # everything that shapes the weights' trajectory, and near-misses of the patterns
    ("train.lr_g", False), ("train.batch_size", False), ("train.steps_x", False), ("seed", False),
    ("mixed_precision", False), ("ema.decay", False), ("model.z_dim", False), ("loss.kind", False),
    ("augment.policy", False), ("log", False), ("resume.x", False), ("data", False), ("LOG.every", False),
    ("model.image_shape", False), ("model.num_classes", False),
])
def test_resumable(key, expected):
    assert resumable(key) is expected


def test_resume_conflicts_follow_the_new_configs_key_order():
    saved = cfg_of()
    new = cfg_of("ema.decay=0.5", "model.z_dim=8", "seed=3", "train.steps=1", "log.every=1", "augment.policy=color")
    assert resume_conflicts(saved, new) == ["seed", "model.z_dim", "augment.policy", "ema.decay"]
    assert resume_conflicts(saved, saved) == [] and describe_conflicts("r", saved, saved) is None


def test_an_unfilled_image_shape_is_a_conflict():
    """The trainer fills model.image_shape in from the data before it compares; a config that still lacks it
    differs from every saved one (saved configs always have it)."""
    assert resume_conflicts(cfg_of(), Config()) == ["model.image_shape"]
    assert describe_conflicts("runs/a", cfg_of(), Config()) == \
        "cannot resume runs/a: the config differs in model.image_shape ([1, 28, 28] -> null)" + TAIL


def test_describe_conflicts_shows_each_value_as_yaml_and_honours_the_limit():
    saved = Config()
    new = load_config(None, ["mixed_precision=bf16", "model.conditional=true", "model.num_classes=10",
                             "model.image_shape=[1,28,28]", "train.betas=[0.0, 0.9]", "ema.start_step=5"])
    assert describe_conflicts(Path("runs/b"), saved, new) == (
        "cannot resume runs/b: the config differs in mixed_precision (no -> bf16), model.conditional (false -> "
        "true), model.num_classes (null -> 10), model.image_shape (null -> [1, 28, 28]), train.betas ([0.5, 0.999] "
        "-> [0.0, 0.9]), ema.start_step (0 -> 5)" + TAIL)
    assert describe_conflicts("runs/b", saved, new, limit=2) == (
        "cannot resume runs/b: the config differs in mixed_precision (no -> bf16), model.conditional (false -> "
        "true), and 4 more" + TAIL)
    assert describe_conflicts("runs/b", saved, new, limit=6).count(" -> ") == 6  # exactly the limit: no "more"
    assert "more" not in describe_conflicts("runs/b", saved, new, limit=6)


# -- the model's fingerprint --------------------------------------------------------------------------------


def test_model_fingerprint_is_the_model_section_without_sync_batchnorm_and_the_loss_kind():
    assert model_fingerprint(cfg_of("loss.kind=hinge")) == {
        "model": {"arch": "mlp", "z_dim": 100, "g_hidden": [256, 512, 1024], "d_hidden": [1024, 512, 256],
                  "g_width": 64, "d_width": 64, "spectral_norm": False, "conditional": False, "clusters": None,
                  "recluster_every": 2000, "cluster_images": 10000, "num_classes": None, "image_shape": [1, 28, 28]},
        "loss.kind": "hinge"}
    # the loss's other values change the trajectory (a resume conflict), not the networks
    assert model_fingerprint(cfg_of("loss.gp_weight=1", "loss.r1_gamma=2")) == model_fingerprint(cfg_of())


def test_check_same_model_accepts_new_training_values():
    saved = cfg_of()
    check_same_model(cfg_of("train.lr_g=0.1", "seed=9", "ema.decay=0.5", "model.sync_batchnorm=false"), saved,
                     Path("ck"))


def test_check_same_model_names_every_differing_model_key_then_the_loss():
    saved = cfg_of("model.arch=dcgan")
    with pytest.raises(UserError) as info:
        check_same_model(cfg_of("model.arch=dcgan", "model.spectral_norm=true", "model.z_dim=8", "loss.kind=hinge",
                                "model.g_width=8"), saved, Path("runs/x/checkpoints/step_0000010"))
    assert str(info.value) == (
        "cannot resume runs/x/checkpoints/step_0000010: it was trained with a different model.z_dim, "
        "model.g_width, model.spectral_norm, loss.kind; use a new run.dir (or the original config)")
    with pytest.raises(UserError, match=r"^cannot resume ck: it was trained with a different model\.image_shape;"):
        check_same_model(load_config(None, ["model.image_shape=[3,32,32]"]), cfg_of(), Path("ck"))


# -- a checkpoint's saved config ----------------------------------------------------------------------------


def test_saved_config_reads_back_what_the_trainer_wrote(tmp_path):
    cfg = cfg_of("name=exp", "model.g_hidden=[8]", "train.lr_d=1e-4", "log.with=[]", "seed=4")
    (tmp_path / CONFIG_FILE).write_text(dump_config(cfg))
    back = saved_config(tmp_path)
    assert back == cfg and back.model.image_shape == [1, 28, 28] and back.log.with_ == []
    assert saved_config(str(tmp_path)) == cfg  # a str path too


def one_line_error(path: Path) -> str:
    with pytest.raises(UserError) as info:
        saved_config(path)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_saved_config_missing_or_unreadable(tmp_path):
    assert one_line_error(tmp_path) == f"cannot read {tmp_path / CONFIG_FILE}: No such file or directory"
    (tmp_path / CONFIG_FILE).mkdir()
    assert one_line_error(tmp_path) == f"cannot read {tmp_path / CONFIG_FILE}: Is a directory"
    (tmp_path / CONFIG_FILE).rmdir()
    (tmp_path / CONFIG_FILE).write_bytes(b"seed: 1\nname: \xff\xfe\n")
    assert one_line_error(tmp_path).startswith(f"cannot read {tmp_path / CONFIG_FILE}: 'utf-8' codec can't decode")


@pytest.mark.parametrize("text", ["model: {z_dim: [1, 2\n", "seed: 1\n  bad: indent\n", "a: !!int xyz\n"])
def test_saved_config_that_is_not_yaml(tmp_path, text):
    (tmp_path / CONFIG_FILE).write_text(text)
    assert one_line_error(tmp_path) == f"{tmp_path / CONFIG_FILE} is not valid YAML; use an earlier checkpoint"


def test_saved_config_yaml_is_bounded(tmp_path):
    (tmp_path / CONFIG_FILE).write_text(f"model:\n  g_hidden: {yaml_alias_bomb(6)}\n")
    message = one_line_error(tmp_path)
    assert message.startswith(f"{tmp_path / CONFIG_FILE}: the YAML has aliases (*name) that expand to over")


def test_saved_config_without_image_shape_is_refused(tmp_path):
    (tmp_path / CONFIG_FILE).write_text(dump_config(Config()))
    assert one_line_error(tmp_path) == (
        f"{tmp_path / CONFIG_FILE} has no model.image_shape: it was not written by this version of distgan's "
        "trainer; use a checkpoint it wrote")


@pytest.mark.parametrize("text, reason", [
    ("", "the top level must be a mapping of keys, got None"),
    ("[1, 2]\n", "the top level must be a mapping of keys, got [1, 2]"),
    ("model: {zdim: 3, image_shape: [1, 28, 28]}\n", "unknown config key 'model.zdim'"),
    ("model: {image_shape: [1, 28]}\n", "config key 'model.image_shape': needs 3 or more items, got [1, 28]"),
    ("train: {lr_g: .nan}\nmodel: {image_shape: [1, 28, 28]}\n", "config key 'train.lr_g': must be a finite number"),
])
def test_saved_config_gets_the_configs_checks_naming_the_file(tmp_path, text, reason):
    (tmp_path / CONFIG_FILE).write_text(text)
    assert one_line_error(tmp_path).startswith(f"{tmp_path / CONFIG_FILE}: {reason}")


# -- every checkpoint damaged ---------------------------------------------------------------------------------


def test_refuse_all_damaged_passes_a_run_without_sealed_checkpoints(tmp_path):
    refuse_all_damaged(tmp_path / "absent")
    refuse_all_damaged(tmp_path)  # no checkpoints/ at all
    (tmp_path / "checkpoints" / "step_0000005").mkdir(parents=True)  # unsealed: an interrupted save
    (tmp_path / "checkpoints" / "step_0000005" / CONFIG_FILE).write_text("seed: 0\n")
    (tmp_path / "checkpoints" / "best").mkdir()
    refuse_all_damaged(tmp_path)


def test_refuse_all_damaged_names_the_newest_and_what_is_wrong(tmp_path):
    ckpts = tmp_path / "checkpoints"
    old = seal(ckpts / "step_0000010", {CONFIG_FILE: b"seed: 0\n"}, step=10)
    new = seal(ckpts / "step_0000020", {CONFIG_FILE: b"seed: 0\n", "state.json": b"{}"}, step=20)
    (old / CONFIG_FILE).write_text("seed: 1\n")  # same size, other bytes
    (new / CONFIG_FILE).write_text("seed")  # truncated
    with pytest.raises(UserError) as info:
        refuse_all_damaged(tmp_path)
    assert str(info.value) == (
        f"cannot resume {tmp_path}: none of its 2 checkpoint(s) is intact (the newest, step_0000020: config.yaml "
        f"is 4 bytes, 8 were saved (truncated or overwritten)); to start from step 0 on purpose, use a new run.dir "
        f"(resume=never makes sure it is new), or delete the damaged checkpoints in {ckpts}")
    (new / MARKER).write_text("{not json")
    with pytest.raises(UserError, match=r"\(the newest, step_0000020: its COMPLETE marker is garbled\)"):
        refuse_all_damaged(tmp_path)
    assert (old / CONFIG_FILE).read_text() == "seed: 1\n" and (new / CONFIG_FILE).read_text() == "seed"  # untouched
