"""Data set name -> in-memory `pipeline.Source` for a split."""

import os

import jax
from jax.experimental import multihost_utils
import ml_collections
import tensorflow_datasets as tfds

from jaxpose import skeletons
from jaxpose.data import pipeline

DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")


def _builder(dataset: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  data_dir = os.path.expanduser(dataset.data_dir or DEFAULT_DATA_DIR)
  if dataset.name == "synthetic":
    from jaxpose.data import synthetic  # pylint: disable=g-import-not-at-top
    return synthetic.SyntheticPose(config=dataset.config, data_dir=data_dir)
  if dataset.name in ("mpii", "lsp", "flic"):
    # Built from manually downloaded files (docs/DATA.md), by default in
    # DATA_DIR/downloads/manual/NAME.
    from jaxpose.data import prepare  # pylint: disable=g-import-not-at-top
    manual_dir = (dataset.get("manual_dir")
                  or prepare.default_manual_dir(data_dir, dataset.name))
    return prepare.get_builder(dataset.name, dataset.config, data_dir,
                               os.path.expanduser(manual_dir))
  raise ValueError(f"Unknown config.dataset.name {dataset.name!r}; known: 'synthetic', "
                   f"'mpii', 'lsp', 'flic'.")


def prepare(dataset: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Builds the data set once (process 0 builds; the others wait for it)."""
  builder = _builder(dataset)
  if not builder.is_prepared():
    if jax.process_index() == 0:
      builder.download_and_prepare()
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"prepare {builder.info.full_name}")
    builder = _builder(dataset)
  return builder


def load_source(dataset: ml_collections.ConfigDict, split: str) -> pipeline.Source:
  """Loads one split (images still encoded) into memory."""
  builder = prepare(dataset)
  if split not in builder.info.splits:
    raise ValueError(f"Data set {dataset.name!r} has no split {split!r}; it has "
                     f"{sorted(builder.info.splits)}.")
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  return pipeline.source_from_dataset(ds, f"{dataset.name}/{split}",
                                      skeletons.get(dataset.skeleton))
