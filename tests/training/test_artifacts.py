"""W&B artifacts from a real offline training run with in-training evaluation, read back from the offline
run's records (`wandb leet inspect --json`): the EMA generator as `model` artifact versions with the aliases
`latest` and `best`, the evaluation classifier as a `classifier` artifact that they reference, and the
staged files that `wandb sync` will upload, which load as a generator again."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import run_cli, wandb_records
from safetensors.torch import load_file

from distgan.hashing import file_sha256

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist_shards, eval_classifier):
    run_dir = tmp_path_factory.mktemp("artifacts") / "run"
    run_cli(["train", "--config", "configs/debug.yaml", f"data.dir={mnist_shards}", f"run.dir={run_dir}",
             "train.steps=20", "checkpoint.every=10", "eval.every=10", "eval.n=200",
             f"eval.classifier={eval_classifier}", "wandb.mode=offline", "log.progress=false"], timeout=600)
    return run_dir


def artifacts(run_dir) -> list[dict]:
    return [r["artifact"] for r in wandb_records(run_dir) if r.get("type") == "artifact"]


def staged_folder(artifact: dict, dest):
    """The artifact's files as wandb sync would upload them (from its staging copies), as a folder."""
    dest.mkdir(parents=True)
    for entry in artifact["manifest"]["contents"]:
        shutil.copyfile(entry["local_path"], dest / entry["path"])
    return dest


def test_generator_and_classifier_artifacts(run, eval_classifier, tmp_path):
    records = artifacts(run)
    run_id = (run / "wandb_run_id").read_text().strip()
    classifiers = [a for a in records if a["type"] == "classifier"]
    models = [a for a in records if a["type"] == "model"]
    from distgan.evaluation.evaluate import classifier_sha256

    sha = classifier_sha256(eval_classifier)  # the weights' hash that every score report names

    # The classifier: once, named by its content, with its sha256.
    assert len(classifiers) == 1
    clf = classifiers[0]
    assert clf["name"] == "eval-classifier" and f"sha256-{sha[:16]}" in clf["aliases"]
    assert json.loads(clf["metadata"])["sha256"] == sha
    assert [e["path"] for e in clf["manifest"]["contents"]] == ["classifier.pt"]
    staged = clf["manifest"]["contents"][0]["local_path"]
    assert file_sha256(staged) == file_sha256(eval_classifier)  # the file itself, staged for `wandb sync`

    # The generator: one artifact per run; `best` after each better FID, `latest` at each step checkpoint.
    assert {a["name"] for a in models} == {f"generator-{run_id}"}
    metas = [json.loads(a["metadata"]) for a in models]
    # (W&B itself also gives `latest` to whichever version was logged last, a `best` one included.)
    latest = [(m["step"], a) for m, a in zip(metas, models, strict=True) if not m["best"]]
    best = [(m, a) for m, a in zip(metas, models, strict=True) if m["best"]]
    assert [step for step, _ in latest] == [10, 20]
    assert all("latest" in a["aliases"] and f"step-{step}" in a["aliases"] for step, a in latest)
    assert best and all("best" in a["aliases"] and f"step-{m['step']}" in a["aliases"] for m, a in best)
    assert [m["step"] for m, _ in best][0] == 10 and all(m["step"] in (10, 20) for m, _ in best)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    fids = {r["step"]: r["eval/fid"] for r in rows if "eval/fid" in r}
    last_best = best[-1][0]
    assert last_best["eval/fid"] == pytest.approx(min(fids.values()))
    assert last_best["eval/fid"] == pytest.approx(fids[last_best["step"]])
    for m in metas:  # every version names the classifier it was scored with, by artifact and sha256
        assert m["classifier_artifact"] == f"eval-classifier:sha256-{sha[:16]}" and m["classifier_sha256"] == sha
        assert m["arch"] == "mlp" and m["image_shape"] == [1, 28, 28]

    # The staged files of `latest` are an export folder: the checkpoint's EMA G, loadable anywhere.
    step, final = latest[-1]
    folder = staged_folder(final, tmp_path / "latest")
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "config.json", "README.md", "samples.png"}
    saved = load_file(str(run / "checkpoints" / "step_0000020" / "ema_generator.safetensors"))
    exported = load_file(str(folder / "model.safetensors"))
    assert saved.keys() == exported.keys() and all(torch.equal(saved[k], exported[k]) for k in saved)
    config = json.loads((folder / "config.json").read_text())
    assert config["classifier_artifact"] == f"eval-classifier:sha256-{sha[:16]}" and config["step"] == 20
    from distgan.generator.loading import load_generator
    from distgan.generator.sampling import sample_images

    g, cfg = load_generator(folder)
    assert cfg.model.z_dim == 16 and sample_images(g, 4).shape == (4, 28, 28)

    # `best` carries its scores into the model card.
    best_folder = staged_folder(best[-1][1], tmp_path / "best")
    card = (best_folder / "README.md").read_text()
    assert sha in card and f"| fid | {last_best['eval/fid']:.6g} |" in card


def test_no_artifacts_without_wandb(mnist_shards, tmp_path):
    run_dir = tmp_path / "run"
    run_cli(["train", "--config", "configs/debug.yaml", f"data.dir={mnist_shards}", f"run.dir={run_dir}",
             "train.steps=2", "wandb.mode=disabled", "log.progress=false"], timeout=300)
    assert not (run_dir / "wandb").exists() and (run_dir / "checkpoints" / "step_0000002" / "COMPLETE").exists()
