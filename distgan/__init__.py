"""distgan: distributed GAN training on Accelerate with webdataset shards and W&B tracking."""

__version__ = "0.1.0"
