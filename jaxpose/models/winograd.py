"""A 3x3 convolution's kernel gradient (stride 1, padding 1) by Winograd's minimal filtering
F(4x4, 3x3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks").

The convolution's output is cut into 4x4 tiles. In Winograd's form, each tile's 6x6 input
window d and the kernel g are taken into a 6x6 "transformed" space (V = B^T d B, U = G g G^T),
multiplied there point by point and summed over input channels (M = sum_c U * V: 36 matrix
products of [tiles x Cin] by [Cin x Cout]), and taken back by Y = A^T M A. Its gradient for the
kernel runs the same way round: the output gradient's tiles taken to dM = A dY A^T, 36 products
dU = V^T dM of [Cin x tiles] by [tiles x Cout] summed over the tiles, then dg = G^T dU G. That
is 36 multiply-adds per tile and channel pair where the direct sum over the 9 taps takes
9 x 16 = 144: 4x fewer, for transforms that are sums of strided slices (memory passes).

`layers.conv2d` takes its kernel gradient from here on CPUs, where the tap products would
otherwise run (`layers.WINOGRAD`); its forward pass and input gradient stay XLA's convolutions.

Rounding: the transforms' coefficients (up to 8 and 1/24) cost precision. In float32 the
gradient differs from XLA's by ~1e-5 of its largest value (8e-6 to 1.3e-5 on the hourglass's
layers): enough for a gradient. The forward pass, whose values are the predictions, keeps XLA's.

Each transform is two passes, over rows then columns, with the rows' result materialised
(`lax.optimization_barrier`): as one fused pass XLA on CPU recomputed the rows' sums for every
output and took twice as long (16.2 against 8.3 ms for the hourglass's 64 px input).
"""

import numpy as np

import jax
import jax.numpy as jnp

from jaxpose.models import image_groups

TILE = 4  # The output tile's side (m): F(m x m, 3 x 3).
WINDOW = TILE + 2  # The input window's side (m + k - 1).
# `kernel_gradient` takes the batch in groups of images of at least this many tiles in all, one
# group at a time: each group's transforms stay in the caches and only one is alive. Measured
# on the AMD EPYC (2 cores, batch 8, 2026-12-07; docs/performance_log.md), the gradient and its
# temporaries, whole batch against groups: 54 ms and 97 MB against 33 ms and 24 MB at 64 px on
# 128 channels (4 groups of 512 tiles), 88 ms and 193 MB against 65 ms and 88 MB at 128 px on
# 64 (8 groups of 1,024), 7.8 ms and 24 MB as it is at 32 px (512 tiles in all; 2 groups: 7.6
# ms, 4: 10.1 ms).
MIN_TILES_PER_CHUNK = 512

# B^T [6, 6], G [6, 3], A^T [4, 6] for the interpolation points 0, +-1, +-2 and infinity
# (Lavin & Gray's). The kernel gradient takes G back the other way: dg = G^T dU G.
B_T = np.array([[4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1]], np.float32)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], np.float32)
A_T = np.array([[1, 1, 1, 1, 1, 0],
                [0, 1, -1, 2, -2, 0],
                [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float32)


def _combine(coefficients, terms):
  """sum(c * t) over the non-zero coefficients, as adds and subtracts where c is +-1."""
  total = None
  for c, t in zip(coefficients, terms):
    if c == 0:
      continue
    term = t if c == 1 else -t if c == -1 else t * np.asarray(c, t.dtype)
    total = term if total is None else total + term
  return total


def _tiles(size: int) -> int:
  return -(-size // TILE)


def _strided(x, start: int, count: int, axis: int):
  """x's `count` entries from `start` at stride TILE along `axis`."""
  return jax.lax.slice_in_dim(x, start, start + TILE * (count - 1) + 1, TILE, axis)


def transform_input(x):
  """B^T d B for every tile's 6x6 window d of x [N,H,W,C], padded by 1 (and at the bottom /
  right up to whole tiles): [36, N * tiles, C], the 6x6 grid's points first."""
  n, h, w, c = x.shape
  th, tw = _tiles(h), _tiles(w)
  xp = jnp.pad(x, ((0, 0), (1, TILE * th - h + 1), (1, TILE * tw - w + 1), (0, 0)))
  rows = [_strided(xp, i, th, 1) for i in range(WINDOW)]
  by_rows = jax.lax.optimization_barrier(
      jnp.stack([_combine(B_T[a], rows) for a in range(WINDOW)]))  # [6, N, th, W', C]
  cols = [_strided(by_rows, j, tw, 3) for j in range(WINDOW)]
  v = jnp.stack([_combine(B_T[b], cols) for b in range(WINDOW)], 1)  # [6, 6, N, th, tw, C]
  return v.reshape(WINDOW * WINDOW, n * th * tw, c)


def transform_output_gradient(dy):
  """dM = A dY A^T for every 4x4 tile dY of dy [N,H,W,C] (zero-padded to whole tiles): the
  gradient of the transformed products M, given that of the output A^T M A. [36, N * tiles,
  C], the 6x6 grid's points first."""
  n, h, w, c = dy.shape
  th, tw = _tiles(h), _tiles(w)
  dy = jnp.pad(dy, ((0, 0), (0, TILE * th - h), (0, TILE * tw - w), (0, 0)))
  tiles = dy.reshape(n, th, TILE, tw, TILE, c)
  rows = [tiles[:, :, p] for p in range(TILE)]  # [N, th, tw, 4, C] each
  by_rows = jax.lax.optimization_barrier(
      jnp.stack([_combine(A_T[:, a], rows) for a in range(WINDOW)]))  # [6, N, th, tw, 4, C]
  cols = [by_rows[..., q, :] for q in range(TILE)]
  dm = jnp.stack([_combine(A_T[:, b], cols) for b in range(WINDOW)], 1)
  return dm.reshape(WINDOW * WINDOW, n * th * tw, c)


def kernel_gradient(x, dy):
  """The gradient for the kernel [3, 3, Cin, Cout] (float32) of the convolution of x
  [N,H,W,Cin] at stride 1 and zero padding 1, given its output's gradient dy [N,H,W,Cout]:
  summed over `batch_chunks` groups of images, one after the other."""
  du = image_groups.scan_sum(_transformed_kernel_gradient, batch_chunks(x.shape), x, dy)
  return jnp.einsum("ai,abco,bj->ijco", G, du.reshape(WINDOW, WINDOW, *du.shape[1:]), G)


def batch_chunks(x_shape) -> int:
  """Into how many groups of images `kernel_gradient` splits the batch: the most that leave
  each at least MIN_TILES_PER_CHUNK tiles."""
  n, h, w, _ = x_shape
  tiles = _tiles(h) * _tiles(w)
  return max([k for k in image_groups.sizes(n) if n // k * tiles >= MIN_TILES_PER_CHUNK],
             default=1)


def _transformed_kernel_gradient(x, dy):
  """dU = V^T dM, the kernel's gradient in the transformed space: [36, Cin, Cout]."""
  return jnp.einsum("tpc,tpo->tco", transform_input(x.astype(jnp.float32)),
                    transform_output_gradient(dy.astype(jnp.float32)))
