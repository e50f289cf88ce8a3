"""A thin input's kernel gradient from its patches against XLA's, for any size and padding."""

from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpose.models import patches


def _xla_kernel_gradient(x, kernel, dy, padding):
  conv = lambda k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (1, 1), [(padding, padding)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.vjp(conv, kernel)[1](dy)[0]


@settings(max_examples=10, deadline=None)
@given(batch=st.sampled_from([1, 2, 4, 6]), height=st.integers(1, 24), width=st.integers(1, 24),
       channels=st.integers(1, 4), out_channels=st.integers(1, 5),
       kernel=st.sampled_from([1, 3, 5, 9]), pad=st.integers(0, 4),
       groups=st.sampled_from([1, 2, 3]), seed=st.integers(0, 99))
@example(batch=6, height=9, width=9, channels=1, out_channels=1, kernel=1, pad=0, groups=1,
         seed=92)  # Many terms that cancel (below).
def test_kernel_gradient_is_xlas(batch, height, width, channels, out_channels, kernel, pad,
                                 groups, seed):
  """Any padding (outputs smaller or larger than the input), the batch whole or in groups of
  images: the kernel gradient equals XLA's to ~1e-6 of the sum of its terms' magnitudes. Not
  of its own largest value: a sum of many terms that cancel (a 1x1 kernel over 6x9x9 pixels,
  one output of -0.27) may round by more than that (XLA and the patches each 6e-6 from the
  float64 sum, 1.2e-5 apart: 4e-8 of the sum of its 486 terms' magnitudes, 301)."""
  padding = min(pad, kernel - 1)
  out_h, out_w = height + 2 * padding - kernel + 1, width + 2 * padding - kernel + 1
  if out_h < 1 or out_w < 1:
    return  # No output: nothing to compare.
  images = batch // groups if batch % groups == 0 else batch
  kx, kk, kg = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (batch, height, width, channels))
  k = jax.random.normal(kk, (kernel, kernel, channels, out_channels))
  dy = jax.random.normal(kg, (batch, out_h, out_w, out_channels))
  expected = _xla_kernel_gradient(x, k, dy, padding)
  got = jax.jit(patches.kernel_gradient, static_argnums=(2, 3, 4))(x, dy, kernel, padding,
                                                                    images)
  assert got.shape == expected.shape and got.dtype == jnp.float32
  magnitudes = _xla_kernel_gradient(jnp.abs(x), k, jnp.abs(dy), padding)
  np.testing.assert_allclose(got, expected, rtol=0,
                             atol=1e-6 * float(np.max(magnitudes)))


@pytest.mark.parametrize("x_shape,dy_shape,k,images", [
    ((8, 368, 368, 3), (8, 368, 368, 128), 9, 2),  # CPM's first layer: 131 MB of patches each.
    ((8, 256, 256, 3), (8, 256, 256, 128), 5, 8),  # Tompson's 256 px bank: 157 MB in all.
    ((6, 368, 368, 3), (6, 368, 368, 128), 9, 2),  # A divisor of the batch.
    ((7, 368, 368, 3), (7, 368, 368, 128), 9, 1),  # 7 is prime.
    ((1, 1024, 1024, 3), (1, 1024, 1024, 64), 9, 1)])  # Over the bound: one image anyway.
def test_group_is_the_most_images_whose_patches_fit(x_shape, dy_shape, k, images):
  assert patches.group(x_shape, dy_shape, k) == images


def test_a_group_that_does_not_divide_the_batch_is_refused():
  with pytest.raises(ValueError, match="2 images does not divide the batch of 3"):
    patches.kernel_gradient(jnp.zeros((3, 8, 8, 3)), jnp.zeros((3, 8, 8, 2)), 5, 2, images=2)
