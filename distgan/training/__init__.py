"""The GAN core: the Trainer and one training iteration's parts (discriminators, losses, GAN step,
augmentation, mixed precision, optimizers and EMA, gradient sync, scalar logging, W&B model artifacts).
What a trained G needs lives in `distgan.generator`; the run's life (checkpoints, resume, preemption,
tracking) in `distgan.run`."""
