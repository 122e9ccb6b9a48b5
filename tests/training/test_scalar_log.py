"""distgan.training.scalar_log.ScalarLog with real StepStats on CPU: the logged means per window (R1's over the
steps that ran it only), the perf values, the window reset at flush, and the consecutive non-finite-loss count
(kept across flushes, read through `worst_bad_steps` on a one-process CPU Accelerator)."""

from __future__ import annotations

import math
import time

import pytest
import torch
from accelerate import Accelerator

from distgan.training.gan_step import StepStats
from distgan.training.scalar_log import ScalarLog

CPU = torch.device("cpu")
PERF = {"perf/images_per_s", "perf/step_time_s", "perf/data_wait_s"}


def stats(d: float, g: float, gp: float = 0.0, real: float = 0.5, fake: float = 0.5, r1: float | None = None):
    t = torch.tensor
    return StepStats(d_loss=t(d), g_loss=t(g), gp=t(gp), d_real=t(real), d_fake=t(fake),
                     r1=None if r1 is None else t(r1))


def test_flush_gives_the_window_means():
    log = ScalarLog(CPU)
    log.add(stats(1.0, 2.0, gp=0.5, real=0.75, fake=0.25), data_seconds=0.25)
    log.add(stats(2.0, 4.0, gp=1.5, real=0.25, fake=0.0), data_seconds=0.5)
    log.add(stats(3.0, 0.0, gp=1.0, real=0.5, fake=0.5), data_seconds=0.0)
    values = log.flush(images_per_step=16)
    assert {k: v for k, v in values.items() if k not in PERF} == {
        "loss/d": 2.0, "loss/g": 2.0, "loss/gp": 1.0, "d/real": 0.5, "d/fake": 0.25}
    assert set(values) == {"loss/d", "loss/g", "loss/gp", "d/real", "d/fake", *PERF}  # no R1: no loss/r1
    assert values["perf/data_wait_s"] == 0.25
    assert all(isinstance(v, float) for v in values.values())


def test_r1_is_averaged_over_the_steps_that_ran_it():
    log = ScalarLog(CPU)
    log.add(stats(1.0, 1.0, r1=3.0), data_seconds=0.0)
    log.add(stats(1.0, 1.0), data_seconds=0.0)
    log.add(stats(1.0, 1.0), data_seconds=0.0)
    log.add(stats(1.0, 1.0, r1=5.0), data_seconds=0.0)
    assert log.flush(images_per_step=1)["loss/r1"] == 4.0  # (3 + 5) / 2, not / 4
    log.add(stats(1.0, 1.0), data_seconds=0.0)
    assert "loss/r1" not in log.flush(images_per_step=1)  # a window without R1 has none


def test_perf_values_come_from_the_windows_wall_time():
    start = time.perf_counter()  # before the window opens, so that `elapsed` below bounds the window's time
    log = ScalarLog(CPU)
    for _ in range(4):
        log.add(stats(1.0, 1.0), data_seconds=0.01)
    time.sleep(0.05)
    values = log.flush(images_per_step=8)
    elapsed = time.perf_counter() - start
    assert 0.05 / 4 <= values["perf/step_time_s"] <= elapsed / 4
    assert values["perf/images_per_s"] == pytest.approx(8 / values["perf/step_time_s"])
    assert values["perf/data_wait_s"] == pytest.approx(0.01)


def test_flush_starts_a_new_window():
    log = ScalarLog(CPU)
    log.add(stats(10.0, 10.0), data_seconds=1.0)
    log.flush(images_per_step=1)
    assert (log.sums, log.steps, log.data_seconds, log.r1_sum, log.r1_steps) == ({}, 0, 0.0, None, 0)
    log.add(stats(2.0, 6.0), data_seconds=0.0)
    values = log.flush(images_per_step=1)
    assert (values["loss/d"], values["loss/g"]) == (2.0, 6.0)  # the first window's 10s are gone
    empty = log.flush(images_per_step=4)  # nothing added: only perf, over one (empty) step
    assert set(empty) == PERF and empty["perf/data_wait_s"] == 0.0


def test_a_non_finite_loss_shows_in_the_means():
    log = ScalarLog(CPU)
    log.add(stats(float("nan"), 1.0), data_seconds=0.0)
    log.add(stats(1.0, float("inf")), data_seconds=0.0)
    values = log.flush(images_per_step=1)
    assert math.isnan(values["loss/d"]) and values["loss/g"] == math.inf and values["d/real"] == 0.5


def test_bad_steps_count_consecutive_non_finite_losses_across_flushes():
    acc = Accelerator(cpu=True)
    log = ScalarLog(CPU)
    counts = []
    for d, g in [(1, 1), (math.nan, 1), (1, math.inf), (-math.inf, math.nan), (1, 1), (math.nan, 0)]:
        log.add(stats(d, g), data_seconds=0.0)
        counts.append(log.worst_bad_steps(acc))
    assert counts == [0, 1, 2, 3, 0, 1]
    log.add(stats(math.nan, 0.0), data_seconds=0.0)
    log.flush(images_per_step=1)
    assert log.worst_bad_steps(acc) == 2 and type(log.worst_bad_steps(acc)) is int  # a flush keeps the count
    log.add(stats(0.0, 0.0, gp=math.nan), data_seconds=0.0)  # only D's and G's losses count
    assert log.worst_bad_steps(acc) == 0
    assert log.bad_steps.device == CPU and log.bad_steps.shape == ()
