"""The life of a training run: its directory and lock, checkpoints and the whole resume policy (`resume`),
preemption signals, the trackers (W&B, TensorBoard) and the metrics file beside them."""
