"""Pieces shared by the TFDS builders of MPII, LSP and FLIC (and the synthetic feature spec).

The builders (`mpii.MpiiPose`, `lsp.LspPose`, `flic.FlicPose`) read the annotation files into
`People` (one row per person, already in the feature-dict conventions of `jaxpose.data`:
0-based pixels, hourglass centre/scale), then `generate_examples` reads, decodes and checks
every image and yields the examples. TFDS writes into a temporary folder and renames it only
when every split is complete, so a build that stops on a bad image or a bad annotation leaves
nothing that reads as prepared. The command line that builds them is `jaxpose.data.prepare`.
"""

import concurrent.futures
import dataclasses
import functools
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxpose import progress
from jaxpose.data import pipeline

# A visible joint may lie at most this fraction of the image's longer side outside the image
# (MPII head tops are annotated up to ~30 px above the top edge, FLIC wrists ~7 px beyond the
# side); farther out means the annotation does not belong to this image file.
OUTSIDE_TOLERANCE = 0.1
JPEG_MAGIC = b"\xff\xd8"
_CHUNK = 64  # Images read ahead by the worker threads.


class AnnotationError(ValueError):
  """An annotation that does not fit its image (or the data set's documented layout)."""


class ImageError(ValueError):
  """An image file that is missing or does not decode."""


# ----------------------------------------------------------------------------------------
# People: the annotations of one split, one row per person.

# Per-person array fields and their number of dimensions (person axis included).
ARRAY_FIELDS = ("joints", "visible", "occluded", "center", "scale", "head_box", "norm_size")
_NDIM = {"joints": 3, "visible": 2, "occluded": 2, "center": 2, "scale": 1, "head_box": 2,
         "norm_size": 1}


@dataclasses.dataclass
class People:
  """Per-person annotations of a split in the conventions of the `jaxpose.data` feature dict.

  `images` are paths relative to the data set's image folder; the other fields are the
  feature-dict arrays with a leading person axis.
  """

  images: list[str]
  joints: np.ndarray  # float32 [N, K, 2], 0-based pixels.
  visible: np.ndarray  # float32 [N, K]
  occluded: np.ndarray  # float32 [N, K]
  center: np.ndarray  # float32 [N, 2]
  scale: np.ndarray  # float32 [N]
  head_box: np.ndarray  # float32 [N, 4]
  norm_size: np.ndarray  # float32 [N]

  def __post_init__(self):
    n = len(self.images)
    self.images = [str(name) for name in self.images]
    for field in ARRAY_FIELDS:
      dims = _NDIM[field]
      value = np.asarray(getattr(self, field), np.float32)
      if value.ndim != dims or value.shape[0] != n:
        raise ValueError(f"People.{field} has shape {value.shape}; expected {dims} dims "
                         f"with {n} people.")
      setattr(self, field, value)

  def __len__(self) -> int:
    return len(self.images)

  @property
  def num_joints(self) -> int:
    return self.joints.shape[1]

  def take(self, index) -> "People":
    """The people at `index` (an index array or a boolean mask), in that order."""
    index = np.asarray(index)
    if index.dtype == bool:
      index = np.flatnonzero(index)
    return People(images=[self.images[i] for i in index],
                  **{f: getattr(self, f)[index] for f in ARRAY_FIELDS})

  def only_images(self, images: Sequence[str] | None) -> "People":
    """The people whose image is in `images` (all of them when None)."""
    if images is None:
      return self
    keep = set(images)
    return self.take(np.array([name in keep for name in self.images], bool))

  def example(self, i: int) -> dict[str, np.ndarray]:
    """The feature dict of person `i` without the image; `id` = `i`."""
    out = {f: getattr(self, f)[i] for f in ARRAY_FIELDS}
    out["id"] = np.int64(i)
    return out


def concatenate(parts: Sequence[People]) -> People:
  """People of several sources, in order."""
  return People(images=[name for p in parts for name in p.images],
                **{f: np.concatenate([getattr(p, f) for p in parts]) for f in ARRAY_FIELDS})


