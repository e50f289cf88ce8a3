"""The FFT's convolution and gradients against XLA's, for any feature-map size."""

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpose.models import fft_conv


def _xla(x, kernel):
  p = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), [(p, p)] * 2,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _close(got, expected, scale: float = 1e-5):
  assert got.shape == expected.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, atol=scale * float(np.max(np.abs(expected))),
                             rtol=0)


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 3), height=st.integers(1, 40), width=st.integers(1, 40),
       channels=st.integers(1, 4), out_channels=st.integers(1, 4),
       kernel=st.sampled_from([7, 9, 11]), tile=st.sampled_from([16, 32]),
       seed=st.integers(0, 99))
def test_convolution_and_gradients_are_xlas(batch, height, width, channels, out_channels,
                                            kernel, tile, seed):
  """Maps smaller than a tile, sizes that leave the last tile cut, both tile sides: the
  convolution and both its gradients equal XLA's to ~1e-5 of their largest value."""
  kx, kk, kg = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (batch, height, width, channels))
  k = jax.random.normal(kk, (kernel, kernel, channels, out_channels))
  dy = jax.random.normal(kg, (batch, height, width, out_channels))
  y, vjp = jax.vjp(_xla, x, k)
  dx, dk = vjp(dy)

  @jax.jit  # One compile: faster than op by op.
  def ours(x, k, dy):
    return (fft_conv.correlate(x, k, tile), fft_conv.input_gradient(dy, k, tile),
            fft_conv.kernel_gradient(x, dy, kernel, tile))

  for got, expected in zip(ours(x, k, dy), (y, dx, dk)):
    _close(got, expected)


def test_takes_bfloat16_and_computes_in_float32():
  x = jax.random.normal(jax.random.key(0), (1, 20, 20, 3))
  k = jax.random.normal(jax.random.key(1), (7, 7, 3, 2))
  got = fft_conv.correlate(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), 16)
  _close(got, _xla(x.astype(jnp.bfloat16).astype(jnp.float32),
                   k.astype(jnp.bfloat16).astype(jnp.float32)))


@pytest.mark.parametrize("shape,kernel,tiles_pixels", [
    ((8, 184, 184, 128), 9, 64 * 32 * 32 / 184**2),  # 8 x 8 tiles of 32 an image.
    ((8, 92, 92, 128), 9, 16 * 32 * 32 / 92**2),  # 4 x 4: 96 x 96 pixels' outputs for 92.
    ((8, 46, 46, 128), 11, 64 * 16 * 16 / 46**2)])  # 8 x 8 tiles of 16 (6 outputs a side).
def test_expansion_is_the_tiles_pixels_over_the_maps(shape, kernel, tiles_pixels):
  assert fft_conv.expansion(shape, kernel, fft_conv.tile_for(shape, kernel)) == tiles_pixels


@pytest.mark.parametrize("shape,kernel,tile", [
    ((8, 184, 184, 128), 9, 32),  # CPM's trunk: 8 x 8 tiles of 24 outputs an image.
    ((8, 92, 92, 128), 9, 32),  # 4 x 4 an image: 128 in the batch, MIN_ROWS.
    ((8, 46, 46, 128), 11, 16),  # 32 would leave 72 tiles (3 x 3 an image).
    ((8, 32, 32, 128), 9, 16),  # Tompson's bank: 32 would leave 32.
    ((1, 8, 8, 4), 7, 16),  # Too few tiles either way: the smaller side.
    ((8, 64, 64, 8), 15, 32)])  # 16 would leave 2 outputs a tile: not a choice.
def test_tile_side_leaves_enough_tiles_for_each_frequencys_product(shape, kernel, tile):
  assert fft_conv.tile_for(shape, kernel) == tile
