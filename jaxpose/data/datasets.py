"""Data set name -> TFDS builder, and -> `pipeline.Source` for a split (in memory, or the
pre-cropped training split from its cache, `precrop_cache`)."""

import dataclasses
import os
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import tensorflow_datasets as tfds

from jaxpose import skeletons
from jaxpose.data import builder_lib
from jaxpose.data import flic
from jaxpose.data import lsp
from jaxpose.data import mpii
from jaxpose.data import pipeline
from jaxpose.data import precrop_cache
from jaxpose.data import synthetic

DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")
# Data sets built from manually downloaded files (docs/DATA.md) -> their builder.
MANUAL_BUILDERS = {"mpii": mpii.MpiiPose, "lsp": lsp.LspPose, "flic": flic.FlicPose}


def get_builder(name: str, config: str, data_dir: str | None,
                manual_dir: str | None) -> tfds.core.DatasetBuilder:
  """The builder of data set `name` ("mpii", "lsp" or "flic") over the files in `manual_dir`."""
  if name not in MANUAL_BUILDERS:
    raise ValueError(f"Unknown data set {name!r}; known: "
                     f"{', '.join(repr(n) for n in MANUAL_BUILDERS)}.")
  return MANUAL_BUILDERS[name](config=config, data_dir=data_dir, manual_dir=manual_dir)


def _builder(dataset: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  data_dir = os.path.expanduser(dataset.data_dir or DEFAULT_DATA_DIR)
  if dataset.name == "synthetic":
    return synthetic.SyntheticPose(config=dataset.config, data_dir=data_dir)
  if dataset.name in MANUAL_BUILDERS:
    # Built from manually downloaded files (docs/DATA.md), by default in
    # DATA_DIR/downloads/manual/NAME.
    manual_dir = (dataset.get("manual_dir")
                  or builder_lib.default_manual_dir(data_dir, dataset.name))
    return get_builder(dataset.name, dataset.config, data_dir, os.path.expanduser(manual_dir))
  raise ValueError(f"Unknown config.dataset.name {dataset.name!r}; known: 'synthetic', "
                   f"'mpii', 'lsp', 'flic'.")


def prepare(dataset: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Builds the data set once (process 0 builds; the others wait for it)."""
  builder = _builder(dataset)
  if not builder.is_prepared():
    if jax.process_index() == 0:
      builder_lib.download_and_prepare(builder)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"prepare {builder.info.full_name}")
    builder = _builder(dataset)
  return builder


def _checked_split(builder: tfds.core.DatasetBuilder, dataset: ml_collections.ConfigDict,
                   split: str) -> None:
  if split not in builder.info.splits:
    raise ValueError(f"Data set {dataset.name!r} has no split {split!r}; it has "
                     f"{sorted(builder.info.splits)}.")


def _read(builder, dataset: ml_collections.ConfigDict, split: str) -> pipeline.Source:
  """`split` ("train", or a TFDS slice such as "train[0:1024]") in its native joints."""
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  return pipeline.source_from_dataset(ds, f"{dataset.name}/{split}", _native(dataset))


def _native(dataset: ml_collections.ConfigDict) -> skeletons.Skeleton:
  return skeletons.get(NATIVE_SKELETON.get(dataset.name, dataset.skeleton))


def _wanted_joints(dataset: ml_collections.ConfigDict, source: pipeline.Source):
  wanted = skeletons.get(dataset.skeleton)
  return source if wanted == source.skeleton else select_joints(source, wanted)


def load_source(dataset: ml_collections.ConfigDict, split: str) -> pipeline.Source:
  """Loads one split (images still encoded) into memory."""
  builder = prepare(dataset)
  _checked_split(builder, dataset, split)
  return _wanted_joints(dataset, _read(builder, dataset, split))


def load_training_source(dataset: ml_collections.ConfigDict, *, input_size: int,
                         augment: pipeline.Augment) -> pipeline.Source:
  """The training split as the pipeline reads it: pre-cropped when `dataset.precrop` (from
  the cache, built on first use, when `dataset.precrop_cache`; else in memory, at every
  start), else the photos in memory."""
  if not dataset.precrop:
    return load_source(dataset, dataset.train_split)
  if not dataset.precrop_cache:
    source = load_source(dataset, dataset.train_split)
    start = time.perf_counter()
    cropped = pipeline.precrop(source, input_size=input_size, augment=augment,
                               image_format=dataset.get("precrop_format", "jpeg"))
    logging.info("Pre-cropped %d training images in memory in %.1f s.", source.num_examples,
                 time.perf_counter() - start)
    return cropped
  builder = prepare(dataset)
  split = dataset.train_split
  _checked_split(builder, dataset, split)
  info = builder.info
  cache_split = precrop_cache.Split(
      name=f"{dataset.name}/{split}",
      fingerprint={"builder": info.full_name,
                   "shard_lengths": [int(n) for n in info.splits[split].shard_lengths],
                   "num_bytes": int(info.splits[split].num_bytes)},
      num_examples=int(info.splits[split].num_examples), skeleton=_native(dataset),
      read=lambda begin, end: _read(builder, dataset, f"{split}[{begin}:{end}]"))
  cache_dir = os.path.expanduser(dataset.precrop_cache_dir or os.path.join(
      dataset.data_dir or DEFAULT_DATA_DIR, "jaxpose_precrop"))
  start = time.perf_counter()
  source = precrop_cache.load(cache_split, cache_dir, input_size=input_size, augment=augment,
                              image_format=dataset.get("precrop_format", "jpeg"),
                              process_index=jax.process_index(),
                              process_count=jax.process_count(), sync=_sync)
  logging.info("Pre-cropped training split %s: %d people, ready in %.1f s (cache %s).",
               cache_split.name, source.num_examples, time.perf_counter() - start, cache_dir)
  return _wanted_joints(dataset, source)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


# The joint set each data set is stored in; config.dataset.skeleton may ask for a subset.
NATIVE_SKELETON = {"synthetic": "mpii", "mpii": "mpii", "lsp": "lsp", "flic": "flic"}


def select_joints(source: pipeline.Source, skeleton: skeletons.Skeleton) -> pipeline.Source:
  """The same people with `skeleton`'s joints only (picked by name from the source's)."""
  index = skeletons.joint_subset(skeleton, source.skeleton)
  ann = dict(source.annotations)
  for key in ("joints", "visible", "occluded"):
    ann[key] = ann[key][:, index]
  return dataclasses.replace(source, annotations=ann, skeleton=skeleton)
