"""W&B artifacts: the EMA generator as a `model` artifact (aliases `latest`, and `best` for the best FID) and
the evaluation classifier as a `classifier` artifact that the model artifacts and scores name.

Each model artifact is an export folder (distgan.generator.export: model.safetensors, config.json, model card,
samples), so a downloaded artifact loads with `load_generator(folder)` or `distgan sample --checkpoint
folder`. One artifact per run, `generator-<run id>`, with a version per save: a step checkpoint's version gets
the aliases `latest` and `step-N`, the best one `best` and `step-N` (W&B moves an alias to the newest
version that names it). The classifier is `eval-classifier`, alias `sha256-<first 16 hex digits>`: W&B
keeps one version per content, so runs scored by the same classifier share a version. An online run
declares it as an input (`use_artifact`); an offline one, where wandb cannot, logs it.

Offline, the files are copied into wandb's staging folder ($WANDB_DATA_DIR, default
~/.local/share/wandb/artifacts/staging) and the run's `.wandb` file records them: `wandb sync` uploads both.
Artifacts never stop training: a failure is one warning line.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from distgan.config import Config
from distgan.generator.export import manifest_sha256, write_export
from distgan.hashing import file_sha256
from distgan.run.tracker_guard import GuardedTracker, guarded

log = logging.getLogger(__name__)

MODEL_TYPE = "model"
CLASSIFIER_TYPE = "classifier"
CLASSIFIER_NAME = "eval-classifier"


def classifier_alias(sha256: str) -> str:
    """The alias naming a classifier version by its content."""
    return f"sha256-{sha256[:16]}"


class ModelArtifacts:
    """Logs G and the classifier as W&B artifacts from the main process of a tracked run."""

    def __init__(self, run: Any, cfg: Config, run_dir: Path) -> None:
        self.run, self.cfg, self.run_dir = run, cfg, run_dir
        self.name = f"generator-{run.id}"
        self.classifier: dict[str, str] | None = None
        self.tracker: GuardedTracker | None = None  # once W&B has stopped working, artifacts stop quietly

        self.data_manifest_sha256 = manifest_sha256(cfg.data.dir)

    @classmethod
    def start(cls, accelerator: Any, cfg: Config, run_dir: Path, classifier: Path | None,
              classifier_sha256: str | None) -> ModelArtifacts | None:
        """The artifact logger of this run (logging the classifier now), or None off the main process or
        without a W&B run."""
        tracker = guarded(accelerator, "wandb") if accelerator.is_main_process else None
        if tracker is None:
            return None
        try:
            self = cls(tracker.tracker, cfg, run_dir)
            self.tracker = tracker
            if classifier is not None and classifier_sha256:
                self.log_classifier(classifier, classifier_sha256)
        except Exception as e:  # noqa: BLE001 - W&B must never stop training
            log.warning("W&B artifacts are off for this run: %s: %s", type(e).__name__, e)
            return None
        return self

    def log_classifier(self, path: Path, sha256: str) -> None:
        """The evaluation classifier: an input of an online run, logged by an offline one."""
        import wandb

        metadata = {"sha256": sha256, "file_sha256": file_sha256(path)}  # sha256: of the weights, as reports name it
        artifact = wandb.Artifact(CLASSIFIER_NAME, type=CLASSIFIER_TYPE, metadata=metadata,
                                  description="distgan feature classifier used for FID/KID/IS")
        artifact.add_file(str(path), name="classifier.pt")
        alias = classifier_alias(sha256)
        try:
            self.run.use_artifact(artifact, aliases=[alias])
        except TypeError:  # "Cannot use artifact when in offline mode."
            self.run.log_artifact(artifact, aliases=[alias])
        self.classifier = {"artifact": f"{CLASSIFIER_NAME}:{alias}", "sha256": sha256}

    def log_generator(self, generator: torch.nn.Module, *, step: int, best: bool,
                      scores: dict[str, float] | None = None, checkpoint: Path | None = None) -> None:
        """Log `generator` (the EMA G, not modified) as a version of this run's model artifact."""
        if self.tracker is not None and not self.tracker.alive:
            return
        try:
            self._log_generator(generator, step=step, best=best, scores=scores, checkpoint=checkpoint)
        except Exception as e:  # noqa: BLE001 - W&B must never stop training
            log.warning("could not log the generator at step %d as a W&B artifact: %s: %s", step,
                        type(e).__name__, e)

    def _log_generator(self, generator: torch.nn.Module, *, step: int, best: bool, scores: dict[str, float] | None,
                       checkpoint: Path | None) -> None:
        import wandb

        clf = self.classifier or {}
        tmp = Path(tempfile.mkdtemp(prefix="distgan-artifact-"))
        try:
            folder = tmp / "generator"
            meta = write_export(folder, generator, self.cfg, step=step, scores=scores,
                                classifier_sha256=clf.get("sha256"), data_manifest_sha256=self.data_manifest_sha256,
                                source=str(checkpoint or self.run_dir),
                                extra={"classifier_artifact": clf.get("artifact")})
            metadata = {"step": step, "best": best, "arch": meta["arch"], "image_shape": meta["image_shape"],
                        "z_dim": meta["z_dim"], "weights_sha256": meta["weights_sha256"],
                        "classifier_sha256": clf.get("sha256"), "classifier_artifact": clf.get("artifact"),
                        "data_manifest_sha256": self.data_manifest_sha256,
                        **{f"eval/{k}": float(v) for k, v in (scores or {}).items()}}
            artifact = wandb.Artifact(self.name, type=MODEL_TYPE, metadata=metadata,
                                      description=f"EMA generator of distgan run {self.run_dir.name}")
            artifact.add_dir(str(folder))  # copied into wandb's staging folder now
            self.run.log_artifact(artifact, aliases=["best" if best else "latest", f"step-{step}"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["CLASSIFIER_NAME", "ModelArtifacts", "classifier_alias"]
