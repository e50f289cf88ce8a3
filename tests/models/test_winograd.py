"""Winograd's F(4x4, 3x3) kernel gradient against XLA's, for any feature-map size."""

from unittest import mock

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np

from jaxpose.models import winograd


def _xla_kernel_gradient(x, dy, out_channels: int):
  kernel = jnp.zeros((3, 3, x.shape[-1], out_channels), x.dtype)
  conv = lambda k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (1, 1), [(1, 1)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.vjp(conv, kernel)[1](dy)[0]


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 4), height=st.integers(1, 13), width=st.integers(1, 13),
       channels=st.integers(1, 5), out_channels=st.integers(1, 4), seed=st.integers(0, 99),
       min_tiles=st.sampled_from([1, 4, winograd.MIN_TILES_PER_CHUNK]))
def test_kernel_gradient_is_the_convolutions(batch, height, width, channels, out_channels,
                                             seed, min_tiles):
  """Tiles cut at the bottom and right (sizes not multiples of 4, maps smaller than a tile)
  and the batch in groups (min_tiles below the library's) included: the same gradient as
  XLA's to ~1e-5 of its largest value."""
  kx, kg = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (batch, height, width, channels))
  dy = jax.random.normal(kg, (batch, height, width, out_channels))
  expected = _xla_kernel_gradient(x, dy, out_channels)
  with mock.patch.object(winograd, "MIN_TILES_PER_CHUNK", min_tiles):
    got = jax.jit(winograd.kernel_gradient)(x, dy)  # One compile: faster than op by op.
  assert got.shape == expected.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, atol=2e-5 * float(np.max(np.abs(expected))), rtol=0)


def test_kernel_gradient_of_bfloat16_maps_is_float32():
  """bfloat16 activations (a bfloat16 model) are transformed in float32: the gradient is the
  float32 one of the same values."""
  kx, kg = jax.random.split(jax.random.key(3))
  x = jax.random.normal(kx, (2, 8, 8, 16)).astype(jnp.bfloat16)
  dy = jax.random.normal(kg, (2, 8, 8, 8)).astype(jnp.bfloat16)
  got = winograd.kernel_gradient(x, dy)
  expected = _xla_kernel_gradient(x.astype(jnp.float32), dy.astype(jnp.float32), 8)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, atol=2e-5 * float(np.max(np.abs(expected))), rtol=0)


def test_the_batch_goes_in_groups_of_at_least_min_tiles():
  assert winograd.MIN_TILES_PER_CHUNK == 512
  assert winograd.batch_chunks((8, 64, 64, 128)) == 4  # 256 tiles an image: groups of 2.
  assert winograd.batch_chunks((8, 128, 128, 64)) == 8  # 1,024 tiles an image.
  assert winograd.batch_chunks((8, 32, 32, 128)) == 1  # 64 tiles an image: 512 in all.
  assert winograd.batch_chunks((6, 64, 64, 128)) == 3
  assert winograd.batch_chunks((7, 62, 62, 128)) == 1  # 7 is prime; 62 px: 16 x 16 tiles.
  assert winograd.batch_chunks((2, 8, 8, 16)) == 1  # Fewer tiles than a group in all.
  with mock.patch.object(winograd, "MIN_TILES_PER_CHUNK", 4):
    assert winograd.batch_chunks((4, 8, 8, 16)) == 4  # 4 tiles an image.
