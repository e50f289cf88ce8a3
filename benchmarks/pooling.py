r"""Ceil-rounded 3x3/2 max pooling on CPU: XLA's reduce_window against the separable strided
maximum `jaxpose.models.layers.max_pool_ceil` uses (forward and forward + backward).

  python benchmarks/pooling.py            # prints seconds and the ratio, one run
"""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpose.models import layers


def _reduce_window(x):
  pads = [(0, layers._ceil_overhang(n, 3, 2)) for n in x.shape[1:3]]  # pylint: disable=protected-access
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads)


def _time(fn, x, repeats=5) -> float:
  fn = jax.jit(fn)
  jax.block_until_ready(fn(x))
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(x))
  return (time.perf_counter() - start) / repeats


def main() -> None:
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 128, 128, 48)), jnp.float32)
  np.testing.assert_array_equal(_reduce_window(x), layers.max_pool_ceil(x, 3, 2))
  strided = lambda y: layers.max_pool_ceil(y, 3, 2)
  cases = {"forward": (_reduce_window, strided),
           "forward+backward": (jax.grad(lambda y: _reduce_window(y).sum()),
                                jax.grad(lambda y: strided(y).sum()))}
  for name, (slow_fn, fast_fn) in cases.items():
    slow, fast = _time(slow_fn, x), _time(fast_fn, x)
    print(f"{name}: reduce_window {slow * 1e3:.1f} ms, strided maximum {fast * 1e3:.1f} ms, "
          f"ratio {fast / slow:.2f}")


if __name__ == "__main__":
  main()
