"""A batch taken a few images at a time: the group sizes it allows, and a sum over the groups
one after another.

The CPU branches of `layers.conv2d` whose intermediates are many times their inputs' size
(Winograd's transforms, the patches) sum a function over groups of images in a `lax.scan`, so
that one group's intermediates are alive at a time.
"""

import jax
import jax.numpy as jnp


def sizes(n: int) -> list[int]:
  """The group sizes that split a batch of n images evenly: n's divisors, smallest first."""
  return [g for g in range(1, n + 1) if n % g == 0]


def count(n: int, images: int) -> int:
  """How many groups of `images` a batch of n makes; a size that does not divide n is refused."""
  if n % images:
    raise ValueError(f"A group of {images} images does not divide the batch of {n}.")
  return n // images


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
