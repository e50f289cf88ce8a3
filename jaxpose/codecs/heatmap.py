"""Gaussian heat-map codec: joints <-> per-joint heat maps.

Coordinates. Pixel centres sit at integers in every frame (original image, network input,
heat map). A heat map of stride s (input size / heat-map size) covers the input so that heat-map
pixel u spans input pixels [s*u - 0.5, s*(u+1) - 0.5), i.e.

    u = (x + 0.5) / s - 0.5        x = s * (u + 0.5) - 0.5

With this alignment a horizontal flip of the input (x -> W-1-x) is exactly a flip of the heat
map (u -> W/s-1-u), so flip testing needs no one-pixel shift.

`encode` runs inside the tf.data pipeline (TensorFlow ops, also callable eagerly on numpy);
`render` is the same in jax.numpy, batched, for targets made on the device; `decode` runs after
the model (jax.numpy, also fine on numpy arrays). `HeatmapCodec` wraps them in the
`jaxpose.codecs.Codec` protocol, in input pixels.
"""

import dataclasses

import jax
import jax.numpy as jnp


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
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only the pipeline needs TF)
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
  weights = visible * tf.cast(_reaches_map(joints, size, sigma), tf.float32)
  return targets * weights, weights


def _reaches_map(joints, size: tuple[int, int], sigma: float):
  """[..., K] bool: the joint lies within 3 sigma of the map (whose pixels span
  [-0.5, W - 0.5) x [-0.5, H - 0.5)). Plain operators: works on TF and jax arrays alike."""
  h, w = size
  margin = 3 * sigma
  x, y = joints[..., 0], joints[..., 1]
  return ((x > -margin - 0.5) & (x < w - 0.5 + margin)
          & (y > -margin - 0.5) & (y < h - 0.5 + margin))


def render(joints, visible, size: tuple[int, int], sigma: float):
  """`encode` in jax.numpy, batched (jit- and vmap-friendly).

  Args:
    joints: [..., K, 2] (x, y) in heat-map pixels.
    visible: [..., K].
    size: (height, width) of the heat maps.
    sigma: Gaussian standard deviation in heat-map pixels.

  Returns:
    maps [..., H, W, K] float32 and weights [..., K] float32, as `encode` gives per example.
  """
  joints = jnp.asarray(joints, jnp.float32)
  visible = jnp.asarray(visible, jnp.float32)
  h, w = size
  dx = jnp.arange(w, dtype=jnp.float32)[:, None] - joints[..., None, :, 0]  # [..., W, K]
  dy = jnp.arange(h, dtype=jnp.float32)[:, None] - joints[..., None, :, 1]  # [..., H, K]
  gx = jnp.exp(-jnp.square(dx) / (2 * sigma**2))
  gy = jnp.exp(-jnp.square(dy) / (2 * sigma**2))
  maps = gy[..., :, None, :] * gx[..., None, :, :]  # [..., H, W, K]
  weights = visible * _reaches_map(joints, size, sigma).astype(jnp.float32)
  return maps * weights[..., None, None, :], weights


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


def decode_upsampled(heatmaps, factor: int):
  """The CPM release's decoding: maps resized `factor`x by bicubic interpolation (the release
  resizes the beliefs to the input with OpenCV's INTER_CUBIC; jax.image's Keys kernel has
  a = -0.5, OpenCV's -0.75), then the argmax on the fine grid. Sub-cell precision without the
  quarter shift, which matters for coarse maps (CPM's stride 8).

  Args:
    heatmaps: [..., H, W, K].
    factor: upsampling factor (the stride: one fine pixel per input pixel).

  Returns:
    coords [..., K, 2] (x, y) in heat-map pixels and the fine maps' maxima [..., K].
  """
  heatmaps = jnp.asarray(heatmaps, jnp.float32)
  *batch, h, w, k = heatmaps.shape
  fine = jax.image.resize(heatmaps, (*batch, h * factor, w * factor, k), "cubic")
  flat = jnp.moveaxis(fine.reshape(*batch, h * factor * w * factor, k), -1, -2)
  idx = jnp.argmax(flat, axis=-1)
  maxvals = jnp.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]
  fine_xy = jnp.stack([idx % (w * factor), idx // (w * factor)], axis=-1).astype(jnp.float32)
  return (fine_xy + 0.5) / factor - 0.5, maxvals  # Fine pixel centres -> heat-map pixels.


SCORES = ("peak", "softmax")  # HeatmapCodec.scores


@dataclasses.dataclass(frozen=True)
class HeatmapCodec:
  """Heat maps of `output_size`^2 for an `input_size`^2 crop, Gaussians of std `sigma`
  (heat-map pixels). Joints in and out are in input pixels (the module functions above work
  in heat-map pixels)."""

  input_size: int
  output_size: int
  sigma: float
  # 0: argmax with the quarter-pixel shift (the hourglass papers); n > 0: `decode_upsampled`
  # by n (the CPM release's decoding, with n = the stride).
  upsample: int = 0
  # What a joint's score is: "peak", the map's maximum (maps regressed toward Gaussians of peak
  # 1); "softmax", for maps that are a spatial softmax's logits (Tompson's spatial model: log
  # beliefs, any offset), the probability the softmax gives the peak's pixel, in (0, 1].
  scores: str = "peak"

  def __post_init__(self):
    if self.input_size <= 0 or self.output_size <= 0 or self.sigma <= 0 or self.upsample < 0:
      raise ValueError(f"HeatmapCodec needs positive sizes and sigma (and upsample >= 0); "
                       f"got {self}.")
    if self.scores not in SCORES:
      raise ValueError(f"HeatmapCodec scores={self.scores!r}; expected one of {SCORES}.")

  @property
  def stride(self) -> float:
    return self.input_size / self.output_size

  @property
  def map_size(self) -> tuple[int, int]:
    return self.output_size, self.output_size

  def encode(self, joints, visible) -> dict:
    """TF, one example: joints [K, 2] input px, visible [K] -> {"targets": [H, W, K],
    "target_weight": [K]}."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only the pipeline needs TF)
    uv = input_to_heatmap(tf.cast(joints, tf.float32), self.stride)
    targets, weights = encode(uv, visible, self.map_size, self.sigma)
    return {"targets": targets, "target_weight": weights}

  def render_targets(self, joints, visible) -> dict:
    """jax.numpy, batched: joints [..., K, 2] input px, visible [..., K] -> what `encode`
    gives, with the leading dimensions."""
    uv = input_to_heatmap(jnp.asarray(joints, jnp.float32), self.stride)
    maps, weights = render(uv, visible, self.map_size, self.sigma)
    return {"targets": maps, "target_weight": weights}

  def decode(self, outputs):
    """Heat maps [..., H, W, K] -> (joints [..., K, 2] input px, scores [..., K]: as
    `scores` says)."""
    coords, scores = (decode_upsampled(outputs, self.upsample) if self.upsample
                      else decode(outputs))
    if self.scores == "softmax":  # Over each map's pixels; an upsampled peak is capped at 1.
      total = jax.nn.logsumexp(jnp.asarray(outputs, jnp.float32), axis=(-3, -2))
      scores = jnp.minimum(jnp.exp(scores - total), 1.0)
    return heatmap_to_input(coords, self.stride), scores

  def flip_back(self, outputs, flip_permutation):
    """Heat maps [..., H, W, K] of the mirrored input -> mirrored back, channels swapped (exact:
    the map grid is aligned so that the input mirror is the map mirror)."""
    maps = jnp.flip(jnp.asarray(outputs), axis=-2)
    return maps[..., jnp.asarray(flip_permutation)]
