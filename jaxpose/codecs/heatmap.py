"""Gaussian heat-map codec: joints <-> per-joint heat maps.

Coordinates. Pixel centres sit at integers in every frame (original image, network input,
heat map). A heat map of stride s (input size / heat-map size) covers the input so that heat-map
pixel u spans input pixels [s*u - 0.5, s*(u+1) - 0.5), i.e.

    u = (x + 0.5) / s - 0.5        x = s * (u + 0.5) - 0.5

With this alignment a horizontal flip of the input (x -> W-1-x) is exactly a flip of the heat
map (u -> W/s-1-u), so flip testing needs no one-pixel shift.

`encode` runs inside the tf.data pipeline (TensorFlow ops, also callable eagerly on numpy);
`decode` runs after the model (jax.numpy, also fine on numpy arrays).
"""

import jax.numpy as jnp
import tensorflow as tf


def input_to_heatmap(xy, stride: float):
  """Input-pixel coordinates -> heat-map coordinates (any array type)."""
  return (xy + 0.5) / stride - 0.5


def heatmap_to_input(uv, stride: float):
  """Heat-map coordinates -> input-pixel coordinates (any array type)."""
  return stride * (uv + 0.5) - 0.5


def encode(joints, visible, size: tuple[int, int], sigma: float):
  """Renders unnormalised Gaussians (peak 1) at the joints.

  Args:
    joints: [K, 2] (x, y) in heat-map pixels (sub-pixel centres are kept, not rounded).
    visible: [K] 1 for annotated joints, 0 for missing ones.
    size: (height, width) of the heat map.
    sigma: Gaussian standard deviation in heat-map pixels (1 at 64x64 in the paper).

  Returns:
    targets [H, W, K] float32 and per-joint weights [K] float32: 0 for missing joints and for
    joints whose Gaussian lies entirely outside the map (more than 3 sigma away).
  """
  joints = tf.cast(joints, tf.float32)
  visible = tf.cast(visible, tf.float32)
  h, w = size
  xs = tf.range(w, dtype=tf.float32)
  ys = tf.range(h, dtype=tf.float32)
  dx = xs[:, None] - joints[None, :, 0]  # [W, K]
  dy = ys[:, None] - joints[None, :, 1]  # [H, K]
  gx = tf.exp(-tf.square(dx) / (2 * sigma**2))
  gy = tf.exp(-tf.square(dy) / (2 * sigma**2))
  targets = gy[:, None, :] * gx[None, :, :]  # [H, W, K], separable Gaussian.
  margin = 3 * sigma
  inside = ((joints[:, 0] > -margin - 0.5) & (joints[:, 0] < w - 0.5 + margin)
            & (joints[:, 1] > -margin - 0.5) & (joints[:, 1] < h - 0.5 + margin))
  weights = visible * tf.cast(inside, tf.float32)
  return targets * weights, weights


def decode(heatmaps):
  """Argmax with the usual quarter-pixel shift toward the higher neighbour.

  Args:
    heatmaps: [..., H, W, K].

  Returns:
    coords [..., K, 2] (x, y) in heat-map pixels and the maxima [..., K].
  """
  heatmaps = jnp.asarray(heatmaps)
  *batch, h, w, k = heatmaps.shape
  flat = jnp.moveaxis(heatmaps.reshape(*batch, h * w, k), -1, -2)  # [..., K, H*W]
  idx = jnp.argmax(flat, axis=-1)
  maxvals = jnp.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]
  x = idx % w
  y = idx // w

  def at(xx, yy):
    xx = jnp.clip(xx, 0, w - 1)
    yy = jnp.clip(yy, 0, h - 1)
    return jnp.take_along_axis(flat, (yy * w + xx)[..., None], axis=-1)[..., 0]

  # Shift only where both neighbours exist, as the reference implementations do.
  dx = jnp.where((x > 0) & (x < w - 1), jnp.sign(at(x + 1, y) - at(x - 1, y)), 0.0)
  dy = jnp.where((y > 0) & (y < h - 1), jnp.sign(at(x, y + 1) - at(x, y - 1)), 0.0)
  coords = jnp.stack([x + 0.25 * dx, y + 0.25 * dy], axis=-1).astype(jnp.float32)
  return coords, maxvals
