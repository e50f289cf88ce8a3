"""tf.data input pipeline shared by every data set and model family.

Batches are a pure function of (seed, step, process): example positions are laid out on an
endless sequence of per-epoch permutations, process p of P reads positions
[step*B + p*B/P, step*B + (p+1)*B/P) of the global batch B, and every random augmentation is a
stateless function of (seed, step) drawn for the whole global batch (`stream_seed`: each purpose
has its own stream, and runs with different seeds share none). So resuming at step s needs
nothing but s, processes read disjoint shards that together cover every example, the global
batch does not depend on the number of processes, and two runs with one seed see the same data.

Training, per step: which examples, the affine crop (centre/scale, rotation, scale jitter, flip)
and the joints through it, vectorised over the batch -> per example: decode, warp, colour jitter
(or, with `on_device`, per batch: decode and warp in uint8; or per example: decode only;
jaxpose.data.device_augment does the rest in the train step) -> per batch: targets from the
model's codec. Evaluation: `process_example` per example.
"""

import dataclasses
import enum
import math
import struct
from typing import Callable, Protocol

import numpy as np
import tensorflow as tf

from jaxpose import progress
from jaxpose import skeletons
from jaxpose.data import device_augment

# Per-example target function: (joints [K,2] input px, visible [K], input_size) -> dict of tensors.
TargetFn = Callable[[tf.Tensor, tf.Tensor, int], dict]

FEATURES = ("joints", "visible", "occluded", "center", "scale", "head_box", "norm_size", "id")

# With `on_device`, training batches carry these instead of "image" (see device_augment).
CROP, PIXELS, INVERSE, GAINS = (device_augment.CROP, device_augment.PIXELS,
                                device_augment.INVERSE, device_augment.GAINS)


class EncodedImages(Protocol):
  """Encoded images kept outside memory (e.g. `precrop_cache.ImageShards`), read on demand."""

  def __len__(self) -> int: ...
  def gather(self, index) -> tf.Tensor: ...  # [n] or scalar int index -> encoded bytes
  def take(self, indices) -> "EncodedImages": ...  # The images at `indices`, in that order.
  def view(self, i: int) -> bytes | memoryview: ...  # Image i's bytes, for numpy (host) code.


@dataclasses.dataclass(frozen=True)
class Source:
  """One split: encoded images (in memory, or read on demand from files) plus per-person
  annotations held in memory (leading dim N)."""

  name: str
  images: tf.Tensor | EncodedImages  # [N] encoded JPEG/PNG bytes.
  annotations: dict  # name -> [N, ...] numpy arrays (see jaxpose.data feature dict).
  skeleton: skeletons.Skeleton
  side: int = 0  # > 0: every image fits a side x side square (`precrop` sources).

  @property
  def num_examples(self) -> int:
    if isinstance(self.images, tf.Tensor):
      return int(self.images.shape[0])
    return len(self.images)

  def encoded(self, index) -> tf.Tensor:
    """The encoded image(s) at `index` (a scalar or [n] int tensor, traceable)."""
    if isinstance(self.images, tf.Tensor):
      return tf.gather(self.images, index)
    return self.images.gather(index)


def source_from_dataset(ds: tf.data.Dataset, name: str, skeleton: skeletons.Skeleton) -> Source:
  """Reads a tf.data.Dataset of feature dicts (image still encoded) into a Source."""
  images, annotations = [], {k: [] for k in FEATURES}
  for ex in ds.batch(4096).as_numpy_iterator():
    images.append(ex["image"])
    for k in FEATURES:
      annotations[k].append(ex[k])
  if not images:
    raise ValueError(f"Data set {name!r} is empty.")
  return Source(name=name, images=tf.constant(np.concatenate(images)),
                annotations={k: np.concatenate(v) for k, v in annotations.items()},
                skeleton=skeleton)


def subset(source: Source, indices) -> Source:
  """The people at `indices` (in that order)."""
  indices = np.asarray(indices)
  images = (tf.gather(source.images, indices) if isinstance(source.images, tf.Tensor)
            else source.images.take(indices))
  return dataclasses.replace(source, images=images,
                             annotations={k: v[indices] for k, v in source.annotations.items()})


# ---------------------------------------------------------------------------------------------
# Geometry.


