"""A large-kernel convolution (stride 1, "same" padding) and its gradients by the FFT.

A k x k convolution costs k^2 multiply-adds per output pixel and channel pair; in Fourier space
it is one complex product per frequency and channel pair, for the transforms. The maps are cut
into overlapping tiles (overlap-save): each T x T input window gives T - k + 1 rows and columns
of output, so one kernel transform of T x T serves every tile (T: `tile_for`). Per frequency
the sum over channels is a matrix product, [tiles x Cin] by [Cin x Cout]. CPM's 9x9 layers on
128 channels take ~4 complex multiply-adds per output pixel and channel pair where the direct
sum takes 81.

`layers.conv2d` computes such layers from here on CPUs (`layers.fft_pays`): the value
(`correlate`), in training and in inference alike, and when it is differentiated the input's
gradient (a convolution of the output gradient with the kernel turned round) and the kernel's
(a correlation of the input with the output gradient, summed over the tiles per frequency, then
transformed back and cut to k x k). The FFT rounds differently: values and input gradients
differ from XLA's by ~1e-6 of their largest value in float32, kernel gradients (sums over the
whole batch) by up to ~2e-5. Each goes over the batch a few images at a time (`image_group`),
so that one group's transforms are alive at once: CPM's step 0.90x the whole batch's time, its
training process's peak RSS 6,792 -> 5,278 MB (docs/performance_log.md, "The FFT a few images
at a time"). Until 2026-12-07 inference kept XLA's convolution, so that predictions would not
move by that rounding; CPM's inference took 2.2x as long for it (docs/performance_log.md,
"Large kernels by the FFT, in inference too").

Measured and not kept (docs/performance_log.md, "Large kernels by the FFT, in training"): one
transform of the output gradient's tiles for both gradients, the input's by overlap-add (0.82x
Tompson's 9x9 layer alone, but 4,261 against 3,760 MiB of CPM's step's temporaries); the groups
by `lax.map` instead of a loop (more of the step's temporaries than the whole batch's).
"""

import functools

import jax
import jax.numpy as jnp

from jaxpose.models import image_groups

# The transforms' sides tried (`tile_for`): 32 where it leaves at least MIN_ROWS tiles in the
# batch (each frequency's product then has that many rows), else 16. Measured on the AMD EPYC
# (2 cores, batch 8, 2026-12-07; both gradients, against the taps' and XLA's): CPM's 9x9 at
# 184 px on 128 channels 0.27x at 32 (512 tiles), 0.34x at 64 (128), 0.61x at 16; its 7x7 at
# 46 px 0.56x at 16, 1.03x at 32 (32 tiles); Tompson's 9x9 to 512 at 32 px 0.45x at 16, 0.94x
# at 32.
TILES = (16, 32)
MIN_ROWS = 128
MIN_OUTPUTS = 4  # A tile's outputs a side, at least.


def fits(k: int) -> bool:
  """Whether some side of TILES gives a k x k kernel MIN_OUTPUTS outputs a tile."""
  return bool(_sides(k))


def _sides(k: int) -> list[int]:
  """The sides of TILES that give a k x k kernel MIN_OUTPUTS outputs a tile."""
  return [t for t in TILES if t - k + 1 >= MIN_OUTPUTS]


def tile_for(shape, k: int) -> int:
  """The transforms' side for a k x k kernel on [N, H, W, C] maps: the largest of TILES that
  cuts the batch into at least MIN_ROWS tiles (each MIN_OUTPUTS outputs wide or more), else
  the smallest that fits the kernel (`fits`)."""
  n, h, w = shape[:3]
  sides = _sides(k)
  good = [t for t in sides if n * _grid(h, k, t)[0] * _grid(w, k, t)[0] >= MIN_ROWS]
  return max(good) if good else min(sides)


def image_group(shape, k: int, tile: int) -> int:
  """How many images of [N, H, W, C] maps `correlate` and `kernel_gradient` transform at a time:
  the fewest (a divisor of N) whose tiles give each frequency's product MIN_ROWS rows, else N.
  One group's transforms are alive at a time, so the layer's temporaries are a group's: CPM's
  184 px layers go in 4 groups of 2 images (64 tiles each), its 92 px ones whole (16 each)."""
  n, h, w = shape[:3]
  tiles = _grid(h, k, tile)[0] * _grid(w, k, tile)[0]
  return min([g for g in image_groups.sizes(n) if g * tiles >= MIN_ROWS], default=n)


