"""A sum over a batch taken a few images at a time, one group after another.

The CPU branches of `layers.conv2d` whose intermediates are many times their inputs' size
(Winograd's transforms, the patches) sum a function over groups of images in a `lax.scan`, so
that one group's intermediates are alive at a time.
"""

import jax
import jax.numpy as jnp


def scan_sum(fn, groups: int, *arrays):
  """fn(*arrays) summed over `groups` equal groups of the arrays' leading (image) axis, one
  group after another (a `lax.scan`); fn(*arrays) itself where `groups` is 1."""
  if groups == 1:
    return fn(*arrays)
  split = [a.reshape(groups, a.shape[0] // groups, *a.shape[1:]) for a in arrays]
  one = jax.eval_shape(fn, *(jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in split))
  total = jnp.zeros(one.shape, one.dtype)
  # Inside `jax.shard_map` (`parallel.per_device`) the sum varies over the mesh axes the arrays
  # vary over, and a scan's carry must start as it goes on.
  varying = tuple(sorted(set().union(*(jax.typeof(a).manual_axis_type.varying for a in arrays))))
  if varying:
    total = jax.lax.pcast(total, varying, to="varying")
  return jax.lax.scan(lambda total, group: (total + fn(*group), None), total, split)[0]
