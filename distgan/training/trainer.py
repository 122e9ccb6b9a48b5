"""The distgan training loop on Accelerate: set-up, the loop, and what happens at its boundaries."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    InitProcessGroupKwargs,
    set_seed,
)
from tqdm.auto import tqdm

from distgan.collectives import check_consistency, needs_cpu_flag, parameters_finite
from distgan.config import Config, dump_config
from distgan.data.stream import BatchStream
from distgan.errors import UserError
from distgan.training.checkpoint import BEST, TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from distgan.training.ema import EMA
from distgan.training.gan_step import GANStep
from distgan.training.models import build_discriminator, build_generator
from distgan.training.precision import Precision, accelerate_mixed_precision
from distgan.training.preemption import PreemptionWatcher
from distgan.training.run_dir import DivergedError, RunDir, resolve_resume
from distgan.training.tracking import grid_image, resolve_mode, save_png, start_tracking, wandb_image

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What `train` did: how it ended, the final step, and the loop's own wall time (for benchmarks)."""

    status: str  # "finished" | "preempted"
    step: int
    steps_run: int
    loop_seconds: float
    step_seconds: float  # the iterations alone (data, D and G steps, EMA, bookkeeping), without periodic work
    run_dir: Path


def make_accelerator(cfg: Config, precision_mode: str) -> Accelerator:
    """An Accelerator for this config: W&B tracker, DDP options and a process-group timeout."""
    mode = resolve_mode(cfg.wandb.mode)
    return Accelerator(
        cpu=needs_cpu_flag(),
        mixed_precision=precision_mode,
        log_with="wandb" if mode != "disabled" else None,
        kwargs_handlers=[
            # G and D are separate DDP modules and every parameter is used in its phase.
            DistributedDataParallelKwargs(find_unused_parameters=False, broadcast_buffers=True),
            InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.dist.timeout_s)),
        ],
    )


