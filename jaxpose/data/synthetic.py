"""The built-in synthetic human-pose data set: rendered articulated people, no download.

Every example is one person drawn from a 2-D kinematic model (torso, neck, head, upper and
lower arms and legs, hands, feet) with human joint-angle limits and per-person bone lengths,
seen from the front or the back, turned (narrower shoulders and hips), rotated as a whole
by up to +-30 degrees, placed near the image centre on a cluttered background, and partly
hidden by occluder shapes or cut by the image border. It carries the 16 MPII joints and every
field of the feature dict in `jaxpose.data`.

Left and right. Labels are person-centric as in MPII: a back-facing person's left arm is on the
image's left. So that this is decidable from pixels, every LEFT limb segment (upper arm,
forearm, thigh, shin) carries a white band with black edges along one half of its width, and
right limbs never do. The band is chiral: looking along the limb from its proximal joint to its
distal one, it always lies on the same side in the image (the image's left half of a limb
pointing straight down), in front and back views alike. Training flips the image and swaps
the left/right labels, which moves the band onto a limb labelled RIGHT; a symmetric band
would then say "left" in half the images and "right" in the others, and crossed legs would
be a coin toss. Mirrored, the chiral band lies on the other half, so "band on the first half:
left, band on the other half: right" holds for flipped and unflipped images alike. Front views
also show a face (eyes, mouth, hair cap) and back views the back of the head (hair down to
the neck).

Joint status. `visible` = 0 exactly for joints outside the image (they keep their true,
outside-the-image coordinates); `occluded` = 1 for joints inside the image whose pixel is
covered by an occluder or by another body part drawn over it.

Everything is a pure function of (seed, index): `render_example(TRAIN_SEED, i)` is example
`i` of the train split. `SyntheticPose` serves the renders through TFDS, and `load` builds
(on first use) and reads a split:

  ds = synthetic.load("train", config="tiny", data_dir="/tmp/tfds")

Preview grid: `python -m jaxpose.data.synthetic --preview docs/synthetic_preview.png`.
"""

import argparse
import dataclasses
import functools
import multiprocessing
import os
import time
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxpose import drawing
from jaxpose import progress
from jaxpose.data import builder_lib
from jaxpose.data import synthetic_example
from jaxpose.data import synthetic_people
from jaxpose.data import synthetic_render

TRAIN_SEED = 1_000_003
VALIDATION_SEED = 2_000_029
SPLIT_SEEDS = {"train": TRAIN_SEED, "validation": VALIDATION_SEED}
JPEG_QUALITY = synthetic_example.JPEG_QUALITY

# The renderer's knobs (`jaxpose.data.synthetic_example` says which module does what),
# defined where they are used:
MIN_SIDE, MAX_SIDE = synthetic_render.MIN_SIDE, synthetic_render.MAX_SIDE
MAX_ROTATION_DEG = synthetic_render.MAX_ROTATION_DEG
BACK_VIEW_PROB = synthetic_people.BACK_VIEW_PROB
TRUNCATION_PROB = synthetic_render.TRUNCATION_PROB
OCCLUDER_COUNT_PROBS = synthetic_render.OCCLUDER_COUNT_PROBS
MARKED_PARTS = synthetic_people.MARKED_PARTS
LAYERS = synthetic_people.LAYERS  # Layer name -> value in label = part id + 32 x layer.

_SKELETON = synthetic_people.SKELETON


# ----------------------------------------------------------------------------------------
# The example (jaxpose.data.synthetic_example, which the build's workers import without
# TensorFlow).

RenderInfo = synthetic_example.RenderInfo
render = synthetic_example.render
render_example = synthetic_example.render_example


# ----------------------------------------------------------------------------------------
# TFDS.

# Splits larger than this are rendered by a pool of worker processes.
_POOL_MIN_EXAMPLES = 512
_POOL_CHUNK = 64


@dataclasses.dataclass(eq=False)
class SyntheticPoseConfig(tfds.core.BuilderConfig):
  """Split sizes of one configuration."""

  num_train: int = 12_000
  num_validation: int = 1_000


