"""Config loading: overrides, and one-line errors that name the key."""

from __future__ import annotations

import pytest
from conftest import REPO, run_cli

from distgan.config import load_config, parse_override
from distgan.errors import UserError


def test_shipped_configs_load():
    for name in ("debug", "mnist_mlp", "mnist_dcgan"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert cfg.train.steps > 0


def test_seed_config_is_the_classic_mlp_gan():
    cfg = load_config(REPO / "configs" / "mnist_mlp.yaml")
    assert (cfg.model.arch, cfg.model.z_dim, cfg.model.g_hidden, cfg.model.d_hidden) == \
        ("mlp", 100, [256, 512, 1024], [1024, 512, 256])
    assert (cfg.loss.kind, cfg.train.lr_g, cfg.train.lr_d, cfg.train.betas) == ("bce", 2e-4, 2e-4, [0.5, 0.999])


def test_overrides_any_key_with_yaml_values():
    cfg = load_config(REPO / "configs" / "debug.yaml",
                      ["train.steps=7", "seed=3", "mixed_precision=bf16", "wandb.mode=disabled",
                       "train.betas=[0.0, 0.9]", "eval.classifier=null", "run.dir=/tmp/x"])
    assert (cfg.train.steps, cfg.seed, cfg.mixed_precision, cfg.wandb.mode) == (7, 3, "bf16", "disabled")
    assert cfg.train.betas == [0.0, 0.9] and cfg.eval.classifier is None and cfg.run.dir == "/tmp/x"
    assert parse_override("a.b=1e-3") == (["a", "b"], "1e-3") or parse_override("a.b=1e-3")[1] == 1e-3


@pytest.mark.parametrize("override, key", [
    ("train.stepz=5", "train.stepz"),
    ("trian.steps=5", "trian"),
    ("train.steps=abc", "train.steps"),
    ("train.steps=0", "train.steps"),
    ("train.batch_size=2.5", "train.batch_size"),
    ("mixed_precision=fp8", "mixed_precision"),
    ("loss.kind=wgan", "loss.kind"),
    ("ema.decay=1.5", "ema.decay"),
    ("model.spectral_norm=maybe", "model.spectral_norm"),
    ("train.lr_d=-1", "train.lr_d"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(UserError, match=rf"'{key}'"):
        load_config(REPO / "configs" / "debug.yaml", [override])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="key.sub=value"):
        load_config(None, ["train.steps"])
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_cli_prints_one_line_without_traceback(tmp_path):
    proc = run_cli(["train", "--config", "configs/debug.yaml", "train.stepz=5"], timeout=60, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown config key 'train.stepz'" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