def build_models(cfg: Config, acc: Accelerator) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D, with SyncBatchNorm when several GPU processes train together."""
    set_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in g.modules())
    if cfg.model.sync_batchnorm and acc.num_processes > 1 and has_bn:
        if acc.device.type == "cuda":
            g = torch.nn.SyncBatchNorm.convert_sync_batchnorm(g)
        else:  # SyncBatchNorm only runs on GPUs; DDP's buffer broadcast keeps the plain BN statistics equal
            log.warning("model.sync_batchnorm: SyncBatchNorm needs GPUs; keeping BatchNorm on %s", acc.device)
    return g, d


def train(cfg: Config) -> TrainResult:
    """Train (or resume) the run described by `cfg`; the same code runs in 1 or N processes."""
    watcher = PreemptionWatcher(cfg.preempt.signals, cfg.preempt.requeue_signals)
    watcher.install()  # first, so a signal during start-up is not lost
    acc = make_accelerator(cfg, accelerate_mixed_precision(cfg.mixed_precision))
    precision = Precision(cfg.mixed_precision, acc.device)
    run = RunDir(Path(cfg.run.dir), acc)
    resume_from = resolve_resume(cfg, run)
    run.write_config(cfg)

    g, d = build_models(cfg, acc)
    ema = EMA(g, cfg.ema.decay, cfg.ema.start_step)
    betas = tuple(cfg.train.betas)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.train.lr_g, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.train.lr_d, betas=betas)
    g, d, opt_g, opt_d = acc.prepare(g, d, opt_g, opt_d)  # never the loader: it is split per rank already
    ema.module.to(acc.device)

    state = TrainState()
    if resume_from is not None:
        state = load_checkpoint(acc, resume_from, ema=ema, precision=precision)
        for opt, lr in ((opt_g, cfg.train.lr_g), (opt_d, cfg.train.lr_d)):  # the config's, not the saved, lr
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, betas
        acc.print(f"resumed from {resume_from} at step {state.step}")
    stream = BatchStream(cfg, acc, state)
    step_fn = GANStep(accelerator=acc, generator=g, discriminator=d, opt_g=opt_g, opt_d=opt_d,
                      precision=precision, loss=cfg.loss.kind, gp_weight=cfg.loss.gp_weight,
                      d_steps=cfg.train.d_steps, z_dim=cfg.model.z_dim, seed=cfg.seed)
    loop = Loop(cfg, acc, run, state, ema, precision, step_fn, stream, watcher, (g, d))
    # Only now, with the data and the classifier checked, does a W&B run start.
    start_tracking(acc, mode=resolve_mode(cfg.wandb.mode), project=cfg.wandb.project, entity=cfg.wandb.entity,
                   name=cfg.wandb.name, run_dir=run.path, config=cfg.to_dict())
    return loop.run()


class Loop:
    """The training loop and its periodic work (logging, grids, evaluation, checkpoints, preemption)."""

    def __init__(self, cfg: Config, acc: Accelerator, run: RunDir, state: TrainState, ema: EMA,
                 precision: Precision, step_fn: GANStep, stream: BatchStream, watcher: PreemptionWatcher,
                 models: tuple[torch.nn.Module, torch.nn.Module]) -> None:
        self.cfg, self.acc, self.rundir, self.state, self.ema = cfg, acc, run, state, ema
        self.precision, self.step_fn, self.stream, self.watcher = precision, step_fn, stream, watcher
        self.g, self.d = models
        self.config_yaml = dump_config(cfg)
        self.bad_steps = torch.zeros((), device=acc.device)  # consecutive non-finite losses, kept on device
        self.grid_noise = torch.randn(cfg.log.grid_size**2, cfg.model.z_dim,
                                      generator=torch.Generator().manual_seed(cfg.seed + 1))
        self.sums: dict[str, torch.Tensor] = {}
        self.window = {"steps": 0, "data_s": 0.0, "t0": time.perf_counter()}  # since the last scalar log
        self.step_seconds = 0.0
        self.classifier = self._eval_classifier()

    def _eval_classifier(self) -> Path | None:
        """The feature classifier for in-training evaluation, checked before anything starts."""
        if not self.cfg.eval.every:
            return None
        from distgan.evaluation.evaluate import classifier_sha256

        path = Path(self.cfg.eval.classifier or Path(self.cfg.data.dir) / "classifier.pt")
        if not path.is_file():
            raise UserError(f"eval.every={self.cfg.eval.every} but there is no classifier at {path}; run "
                            f"`distgan train-classifier --shards {self.cfg.data.dir}` or set eval.every=0")
        self.classifier_sha256 = classifier_sha256(path)
        return path

    def run(self) -> TrainResult:
        if self.classifier is not None and self.acc.trackers:  # scores from other classifiers don't compare
            self.acc.get_tracker("wandb", unwrap=True).summary["eval/classifier_sha256"] = self.classifier_sha256
        start_step, t_start = self.state.step, time.perf_counter()
        show = self.acc.is_main_process and self.cfg.log.progress
        with tqdm(total=self.cfg.train.steps, initial=start_step, disable=not show, dynamic_ncols=True,
                  desc="train") as bar:
            status = self._loop(bar)
        loop_seconds = time.perf_counter() - t_start
        self._finish(status)
        return TrainResult(status, self.state.step, self.state.step - start_step, loop_seconds,
                           self.step_seconds, self.rundir.path)

    def _loop(self, bar: tqdm) -> str:
        """Iterate until train.steps or a preemption; return "finished" or "preempted"."""
        cfg, state = self.cfg, self.state
        while state.step < cfg.train.steps:
            t_data = time.perf_counter()
            reals = [self.stream.next_images() for _ in range(cfg.train.d_steps)]
            self.window["data_s"] += time.perf_counter() - t_data
            logging_step = (state.step + 1) % cfg.log.every == 0
            stats = self.step_fn(reals, state.step, want_grad_norms=logging_step)
            state.step += 1
            self.ema.update(self.acc.unwrap_model(self.g), state.step)
            self._accumulate(stats)
            bar.update(1)
            self.step_seconds += time.perf_counter() - t_data
            if logging_step:
                self._log_scalars(bar)
            if state.step % cfg.log.grid_every == 0 or state.step == 1:
                self._log_grid()
            if cfg.eval.every and state.step % cfg.eval.every == 0:
                self._evaluate()
            saved = state.step % cfg.checkpoint.every == 0 or state.step == cfg.train.steps
            if saved:
                self._checkpoint()
            if state.step < cfg.train.steps and state.step % cfg.preempt.check_every == 0 \
                    and self.watcher.requested(self.acc):
                if not saved:
                    self._checkpoint()
                return "preempted"
        return "finished"

    def _finish(self, status: str) -> None:
        """Every rank reports its weights, the W&B run ends; after a preemption the main process requeues."""
        acc = self.acc
        self.rundir.write_rank_report(self.state.step, self.g, self.d)
        acc.wait_for_everyone()
        is_main = acc.is_main_process
        try:
            acc.end_training()  # finishes the W&B run and destroys the process group
        except ConnectionError as e:  # SLURM may already have killed W&B's service process; the checkpoint is safe
            log.warning("could not finish the W&B run cleanly (%s); `wandb sync` the run directory later", e)
        if status == "preempted":
            by = f"SIG{self.watcher.signal_name}" if self.watcher.signal_name else "a signal on another rank"
            print(f"rank {self.rundir.rank}: preempted by {by}; checkpoint saved at step {self.state.step}",
                  flush=True)
            if is_main:
                self.watcher.requeue()  # last: on SLURM this ends the job and queues it again

    def _accumulate(self, stats: Any) -> None:
        """Sum per-step values on the device; count consecutive non-finite losses without a device sync."""
        finite = torch.isfinite(stats.d_loss) & torch.isfinite(stats.g_loss)
        self.bad_steps = torch.where(finite, torch.zeros_like(self.bad_steps), self.bad_steps + 1)
        for key, value in (("loss/d", stats.d_loss), ("loss/g", stats.g_loss), ("loss/gp", stats.gp),
                           ("d/real", stats.d_real), ("d/fake", stats.d_fake)):
            self.sums[key] = self.sums.get(key, 0) + value
        self.window["steps"] += 1

    def _check_divergence(self) -> None:
        """Collective: stop every rank once any rank had `nan_patience` non-finite losses in a row."""
        worst = int(self.acc.reduce(self.bad_steps.clone(), reduction="max").item())
        if worst >= self.cfg.train.nan_patience:
            last = latest_checkpoint(self.rundir.path, warn=False)
            raise DivergedError(
                f"training diverged: the D or G loss was NaN/inf for {worst} steps in a row at step "
                f"{self.state.step} (train.nan_patience={self.cfg.train.nan_patience}); last good checkpoint: "
                f"{last or 'none'}; lower train.lr_d/train.lr_g or change mixed_precision")

    def _log_scalars(self, bar: tqdm) -> None:
        cfg, acc = self.cfg, self.acc
        self._check_divergence()
        n = self.window["steps"]
        values = {k: (v / n).item() for k, v in self.sums.items()}
        values.update({f"grad_norm/{k}": v.item() for k, v in self.step_fn.grad_norms.items()})
        elapsed = time.perf_counter() - self.window["t0"]
        images = n * cfg.train.batch_size * cfg.train.d_steps * acc.num_processes
        values.update({
            "lr/g": cfg.train.lr_g, "lr/d": cfg.train.lr_d, "epoch": self.state.epoch,
            "perf/images_per_s": images / elapsed, "perf/step_time_s": elapsed / n,
            "perf/data_wait_s": self.window["data_s"] / n,
        })
        if self.precision.mode == "fp16":
            values.update({"loss_scale/d": self.precision.scale("d"), "loss_scale/g": self.precision.scale("g")})
        acc.log(values, step=self.state.step)
        bar.set_postfix(d=f"{values['loss/d']:.3f}", g=f"{values['loss/g']:.3f}",
                        img_s=f"{values['perf/images_per_s']:.0f}")
        self.sums.clear()
        self.window = {"steps": 0, "data_s": 0.0, "t0": time.perf_counter()}

    def _log_grid(self) -> None:
        """Main process: a grid of EMA-G samples from fixed noise, as PNG in the run dir and to W&B."""
        if not self.acc.is_main_process:
            return
        from distgan.training.sampling import generate_images

        images = generate_images(self.ema.module, self.grid_noise).numpy()
        grid = grid_image(images, nrow=self.cfg.log.grid_size)
        save_png(self.rundir.path / "samples" / f"step_{self.state.step:07d}.png", grid)
        if self.acc.trackers:
            self.acc.log({"samples": wandb_image(grid, f"EMA G, step {self.state.step}")}, step=self.state.step)

    def _evaluate(self) -> None:
        """Collective: score EMA G, log under eval/, and keep the best checkpoint by FID."""
        from distgan.evaluation.evaluate import evaluate_generator

        cfg = self.cfg
        scores = evaluate_generator(self.acc, self.ema.module, n=cfg.eval.n, seed=cfg.seed + 2,
                                    classifier_path=self.classifier, test_split=Path(cfg.data.dir) / "test")
        self.acc.log({f"eval/{k}": float(v) for k, v in scores.items()}, step=self.state.step)
        fid = scores["fid"]  # the same on every rank, so all ranks agree on saving `best`
        if self.state.best_fid is None or fid < self.state.best_fid:
            self.state.best_fid = fid
            self._checkpoint(name=BEST)

    def _checkpoint(self, name: str | None = None) -> None:
        """Collective: refuse to save non-finite weights, check all ranks agree, then save."""
        self._check_divergence()
        if not parameters_finite(self.acc, (self.g, self.d)):
            raise DivergedError(f"non-finite G/D weights at step {self.state.step}; not saving a checkpoint "
                                f"(last good: {latest_checkpoint(self.rundir.path, warn=False) or 'none'})")
        check_consistency(self.acc, (self.g, self.d))
        save_checkpoint(self.acc, self.rundir.path, state=self.state, ema=self.ema, precision=self.precision,
                        config_yaml=self.config_yaml, keep=self.cfg.checkpoint.keep, name=name)
