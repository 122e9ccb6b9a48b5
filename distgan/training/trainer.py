"""The distgan Trainer: builds its parts from the config, runs the loop, and does the periodic work at
step boundaries (logging, sample grids, evaluation, checkpoints, preemption).

Set-up order matters: the preemption watcher first (a signal during start-up is not lost), then the
accelerator, the locked run directory and the resume point, the networks and their state, the data and
the classifier (checked before anything is logged), and only then the W&B run.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs
from tqdm.auto import tqdm

from distgan.collectives import check_consistency, needs_cpu_flag, parameters_finite
from distgan.config import Config, dump_config
from distgan.data.info import DatasetInfo, dataset_info
from distgan.data.remote import is_remote, open_dataset
from distgan.data.stream import BatchStream
from distgan.errors import UserError
from distgan.evaluation.evaluate import EvaluationAbandoned, classifier_sha256, evaluate_generator
from distgan.generator.grids import fixed_grid, save_png
from distgan.run.checkpoint import BEST, TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from distgan.run.metrics_file import MetricsFile
from distgan.run.preemption import PreemptionWatcher
from distgan.run.run_dir import RunDir, resolve_run_path
from distgan.run.tracking import describe_wandb_run, log_image, resolve_mode, start_tracking, tracker_list
from distgan.training.artifacts import ModelArtifacts
from distgan.training.gan_step import GANStep
from distgan.training.grad_sync import DDP_BUCKET_CAP_MB
from distgan.training.networks import align_optimizer_state, apply_hyperparameters, build_networks
from distgan.training.precision import Precision, accelerate_mixed_precision
from distgan.training.scalar_log import ScalarLog
from distgan.training.selfcond import SelfConditioning

log = logging.getLogger(__name__)


class DivergedError(UserError):
    """Training produced NaN/inf for longer than the configured patience."""


@dataclass
class TrainResult:
    """How `train` ended ("finished" or "preempted"), at which step, and the iterations' own time."""

    status: str
    step: int
    steps_run: int
    step_seconds: float  # the iterations alone (data, D and G steps, EMA, bookkeeping), without periodic work
    run_dir: Path


def train(cfg: Config) -> TrainResult:
    """Train (or resume) the run described by `cfg`; the same code runs in 1 or N processes."""
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def image_shape_for(cfg: Config, info: DatasetInfo) -> list[int]:
    """The (C, H, W) the networks are built for: the data's; a `model.image_shape` set in the config must agree."""
    shape = list(info.image_shape)
    if cfg.model.image_shape is not None and list(cfg.model.image_shape) != shape:
        raise UserError(f"model.image_shape {list(cfg.model.image_shape)} differs from the data in {cfg.data.dir} "
                        f"({shape}); remove model.image_shape (it is taken from the data) or prepare the data "
                        f"with --resolution/--channels")
    return shape


def num_classes_for(cfg: Config, info: DatasetInfo) -> int | None:
    """K for a conditional model: the data's number of classes (a `model.num_classes` set must agree), or
    `model.clusters` for a self-conditioned one (which reads no labels)."""
    if not cfg.model.conditional:
        return cfg.model.num_classes
    if cfg.model.conditional == "clusters":
        return cfg.model.clusters
    if info.num_classes is None:
        raise UserError(f"model.conditional=true needs class labels, but the data in {cfg.data.dir} has none; "
                        f"prepare a labelled dataset (an image folder with one sub-folder per class) or set "
                        f"model.conditional=false")
    if cfg.model.num_classes is not None and cfg.model.num_classes != info.num_classes:
        raise UserError(f"model.num_classes {cfg.model.num_classes} differs from the {info.num_classes} classes "
                        f"of the data in {cfg.data.dir}; remove model.num_classes (it is taken from the data)")
    return info.num_classes


def class_freqs_for(cfg: Config, info: DatasetInfo) -> list[float] | None:
    """What a conditional G starts with as its class frequencies: the data's, or uniform over the clusters of
    a self-conditioned G (the first clustering replaces them); None for an unconditional G."""
    if cfg.model.conditional == "clusters":
        return [1.0 / cfg.model.clusters] * cfg.model.clusters
    return info.class_frequencies if cfg.model.conditional else None