def _grid(size: int, k: int, tile: int) -> tuple[int, int]:
  """(tiles along a side of `size` outputs, outputs per tile) for a k x k kernel."""
  step = tile - k + 1
  return -(-size // step), step


def _input_tiles(x, k: int, tile: int):
  """[N, H, W, C] -> [N, nh, nw, tile, tile, C]: the overlapping windows, zero-padded by k // 2
  before and as much as the last tile needs after."""
  n, h, w, c = x.shape
  p = k // 2
  (nh, step), (nw, _) = _grid(h, k, tile), _grid(w, k, tile)
  xp = jnp.pad(x, ((0, 0), (p, nh * step + k - 1 - h - p), (p, nw * step + k - 1 - w - p),
                   (0, 0)))
  rows = jnp.stack([xp[:, i * step:i * step + tile] for i in range(nh)], 1)
  return jnp.stack([rows[:, :, :, j * step:j * step + tile] for j in range(nw)], 2)


def _spectra(tiles):
  """[N, nh, nw, T, T, C] real -> [T * (T // 2 + 1), N * nh * nw, C] complex: a matrix per
  frequency, one row per tile."""
  f = jnp.fft.rfft2(tiles, axes=(3, 4))
  t, half, c = f.shape[3:]
  return f.transpose(3, 4, 0, 1, 2, 5).reshape(t * half, -1, c)


def _groups(group: int | None, arrays, k: int, tile: int):
  """The arrays' slices of `group` images (None: `image_group`'s), one tuple a group."""
  group = image_group(arrays[0].shape, k, tile) if group is None else group
  return [tuple(a[i * group:(i + 1) * group] for a in arrays)
          for i in range(image_groups.count(arrays[0].shape[0], group))]


def correlate(x, kernel, tile: int | None = None, group: int | None = None):
  """[N, H, W, C] * [k, k, C, O] -> [N, H, W, O]: the convolution (deep learning's, a
  correlation) at stride 1, zero padding k // 2 (k odd), as `lax.conv_general_dilated` gives
  it, through `tile` x `tile` transforms (`tile` - k + 1 outputs a tile and side; default
  `tile_for` x's shape), `group` images at a time (default `image_group`)."""
  x, kernel = x.astype(jnp.float32), kernel.astype(jnp.float32)  # What the FFT takes.
  k = kernel.shape[0]
  tile = tile_for(x.shape, k) if tile is None else tile
  pad = ((0, tile - k), (0, tile - k), (0, 0), (0, 0))
  ks = jnp.conj(jnp.fft.rfft2(jnp.pad(kernel, pad), axes=(0, 1)))
  ks = ks.reshape(-1, *kernel.shape[2:])
  # A Python loop, not `lax.map`: in CPM's step the loop's groups held ~900 MiB fewer
  # temporaries than the map's (docs/performance_log.md, "The FFT a few images at a time").
  return jnp.concatenate([_correlate_spectra(xg, ks, k, tile)
                          for (xg,) in _groups(group, (x,), k, tile)])


def _correlate_spectra(x, ks, k: int, tile: int):
  """`correlate` of float32 maps, given the kernel's spectra [T * (T // 2 + 1), C, O]."""
  n, h, w, _ = x.shape
  out = ks.shape[-1]
  (nh, step), (nw, _) = _grid(h, k, tile), _grid(w, k, tile)
  xs = _spectra(_input_tiles(x, k, tile))
  ys = jnp.einsum("fmc,fco->fmo", xs, ks)
  ys = ys.reshape(tile, tile // 2 + 1, n, nh, nw, out).transpose(2, 3, 4, 0, 1, 5)
  y = jnp.fft.irfft2(ys, s=(tile, tile), axes=(3, 4))[:, :, :, :step, :step]
  y = y.transpose(0, 1, 3, 2, 4, 5).reshape(n, nh * step, nw * step, out)
  return y[:, :h, :w]


def input_gradient(dy, kernel, tile: int | None = None, group: int | None = None):
  """The gradient of `correlate(x, kernel)` for x, given its output's dy: dy correlated with the
  kernel turned by 180 degrees, its channels swapped."""
  return correlate(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), tile, group)


def kernel_gradient(x, dy, k: int, tile: int | None = None, group: int | None = None):
  """The gradient of `correlate(x, kernel)` for its k x k kernel, given dy: per frequency, the
  tiles of x against those of dy (zero beyond each tile's outputs), summed over tiles and the
  batch (`tile` and `group` images at a time as `correlate`'s), then transformed back; the
  first k x k lags are the kernel's."""
  x, dy = x.astype(jnp.float32), dy.astype(jnp.float32)
  tile = tile_for(x.shape, k) if tile is None else tile
  r = functools.reduce(jnp.add, [_kernel_spectra(xg, dyg, k, tile)
                                 for xg, dyg in _groups(group, (x, dy), k, tile)])
  r = r.reshape(tile, tile // 2 + 1, *r.shape[1:])
  return jnp.fft.irfft2(r, s=(tile, tile), axes=(0, 1))[:k, :k]


def _kernel_spectra(x, dy, k: int, tile: int):
  """`kernel_gradient`'s sum over the tiles of float32 maps, per frequency: [F, C, O]."""
  n, h, w, out = dy.shape
  (nh, step), (nw, _) = _grid(h, k, tile), _grid(w, k, tile)
  xs = _spectra(_input_tiles(x, k, tile))
  dyp = jnp.pad(dy, ((0, 0), (0, nh * step - h), (0, nw * step - w), (0, 0)))
  dyt = dyp.reshape(n, nh, step, nw, step, out).transpose(0, 1, 3, 2, 4, 5)
  dyt = jnp.pad(dyt, ((0, 0),) * 3 + ((0, tile - step), (0, tile - step), (0, 0)))
  return jnp.einsum("fmc,fmo->fco", xs, jnp.conj(_spectra(dyt)))