def crop_transform(center, scale, rotation, size: int, flip=False):
  """3x3 matrix mapping original-image pixels to crop pixels (TF ops; eager on numpy too).

  The crop is the square of side 200*scale around `center`, rotated by `rotation` degrees
  (counter-clockwise as seen on screen), resampled to `size` x `size`, then mirrored
  left-right when `flip`. Pixel centres are at integers in both frames. Batched: leading
  dimensions of center [..., 2], scale, rotation and flip broadcast to [..., 3, 3].
  """
  center = tf.cast(center, tf.float32)
  s = size / (200.0 * tf.cast(scale, tf.float32))
  a = tf.cast(rotation, tf.float32) * (math.pi / 180.0)
  cos, sin = tf.cos(a) * s, tf.sin(a) * s
  half = (size - 1) / 2.0
  # Image y points down, so an on-screen counter-clockwise turn is [[c, s], [-s, c]].
  tx = half - (cos * center[..., 0] + sin * center[..., 1])
  ty = half - (-sin * center[..., 0] + cos * center[..., 1])
  # Mirroring maps x to (size - 1) - x: the first row is negated and shifted.
  sign = 1.0 - 2.0 * tf.cast(flip, tf.float32)
  shift = (size - 1.0) * (1.0 - sign) / 2.0
  ones = tf.ones_like(tx * sign)  # The broadcast batch shape (x 1.0 is exact).
  return tf.stack([tf.stack([sign * cos * ones, sign * sin * ones, sign * tx + shift], -1),
                   tf.stack([-sin * ones, cos * ones, ty * ones], -1),
                   tf.stack([0.0 * ones, 0.0 * ones, ones], -1)], -2)