def box_center_scale(joints: np.ndarray, visible: np.ndarray,
                     margin: float) -> tuple[np.ndarray, np.ndarray]:
  """Centre and hourglass scale of people that come without them (LSP, FLIC).

  The box is the bounding box of the visible joints; the centre is its middle and
  scale = margin x (longer box side) / 200, so the square crop of side 200 x scale holds the
  joints' box with (margin - 1) / 2 of its longer side to spare on either side.

  Args:
    joints: [N, K, 2] 0-based pixels.
    visible: [N, K]; every person needs at least one visible joint.
    margin: box side / longer side of the joints' box.

  Returns:
    (center [N, 2], scale [N]) as float32.
  """
  joints = np.asarray(joints, np.float64)
  seen = np.asarray(visible) > 0
  if not seen.any(-1).all():
    raise AnnotationError(f"People without any visible joint: "
                          f"{np.flatnonzero(~seen.any(-1))[:10].tolist()}.")
  lo = np.where(seen[..., None], joints, np.inf).min(1)
  hi = np.where(seen[..., None], joints, -np.inf).max(1)
  center = 0.5 * (lo + hi)
  scale = margin * np.max(hi - lo, axis=-1) / 200.0
  return center.astype(np.float32), scale.astype(np.float32)


# ----------------------------------------------------------------------------------------
# TFDS pieces shared by the builders.


def features(num_joints: int) -> tfds.features.FeaturesDict:
  """The feature spec of every pose data set (the same as `synthetic.SyntheticPose`)."""
  k = num_joints
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "joints": tfds.features.Tensor(shape=(k, 2), dtype=np.float32),
      "visible": tfds.features.Tensor(shape=(k,), dtype=np.float32),
      "occluded": tfds.features.Tensor(shape=(k,), dtype=np.float32),
      "center": tfds.features.Tensor(shape=(2,), dtype=np.float32),
      "scale": tfds.features.Tensor(shape=(), dtype=np.float32),
      "head_box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
      "norm_size": tfds.features.Tensor(shape=(), dtype=np.float32),
      "id": tfds.features.Tensor(shape=(), dtype=np.int64),
  })


class DatasetInfo(tfds.core.DatasetInfo):
  """`tfds.core.DatasetInfo` for data sets that TFDS's public bucket does not hold (all of ours).

  A builder whose data is not prepared yet asks its info to `initialize_from_bucket`, which
  makes a temporary directory for the bucket's files before finding there are none, and leaves
  it behind: one empty directory in the system's temporary folder per builder constructed.
  """

  def initialize_from_bucket(self) -> None:
    """Nothing to fetch: the split sizes come from preparing the data set here."""


@dataclasses.dataclass(eq=False)
class ManualConfig(tfds.core.BuilderConfig):
  """Options shared by the builders over manually downloaded files.

  `images` restricts the build to the people in these image files (paths relative to the
  image folder). It exists for tests and quick looks: without it every person of every split
  is built, and a missing image file is an error, never a skip.
  """

  images: tuple[str, ...] | None = None


def default_manual_dir(data_dir: str | os.PathLike, name: str) -> str:
  """Where a data set's downloaded files go by default: DATA_DIR/downloads/manual/NAME."""
  return os.path.join(os.path.expanduser(os.fspath(data_dir)), "downloads", "manual", name)


def builder_manual_dir(builder: tfds.core.DatasetBuilder, manual_dir: str | None,
                       name: str) -> str:
  """The manual folder of `builder`: the one it was given, else `default_manual_dir`."""
  if manual_dir:
    return os.path.expanduser(os.fspath(manual_dir))
  return default_manual_dir(builder.data_dir_root, name)


def find_file(manual_dir: str, candidates: Sequence[str], instructions: str) -> str:
  """The first of `candidates` (paths relative to `manual_dir`) that exists.

  Raises:
    FileNotFoundError: none exists; the message says what to download, from where, and where
      to put it.
  """
  for candidate in candidates:
    path = os.path.join(manual_dir, candidate)
    if os.path.exists(path):
      return path
  tried = ", ".join(os.path.join(manual_dir, c) for c in candidates)
  raise FileNotFoundError(f"Missing {candidates[0]!r} in the manual folder {manual_dir} "
                          f"(looked for {tried}). {instructions}")


