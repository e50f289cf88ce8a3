"""A large-kernel convolution (stride 1, "same" padding) and its gradients by the FFT.

A k x k convolution costs k^2 multiply-adds per output pixel and channel pair; in Fourier space
it is one complex product per frequency and channel pair, for the transforms. The maps are cut
into tiles of T x T (T: `tile_for`), so one kernel transform of T x T serves every tile:
overlapping input windows of T, each giving T - k + 1 rows and columns of output (overlap-save),
for the value; the output gradient's T - k + 1 rows and columns a tile, zero-padded to T, for
both gradients (one transform of it serves the two). Per frequency the sum over channels is a
matrix product, [tiles x Cin] by [Cin x Cout]. CPM's 9x9 layers on 128 channels take ~4
complex multiply-adds per output pixel and channel pair where the direct sum takes 81.

`layers.conv2d` computes such layers from here on CPUs when it is differentiated (training;
`layers.fft_pays`): the value (`correlate`, on large maps) and both gradients (`gradients`).
Without differentiation (inference) the value is XLA's convolution, so the predictions do not
move. The FFT rounds differently: values and input gradients differ from XLA's by ~1e-6 of
their largest value in float32, kernel gradients (sums over the whole batch) by up to ~2e-5.
"""

import jax
import jax.numpy as jnp

# The transforms' sides tried (`tile_for`): 32 where it leaves at least MIN_ROWS tiles in the
# batch (each frequency's product then has that many rows), else 16. Measured on the AMD EPYC
# (2 cores, batch 8, 2026-12-07; both gradients, against the taps' and XLA's): CPM's 9x9 at
# 184 px on 128 channels 0.27x at 32 (512 tiles), 0.34x at 64 (128), 0.61x at 16; its 7x7 at
# 46 px 0.56x at 16, 1.03x at 32 (32 tiles); Tompson's 9x9 to 512 at 32 px 0.45x at 16, 0.94x
# at 32.
TILES = (16, 32)
MIN_ROWS = 128


def tile_for(shape, k: int) -> int:
  """The transforms' side for a k x k kernel on [N, H, W, C] maps: the largest of TILES that
  cuts the batch into at least MIN_ROWS tiles (each at least 4 outputs wide), else the
  smallest that fits the kernel."""
  n, h, w = shape[:3]
  fits = [t for t in TILES if t - k + 1 >= 4]
  good = [t for t in fits if n * _grid(h, k, t)[0] * _grid(w, k, t)[0] >= MIN_ROWS]
  return max(good) if good else min(fits)


def expansion(shape, k: int, tile: int) -> float:
  """How many times the pixels of [N, H, W, C] maps the overlapping tiles hold: CPM's 9x9 at
  184 and 92 px 1.94 (32 a side), its 11x11 at 46 px 7.7 (16 a side)."""
  h, w = shape[1:3]
  return _grid(h, k, tile)[0] * _grid(w, k, tile)[0] * tile * tile / (h * w)


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


