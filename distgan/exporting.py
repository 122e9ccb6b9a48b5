"""`distgan export`: a checkpoint's EMA generator packaged with the scores it earned and the classifier that
measured them, in the export format of `distgan.generator.export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distgan.errors import UserError
from distgan.evaluation.evaluate import classifier_sha256
from distgan.generator.export import check_out_dir, is_export_dir, manifest_sha256, read_export_config, write_export
from distgan.generator.loading import load_generator
from distgan.run.checkpoint import STATE_FILE, resolve_checkpoint


def metrics_at(run_dir: Path, step: int) -> dict[str, float]:
    """The `eval/*` scores logged at `step` in RUN_DIR/metrics.jsonl (without the prefix); {} if none."""
    path = run_dir / "metrics.jsonl"
    found: dict[str, float] = {}
    if not path.is_file():
        return found
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if isinstance(row, dict) and row.get("step") == step:
            found.update({k[5:]: v for k, v in row.items() if k.startswith("eval/") and isinstance(v, int | float)})
    return found


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, onnx: bool = False,
                      scores_file: str | Path | None = None) -> dict[str, Any]:
    """Export the EMA G of a checkpoint (or a run directory's latest, or an earlier export) to `out`.

    Scores come from `scores_file` (the JSON of `distgan eval --json`), else from RUN_DIR/metrics.jsonl at
    the checkpoint's step; the classifier's sha256 from the scores file, else from the config's classifier
    file if it is here; the data manifest's sha256 from the config's data.dir if it is here.
    """
    out, src = Path(out), Path(checkpoint)
    check_out_dir(out)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise UserError(f"--out {out} is the folder being exported; choose another")
    generator, cfg = load_generator(src)
    scores: dict[str, Any] = {}
    step, source, classifier = None, str(src), None
    if is_export_dir(src):
        meta = read_export_config(src)
        step, scores, classifier = meta.get("step"), dict(meta.get("scores") or {}), meta.get("classifier_sha256")
        manifest = meta.get("data_manifest_sha256")
    else:
        ckpt = resolve_checkpoint(src)
        source = str(ckpt)
        try:
            step = int(json.loads((ckpt / STATE_FILE).read_text())["state"]["step"])
        except (OSError, ValueError, KeyError, TypeError):
            step = None
        if step is not None:
            scores = metrics_at(ckpt.parent.parent, step)
        manifest = manifest_sha256(cfg.data.dir)
        clf = Path(cfg.eval.classifier or Path(cfg.data.dir) / "classifier.pt")
        if scores and clf.is_file():

            classifier = classifier_sha256(clf)
    if scores_file is not None:
        try:
            loaded = json.loads(Path(scores_file).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"--scores {scores_file}: cannot read it as JSON "
                            f"({getattr(e, 'strerror', None) or e})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"--scores {scores_file}: expected the JSON object of `distgan eval --json`")
        classifier = loaded.get("classifier_sha256") or classifier
        scores = {k: v for k, v in loaded.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return write_export(out, generator, cfg, step=step, scores=scores, classifier_sha256=classifier,
                        data_manifest_sha256=manifest, source=source, onnx=onnx)