def download_and_prepare(builder: tfds.core.DatasetBuilder, **kwargs) -> None:
  """`builder.download_and_prepare(**kwargs)` showing jaxpose's progress bars (with totals, so
  with an ETA) instead of TFDS's (which count examples without a total)."""
  tfds.display_progress_bar(False)
  try:
    builder.download_and_prepare(**kwargs)
  finally:
    tfds.display_progress_bar(True)


def download_config(manual_dir: str | None = None) -> tfds.download.DownloadConfig:
  """A DownloadConfig for `download_and_prepare` (nothing is downloaded by these builders)."""
  return tfds.download.DownloadConfig(manual_dir=manual_dir)


# ----------------------------------------------------------------------------------------
# Images.


def read_image(path: str) -> tuple[bytes, tuple[int, int]]:
  """Reads and fully decodes an image file; returns (JPEG bytes, (height, width)).

  JPEG files are kept byte for byte; other formats are re-encoded as JPEG (quality 95).

  Raises:
    ImageError: the file is missing or does not decode (truncated, corrupt, not an image);
      the message names the file.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ImageError(f"Cannot read image {path}: {e}") from None
  try:
    image = pipeline.decode_pixels(data)
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
    message = e.message.splitlines()[0] if e.message else type(e).__name__
    raise ImageError(f"Image {path} does not decode ({message}); the file is corrupt or "
                     f"truncated. Replace it with the original from the data set's download "
                     f"and run the build again.") from None
  height, width = int(image.shape[0]), int(image.shape[1])
  if not data.startswith(JPEG_MAGIC):
    data = tf.io.encode_jpeg(image, quality=95).numpy()
  return data, (height, width)


def check_inside(people: People, i: int, size: tuple[int, int], path: str) -> None:
  """Raises AnnotationError if a visible joint of person `i` lies far outside its image."""
  height, width = size
  tol = OUTSIDE_TOLERANCE * max(height, width)
  joints, visible = people.joints[i], people.visible[i] > 0
  outside = visible & ((joints[:, 0] < -tol) | (joints[:, 0] > width - 1 + tol)
                       | (joints[:, 1] < -tol) | (joints[:, 1] > height - 1 + tol))
  if outside.any():
    where = ", ".join(f"joint {j} at ({joints[j, 0]:.1f}, {joints[j, 1]:.1f})"
                      for j in np.flatnonzero(outside))
    raise AnnotationError(
        f"Person {i} of {path}: {where} (0-based pixels) lies more than {tol:.0f} px outside "
        f"the {width}x{height} image. Either the image file is not the one the annotation "
        f"was made on (a resized or different release?) or the annotation is wrong.")


def generate_examples(people: People, image_dir: str,
                      expected_sizes: np.ndarray | None = None,
                      workers: int | None = None) -> Iterator[tuple[int, dict]]:
  """Yields (id, example) for every person, reading and checking images in worker threads.

  Args:
    people: the split.
    image_dir: folder that `people.images` are relative to.
    expected_sizes: optional [N, 2] (height, width) the annotation states; a decoded image
      of another size is an AnnotationError.
    workers: reader threads (default: the number of CPUs, at most 8).

  Raises:
    ImageError: an image is missing or does not decode (the build stops; nothing is kept).
    AnnotationError: an image has the wrong size, or a visible joint lies far outside it.
  """
  workers = workers or min(os.cpu_count() or 1, 8)

  @functools.lru_cache(maxsize=2 * _CHUNK)
  def load(name: str) -> tuple[bytes, tuple[int, int]]:
    return read_image(os.path.join(image_dir, name))

  def make(i: int) -> dict:
    path = os.path.join(image_dir, people.images[i])
    data, size = load(people.images[i])
    if expected_sizes is not None and tuple(expected_sizes[i]) != size:
      raise AnnotationError(f"Image {path} is {size[1]}x{size[0]} (width x height) but the "
                            f"annotation says {expected_sizes[i][1]}x{expected_sizes[i][0]}.")
    check_inside(people, i, size, path)
    example = people.example(i)
    example["image"] = data
    return example

  with (concurrent.futures.ThreadPoolExecutor(workers) as pool,
        progress.bar(len(people), f"read {image_dir}", min_total=100) as shown):
    for start in range(0, len(people), _CHUNK):
      indices = range(start, min(start + _CHUNK, len(people)))
      for i, example in zip(indices, pool.map(make, indices)):
        shown.update()
        yield i, example