def make_accelerator(cfg: Config, wandb_mode: str) -> Accelerator:
    """An Accelerator for this config: its trackers (log.with), DDP options and a process-group timeout."""
    return Accelerator(
        cpu=needs_cpu_flag(),
        mixed_precision=accelerate_mixed_precision(cfg.mixed_precision),
        log_with=tracker_list(cfg.log.with_, wandb_mode),  # TensorBoard's directory is set once run.dir is known
        kwargs_handlers=[
            # G and D are separate DDP modules and every parameter is used in its phase; one bucket each, so
            # that the gradient all-reduce is the same at every step, resumed or not (grad_sync.py).
            DistributedDataParallelKwargs(find_unused_parameters=False, broadcast_buffers=True,
                                          bucket_cap_mb=DDP_BUCKET_CAP_MB),
            InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.dist.timeout_s)),
        ],
    )


class Trainer:
    """One training run: its parts, built from `cfg`, and the loop over them."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg = cfg.model_copy(deep=True)  # resolved below (run.dir=auto); the caller's stays as is
        self.watcher = PreemptionWatcher(cfg.preempt.signals, cfg.preempt.requeue_signals)
        self.watcher.install()  # first, so a signal during start-up is not lost
        self.run_dir: RunDir | None = None
        try:
            self._set_up(cfg)
        except BaseException:
            self.close()
            raise

    def _set_up(self, cfg: Config) -> None:
        self.wandb_mode = resolve_mode(cfg.wandb.mode) if "wandb" in cfg.log.with_ else "disabled"
        self.acc = acc = make_accelerator(cfg, self.wandb_mode)
        self.precision = Precision(cfg.mixed_precision, acc.device)
        self.data_dir = open_dataset(cfg.data.dir, cfg.data.cache_dir)  # a URL's manifest is fetched here
        info = dataset_info(self.data_dir)
        cfg.model.image_shape = image_shape_for(cfg, info)
        cfg.model.num_classes = num_classes_for(cfg, info)
        cfg.run.dir = str(resolve_run_path(cfg, acc))
        self.run_dir = RunDir(Path(cfg.run.dir), acc)
        resume_from = self.run_dir.resume_point(cfg)
        self.run_dir.write_config(cfg)
        self.nets = build_networks(cfg, acc, class_freqs_for(cfg, info))
        self.clusters = SelfConditioning.start(cfg, acc, self.precision, self.data_dir / "train") \
            if cfg.model.conditional == "clusters" else None  # registered before a resume restores it
        self.state = TrainState()
        if resume_from is not None:
            self.state = load_checkpoint(acc, resume_from, ema=self.nets.ema, precision=self.precision)
            apply_hyperparameters(self.nets, cfg.train)  # the config's lr wins over the saved one
            align_optimizer_state(self.nets)
            acc.print(f"resumed from {resume_from} at step {self.state.step}")
        elif self.clusters is not None:
            self.clusters.recluster(self.nets, step=0)  # the first clustering, with the initial D
        self.stream = BatchStream(self.data_dir / "train", num_workers=cfg.data.num_workers,
                                  batch_size=cfg.train.batch_size, seed=cfg.seed, accelerator=acc, position=self.state)
        g = self.nets.ema.module
        self.step_fn = GANStep(acc, self.nets, self.precision, cfg.loss, z_dim=cfg.model.z_dim, seed=cfg.seed,
                               augment=cfg.augment, class_freqs=g.inputs.class_freqs if g.num_classes else None,
                               labeller=self.clusters)
        self.scalars = ScalarLog(acc.device)
        self.classifier, self.classifier_sha256 = self._eval_classifier()
        self.config_yaml = dump_config(cfg)
        self.step_seconds = 0.0
        # Only now, with the data and the classifier checked, do metrics.jsonl (rows past the resume step
        # dropped), TensorBoard and a W&B run start.
        self.metrics = MetricsFile(self.run_dir.path, resume_step=self.state.step, enabled=acc.is_main_process)
        self.wandb_mode = start_tracking(acc, mode=self.wandb_mode, project=cfg.wandb.project,
                                         entity=cfg.wandb.entity, name=cfg.wandb.name, run_dir=self.run_dir.path,
                                         config=cfg.to_dict(), watcher=self.watcher, resume_step=self.state.step)
        describe_wandb_run(acc, self.classifier_sha256)
        # G as W&B model artifacts (`latest`, `best`) and the classifier they were scored with (main process)
        self.artifacts = ModelArtifacts.start(acc, cfg, self.run_dir.path, self.classifier, self.classifier_sha256)

    def _eval_classifier(self) -> tuple[Path | None, str | None]:
        """The feature classifier for in-training evaluation and its sha256, checked before anything starts."""
        if not self.cfg.eval.every:
            return None, None

        if self.cfg.eval.classifier is None and is_remote(self.data_dir):
            raise UserError(f"eval.every={self.cfg.eval.every} with a remote data.dir needs a local classifier: "
                            f"set eval.classifier=PATH (made by `distgan train-classifier`) or eval.every=0")
        path = Path(self.cfg.eval.classifier or self.data_dir / "classifier.pt")
        if not path.is_file():
            raise UserError(f"eval.every={self.cfg.eval.every} but there is no classifier at {path}; run "
                            f"`distgan train-classifier --shards {self.cfg.data.dir}` or set eval.every=0")
        return path, classifier_sha256(path)

    def close(self) -> None:
        """Give the caller its signal handlers back and release the run directory."""
        self.watcher.uninstall()
        if self.run_dir is not None:
            self.run_dir.close()

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Iterate until train.steps or a preemption; every rank returns the same result."""
        cfg, state = self.cfg, self.state
        first_step, status = state.step, "finished"
        show = self.acc.is_main_process and cfg.log.progress
        with tqdm(total=cfg.train.steps, initial=state.step, disable=not show, dynamic_ncols=True,
                  desc="train") as bar:
            while state.step < cfg.train.steps:
                self._iteration()
                bar.update(1)
                saved, abandoned = self._periodic_work(bar)
                if abandoned or self._preemption_agreed():
                    if not saved:
                        self._checkpoint()
                    status = "preempted"
                    break
        self._finish(status)
        return TrainResult(status, state.step, state.step - first_step, self.step_seconds, self.run_dir.path)

    def _iteration(self) -> None:
        """`d_steps` real batches, the D and G updates, the EMA; timed as the iteration's own cost."""
        t0 = time.perf_counter()
        reals = [self.stream.next_batch() for _ in range(self.cfg.train.d_steps)]
        data_seconds = time.perf_counter() - t0
        want_norms = (self.state.step + 1) % self.cfg.log.every == 0
        stats = self.step_fn(reals, self.state.step, want_grad_norms=want_norms)
        self.state.step += 1
        self.nets.ema.update(self.acc.unwrap_model(self.nets.g), self.state.step)
        self.scalars.add(stats, data_seconds)
        self.step_seconds += time.perf_counter() - t0

    def _periodic_work(self, bar: tqdm) -> tuple[bool, bool]:
        """Logging, grids, evaluation and checkpoints due at this step: (a checkpoint was saved, the
        evaluation was abandoned for a stop signal that all ranks agreed on)."""
        cfg, step = self.cfg, self.state.step
        if self.clusters is not None and step % cfg.model.recluster_every == 0:
            self._recluster()
        if step % cfg.log.every == 0:
            self._log_scalars(bar)
        if step % cfg.log.grid_every == 0 or step == 1:
            self._log_grid()
        abandoned = bool(cfg.eval.every and step % cfg.eval.every == 0) and not self._evaluate()
        if step % cfg.checkpoint.every == 0 or step == cfg.train.steps:
            self._checkpoint()
            return True, abandoned
        return False, abandoned

    def _preemption_agreed(self) -> bool:
        """Collective, every `preempt.check_every` steps: did any rank get a stop signal?"""
        step = self.state.step
        return step < self.cfg.train.steps and step % self.cfg.preempt.check_every == 0 \
            and self.watcher.requested(self.acc)

    def _finish(self, status: str) -> None:
        """Every rank reports its weights, the W&B run ends; after a preemption the main process requeues."""
        acc = self.acc
        self.run_dir.write_rank_report(self.state.step, *self.nets.modules)
        acc.wait_for_everyone()
        acc.end_training()  # finishes the trackers (guarded: a dead W&B service is one warning) and the group
        if status == "preempted":
            by = f"SIG{self.watcher.signal_name}" if self.watcher.signal_name else "a signal on another rank"
            # One write per line: the ranks share the job's output file, and print() writes the newline apart.
            step = self.state.step
            sys.stdout.write(f"rank {self.run_dir.rank}: preempted by {by}; checkpoint saved at step {step}\n")
            sys.stdout.flush()
            if acc.is_main_process:
                self.watcher.requeue()  # last: on SLURM this ends the job and queues it again

    # -- periodic work --------------------------------------------------------------------------
    def _check_divergence(self) -> None:
        """Collective: stop every rank once any rank had `nan_patience` non-finite losses in a row."""
        worst = self.scalars.worst_bad_steps(self.acc)
        if worst >= self.cfg.train.nan_patience:
            last = latest_checkpoint(self.run_dir.path, warn=False)
            raise DivergedError(
                f"training diverged: the D or G loss was NaN/inf for {worst} steps in a row at step "
                f"{self.state.step} (train.nan_patience={self.cfg.train.nan_patience}); last good checkpoint: "
                f"{last or 'none'}; lower train.lr_d/train.lr_g or change mixed_precision")

    def _recluster(self) -> None:
        """Collective: the self-conditioned GAN's clustering again, with the current D; its stats logged."""
        values = self.clusters.recluster(self.nets, self.state.step)
        self.acc.log(values, step=self.state.step)
        self.metrics.write(self.state.step, values)

    def _log_scalars(self, bar: tqdm) -> None:
        cfg = self.cfg
        self._check_divergence()
        values = self.scalars.flush(cfg.train.batch_size * cfg.train.d_steps * self.acc.num_processes)
        values.update({f"grad_norm/{k}": v.item() for k, v in self.step_fn.grad_norms.items()})
        values.update({"lr/g": cfg.train.lr_g, "lr/d": cfg.train.lr_d, "epoch": self.state.epoch})
        if self.precision.mode == "fp16":
            values.update({"loss_scale/d": self.precision.scale("d"), "loss_scale/g": self.precision.scale("g")})
        self.acc.log(values, step=self.state.step)
        self.metrics.write(self.state.step, values)
        bar.set_postfix(d=f"{values['loss/d']:.3f}", g=f"{values['loss/g']:.3f}",
                        img_s=f"{values['perf/images_per_s']:.0f}")

    def _log_grid(self) -> None:
        """Main process: a grid of EMA-G samples from fixed noise, as PNG in the run dir and to W&B."""
        if not self.acc.is_main_process:
            return
        grid = fixed_grid(self.nets.ema.module, self.cfg.log.grid_size, self.cfg.seed + 1)  # a row per class if any
        save_png(self.run_dir.path / "samples" / f"step_{self.state.step:07d}.png", grid)
        log_image(self.acc, "samples", grid, step=self.state.step, caption=f"EMA G, step {self.state.step}")

    def _evaluate(self) -> bool:
        """Collective: score EMA G, log under eval/, and keep the best checkpoint by FID. False when a stop
        signal ended the evaluation early (no scores, no `best`): the caller saves and stops."""

        cfg, acc = self.cfg, self.acc
        try:
            scores = evaluate_generator(acc, self.nets.ema.module, n=cfg.eval.n, seed=cfg.seed + 2,
                                        classifier_path=self.classifier, test_split=self.data_dir / "test",
                                        should_stop=lambda: self.watcher.requested(acc),
                                        stop_seen=lambda: self.watcher.seen)
        except EvaluationAbandoned:
            self.watcher.requested(acc)  # every rank: settles the agreed kind of stop (requeue or not)
            by = f"SIG{self.watcher.signal_name}" if self.watcher.signal_name else "a signal on another rank"
            if acc.is_main_process:
                log.warning("evaluation at step %d abandoned: %s", self.state.step, by)
            return False
        values = {f"eval/{k}": float(v) for k, v in scores.items()}
        self.acc.log(values, step=self.state.step)
        self.metrics.write(self.state.step, values)
        fid = scores["fid"]  # the same on every rank, so all ranks agree on saving `best`
        if math.isfinite(fid) and (self.state.best_fid is None or fid < self.state.best_fid):  # NaN never best
            self.state.best_fid = fid
            self._checkpoint(name=BEST, scores=scores)
        return True

    def _checkpoint(self, name: str | None = None, scores: dict[str, float] | None = None) -> None:
        """Collective: refuse to save non-finite weights, check all ranks agree, then save."""
        self._check_divergence()
        modules = self.nets.modules
        if not parameters_finite(self.acc, modules):
            last = latest_checkpoint(self.run_dir.path, warn=False)
            raise DivergedError(f"non-finite G/D weights at step {self.state.step}; not saving a checkpoint "
                                f"(last good: {last or 'none'})")
        check_consistency(self.acc, modules)
        self.metrics.sync()  # the rows up to this step are on disk before the checkpoint a resume starts from
        path = save_checkpoint(self.acc, self.run_dir.path, state=self.state, ema=self.nets.ema,
                               precision=self.precision, config_yaml=self.config_yaml, keep=self.cfg.checkpoint.keep,
                               name=name)
        if self.artifacts is not None:
            self.artifacts.log_generator(self.nets.ema.module, step=self.state.step, best=name == BEST, scores=scores,
                                         checkpoint=path)


__all__ = ["DivergedError", "TrainResult", "Trainer", "make_accelerator", "train"]
