"""A thin input's kernel gradient as one product of its patches (im2col), a few images at a time.

The kernel gradient of a k x k convolution of x [N, H, W, Cin] is a sum over the output pixels
of each input window (k * k * Cin values, a "patch") times the output gradient there. With the
patches as the rows of a matrix [N * H' * W', k * k * Cin], it is one matrix product with dy
[N * H' * W', Cout]. Where Cin is the image's 3 channels, the taps' k * k products
(`layers.taps_pay`) are each only [3 x pixels] by [pixels x Cout], and XLA's own gradient ran at
~30 GFLOP/s on this 2-core CPU: CPM's 9x9 on the 368 px image (batch 8, 3 -> 128) 2.1-2.4 s
alone, here 0.92 s; Tompson's 5x5 at 256 px 0.36 s against 0.13-0.16 s (docs/performance_log.md,
"A thin input's kernel gradient from its patches").

The patches hold k * k times the input (81x for CPM's 9x9), so they are built over groups of
images (`group`), at most MAX_GROUP_BYTES each, in a `lax.scan` that keeps one group's alive
(`image_groups.scan_sum`, as Winograd's transforms); a
Python loop let XLA build every group's at once (CPM's layer in groups of 2: 1,787 against 634
MiB of temporaries). The sums run in a different order from XLA's: kernel gradients within
~4e-5 of their largest value in float32.
"""

import jax.numpy as jnp

from jaxpose.models import image_groups

MAX_GROUP_BYTES = 1 << 28  # CPM's 9x9 on the 368 px image: 2 images a group (0.92 s; 1: 1.39 s).


def group(x_shape, dy_shape, k: int) -> int:
  """Images a group: the most (a divisor of N) whose patches take at most MAX_GROUP_BYTES, one
  at least."""
  n, cin = x_shape[0], x_shape[-1]
  per_image = dy_shape[1] * dy_shape[2] * k * k * cin * 4
  return max([g for g in image_groups.sizes(n) if g * per_image <= MAX_GROUP_BYTES], default=1)


def _patches(x, k: int, padding: int, out_hw):
  """[n, H, W, C] -> [n * H' * W', k * k * C]: each output pixel's window at stride 1, zero
  padded by `padding`, ordered (row, column, channel) as an HWIO kernel's first three axes."""
  n, _, _, c = x.shape
  h, w = out_hw
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  windows = [xp[:, i:i + h, j:j + w] for i in range(k) for j in range(k)]
  return jnp.concatenate(windows, -1).reshape(n * h * w, k * k * c)


def kernel_gradient(x, dy, k: int, padding: int, images: int | None = None):
  """The gradient for the k x k kernel [k, k, Cin, Cout] (float32) of the convolution of x
  [N, H, W, Cin] at stride 1 and zero padding `padding`, given its output's gradient dy
  [N, H', W', Cout]: the patches' product with dy, `images` at a time (default `group`)."""
  x, dy = x.astype(jnp.float32), dy.astype(jnp.float32)
  n, cin, (h, w, cout) = x.shape[0], x.shape[-1], dy.shape[1:]
  images = group(x.shape, dy.shape, k) if images is None else images

  def product(x, dy):
    return jnp.einsum("pk,po->ko", _patches(x, k, padding, (h, w)), dy.reshape(-1, cout))

  return image_groups.scan_sum(product, image_groups.count(n, images), x, dy).reshape(
      k, k, cin, cout)
