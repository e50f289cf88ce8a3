r"""Gradients of jaxpose's layers against the same layers differentiated by XLA alone.

  python benchmarks/backward.py               # the hourglass's sizes: batch 8, 64x64
  python benchmarks/backward.py --batch 4 --size 32

`jaxpose.models.layers` writes three gradients out (`conv2d`, `dense`, BatchNorm's
`_normalize`) because XLA's CPU backend computes them slowly. For each, and for the
hourglass's bottleneck block that combines them, this times the forward pass and the gradient
of sum(sin(y)) with respect to parameters and input (jitted, median of --repeats after one
warm-up) for jaxpose's layer and for its plain counterpart (`nn.Conv`, `nn.Dense`, BatchNorm
through its two-pass statistics), and the largest difference of their gradients relative to
the largest gradient. One process, one run:
compare the columns of a row, not rows of different runs.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks import models as bench
from jaxpose.models import layers


class PlainBatchNorm(nn.Module):
  """layers.BatchNorm's training forward pass, left to autodiff."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
    return (x - mean) * (jax.lax.rsqrt(var + 1e-5) * scale) + bias


class Bottleneck(nn.Module):
  """layers.Bottleneck's layout with its layers chosen: jaxpose's or the plain ones."""

  features: int
  plain: bool

  @nn.compact
  def __call__(self, x):
    if self.plain:
      bn, conv1 = PlainBatchNorm, nn.Dense
      conv3 = lambda f, name: nn.Conv(f, (3, 3), padding=1, name=name)
    else:
      bn, conv1 = layers.BatchNorm, layers.Dense
      conv3 = lambda f, name: layers.Conv(f, 3, padding=1, name=name)
    mid = self.features // 2
    y = conv1(mid, name="conv1")(nn.relu(bn(name="bn1")(x)))
    y = conv3(mid, "conv2")(nn.relu(bn(name="bn2")(y)))
    return x + conv1(self.features, name="conv3")(nn.relu(bn(name="bn3")(y)))


def _seconds(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def measure(ours: nn.Module, plain: nn.Module, x, repeats: int) -> dict:
  variables = ours.init(jax.random.key(0), x)

  def loss(module):
    def f(v, x):
      y = module.apply(v, x, mutable=["batch_stats"])[0] if "batch_stats" in v else \
          module.apply(v, x)
      return jnp.sum(jnp.sin(y))
    return f

  out = {}
  grads = {}
  for name, module in (("jaxpose", ours), ("plain", plain)):
    forward = jax.jit(loss(module))
    grad = jax.jit(jax.grad(loss(module), argnums=(0, 1)))
    out[name] = (_seconds(forward, (variables, x), repeats),
                 _seconds(grad, (variables, x), repeats))
    grads[name] = grad(variables, x)
  # Over parameters and input (not statistics), each leaf against its tree's largest value
  # (a bias before a BatchNorm has a gradient of 0 up to rounding in both).
  ours_g, plain_g = ((g[0]["params"], g[1]) for g in (grads["jaxpose"], grads["plain"]))
  return {"times": out, "max_relative_difference": bench.relative_difference(ours_g, plain_g)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  n, s = args.batch, args.size
  key = jax.random.key(1)
  cases = (
      ("conv 3x3, 128 -> 128", layers.Conv(128, 3, padding=1), nn.Conv(128, (3, 3), padding=1),
       (n, s, s, 128)),
      ("conv 7x7 / 2, 3 -> 64", layers.Conv(64, 7, strides=2, padding=3),
       nn.Conv(64, (7, 7), strides=2, padding=3), (n, 4 * s, 4 * s, 3)),
      ("1x1 (dense), 256 -> 128", layers.Dense(128), nn.Dense(128), (n, s, s, 256)),
      ("BatchNorm, 256", layers.BatchNorm(), PlainBatchNorm(), (n, s, s, 256)),
      ("bottleneck, 256", Bottleneck(256, plain=False), Bottleneck(256, plain=True),
       (n, s, s, 256)),
  )
  print(f"batch {n}, {s}x{s} (the 7x7 at {4 * s}x{4 * s}); {jax.default_backend()}, "
        f"{os.cpu_count()} cores; median of {args.repeats}; ms")
  print(f"{'layer':26s} {'forward':>8s} {'gradient':>9s} {'plain fwd':>10s} "
        f"{'plain grad':>11s} {'grad ratio':>11s} {'max diff':>13s}")
  for name, ours, plain, shape in cases:
    x = jax.random.normal(key, shape)
    r = measure(ours, plain, x, args.repeats)
    (f, g), (pf, pg) = r["times"]["jaxpose"], r["times"]["plain"]
    print(f"{name:26s} {1e3 * f:8.1f} {1e3 * g:9.1f} {1e3 * pf:10.1f} {1e3 * pg:11.1f} "
          f"{g / pg:11.2f} {r['max_relative_difference']:13.1e}")


if __name__ == "__main__":
  main()
