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
@given(batch=st.sampled_from([1, 2, 3, 4, 6]), height=st.integers(1, 40),
       width=st.integers(1, 40), channels=st.integers(1, 4), out_channels=st.integers(1, 4),
       kernel=st.sampled_from([7, 9, 11]), tile=st.sampled_from([16, 32]),
       groups=st.sampled_from([1, 2, 3]), seed=st.integers(0, 99))
def test_convolution_and_gradients_are_xlas(batch, height, width, channels, out_channels,
                                            kernel, tile, groups, seed):
  """Maps smaller than a tile, sizes that leave the last tile cut, both tile sides, the batch
  whole or in groups of images: the convolution and both its gradients equal XLA's to ~1e-5
  of their largest value."""
  group = batch // groups if batch % groups == 0 else batch
  kx, kk, kg = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (batch, height, width, channels))
  k = jax.random.normal(kk, (kernel, kernel, channels, out_channels))
  dy = jax.random.normal(kg, (batch, height, width, out_channels))
  y, vjp = jax.vjp(_xla, x, k)
  dx, dk = vjp(dy)

  @jax.jit  # One compile: faster than op by op.
  def ours(x, k, dy):
    return (fft_conv.correlate(x, k, tile, group), fft_conv.input_gradient(dy, k, tile, group),
            fft_conv.kernel_gradient(x, dy, kernel, tile, group))

  for got, expected in zip(ours(x, k, dy), (y, dx, dk)):
    _close(got, expected)


def test_takes_bfloat16_and_computes_in_float32():
  x = jax.random.normal(jax.random.key(0), (1, 20, 20, 3))
  k = jax.random.normal(jax.random.key(1), (7, 7, 3, 2))
  got = fft_conv.correlate(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), 16)
  _close(got, _xla(x.astype(jnp.bfloat16).astype(jnp.float32),
                   k.astype(jnp.bfloat16).astype(jnp.float32)))


@pytest.mark.parametrize("shape,kernel,group", [
    ((8, 184, 184, 128), 9, 2),  # 64 tiles of 32 an image: 128 rows in 2 images.
    ((8, 92, 92, 128), 9, 8),  # 16 an image: the whole batch has 128.
    ((8, 46, 46, 128), 11, 2),  # 64 tiles of 16 an image.
    ((6, 184, 184, 128), 9, 2),  # A divisor of the batch.
    ((7, 184, 184, 128), 9, 7),  # 7 is prime: the whole batch.
    ((2, 32, 32, 8), 9, 2)])  # Fewer than MIN_ROWS tiles in the batch: the whole batch.
def test_image_group_is_the_fewest_images_that_fill_a_product(shape, kernel, group):
  assert fft_conv.image_group(shape, kernel, fft_conv.tile_for(shape, kernel)) == group


def test_a_group_that_does_not_divide_the_batch_is_refused():
  x = jnp.zeros((3, 20, 20, 2))
  with pytest.raises(ValueError, match="2 images does not divide the batch of 3"):
    fft_conv.correlate(x, jnp.zeros((7, 7, 2, 2)), 16, group=2)


@pytest.mark.parametrize("shape,kernel,tile", [
    ((8, 184, 184, 128), 9, 32),  # CPM's trunk: 8 x 8 tiles of 24 outputs an image.
    ((8, 92, 92, 128), 9, 32),  # 4 x 4 an image: 128 in the batch, MIN_ROWS.
    ((8, 46, 46, 128), 11, 16),  # 32 would leave 72 tiles (3 x 3 an image).
    ((8, 32, 32, 128), 9, 16),  # Tompson's bank: 32 would leave 32.
    ((1, 8, 8, 4), 7, 16),  # Too few tiles either way: the smaller side.
    ((8, 64, 64, 8), 15, 32)])  # 16 would leave 2 outputs a tile: not a choice.
def test_tile_side_leaves_enough_tiles_for_each_frequencys_product(shape, kernel, tile):
  assert fft_conv.tile_for(shape, kernel) == tile
