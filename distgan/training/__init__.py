"""Training: the Trainer and its parts (models, losses, GAN step, precision, EMA, checkpoints, run directory,
preemption, tracking, sampling)."""
