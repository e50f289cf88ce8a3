"""Coordinate codec: joints <-> box-normalised (x, y), the regression target of DeepPose.

Toshev & Szegedy normalise a joint y by a box b (centre b_c, width b_w, height b_h) as
N(y; b) = ((y_x - b_cx) / b_w, (y_y - b_cy) / b_h). Here boxes are squares: the codec's box
is the whole crop, whose S x S pixels (centres at integers) span [-0.5, S - 0.5), so its
centre is c = (S - 1) / 2 and

    u = (x - c) / S        x = S * u + c

puts the crop at [-0.5, 0.5). The crop mirror x -> S - 1 - x is exactly u_x -> -u_x.
`normalize` / `denormalize` do the same for any boxes (the cascade's per-joint boxes).

`CoordinateCodec.encode` runs in the tf.data pipeline (TensorFlow ops); the rest is jax.numpy.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np


def mean_pose(joints, visible) -> np.ndarray:
  """Per joint, the mean of `joints` [N, K, 2] over the people who have it annotated (`visible`
  [N, K] > 0; zero where nobody has): the mean-pose baseline and IEF's y_0 (numpy, float64)."""
  w = (np.asarray(visible) > 0)[..., None]
  total = np.sum(np.where(w, np.asarray(joints, np.float64), 0.0), axis=0)
  return total / np.maximum(np.sum(w, axis=0), 1)


def normalize(joints, center, size):
  """Joints -> box coordinates (jax.numpy).

  Args:
    joints: [..., K, 2] (x, y) pixels.
    center: box centres (x, y), broadcastable to joints: [..., 1, 2] for one box per example,
      [..., K, 2] for one box per joint.
    size: box sides, broadcastable to joints[..., 0]: [..., 1] or [..., K] (or a scalar).

  Returns:
    [..., K, 2] float32, the box spanning [-0.5, 0.5).
  """
  size = jnp.asarray(size, jnp.float32)[..., None]
  return (jnp.asarray(joints, jnp.float32) - jnp.asarray(center, jnp.float32)) / size


def denormalize(coords, center, size):
  """Inverse of `normalize`: box coordinates [..., K, 2] -> pixels [..., K, 2]."""
  size = jnp.asarray(size, jnp.float32)[..., None]
  return jnp.asarray(coords, jnp.float32) * size + jnp.asarray(center, jnp.float32)


@dataclasses.dataclass(frozen=True)
class CoordinateCodec:
  """Joint coordinates normalised to the `input_size`^2 crop (the `Codec` protocol)."""

  input_size: int

  def __post_init__(self):
    if self.input_size <= 0:
      raise ValueError(f"CoordinateCodec needs a positive input_size; got {self.input_size}.")

  @property
  def center(self) -> float:
    """The crop centre, in input pixels, along both axes."""
    return (self.input_size - 1) / 2.0

  def encode(self, joints, visible) -> dict:
    """TF, one example: joints [K, 2] input px, visible [K] -> {"coords": [K, 2] normalised
    (0 for missing joints, whatever their stored value), "coord_weight": [K] = visible}."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only the pipeline needs TF)
    weight = tf.cast(visible, tf.float32)
    coords = (tf.cast(joints, tf.float32) - self.center) / float(self.input_size)
    coords = tf.where(weight[:, None] > 0, coords, 0.0)
    return {"coords": coords, "coord_weight": weight}

  def decode(self, outputs):
    """Normalised coordinates [..., K, 2] -> (joints [..., K, 2] input px, scores [..., K]: the
    regression gives no confidence, so all ones)."""
    joints = denormalize(outputs, self.center, self.input_size)
    return joints, jnp.ones(joints.shape[:-1], jnp.float32)

  def flip_back(self, outputs, flip_permutation):
    """Normalised coordinates [..., K, 2] predicted on the mirrored crop -> unmirrored frame:
    u_x -> -u_x, joints permuted."""
    coords = jnp.asarray(outputs, jnp.float32)
    coords = coords * jnp.array([-1.0, 1.0], jnp.float32)
    return coords[..., jnp.asarray(flip_permutation), :]
