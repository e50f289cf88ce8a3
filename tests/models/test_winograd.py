"""Winograd's F(4x4, 3x3) kernel gradient against XLA's, for any feature-map size."""

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
@given(batch=st.integers(1, 2), height=st.integers(1, 13), width=st.integers(1, 13),
       channels=st.integers(1, 5), out_channels=st.integers(1, 4), seed=st.integers(0, 99))
def test_kernel_gradient_is_the_convolutions(batch, height, width, channels, out_channels,
                                             seed):
  """Tiles cut at the bottom and right (sizes not multiples of 4, maps smaller than a tile)
  included: the same gradient as XLA's to ~1e-5 of its largest value."""
  kx, kg = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (batch, height, width, channels))
  dy = jax.random.normal(kg, (batch, height, width, out_channels))
  expected = _xla_kernel_gradient(x, dy, out_channels)
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