class SyntheticPose(tfds.core.GeneratorBasedBuilder,
                    skip_registration=__name__ == "__main__"):
  """Synthetic articulated people with the 16 MPII joints (rendered, no download)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Chiral left-limb band, consistent under horizontal flips."}
  BUILDER_CONFIGS = [
      SyntheticPoseConfig(name="default", description="12000 train, 1000 validation people.",
                          num_train=12_000, num_validation=1_000),
      SyntheticPoseConfig(name="tiny", description="64 train, 32 validation people (tests).",
                          num_train=64, num_validation=32),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    return builder_lib.DatasetInfo(
        builder=self,
        description=__doc__,
        features=builder_lib.features(_SKELETON.num_joints),  # The spec every source shares.
        disable_shuffling=True,  # Keep examples in id order.
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    return {
        "train": self._generate_examples(TRAIN_SEED, self.builder_config.num_train, "train"),
        "validation": self._generate_examples(VALIDATION_SEED,
                                              self.builder_config.num_validation, "validation"),
    }

  def _generate_examples(self, seed: int, num: int, split: str = ""
                         ) -> Iterator[tuple[int, dict]]:
    """Yields (index, example) in index order; renders in worker processes if large."""
    with progress.bar(num, f"render synthetic {split}", min_total=_POOL_MIN_EXAMPLES) as shown:
      for index, example in enumerate(self._render(seed, num)):
        shown.update()
        yield index, example

  def _render(self, seed: int, num: int) -> Iterator[dict]:
    render_one = functools.partial(synthetic_example.encoded_example, seed)
    workers = min(os.cpu_count() or 1, 8)
    if num < _POOL_MIN_EXAMPLES or workers < 2:
      yield from map(render_one, range(num))
      return
    # Not a plain fork: the parent may run JAX and TensorFlow threads (train.py builds the data
    # set on first use), and forking a multithreaded process can deadlock. A fork server
    # starts clean once and forks the workers from there.
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
      yield from pool.imap(render_one, range(num), _POOL_CHUNK)


def num_examples(split: str, config: str = "default") -> int:
  """Number of people in `split` of `config`, without building anything."""
  for builder_config in SyntheticPose.BUILDER_CONFIGS:
    if builder_config.name == config:
      sizes = {"train": builder_config.num_train,
               "validation": builder_config.num_validation}
      if split not in sizes:
        raise ValueError(f"Unknown split {split!r}; known: {sorted(sizes)}")
      return sizes[split]
  raise ValueError(f"Unknown config {config!r}; known: "
                   f"{[c.name for c in SyntheticPose.BUILDER_CONFIGS]}")


def load(split: str, config: str = "default", data_dir: str | None = None) -> tf.data.Dataset:
  """Returns `split` as a tf.data.Dataset of feature dicts, building it on first use.

  Args:
    split: "train" or "validation" (any TFDS split string, e.g. "train[:10%]").
    config: "default" or "tiny".
    data_dir: TFDS data directory; None means TFDS's default (~/tensorflow_datasets).
  """
  builder = SyntheticPose(config=config, data_dir=data_dir)
  builder_lib.download_and_prepare(builder)
  return builder.as_dataset(split=split, shuffle_files=False)


# ----------------------------------------------------------------------------------------
# Preview and build from the command line.


def preview(split: str = "train", num: int = 16, ncols: int = 4, start: int = 0) -> np.ndarray:
  """A grid of rendered examples with their skeletons and head boxes drawn over them."""
  seed = SPLIT_SEEDS[split]
  images, titles = [], []
  for index in range(start, start + num):
    example, info = render(seed, index)
    images.append(drawing.draw_skeleton(
        example["image"], example["joints"], example["visible"],
        occluded=example["occluded"], head_box=example["head_box"]))
    view = "back" if info.back_view else "front"
    titles.append(f"#{index} {view} rot {info.rotation_deg:+.0f}")
  return drawing.image_grid(images, ncols, titles)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--preview", help="Write a PNG grid of examples to this path.")
  parser.add_argument("--split", default="train", choices=sorted(SPLIT_SEEDS))
  parser.add_argument("--num", type=int, default=16)
  parser.add_argument("--ncols", type=int, default=4)
  parser.add_argument("--start", type=int, default=0, help="First example index.")
  parser.add_argument("--build", metavar="CONFIG", help="Build this config (and time it).")
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args(argv)
  if args.preview:
    drawing.save_png(preview(args.split, args.num, args.ncols, args.start), args.preview)
    print(f"Wrote {args.preview}")
  if args.build:
    start = time.perf_counter()
    builder = SyntheticPose(config=args.build, data_dir=args.data_dir)
    builder_lib.download_and_prepare(builder)
    print(f"Built synthetic_pose/{args.build} in {builder.data_dir} "
          f"in {time.perf_counter() - start:.1f} s")
  if not (args.preview or args.build):
    parser.print_help()


if __name__ == "__main__":
  from jaxpose import runtime  # pylint: disable=g-import-not-at-top
  runtime.exit_without_teardown(main)
