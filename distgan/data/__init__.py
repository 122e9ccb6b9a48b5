"""The data path: sources (IDX files `idx`, downloads `download`) -> `prepare` -> webdataset shards and
their manifest (`shards`: the on-disk format, its reader, writer and checks) -> the exactly-once loader
(`loader`) -> the trainer's endless batch stream (`stream`)."""

from distgan.data.loader import build_loader, epoch_order, load_split, samples_per_epoch

__all__ = ["build_loader", "epoch_order", "load_split", "samples_per_epoch"]
