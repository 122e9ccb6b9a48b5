"""`distgan export`: real tiny runs (MLP and DCGAN) exported to folders that `distgan sample`, `distgan eval`
and `load_generator` read as they read checkpoints; ONNX checked against PyTorch with onnxruntime; the
Hub upload's offline and logged-out errors; refusals that protect other folders."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PYTHON, REPO, child_env, require_module, run_cli

from distgan.hashing import file_sha256

pytestmark = pytest.mark.slow

RUNS = {
    "mlp": [],
    "dcgan": ["model.arch=dcgan", "model.g_width=8", "model.d_width=8"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_shards):
    """A finished tiny run per architecture (4 steps, checkpoint at the end)."""
    out = {}
    for arch, extra in RUNS.items():
        run_dir = tmp_path_factory.mktemp(f"run_{arch}")
        run_cli(["train", "--config", "configs/debug.yaml", f"data.dir={mnist_shards}", f"run.dir={run_dir}",
                 "train.steps=4", "wandb.mode=disabled", "log.progress=false", *extra], timeout=300)
        out[arch] = run_dir
    return out


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """Each run exported with --onnx through the CLI."""
    require_module("onnxscript", 'pip install -e ".[export]"')
    out = {}
    for arch, run_dir in runs.items():
        folder = tmp_path_factory.mktemp(f"export_{arch}") / "model"
        proc = run_cli(["export", "--checkpoint", str(run_dir), "--out", str(folder), "--onnx"], timeout=300)
        assert proc.stdout.strip().splitlines()[-1].startswith(f"exported {arch} generator (1x28x28, step 4)"), \
            proc.stdout
        assert "torchvision" not in proc.stderr and "[torch.onnx]" not in proc.stdout
        out[arch] = folder
    return out


@pytest.mark.parametrize("arch", list(RUNS))
def test_export_folder_layout(arch, runs, exports, mnist_shards):
    folder = exports[arch]
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "generator.onnx", "model.safetensors", "samples.png", "training_config.yaml"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["format"] == "distgan-generator/1" and meta["arch"] == arch
    assert meta["image_shape"] == [1, 28, 28] and meta["z_dim"] == 16 and meta["step"] == 4
    assert meta["model"]["arch"] == arch and meta["onnx"] == "generator.onnx"
    assert meta["weights_sha256"] == file_sha256(folder / "model.safetensors")
    assert meta["data_manifest_sha256"] == file_sha256(mnist_shards / "manifest.json")
    assert meta["source"].endswith("checkpoints/step_0000004")
    ckpt = runs[arch] / "checkpoints" / "step_0000004"
    import yaml

    saved, trained = (yaml.safe_load((ckpt / "config.yaml").read_text()),
                      yaml.safe_load((folder / "training_config.yaml").read_text()))
    saved["model"]["image_shape"] = saved["model"].get("image_shape") or [1, 28, 28]  # filled in on load
    assert trained == saved
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: pytorch\n") and "![samples](samples.png)" in card
    assert meta["weights_sha256"] in card and meta["data_manifest_sha256"] in card
    assert "## Training config" in card and "arch: " + arch in card
    from PIL import Image

    with Image.open(folder / "samples.png") as im:
        assert im.mode == "L" and im.size == (8 * 30 + 2, 8 * 30 + 2)
    # Weights are the checkpoint's EMA G, bit for bit.
    from safetensors.torch import load_file

    exported, saved = load_file(str(folder / "model.safetensors")), load_file(str(ckpt / "ema_generator.safetensors"))
    assert exported.keys() == saved.keys() and all(torch.equal(exported[k], saved[k]) for k in saved)


@pytest.mark.parametrize("arch", list(RUNS))
def test_onnx_matches_pytorch(arch, exports):
    """onnxruntime on generator.onnx vs PyTorch on model.safetensors, batch 1 and 7 (a dynamic batch)."""
    require_module("onnxruntime", 'pip install -e ".[export]"')
    import onnxruntime as ort

    from distgan.generator.loading import load_generator

    g, _ = load_generator(exports[arch])
    session = ort.InferenceSession(str(exports[arch] / "generator.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["z"] and [o.name for o in session.get_outputs()] == ["images"]
    for batch in (1, 7):
        z = torch.randn(batch, 16, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = g(z).numpy()
        got = session.run(None, {"z": z.numpy()})[0]
        assert got.shape == (batch, 1, 28, 28)
        scale = float(np.abs(expected).max())
        assert scale > 1e-4 and np.abs(expected - expected[:1]).max() > 1e-3 * scale or batch == 1  # not constant
        np.testing.assert_allclose(got, expected, atol=max(1e-4 * scale, 1e-7), rtol=0)


@pytest.mark.parametrize("arch", list(RUNS))
def test_sample_reads_an_export_as_a_checkpoint(arch, runs, exports, tmp_path):
    from_ckpt, from_export = tmp_path / "ckpt.npz", tmp_path / "export.npz"
    run_cli(["sample", "--checkpoint", str(runs[arch]), "--n", "10", "--seed", "3", "--out", str(from_ckpt)],
            timeout=120)
    run_cli(["sample", "--checkpoint", str(exports[arch]), "--n", "10", "--seed", "3", "--out", str(from_export)],
            timeout=120)
    a, b = np.load(from_ckpt)["images"], np.load(from_export)["images"]
    assert a.shape == (10, 28, 28) and np.array_equal(a, b)


def test_eval_reads_an_export_and_its_scores_reach_the_card(runs, exports, eval_classifier, mnist_shards, tmp_path):
    scores = tmp_path / "scores.json"
    run_cli(["eval", "--checkpoint", str(exports["dcgan"]), "--shards", str(mnist_shards), "--classifier",
             str(eval_classifier), "--n", "200", "--json", str(scores)], timeout=300)
    result = json.loads(scores.read_text())
    from distgan.evaluation.evaluate import classifier_sha256

    assert np.isfinite(result["fid"]) and result["classifier_sha256"] == classifier_sha256(eval_classifier)
    folder = tmp_path / "with_scores"
    run_cli(["export", "--checkpoint", str(exports["dcgan"]), "--out", str(folder), "--scores", str(scores)],
            timeout=120)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["scores"]["fid"] == result["fid"] and meta["classifier_sha256"] == result["classifier_sha256"]
    assert meta["step"] == 4 and "generator.onnx" not in {p.name for p in folder.iterdir()}
    card = (folder / "README.md").read_text()
    assert result["classifier_sha256"] in card and f"| fid | {result['fid']:.6g} |" in card


def test_scores_from_metrics_jsonl(runs, tmp_path):
    """RUN_DIR/metrics.jsonl rows at the checkpoint's step give the card its scores (torn last line ignored)."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs["mlp"], run_dir, ignore=shutil.ignore_patterns(".lock"))
    rows = [{"step": 2, "time": 1.0, "eval/fid": 9.0}, {"step": 4, "time": 2.0, "loss/d": 1.0},
            {"step": 4, "time": 2.5, "eval/fid": 5.5, "eval/kid": 0.25, "eval/is": 1.5}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "ev')
    folder = tmp_path / "out"
    run_cli(["export", "--checkpoint", str(run_dir), "--out", str(folder)], timeout=120)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["scores"] == {"fid": 5.5, "kid": 0.25, "is": 1.5}


def test_export_refuses_and_errors_in_one_line(runs, exports, tmp_path):
    other = tmp_path / "someone_elses"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    proc = run_cli(["export", "--checkpoint", str(runs["mlp"]), "--out", str(other)], timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "is not a distgan export" in proc.stderr and (other / "notes.txt").read_text() == "keep me"

    # A damaged export is refused on load, in one line.
    broken = tmp_path / "broken"
    run_cli(["export", "--checkpoint", str(exports["mlp"]), "--out", str(broken)], timeout=120)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (broken / "model.safetensors").write_bytes(bytes(data))
    proc = run_cli(["sample", "--checkpoint", str(broken), "--out", str(tmp_path / "x.npz")], timeout=120,
                   check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "is corrupt" in proc.stderr

    # Without onnx installed, --onnx is one line naming the extra (the import made to fail for real).
    proc = subprocess.run([PYTHON, "-c", "import sys; sys.modules['onnxscript'] = None; from distgan.cli import main; "
                           f"sys.exit(main(['export', '--checkpoint', {str(runs['mlp'])!r}, '--out', "
                           f"{str(tmp_path / 'no_onnx')!r}, '--onnx']))"],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert 'pip install "distgan[export]"' in proc.stderr and not (tmp_path / "no_onnx").exists()


@pytest.mark.parametrize("env_extra, message", [
    ({"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_dummy"}, "HF_HUB_OFFLINE is set"),
    ({"HF_HUB_OFFLINE": "0", "HF_TOKEN": ""}, "not logged in"),
])
def test_push_to_hub_offline_is_one_line_and_keeps_the_folder(env_extra, message, runs, tmp_path):
    folder = tmp_path / "model"
    env = child_env(HF_HOME=str(tmp_path / "hf_home"), **env_extra)
    proc = run_cli(["export", "--checkpoint", str(runs["mlp"]), "--out", str(folder), "--push-to-hub",
                    "someone/distgan-mnist"], timeout=120, env=env, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and f"hf upload someone/distgan-mnist {folder}" in lines[0]
    assert (folder / "model.safetensors").is_file() and (folder / "README.md").is_file()


def test_reexport_keeps_the_users_files_and_refuses_non_finite_weights(runs, tmp_path):
    """Re-exporting into an earlier export that also holds the user's files is refused in one line (the whole
    folder would be replaced), files kept; an all-NaN generator is refused before anything is written."""
    import shutil

    from safetensors.torch import load_file, save_file

    from distgan.errors import UserError
    from distgan.exporting import export_checkpoint

    folder = tmp_path / "model"
    export_checkpoint(runs["mlp"], folder)
    (folder / "notes.txt").write_text("keep me")
    (folder / "eval").mkdir()
    with pytest.raises(UserError) as exc:
        export_checkpoint(runs["mlp"], folder)
    msg = str(exc.value)
    assert "\n" not in msg and "holds files an export does not write (eval, notes.txt)" in msg, msg
    assert "choose another folder" in msg and (folder / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "eval", "model.safetensors", "notes.txt", "samples.png", "training_config.yaml"]
    (folder / "notes.txt").unlink()
    (folder / "eval").rmdir()
    export_checkpoint(runs["mlp"], folder)  # an export's own files alone: replaced

    nan = tmp_path / "nan"  # an export whose weights are all NaN (config.json agrees with them)
    shutil.copytree(folder, nan)
    weights = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
               for k, v in load_file(str(nan / "model.safetensors")).items()}
    save_file(weights, str(nan / "model.safetensors"))
    meta = json.loads((nan / "config.json").read_text())
    meta["weights_sha256"] = file_sha256(nan / "model.safetensors")
    (nan / "config.json").write_text(json.dumps(meta))
    for out in (tmp_path / "new", folder):  # a new folder is not made; an earlier export is left as it was
        before = {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else None
        with pytest.raises(UserError) as exc:
            export_checkpoint(nan, out)
        msg = str(exc.value)
        assert "\n" not in msg and f"the generator of {nan} has non-finite weights" in msg, msg
        assert "export an earlier checkpoint" in msg
        assert ({p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else None) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


KILLED_EXPORT = """
import sys, time
from pathlib import Path
from distgan.generator.export import WEIGHTS_FILE, _write_folder

def write(tmp):  # the export's first file is written, then the process is killed -9
    (tmp / WEIGHTS_FILE).write_bytes(bytes(1000))
    print(tmp, flush=True)
    time.sleep(120)

_write_folder(Path(sys.argv[1]), write)
"""


def test_next_export_removes_the_folder_a_killed_export_left(tmp_path):
    """`kill -9` during an export leaves `.model.tmp-PID@HOST`; the next export into the same parent deletes it
    (its process is gone), and nothing that may still be in use or is not an export's."""
    import os
    import signal
    import socket

    from distgan.config import load_config
    from distgan.generator.architectures import build_generator
    from distgan.generator.export import is_export_dir, write_export

    parent = tmp_path / "exports"
    child = subprocess.Popen([PYTHON, "-c", KILLED_EXPORT, str(parent / "model")], cwd=REPO, env=child_env(),
                             stdout=subprocess.PIPE, text=True)
    try:
        left = Path(child.stdout.readline().strip())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
        child.stdout.close()
    assert left == parent / f".model.tmp-{child.pid}@{socket.gethostname()}" and left.is_dir()
    dead = child.pid
    keep = {parent / f".model.tmp-{os.getpid()}": "model.safetensors",  # alive: an export in progress
            parent / f".model.tmp-{dead}@another-host": "model.safetensors",  # its pid says nothing here
            parent / f".notes.tmp-{dead}": "notes.txt"}  # not an export's files
    for folder, name in keep.items():
        folder.mkdir()
        (folder / name).write_text("keep")
    (parent / f".file.tmp-{dead}").write_text("keep")
    legacy = parent / f".old.tmp-{dead}"  # named as before the host was added
    legacy.mkdir()
    (legacy / "config.json").write_text("{}")
    cfg = load_config(REPO / "configs" / "debug.yaml", [])
    write_export(parent / "model", build_generator(cfg.model, (1, 28, 28)), cfg, step=None)
    assert is_export_dir(parent / "model") and not left.exists() and not legacy.exists()
    assert all((folder / name).read_text() == "keep" for folder, name in keep.items())
    assert sorted(p.name for p in parent.iterdir()) == sorted(["model", f".file.tmp-{dead}", *(f.name for f in keep)])