def crop_joints(source: Source, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Joints [N,K,2] of every person of `source` in their un-augmented `size` crop (numpy), and
  the crop matrices [N,3,3] (original pixels -> crop)."""
  ann = source.annotations
  mats = crop_transform(ann["center"], ann["scale"], 0.0, size)
  return transform_points(mats, tf.cast(ann["joints"], tf.float32)).numpy(), mats.numpy()


def transform_points(matrix, points):
  """[..., K, 2] points through [..., 3, 3] affine matrices (TF)."""
  return tf.linalg.matvec(matrix[..., None, :2, :2], points) + matrix[..., None, :2, 2]


def warp_image(image, matrix, size):
  """Resamples `image` [H, W, C] (float32 or uint8) into the `size` x `size` crop given by
  `matrix` (bilinear, zeros outside); `size` may be a tensor."""
  inv = tf.linalg.inv(matrix)
  # ImageProjectiveTransformV3 maps output pixel (x, y) to input (a0 x + a1 y + a2, ...).
  coeffs = tf.concat([tf.reshape(inv[:2, :], [6]), tf.zeros([2])], axis=0)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=coeffs[None], output_shape=tf.stack([size, size]),
      fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
  return out[0]


def _decode_and_warp_numpy(encoded: np.ndarray, inverse: np.ndarray, size) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top  (only the uint8 crops need OpenCV)
  size = int(size)
  crops = np.empty((len(encoded), size, size, 3), np.uint8)
  # Like TensorFlow's decoder: RGB, grey and CMYK made RGB, EXIF orientation not applied (the
  # annotations are in the stored pixels' frame).
  flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
  for i, (data, matrix) in enumerate(zip(encoded, inverse)):
    image = decode_raw_numpy(data)
    if image is None:
      image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
      raise ValueError(f"OpenCV cannot decode image {i} of the batch ({len(data)} bytes)")
    cv2.warpAffine(image, matrix, (size, size), dst=crops[i],
                   flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                   borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
  return crops


def decode_and_warp_uint8(encoded, inverse, size: int):
  """A batch of encoded images [B] -> their crops [B, size, size, 3] uint8; `inverse`
  [B, 2, 3] maps crop pixels to image pixels (`tf.linalg.inv(matrix)[:, :2]`).

  What `decode_image` + `warp_image` compute (bilinear, pixel centres at integers, zeros
  outside), in uint8 with OpenCV (`imdecode`, `warpAffine`: positions to 1/32 px, weights in
  fixed point, rounded). A 256x256 crop of a 589 px MPII pre-crop costs ~1.3 ms (the decoding
  ~1.1 ms; TensorFlow's projective transform alone takes ~2.1 ms). OpenCV decodes JPEGs with
  libjpeg's accurate integer IDCT, TensorFlow by default with the fast one (0.35-0.55/255
  apart on average); the uint8 resampling differs from the float one by ~0.3/255 on average,
  a few /255 at the sharpest edges (tested). One `tf.numpy_function` per batch (OpenCV
  releases the GIL while it works; tf.data runs batches in parallel).
  """
  return _numpy_crops(_decode_and_warp_numpy, encoded, inverse, size)


def read_and_warp_uint8(images: EncodedImages, index, inverse, size: int):
  """`decode_and_warp_uint8` of the images at `index` [B] of a store, read by the same numpy
  call (`EncodedImages.view`) instead of passing through TensorFlow strings: a "raw" pre-crop
  (~1 MB) is resampled where it lies, not copied twice first (589 px pre-crops, one core, in
  benchmarks/pipeline_throughput.py: 2,551 crops/s from the cache against 1,048 in memory)."""

  def read_and_warp(index, inverse, size):
    return _decode_and_warp_numpy([images.view(int(i)) for i in index], inverse, size)

  return _numpy_crops(read_and_warp, index, inverse, size)


def _numpy_crops(fn, images, inverse, size: int):
  """`fn(images [B], inverse [B, 2, 3] float64, size)` -> [B, size, size, 3] uint8, as one
  `tf.numpy_function` per batch."""
  crops = tf.numpy_function(fn, [images, tf.cast(inverse, tf.float64), size], tf.uint8,
                            stateful=False)
  crops.set_shape([images.shape[0], size, size, 3])
  return crops


# ---------------------------------------------------------------------------------------------
# Per-example processing.


DISTRIBUTIONS = ("uniform", "normal_clipped")


@dataclasses.dataclass(frozen=True)
class Augment:
  """Random crop geometry and colour (Newell et al.'s augmentation).

  `distribution` of the rotation r and scale factor f:
    "uniform": r uniform in +-rotation, f uniform in [1 - scale, 1 + scale].
    "normal_clipped" (the PyTorch reference, bearpaw/pytorch-pose): r = rotation * N(0, 1)
      clipped to +-2 rotation, f = 1 + scale * N(0, 1) clipped to [1 - scale, 1 + scale].
  """

  rotation: float = 30.0  # Degrees (the range, or the std of "normal_clipped") ...
  rotation_prob: float = 0.6  # ... applied with this probability (else 0), as the reference.
  scale: float = 0.25  # Scale factor jitter around 1 (range, or std), within 1 +- scale.
  flip: bool = True  # Horizontal flip with probability 0.5, left/right joints swapped.
  color: float = 0.2  # Per-channel gain uniform in [1 - color, 1 + color].
  distribution: str = "uniform"  # Of rotation and scale: one of DISTRIBUTIONS.

  def __post_init__(self):
    if self.distribution not in DISTRIBUTIONS:
      raise ValueError(f"Unknown augmentation distribution {self.distribution!r} "
                       f"(config.augment.distribution); expected one of {DISTRIBUTIONS}.")

  @property
  def max_rotation(self) -> float:
    """The largest |rotation| in degrees any crop can get."""
    if self.rotation_prob <= 0:
      return 0.0
    return abs(self.rotation) * (2.0 if self.distribution == "normal_clipped" else 1.0)


# How `precrop` stores the pixels it keeps (config.dataset.precrop_format): "jpeg" (quality
# `quality`), or "raw": this header (magic, height, width; little-endian) then the RGB uint8
# rows, nothing to decode (~13x the bytes of a quality-90 JPEG, read at memory speed).
IMAGE_FORMATS = ("jpeg", "raw")
RAW_MAGIC = b"JXPRAW\x00\x01"
_RAW_HEADER = struct.Struct("<8sII")


def check_image_format(image_format: str) -> None:
  if image_format not in IMAGE_FORMATS:
    raise ValueError(f"Unknown pre-crop image format {image_format!r} "
                     f"(config.dataset.precrop_format); expected one of {IMAGE_FORMATS}.")


def encode_raw(pixels: np.ndarray) -> bytes:
  """[H, W, 3] uint8 -> the "raw" format's bytes."""
  pixels = np.ascontiguousarray(pixels, np.uint8)
  if pixels.ndim != 3 or pixels.shape[2] != 3:
    raise ValueError(f"encode_raw takes [H, W, 3] pixels, got shape {pixels.shape}.")
  return _RAW_HEADER.pack(RAW_MAGIC, pixels.shape[0], pixels.shape[1]) + pixels.tobytes()


def decode_raw_numpy(data) -> np.ndarray | None:
  """The "raw" format's pixels as a [H, W, 3] view of `data` (no copy), or None when `data`
  is in another format."""
  if bytes(data[:len(RAW_MAGIC)]) != RAW_MAGIC:
    return None
  _, height, width = _RAW_HEADER.unpack_from(data)
  if len(data) != _RAW_HEADER.size + height * width * 3:
    raise ValueError(f"Raw image of {height}x{width} pixels has {len(data)} bytes, expected "
                     f"{_RAW_HEADER.size + height * width * 3} (truncated or damaged).")
  return np.frombuffer(data, np.uint8, offset=_RAW_HEADER.size).reshape(height, width, 3)


def _decode_raw(encoded):
  size = tf.io.decode_raw(tf.strings.substr(encoded, len(RAW_MAGIC), 8), tf.int32,
                          little_endian=True)
  pixels = tf.io.decode_raw(
      tf.strings.substr(encoded, _RAW_HEADER.size, tf.strings.length(encoded)), tf.uint8)
  return tf.reshape(pixels, tf.concat([size, [3]], 0))


def decode_pixels(encoded):
  """Encoded JPEG/PNG/... (or the "raw" format) -> [H, W, 3] uint8 (grey and CMYK become
  RGB)."""
  is_raw = tf.equal(tf.strings.substr(encoded, 0, len(RAW_MAGIC)), RAW_MAGIC)
  image = tf.cond(is_raw, lambda: _decode_raw(encoded),
                  lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
  image.set_shape([None, None, 3])
  return image


def decode_image(encoded):
  """Encoded image -> [H, W, 3] float32 in [0, 1]."""
  return tf.cast(decode_pixels(encoded), tf.float32) / 255.0


normalize = device_augment.normalize  # [0, 1] pixels -> roughly zero-mean inputs.


class Stream(enum.IntEnum):
  """Purposes of the stateless random streams, each folded into the run's seed."""

  GEOMETRY = 1  # Per step: rotation, scale, flip.
  GAINS = 2  # Per step: colour gains.
  PERMUTATION = 3  # Per epoch: the order of the examples.


def stream_seed(seed, stream: Stream, index):
  """[2] int64 stateless seed of draw `index` (a step or an epoch) of `stream` in the run with
  integer seed `seed`: hashed (stateless_fold_in), not added, so that no two (seed, stream,
  index) share a random stream (seed + 1 would replay another run's draws)."""
  run = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
  purpose = tf.random.experimental.stateless_fold_in(run, tf.constant(int(stream), tf.int64))
  return tf.random.experimental.stateless_fold_in(purpose, tf.cast(index, tf.int64))


def augment_params(aug: Augment, geometry_seed, gains_seed, shape=()):
  """Rotation (degrees), scale factor, flip [*shape] and colour gains [*shape, 3].

  The geometry comes from `geometry_seed`, the gains from `gains_seed` ([2] stateless seeds).
  """
  u = tf.random.stateless_uniform(list(shape) + [4], seed=geometry_seed)
  if aug.distribution == "normal_clipped":
    # Normal draws from the same uniforms (inverse CDF), clipped before scaling.
    z = math.sqrt(2.0) * tf.math.erfinv(2.0 * u[..., 1:3] - 1.0)
    rot = aug.rotation * tf.clip_by_value(z[..., 0], -2.0, 2.0)
    scale = 1.0 + aug.scale * tf.clip_by_value(z[..., 1], -1.0, 1.0)
  else:
    rot = (2 * u[..., 1] - 1) * aug.rotation
    scale = 1.0 + (2 * u[..., 2] - 1) * aug.scale
  rot = tf.where(u[..., 0] < aug.rotation_prob, rot, 0.0)
  flip = (u[..., 3] < 0.5) & aug.flip
  gains = tf.random.stateless_uniform(list(shape) + [3], seed=gains_seed, minval=1 - aug.color,
                                      maxval=1 + aug.color)
  return rot, scale, flip, gains


def process_example(encoded, ann, *, input_size: int, skeleton: skeletons.Skeleton,
                    target_fn: TargetFn | None, augment: Augment | None, seed=None):
  """One person -> model input. `seed` ([2] int) drives the stateless augmentation (its geometry
  and gains streams: `seed` with Stream.GEOMETRY and Stream.GAINS folded in).

  The per-example reference: evaluation uses it as is; `train_dataset` computes the same per
  batch (geometry and targets vectorised, pixels per example), with its own random draws.
  """
  rot, scale, flip, gains = 0.0, 1.0, False, tf.ones([3])
  if augment is not None:
    fold_in = tf.random.experimental.stateless_fold_in
    seed = tf.cast(seed, tf.int64)
    rot, scale, flip, gains = augment_params(
        augment, fold_in(seed, tf.constant(int(Stream.GEOMETRY), tf.int64)),
        fold_in(seed, tf.constant(int(Stream.GAINS), tf.int64)))
  matrix = crop_transform(ann["center"], ann["scale"] * scale, rot, input_size, flip)
  crop = warp_image(decode_image(encoded), matrix, input_size)
  out = {"image": normalize(tf.clip_by_value(crop * gains, 0.0, 1.0))}
  joints = transform_points(matrix, tf.cast(ann["joints"], tf.float32))
  visible = tf.cast(ann["visible"], tf.float32)
  if augment is not None:
    perm = tf.constant(skeleton.flip_permutation)
    joints = tf.where(flip, tf.gather(joints, perm), joints)
    visible = tf.where(flip, tf.gather(visible, perm), visible)
  out.update(joints=joints, visible=visible, transform=matrix)
  if target_fn is not None:
    out.update(target_fn(joints, visible, input_size))
  return out


# ---------------------------------------------------------------------------------------------
# Pre-cropping: keep only what training crops can reach.


def reach(augment: Augment | None) -> float:
  """Half-side of the axis-aligned square any training crop stays inside, in units of
  100 * scale around the centre (1 without augmentation)."""
  if augment is None:
    return 1.0
  # |cos| + |sin| peaks at 45 degrees.
  a = math.radians(min(augment.max_rotation, 45.0))
  return (1.0 + augment.scale) * (math.cos(a) + math.sin(a))


def precrop_geometry(center, scale, *, input_size: int, augment: Augment | None):
  """Per example: side (px) of the stored crop and the 3x3 matrix original -> stored pixels.

  The stored crop is the square of half-side 100 * scale * `reach(augment)` around the
  centre (+2 stored px for the bilinear neighbours), at the density of the most zoomed-in
  training crop (input_size / (200 * scale * (1 - augment.scale))), never above the
  original's. So the training warp only ever shrinks the stored pixels or copies them 1:1.
  """
  center = np.asarray(center, np.float64)
  scale = np.asarray(scale, np.float64)
  zoom_in = 1.0 - (augment.scale if augment is not None else 0.0)
  density = np.minimum(1.0, input_size / (200.0 * scale * zoom_in))
  half = 100.0 * scale * reach(augment) * density + 2.0
  side = 2 * np.ceil(half).astype(np.int64) + 1
  matrix = np.zeros(center.shape[:-1] + (3, 3))
  matrix[..., 0, 0] = matrix[..., 1, 1] = density
  matrix[..., :2, 2] = (side[..., None] - 1) / 2.0 - density[..., None] * center
  matrix[..., 2, 2] = 1.0
  return side, matrix


def precrop(source: Source, *, input_size: int, augment: Augment | None,
            quality: int = 90, image_format: str = "jpeg") -> Source:
  """The same split with each image replaced by the part the training crops can reach.

  A 1280x720 MPII photo is ~1M pixels, of which a 256x256 crop uses a small region at a
  fraction of the resolution; decoding it whole dominates the input pipeline. This resamples
  each person's reachable square once (`precrop_geometry`; bilinear, like the training warp)
  and re-encodes it as a JPEG (quality `quality`), or with `image_format="raw"` keeps its
  pixels uncompressed (`encode_raw`: nothing to decode per crop, ~13x the bytes); annotations
  move to the stored pixels (joints, centre, head box through the matrix; scale and norm_size
  times its density), so `process_example` gives the same joints and targets and nearly the
  same pixels. The training crops' content changes only by one extra bilinear resampling and
  the re-encoding (none for "raw").
  For training sources only: evaluation keeps the original images, whose pixels predictions
  are reported in. `jaxpose.data.precrop_cache` stores the result on disk, built once.

  Measured on the benchmark's photo-like 1280x720 JPEGs (benchmarks/pipeline_throughput.py):
  training crops differ from the direct path's by 6.6/255 on average at quality 90 and 6.3/255
  at 95 (mostly the second resampling's blur), while quality 90 decodes 10-15% faster.
  """
  with progress.bar(source.num_examples, f"pre-crop {source.name}", min_total=1000) as shown:
    images, annotations, side = precrop_arrays(source, input_size=input_size, augment=augment,
                                               quality=quality, image_format=image_format,
                                               on_chunk=shown.update)
  return Source(name=f"{source.name} (pre-cropped)", images=tf.constant(images),
                annotations=annotations, skeleton=source.skeleton, side=side)


def precrop_arrays(source: Source, *, input_size: int, augment: Augment | None,
                   quality: int = 90, image_format: str = "jpeg",
                   on_chunk: Callable[[int], object] = lambda n: None
                   ) -> tuple[np.ndarray, dict, int]:
  """`precrop`'s parts: the encoded crops [N] (numpy bytes), the annotations in the stored
  pixels, and the side every stored crop fits in. `on_chunk(n)` after each n crops."""
  check_image_format(image_format)
  ann = source.annotations
  sides, matrices = precrop_geometry(ann["center"], ann["scale"], input_size=input_size,
                                     augment=augment)

  def crop(index, matrix, side):
    pixels = warp_image(decode_pixels(source.encoded(index)), matrix, side)
    if image_format == "raw":
      return tf.numpy_function(encode_raw, [pixels], tf.string, stateful=False)
    return tf.io.encode_jpeg(pixels, quality=quality)

  ds = tf.data.Dataset.from_tensor_slices(
      (tf.range(source.num_examples, dtype=tf.int64), matrices.astype(np.float32),
       sides.astype(np.int32)))
  ds = ds.map(tf.autograph.experimental.do_not_convert(crop),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  chunks = []
  try:
    for chunk in ds.batch(256).as_numpy_iterator():
      chunks.append(chunk)
      on_chunk(len(chunk))
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
    check_decodable(source, range(source.num_examples))  # Names the culprit(s).
    raise
  density = matrices[:, 0, 0]

  def points(p):  # [N, ..., 2] original -> stored pixels (a scale and a shift per example).
    shape = (len(p),) + (1,) * (p.ndim - 2) + (2,)
    return (density.reshape(shape[:-1] + (1,)) * p
            + matrices[:, :2, 2].reshape(shape)).astype(np.float32)

  annotations = dict(ann)
  annotations.update(
      joints=points(ann["joints"]), center=points(ann["center"]),
      head_box=points(ann["head_box"].reshape(-1, 2, 2)).reshape(-1, 4),
      scale=(ann["scale"] * density).astype(np.float32),
      norm_size=(ann["norm_size"] * density).astype(np.float32))
  images = np.concatenate(chunks) if chunks else np.zeros([0], object)
  return images, annotations, int(sides.max()) if len(sides) else 0


# ---------------------------------------------------------------------------------------------
# Datasets.


def _example_reader(source: Source):
  """index -> (encoded image, annotations); the annotation tables become graph constants
  once, not per element."""
  tables = {k: tf.constant(v) for k, v in source.annotations.items()}

  def read(index):
    return source.encoded(index), {k: tf.gather(v, index) for k, v in tables.items()}

  return read


def example_index(position, num_examples: int, seed: int):
  """Example read at global position(s) of the endless training stream (one permutation of
  the split per epoch, a pure function of (seed, epoch)). `position`: a scalar or [B]."""
  position = tf.cast(position, tf.int64)
  epoch, offset = position // num_examples, position % num_examples
  first = tf.reduce_min(epoch)

  def permutation(e):
    return tf.random.experimental.stateless_shuffle(
        tf.range(num_examples, dtype=tf.int64), seed=stream_seed(seed, Stream.PERMUTATION, e))

  perms = tf.map_fn(permutation, tf.range(first, tf.reduce_max(epoch) + 1),
                    fn_output_signature=tf.int64)  # [epochs spanned, N]
  return tf.gather_nd(perms, tf.stack([epoch - first, offset], -1))


def train_step_indices(source: Source, *, step: int, global_batch_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1) -> list[int]:
  """Example indices this process reads for training step `step` (for error reports)."""
  local = global_batch_size // process_count
  first = step * global_batch_size + process_index * local
  return [int(example_index(p, source.num_examples, seed)) for p in range(first, first + local)]


def check_decodable(source: Source, indices) -> None:
  """Raises ValueError naming every example among `indices` whose image does not decode."""
  bad = []
  for i in sorted(set(int(i) for i in indices)):
    try:
      decode_image(source.encoded(i))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
      bad.append(f"index {i} (id {int(source.annotations['id'][i])}): "
                 f"{e.message.splitlines()[0] if hasattr(e, 'message') else e}")
  if bad:
    raise ValueError(f"Undecodable image(s) in {source.name}: " + "; ".join(bad))


def check_joints(source: Source) -> None:
  """Annotations must have the skeleton's number of joints (else tf.data fails obscurely)."""
  k, want = source.annotations["joints"].shape[1], source.skeleton.num_joints
  if k != want:
    raise ValueError(f"{source.name}: annotations have {k} joints but skeleton "
                     f"{source.skeleton.name!r} (and the model) has {want}; check "
                     "config.dataset.skeleton.")


def _pad_bottom_right(image, side: int):
  """Zero-pads [h, w, 3] to [side, side, 3]: by concatenation (measured ~4x faster than
  tf.pad here), and not at all (no copy) when the image already has that size."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]

  def pad():
    wide = tf.concat([image, tf.zeros([h, side - w, 3], image.dtype)], axis=1)
    return tf.concat([wide, tf.zeros([side - h, side, 3], image.dtype)], axis=0)

  return tf.cond((h == side) & (w == side), lambda: image, pad)


def _batch_geometry(source: Source, augment: Augment, *, input_size: int,
                    global_batch_size: int, seed: int, begin: int, local: int,
                    encoded: bool = True):
  """step -> this process's batch before its pixels: which examples, where their crops are,
  joints and colour gains, vectorised (one set of TF ops per batch, not per example), and
  (`encoded`) the encoded images (read once per batch: from files, one call for all).
  Computed for the whole global batch, then sliced [begin, begin + local), so that the global
  batch is bit-identical however many processes share it."""
  n = source.num_examples
  tables = {k: tf.constant(v) for k, v in source.annotations.items()}
  swap = tf.constant(source.skeleton.flip_permutation)

  def geometry(step):
    # Offsets of a static length, so every tensor of the batch has its size in its shape.
    index = example_index(step * global_batch_size + tf.range(global_batch_size, dtype=step.dtype),
                          n, seed)
    ann = {k: tf.gather(v, index) for k, v in tables.items()}
    rot, scale, flip, gains = augment_params(
        augment, stream_seed(seed, Stream.GEOMETRY, step), stream_seed(seed, Stream.GAINS, step),
        [global_batch_size])
    matrix = crop_transform(ann["center"], ann["scale"] * scale, rot, input_size, flip)
    joints = transform_points(matrix, tf.cast(ann["joints"], tf.float32))
    visible = tf.cast(ann["visible"], tf.float32)
    joints = tf.where(flip[:, None, None], tf.gather(joints, swap, axis=1), joints)
    visible = tf.where(flip[:, None], tf.gather(visible, swap, axis=1), visible)
    out = {"index": index, "transform": matrix, INVERSE: tf.linalg.inv(matrix)[:, :2],
           GAINS: gains, "joints": joints, "visible": visible}
    out = {k: v[begin:begin + local] for k, v in out.items()}
    if encoded:
      out["encoded"] = source.encoded(out["index"])
    return out

  return geometry


def train_dataset(source: Source, *, input_size: int, target_fn: TargetFn | None,
                  augment: Augment,
                  global_batch_size: int, seed: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  on_device: bool = False, resample_on_device: bool = False
                  ) -> tf.data.Dataset:
  """Endless training batches of this process's share, starting at `start_step`.

  What crosses to the accelerator per example (`device_augment.input_images` finishes it):
  - neither flag: "image", the finished float32 crop (resampled and coloured here);
  - `on_device`: CROP, the crop decoded and resampled here in uint8 (`decode_and_warp_uint8`,
    per batch; `read_and_warp_uint8` from a store on disk, e.g. the pre-crop cache), and its
    colour GAINS, applied on the accelerator: the fewest bytes (input_size^2 x 3);
  - `on_device` and `resample_on_device`: PIXELS, the decoded stored pixels zero-padded to the
    source's common side, with the crop's INVERSE map and GAINS: the host only decodes, the
    accelerator resamples; needs a pre-cropped source (`precrop`), and ships more bytes (a
    589 px MPII pre-crop: 5.3x the 256 px crop's).
  """
  check_joints(source)
  if resample_on_device and not (on_device and source.side):
    raise ValueError(f"{source.name}: resampling on the device (config.resample_on_device) "
                     "needs config.augment_on_device and pre-cropped images "
                     "(config.dataset.precrop = True).")
  if global_batch_size % process_count:
    raise ValueError(f"Global batch size {global_batch_size} is not divisible by the number "
                     f"of processes {process_count}.")
  local = global_batch_size // process_count
  uint8_crop = on_device and not resample_on_device
  # A store on disk is read by the numpy call that resamples (read_and_warp_uint8).
  from_store = uint8_crop and not isinstance(source.images, tf.Tensor)
  geometry = _batch_geometry(source, augment, input_size=input_size,
                             global_batch_size=global_batch_size, seed=seed,
                             begin=process_index * local, local=local, encoded=not from_store)

  # Per batch, with the uint8 crop: decode and resample (OpenCV), colour on the accelerator.
  def uint8_crops(ex):
    out = {k: ex[k] for k in ("transform", "joints", "visible", GAINS)}
    out[CROP] = (read_and_warp_uint8(source.images, ex["index"], ex[INVERSE], input_size)
                 if from_store else decode_and_warp_uint8(ex["encoded"], ex[INVERSE], input_size))
    return out

  # Per example: decode, then resample and colour (or leave that to the accelerator).
  def pixels(ex):
    encoded = ex["encoded"]
    out = {k: ex[k] for k in ("transform", "joints", "visible")}
    if resample_on_device:
      # Decoding only the window a crop reads (decode_and_crop_jpeg) saves less than
      # placing the window on the common canvas then costs: measured, 3.2 vs 2.8 ms.
      out[PIXELS] = _pad_bottom_right(decode_pixels(encoded), source.side)
      out.update({INVERSE: ex[INVERSE], GAINS: ex[GAINS]})
    else:
      crop = warp_image(decode_image(encoded), ex["transform"], input_size)
      out["image"] = normalize(tf.clip_by_value(crop * ex[GAINS], 0.0, 1.0))
    return out

  # Per batch: the model's targets, vectorised over the batch.
  def targets(batch):
    batch.update(tf.vectorized_map(lambda jv: target_fn(jv[0], jv[1], input_size),
                                   (batch["joints"], batch["visible"])))
    return batch

  do_not_convert = tf.autograph.experimental.do_not_convert
  ds = tf.data.Dataset.range(start_step, 2**62).map(do_not_convert(geometry))
  if uint8_crop:
    ds = ds.map(do_not_convert(uint8_crops), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
  else:
    ds = ds.unbatch().map(do_not_convert(pixels), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    ds = ds.batch(local, drop_remainder=True)
  if target_fn is not None:  # Else the model's family builds them on the device.
    ds = ds.map(do_not_convert(targets), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(2)


def eval_layout(num_examples: int, local_batch_size: int, process_index: int,
                process_count: int) -> tuple[np.ndarray, np.ndarray]:
  """Example indices and validity mask of this process's padded evaluation slots.

  Process p takes examples p, p + P, ...; all processes get the same number of full batches, the
  tail is padded (mask 0), so every example is evaluated exactly once.
  """
  per_process = -(-num_examples // process_count)
  slots = -(-per_process // local_batch_size) * local_batch_size
  positions = process_index + process_count * np.arange(slots)
  mask = positions < num_examples
  return np.minimum(positions, num_examples - 1), mask


def eval_dataset(source: Source, *, input_size: int, local_batch_size: int,
                 process_index: int = 0, process_count: int = 1,
                 scales: tuple[float, ...] = ()) -> tf.data.Dataset:
  """One deterministic pass over the split: batches with `index` and `mask` (padding = 0).

  `scales` (multi-scale testing): each example also carries "scaled_images" [S, size, size, 3]
  and "scaled_transforms" [S, 3, 3], its crops with the person's box times each factor.
  """
  check_joints(source)
  indices, mask = eval_layout(source.num_examples, local_batch_size, process_index,
                              process_count)

  read = _example_reader(source)

  def load(index, valid):
    encoded, ann = read(index)
    out = process_example(encoded, ann, input_size=input_size, skeleton=source.skeleton,
                          target_fn=None, augment=None)
    out.update(index=index, mask=valid)
    if scales:  # One decode, one crop per factor (as process_example crops, unaugmented).
      image = decode_image(encoded)
      matrices = [crop_transform(ann["center"], ann["scale"] * f, 0.0, input_size) for f in scales]
      out.update(scaled_images=tf.stack([
          normalize(tf.clip_by_value(warp_image(image, m, input_size), 0.0, 1.0))
          for m in matrices]), scaled_transforms=tf.stack(matrices))
    return out

  ds = tf.data.Dataset.from_tensor_slices((indices, mask))
  ds = ds.map(tf.autograph.experimental.do_not_convert(load),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local_batch_size, drop_remainder=True).prefetch(2)
