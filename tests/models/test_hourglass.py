"""Stacked Hourglass: paper-sized shapes and parameter counts (eval_shape, no compile)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpose.models import hourglass


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("stacks,params", [(2, 6_730_912), (8, 25_594_624)])
def test_paper_parameter_counts_match_reference(stacks, params):
  model = hourglass.StackedHourglass(num_stacks=stacks, num_joints=16, features=256)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 256, 256, 3)), train=False))
  assert _count(variables["params"]) == params
  # Running mean and variance for every BatchNorm, on top of the parameter count.
  bn_scales = [x for path, x in jax.tree_util.tree_leaves_with_path(variables["params"])
               if path[-1].key == "scale"]
  assert bn_scales
  assert _count(variables["batch_stats"]) == 2 * _count(bn_scales)


def test_paper_output_shapes_every_stack():
  model = hourglass.Hourglass8(num_joints=16)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 256, 256, 3)), train=False))
  outputs = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((3, 256, 256, 3))), variables)
  assert len(outputs) == 8
  for out in outputs:
    assert out.shape == (3, 64, 64, 16) and out.dtype == jnp.float32


def test_parameter_paths_are_stable():
  model = hourglass.Hourglass2(num_joints=16)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  params = variables["params"]
  assert set(params) >= {"stem_conv", "stem_res1", "stem_res2", "stem_res3", "stack0", "stack1"}
  assert "fc_back" in params["stack0"] and "fc_back" not in params["stack1"]
  # Depth-4 recursion unrolled: hourglass -> inner -> inner -> inner -> bottom.
  hg = params["stack0"]["hourglass"]
  assert "bottom" in hg["inner"]["inner"]["inner"]


def test_tiny_forward_train_and_eval_modes_and_bf16():
  model = hourglass.HourglassTiny(num_joints=5)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert out[0].shape == (2, 8, 8, 5)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                         updates["batch_stats"])
  assert any(jax.tree.leaves(changed))  # Training mode updates BatchNorm statistics.
  bf16 = hourglass.HourglassTiny(num_joints=5, dtype=jnp.bfloat16)
  out16 = bf16.apply(variables, x)
  assert out16[0].dtype == jnp.float32  # Outputs cast back for the loss.
  np.testing.assert_allclose(out16[0], model.apply(variables, x)[0], atol=0.15, rtol=0.1)


def test_remat_gives_identical_gradients():
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  plain = hourglass.StackedHourglass(num_stacks=2, num_joints=3, features=16, depth=2)
  remat = plain.clone(remat=True)
  variables = plain.init(jax.random.key(0), x, train=False)

  def loss(params, model):
    out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                         train=True, mutable=["batch_stats"])
    return sum(jnp.sum(o**2) for o in out)

  g1 = jax.grad(loss)(variables["params"], plain)
  g2 = jax.grad(loss)(variables["params"], remat)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g2)
