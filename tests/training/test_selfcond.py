"""The self-conditioned GAN (model.conditional=clusters) and the rpgan loss: config checks, the loss against a
hand computation, the GAN step's pseudo-labels and R2, and in-process training on unlabelled data (exact
resume with the clusters in the checkpoint, sampling by cluster and by frequency); one 2-process gloo run
checks that every rank holds the same clustering, and that it does not depend on the world size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from conftest import REPO, accelerate_launch, assert_same_weights, final_weights
from dataset_support import mnist_digits
from safetensors.torch import load_file
from selfcond_probe import digest
from selfcond_probe import main as probe_main

from distgan.cli import main as cli_main
from distgan.config import AugmentConfig, LossConfig, ModelConfig, load_config
from distgan.data.info import dataset_info
from distgan.errors import UserError
from distgan.generator.architectures import build_generator
from distgan.generator.loading import load_generator, write_samples
from distgan.training.discriminators import build_discriminator
from distgan.training.gan_step import GANStep
from distgan.training.losses import d_loss, g_loss, r1_penalty
from distgan.training.networks import Networks
from distgan.training.precision import Precision
from distgan.training.trainer import train

DEBUG = REPO / "configs" / "debug.yaml"
# A small self-conditioned DCGAN with the rpgan loss, R1 and R2: re-clustered at steps 4, 8 and 12.
SELFCOND = ["model.arch=dcgan", "model.g_width=8", "model.d_width=8", "model.spectral_norm=true",
            "model.conditional=clusters", "model.clusters=3", "model.cluster_images=90", "model.recluster_every=4",
            "loss.kind=rpgan", "loss.r1_gamma=1", "loss.r2_gamma=1", "loss.r1_every=2"]


# --- config ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "message"), [
    (["model.clusters=5"], "config key 'model': model.clusters is set but model.conditional is not clusters; "
                           "set model.conditional=clusters or remove model.clusters"),
    (["model.conditional=true", "model.clusters=5"], "model.clusters is set but model.conditional is not clusters"),
    (["model.conditional=clusters"], "config key 'model': model.conditional=clusters needs model.clusters: K, "
                                     "the number of clusters (2 or more)"),
    (["model.conditional=clusters", "model.clusters=1"], "config key 'model.clusters': must be at least 2, got 1"),
    (["model.conditional=clusters", "model.clusters=1001"], "config key 'model.clusters': must be at most 1000"),
    (["model.conditional=clusters", "model.clusters=4", "model.cluster_images=3"],
     "model.cluster_images 3 is fewer than model.clusters 4"),
    (["model.conditional=clusters", "model.clusters=4", "model.num_classes=10"],
     "model.num_classes 10 differs from model.clusters 4"),
    (["model.conditional=yes please"], "config key 'model.conditional': expected true, false or clusters"),
    (["model.conditional=clusters", "model.clusters=4", "model.recluster_every=0"],
     "config key 'model.recluster_every': must be at least 1"),
    (["loss.kind=rpgn"], "config key 'loss.kind': expected one of"),
    (["loss.r2_gamma=-1"], "config key 'loss.r2_gamma': must be at least 0"),
])
def test_config_errors_are_one_line(overrides, message):
    with pytest.raises(UserError) as e:
        load_config(None, overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_clusters_config_loads():
    cfg = load_config(REPO / "configs" / "mnist_selfcond.yaml")
    assert (cfg.model.conditional, cfg.model.clusters, cfg.model.num_classes) == ("clusters", 50, None)
    assert load_config(None, ["model.conditional=true"]).model.conditional is True


# --- the rpgan loss and R2 ------------------------------------------------------------------------------

def test_rpgan_loss_matches_a_hand_computation():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 1.0, 0.5])
    # D: mean of log(1 + exp(fake_i - real_i)) = log(1 + e^-1), log(1 + e^2), log 2
    hand_d = (np.log1p(np.exp(-1.0)) + np.log1p(np.exp(2.0)) + np.log(2.0)) / 3
    hand_g = (np.log1p(np.exp(1.0)) + np.log1p(np.exp(-2.0)) + np.log(2.0)) / 3
    assert d_loss("rpgan", real, fake).item() == pytest.approx(hand_d, rel=1e-6)
    assert g_loss("rpgan", fake, real).item() == pytest.approx(hand_g, rel=1e-6)
    assert torch.allclose(d_loss("rpgan", real, fake), -F.logsigmoid(real - fake).mean())
    # pairing: permuting the fakes against the reals changes the loss (it is not a difference of means)
    assert d_loss("rpgan", real, fake.flip(0)).item() != pytest.approx(hand_d)
    with pytest.raises(ValueError, match="pass real_logits"):
        g_loss("rpgan", fake)


class FixedLabeller:
    """Pseudo-labels: every real image is cluster `real`; fakes drawn from `freqs`."""

    def __init__(self, real: int, freqs: torch.Tensor) -> None:
        self.real, self.freqs, self.seen = real, freqs, []

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape)
        return torch.full((x.shape[0],), self.real, dtype=torch.long)


def make_step(labeller=None, **loss):
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    cfg = ModelConfig(arch="dcgan", z_dim=8, g_width=8, d_width=8, conditional="clusters", clusters=3, num_classes=3)
    g, d = build_generator(cfg, (1, 28, 28)), build_discriminator(cfg, (1, 28, 28))
    opt_g, opt_d = torch.optim.Adam(g.parameters(), lr=1e-3), torch.optim.Adam(d.parameters(), lr=1e-3)
    g, d, opt_g, opt_d = acc.prepare(g, d, opt_g, opt_d)
    step = GANStep(acc, Networks(g, d, opt_g, opt_d, ema=None), Precision("no", acc.device), LossConfig(**loss),
                   z_dim=8, seed=0, augment=AugmentConfig(policy="translation"), class_freqs=torch.full((3,), 1 / 3),
                   labeller=labeller)
    return step, g, d


def reals(k: int = 8):
    return torch.rand(k, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1, torch.full((k,), -1)


def test_the_step_labels_reals_by_the_labeller_and_fakes_by_its_frequencies():
    labeller = FixedLabeller(2, torch.tensor([0.0, 1.0, 0.0]))
    step, _, d = make_step(labeller, kind="rpgan")
    calls = []
    d.register_forward_hook(lambda mod, args, out: calls.append(args[1].tolist()))
    step([reals()], 0)
    assert labeller.seen == [torch.Size([8, 1, 28, 28])]  # the data's labels (-1: none) are never used
    assert calls[0] == [2] * 8 + [1] * 8  # D step: reals' clusters, then the fakes' drawn labels
    assert calls[1] == [1] * 8 + [2] * 8  # rpgan's G step: the fakes, then their paired reals


def test_r2_penalises_the_fake_images_gradients_lazily():
    step, _, _ = make_step(FixedLabeller(0, torch.full((3,), 1 / 3)), kind="rpgan", r1_gamma=1.0, r2_gamma=2.0,
                           r1_every=2)
    stats = [step([reals()], s) for s in range(4)]
    assert [s.r2 is not None for s in stats] == [True, False, True, False]
    assert all(s.r1 is not None and s.r1 > 0 and s.r2 > 0 for s in stats[::2])
    # R2 is R1's penalty on the fakes: the squared input-gradient norm, per image, averaged
    x = torch.randn(4, 3, requires_grad=True)
    assert r1_penalty((x ** 2).sum(1), x).item() == pytest.approx(float((2 * x.detach()).square().sum(1).mean()),
                                                                rel=1e-5)


# --- training on unlabelled data ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """`distgan prepare --npz` of 300 real MNIST digits without labels."""
    root = tmp_path_factory.mktemp("unlabelled")
    images = np.stack([img for _, img in mnist_digits(30)])
    np.savez(root / "digits.npz", images=images)
    assert cli_main(["prepare", "--npz", str(root / "digits.npz"), "--out", str(root / "data")]) == 0
    assert dataset_info(root / "data").num_classes is None
    return root / "data"


def run(data, run_dir, *overrides):
    cfg = load_config(DEBUG, [f"data.dir={data}", f"run.dir={run_dir}", "wandb.mode=disabled", "log.with=[]",
                              "log.progress=false", "checkpoint.every=6", "checkpoint.keep=10", *SELFCOND, *overrides])
    return train(cfg)


@pytest.fixture(scope="module")
def runs(unlabelled, tmp_path_factory):
    """12 steps straight, and 6 steps then a resume to 12 (across the re-clustering at step 8)."""
    root = tmp_path_factory.mktemp("selfcond_runs")
    assert run(unlabelled, root / "straight", "train.steps=12").step == 12
    assert run(unlabelled, root / "split", "train.steps=6").step == 6
    resumed = run(unlabelled, root / "split", "train.steps=12")
    assert (resumed.step, resumed.steps_run) == (12, 6)
    return root / "straight", root / "split"


def cluster_state(run_dir, step: int = 12):
    return torch.load(run_dir / "checkpoints" / f"step_{step:07d}" / "custom_checkpoint_0.pkl", weights_only=True)


def test_resume_is_exact_and_the_clusters_are_in_the_checkpoint(runs):
    straight, split = runs
    assert_same_weights(final_weights(straight), final_weights(split))
    a, b = cluster_state(straight), cluster_state(split)
    assert digest(a) == digest(b) and a["clustered_at"] == 12
    assert a["centroids"].shape[0] == 3 and len(a["assignments"]) == 90
    assert cluster_state(split, 6)["clustered_at"] == 4
    # G (and its EMA, exported) carries the clusters' frequencies: their sizes in the clustering set
    counts = torch.bincount(a["assignments"], minlength=3).float()
    ema = load_file(str(straight / "checkpoints" / "step_0000012" / "ema_generator.safetensors"))
    assert torch.allclose(ema["inputs.class_freqs"], counts / counts.sum())
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "clusters/changed" in r] == [4, 8, 12]
    saved = load_config(straight / "config.yaml")
    assert (saved.model.conditional, saved.model.num_classes) == ("clusters", 3)


def test_sampling_draws_a_cluster_or_the_clusters_by_frequency(runs, tmp_path):
    straight, _ = runs
    g, _ = load_generator(straight)
    assert g.clustered and g.num_classes == 3
    write_samples(straight, n=9, seed=1, out=tmp_path / "two.npz", labels="2")
    with np.load(tmp_path / "two.npz") as npz:
        assert sorted(npz.files) == ["clusters", "images"] and npz["clusters"].tolist() == [2] * 9
    n = 200
    images = write_samples(straight, n=n, seed=1, out=tmp_path / "freq.npz", grid=tmp_path / "freq.png")
    freqs = g.inputs.class_freqs.double()
    with np.load(tmp_path / "freq.npz") as npz:
        counts = np.bincount(npz["clusters"], minlength=3)
        assert np.array_equal(npz["images"], images)
    assert np.all(np.abs(counts - freqs.numpy() * n) < 1)  # exactly in the frequencies (largest remainder)
    with pytest.raises(UserError, match="class 3 is out of range"):
        write_samples(straight, n=2, seed=0, out=tmp_path / "x.npz", labels="3")


@pytest.mark.slow  # a 2-process launch: 7 to 25 s on 2 shared cores
def test_two_ranks_hold_the_same_clustering_and_it_does_not_depend_on_the_world_size(unlabelled, tmp_path):
    args = [f"data.dir={unlabelled}", "wandb.mode=disabled", "log.with=[]", "log.progress=false", "train.steps=8",
            "checkpoint.every=8", *SELFCOND]
    accelerate_launch([str(REPO / "tests" / "selfcond_probe.py"), str(tmp_path / "two"),
                       f"run.dir={tmp_path / 'run2'}", *args], timeout=240)
    reports = [json.loads((tmp_path / "two" / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert reports[0]["initial"] == reports[1]["initial"] and reports[0]["final"] == reports[1]["final"]
    assert reports[0]["freqs"] == reports[1]["freqs"]
    assert reports[0]["initial"] != reports[0]["final"]  # re-clustered at steps 4 and 8, by rank 0 alone
    probe_main(tmp_path / "one", [f"run.dir={tmp_path / 'run1'}", *args])  # the same, in this one process
    one = json.loads((tmp_path / "one" / "rank_0.json").read_text())
    assert one["world_size"] == 1 and one["initial"] == reports[0]["initial"]  # same images, same initial D


def test_a_folder_of_images_without_classes_trains_samples_and_exports(tmp_path, capsys):
    """The unlabelled path end to end as the docs give it: a flat folder of PNGs, `prepare --image-folder` (which
    names the self-conditioned config), `train --config configs/mnist_selfcond.yaml`, `sample`, `export`."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (_, digit) in enumerate(mnist_digits(12)):
        Image.fromarray(digit).save(folder / f"img_{i:03d}.png")
    assert cli_main(["prepare", "--image-folder", str(folder), "--out", str(tmp_path / "data")]) == 0
    assert "configs/mnist_selfcond.yaml" in capsys.readouterr().out
    assert dataset_info(tmp_path / "data").num_classes is None
    run_dir = tmp_path / "run"
    config = REPO / "configs" / "mnist_selfcond.yaml"
    assert cli_main(["train", "--config", str(config), f"data.dir={tmp_path / 'data'}",
                     f"run.dir={run_dir}", "eval.every=0", "wandb.mode=disabled", "log.progress=false",
                     "train.steps=6", "train.batch_size=16", "model.g_width=8", "model.d_width=8", "model.clusters=4",
                     "model.cluster_images=60", "model.recluster_every=3", "checkpoint.every=6",
                     "mixed_precision=no"]) == 0  # in-process: this worker's accelerator state is fp32
    assert cli_main(["sample", "--checkpoint", str(run_dir), "--n", "8", "--labels", "2", "--seed", "5",
                     "--out", str(tmp_path / "two.npz")]) == 0
    with np.load(tmp_path / "two.npz") as npz:
        assert npz["images"].shape == (8, 28, 28) and npz["clusters"].tolist() == [2] * 8
    assert cli_main(["export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "export")]) == 0
    exported, _ = load_generator(tmp_path / "export")
    assert exported.clustered and exported.num_classes == 4
    again = write_samples(tmp_path / "export", n=8, seed=5, out=tmp_path / "again.npz", labels="2")
    with np.load(tmp_path / "two.npz") as npz:
        assert np.array_equal(again, npz["images"])  # the export is the checkpoint's EMA G
