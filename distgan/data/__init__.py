"""The data path: sources (IDX files `idx` and named downloads `datasets`/`download`, image folders
`image_folder`, .npz files; all in `sources`, resized by `imaging`) -> `prepare` -> webdataset shards and
their manifest (`shards`: the on-disk format, its reader, writer and checks) -> the exactly-once loader
(`loader`) -> the trainer's endless batch stream (`stream`). `dataset_info` (`info`) reads a prepared
dataset's image shape and classes. Standard webdataset shards (one image per sample) are read in place
through a manifest of their own (`standard`); `expand_packs` turns distgan's packed shards into per-image
samples for any webdataset pipeline."""

from distgan.data.info import DatasetInfo, dataset_info
from distgan.data.loader import build_loader, epoch_order, load_split, samples_per_epoch
from distgan.data.standard import expand_packs

__all__ = ["DatasetInfo", "build_loader", "dataset_info", "epoch_order", "expand_packs", "load_split",
           "samples_per_epoch"]
