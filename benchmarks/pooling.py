r"""Max pooling on CPU: XLA's reduce_window against the strided maxima jaxpose uses, for the
ceil-rounded 3x3/2 pools (`layers.max_pool_ceil`: CPM, DeepPose, IEF), the hourglass's 2x2/2
(`layers.max_pool2`) and the Inception modules' 3x3/1 with padding 1 (`layers.max_pool`: IEF),
forward and forward + backward. For the 3x3 windows, whose gradient `layers.max_pool` writes
out (each window's to its first maximum), also autodiff's gradient of the same strided maxima
(ties shared): the third figure.

  python benchmarks/pooling.py            # prints milliseconds and the ratios, one run
"""

import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxpose.models import layers  # pylint: disable=g-import-not-at-top,wrong-import-position


# `layers.max_pool`'s values with autodiff's gradient of its strided maxima (ties shared).
_autodiff = layers._max_pool_rows_columns  # pylint: disable=protected-access


def _reduce_window(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=layers.ceil_padding(x, 3, 2))


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
  autodiff = lambda y: _autodiff(y, 3, 2, layers.ceil_padding(y, 3, 2))  # noqa: E731
  cases = {"forward": (_reduce_window, strided),
           "forward+backward": (jax.grad(lambda y: _reduce_window(y).sum()),
                                jax.grad(lambda y: strided(y).sum()),
                                jax.grad(lambda y: autodiff(y).sum()))}
  window2 = lambda y: nn.max_pool(y, (2, 2), strides=(2, 2))  # noqa: E731
  np.testing.assert_array_equal(window2(x), layers.max_pool2(x))
  cases.update({"2x2/2 forward": (window2, layers.max_pool2),
                "2x2/2 forward+backward": (jax.grad(lambda y: window2(y).sum()),
                                           jax.grad(lambda y: layers.max_pool2(y).sum()))})
  same = ((1, 1), (1, 1))
  window3 = lambda y: nn.max_pool(y, (3, 3), strides=(1, 1), padding=same)  # noqa: E731
  strided3 = lambda y: layers.max_pool(y, 3, 1, same)  # noqa: E731
  np.testing.assert_array_equal(window3(x), strided3(x))
  autodiff3 = lambda y: _autodiff(y, 3, 1, same)  # noqa: E731
  cases.update({"3x3/1 forward": (window3, strided3),
                "3x3/1 forward+backward": (jax.grad(lambda y: window3(y).sum()),
                                           jax.grad(lambda y: strided3(y).sum()),
                                           jax.grad(lambda y: autodiff3(y).sum()))})
  for name, (slow_fn, fast_fn, *other) in cases.items():
    slow, fast = _time(slow_fn, x), _time(fast_fn, x)
    line = (f"{name}: reduce_window {slow * 1e3:.1f} ms, strided maximum {fast * 1e3:.1f} ms, "
            f"ratio {fast / slow:.2f}")
    if other:  # The strided maxima's gradient by autodiff (ties shared), for comparison.
      shared = _time(other[0], x)
      line += f"; autodiff's gradient {shared * 1e3:.1f} ms, ratio {fast / shared:.2f}"
    print(line)


if __name__ == "__main__":
  main()
