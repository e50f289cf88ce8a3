"""Data set name -> TFDS builder, and -> in-memory `pipeline.Source` for a split."""

import dataclasses
import os

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


def load_source(dataset: ml_collections.ConfigDict, split: str) -> pipeline.Source:
  """Loads one split (images still encoded) into memory."""
  builder = prepare(dataset)
  if split not in builder.info.splits:
    raise ValueError(f"Data set {dataset.name!r} has no split {split!r}; it has "
                     f"{sorted(builder.info.splits)}.")
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  wanted = skeletons.get(dataset.skeleton)
  native = skeletons.get(NATIVE_SKELETON.get(dataset.name, wanted.name))
  source = pipeline.source_from_dataset(ds, f"{dataset.name}/{split}", native)
  if wanted == native:
    return source
  return select_joints(source, wanted)


# The joint set each data set is stored in; config.dataset.skeleton may ask for a subset.
NATIVE_SKELETON = {"synthetic": "mpii", "mpii": "mpii", "lsp": "lsp", "flic": "flic"}


def select_joints(source: pipeline.Source, skeleton: skeletons.Skeleton) -> pipeline.Source:
  """The same people with `skeleton`'s joints only (picked by name from the source's)."""
  index = skeletons.joint_subset(skeleton, source.skeleton)
  ann = dict(source.annotations)
  for key in ("joints", "visible", "occluded"):
    ann[key] = ann[key][:, index]
  return dataclasses.replace(source, annotations=ann, skeleton=skeleton)
