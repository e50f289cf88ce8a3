"""The pixel half of the training augmentation, run on the accelerator inside the train step.

With `config.augment_on_device` the input pipeline ships uint8, not float32: each example
carries its crop, resampled on the host in uint8 (`pipeline.decode_and_warp_uint8`; input_size^2
x 3 bytes), and its colour gains. With `config.resample_on_device` too (a pre-cropped source,
`pipeline.precrop`), it stops before resampling: each example carries its stored pixels as
decoded (uint8, zero-padded to the source's common side) and the inverse of its crop matrix.
`input_images` makes the model input from either in the jitted step; it computes what
`pipeline.process_example` computes on the host (bilinear resampling with zeros outside,
gains, clipping, `normalize`): tests compare them. No TensorFlow here: the train step
(jaxpose.steps) imports this module, the pipeline imports its field names.
"""

import jax
import jax.numpy as jnp

# With `on_device`, training batches carry these instead of "image": the uint8 crop (or the
# stored uint8 pixels and the [2, 3] map from crop to stored pixels) and the colour gains.
CROP, PIXELS, INVERSE, GAINS = "crop", "pixels", "inverse", "gains"


def normalize(image):
  """[0, 1] pixels -> roughly zero-mean inputs (host tensors or device arrays alike)."""
  return image - 0.5


def warp_bilinear(pixels: jax.Array, inverse: jax.Array, size: int) -> jax.Array:
  """Resamples one image through an affine map.

  Args:
    pixels: [H, W, C] image (any dtype).
    inverse: [2, 3] map from output pixels (x, y, 1) to input pixels; pixel centres at integers.
    size: output side.

  Returns:
    [size, size, C] float32; input pixels outside the image count as 0.
  """
  h, w = pixels.shape[:2]
  grid = jnp.arange(size, dtype=jnp.float32)
  x = inverse[0, 0] * grid[None, :] + inverse[0, 1] * grid[:, None] + inverse[0, 2]
  y = inverse[1, 0] * grid[None, :] + inverse[1, 1] * grid[:, None] + inverse[1, 2]
  x0, y0 = jnp.floor(x), jnp.floor(y)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)

  def at(xi, yi):
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    value = pixels[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)].astype(jnp.float32)
    return jnp.where(inside[..., None], value, 0.0)

  top = at(x0, y0) * (1 - fx) + at(x0 + 1, y0) * fx
  bottom = at(x0, y0 + 1) * (1 - fx) + at(x0 + 1, y0 + 1) * fx
  return top * (1 - fy) + bottom * fy


def input_images(batch: dict, size: int) -> jax.Array:
  """[B, size, size, 3] model inputs from a batch holding GAINS and either CROP (uint8
  [B, size, size, 3]) or PIXELS (uint8) and INVERSE."""
  if CROP in batch:
    warped = batch[CROP].astype(jnp.float32)
  else:
    warped = jax.vmap(warp_bilinear, in_axes=(0, 0, None))(batch[PIXELS], batch[INVERSE], size)
  gains = batch[GAINS][:, None, None, :] / 255.0
  return normalize(jnp.clip(warped * gains, 0.0, 1.0))