def correlate(x, kernel, tile: int):
  """[N, H, W, C] * [k, k, C, O] -> [N, H, W, O]: the convolution (deep learning's, a
  correlation) at stride 1, zero padding k // 2 (k odd), as `lax.conv_general_dilated` gives
  it, through `tile` x `tile` transforms (`tile` - k + 1 outputs a tile and side)."""
  x, kernel = x.astype(jnp.float32), kernel.astype(jnp.float32)  # What the FFT takes.
  n, h, w, _ = x.shape
  k, out = kernel.shape[0], kernel.shape[-1]
  (nh, step), (nw, _) = _grid(h, k, tile), _grid(w, k, tile)
  xs = _spectra(_input_tiles(x, k, tile))
  pad = ((0, tile - k), (0, tile - k), (0, 0), (0, 0))
  ks = jnp.conj(jnp.fft.rfft2(jnp.pad(kernel, pad), axes=(0, 1)))
  ys = jnp.einsum("fmc,fco->fmo", xs, ks.reshape(-1, *kernel.shape[2:]))
  ys = ys.reshape(tile, tile // 2 + 1, n, nh, nw, out).transpose(2, 3, 4, 0, 1, 5)
  y = jnp.fft.irfft2(ys, s=(tile, tile), axes=(3, 4))[:, :, :, :step, :step]
  y = y.transpose(0, 1, 3, 2, 4, 5).reshape(n, nh * step, nw * step, out)
  return y[:, :h, :w]


def gradients(x, kernel, dy, tile: int):
  """(input gradient, kernel gradient) of `correlate(x, kernel)` given dy, from one transform
  of dy: its tiles of `tile` - k + 1 outputs (zero beyond), whose spectra serve both. The
  input's gradient is each tile's full convolution with the kernel (`tile` x `tile`, no
  wrap-around), the tiles' overlaps added (overlap-add); the kernel's, per frequency x's tiles
  (`correlate`'s) against dy's, summed over tiles and the batch, then transformed back: the
  first k x k lags. Against the input gradient as `correlate` of dy with the kernel turned
  round (overlapping tiles of dy, a second transform): 0.82x the time at Tompson's 9x9 to 512
  channels on 64 px, 0.89x at 32 px, 0.93-0.96x on CPM's layers."""
  x, kernel, dy = (a.astype(jnp.float32) for a in (x, kernel, dy))
  k = kernel.shape[0]
  ds = _output_spectra(dy, k, tile)
  return _overlap_add(dy, kernel, ds, tile), _kernel_lags(x, ds, k, tile)


def _output_spectra(dy, k: int, tile: int):
  """[frequencies, tiles, O]: dy cut into tiles of `tile` - k + 1 outputs a side, each
  zero-padded to `tile` x `tile`, transformed."""
  n, h, w, out = dy.shape
  (nh, step), (nw, _) = _grid(h, k, tile), _grid(w, k, tile)
  dyp = jnp.pad(dy, ((0, 0), (0, nh * step - h), (0, nw * step - w), (0, 0)))
  dyt = dyp.reshape(n, nh, step, nw, step, out).transpose(0, 1, 3, 2, 4, 5)
  return _spectra(jnp.pad(dyt, ((0, 0),) * 3 + ((0, tile - step), (0, tile - step), (0, 0))))


def _kernel_lags(x, ds, k: int, tile: int):
  """The kernel gradient from x and dy's tiles' spectra `ds` (`_output_spectra`)."""
  r = jnp.einsum("fmc,fmo->fco", _spectra(_input_tiles(x, k, tile)), jnp.conj(ds))
  r = r.reshape(tile, tile // 2 + 1, *r.shape[1:])
  return jnp.fft.irfft2(r, s=(tile, tile), axes=(0, 1))[:k, :k]


def _overlap_add(dy, kernel, ds, tile: int):
  """The input gradient from dy's tiles' spectra `ds`: each tile's full convolution with the
  kernel covers `tile` rows and columns from its first output's k - 1 before; the sum of the
  tiles' blocks, cut to the input's size."""
  n, h, w, _ = dy.shape
  k, c = kernel.shape[0], kernel.shape[2]
  (nh, step), (nw, _) = _grid(h, k, tile), _grid(w, k, tile)
  pad = ((0, tile - k), (0, tile - k), (0, 0), (0, 0))
  ks = jnp.fft.rfft2(jnp.pad(kernel, pad), axes=(0, 1))  # Convolution: not conjugated.
  blocks = jnp.einsum("fmo,fco->fmc", ds, ks.reshape(-1, c, kernel.shape[-1]))
  blocks = blocks.reshape(tile, tile // 2 + 1, n, nh, nw, c).transpose(2, 3, 4, 0, 1, 5)
  blocks = jnp.fft.irfft2(blocks, s=(tile, tile), axes=(3, 4))  # [N, nh, nw, T, T, C]
  # Each block as m x m pieces of step x step (m * step >= tile), piece (a, b) added one tile
  # further down a times and right b times.
  m = -(-tile // step)
  blocks = jnp.pad(blocks, ((0, 0),) * 3 + ((0, m * step - tile), (0, m * step - tile), (0, 0)))
  blocks = blocks.reshape(n, nh, nw, m, step, m, step, c)
  total = jnp.zeros((n, (nh + m - 1) * step, (nw + m - 1) * step, c), jnp.float32)
  for a in range(m):
    for b in range(m):
      piece = blocks[:, :, :, a, :, b].transpose(0, 1, 3, 2, 4, 5).reshape(
          n, nh * step, nw * step, c)
      total = total + jnp.pad(piece, ((0, 0), (a * step, (m - 1 - a) * step),
                                      (b * step, (m - 1 - b) * step), (0, 0)))
  p = k // 2  # The block's first row is the tile's first output's, k - 1 before: p before x's.
  return total[:, k - 1 - p:k - 1 - p + h, k - 1 - p:k - 1 - p + w]
