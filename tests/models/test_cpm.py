"""Convolutional Pose Machines: release-sized counts and shapes (eval_shape), tiny variants run."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpose.models import cpm


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _inputs(n, size, seed=0):
  images = jax.random.normal(jax.random.key(seed), (n, size, size, 3))
  centers = cpm.center_map(size, jnp.full((n, 2), (size - 1) / 2), sigma=size / 8)
  return images, centers


def _tiny(**kw):
  return cpm.CPMTiny(num_parts=3, **kw)


def _random_params(model, *inputs, seed=0):
  """Lecun-normal kernels and small biases drawn in numpy: the tiny network's activations stay
  far from zero, and no random-number program is compiled (slow on a loaded CPU)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]
  rng = np.random.default_rng(seed)

  def draw(path, s):
    if path[-1].key == "kernel":
      return jnp.asarray(rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape), jnp.float32)
    return jnp.asarray(rng.normal(0, 0.01, s.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("model,params", [(cpm.CPM6(num_parts=15), 31_219_866),
                                          (cpm.CPMFlic(num_parts=10), 21_323_816)])
def test_release_parameter_counts_and_output_shapes(model, params):
  images, centers = jnp.zeros((2, 368, 368, 3)), jnp.zeros((2, 368, 368, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, centers))
  assert set(variables) == {"params"}  # No BatchNorm in the release.
  assert _count(variables["params"]) == params
  outputs = jax.eval_shape(lambda v: model.apply(v, images, centers), variables)
  assert len(outputs) == model.num_stages
  for out in outputs:
    # Ceil-rounded pools: 368 -> 184 -> 92 -> 46 (VALID pooling would give 45).
    assert out.shape == (2, 46, 46, model.num_parts) and out.dtype == jnp.float32


def test_release_layer_names_and_shapes():
  variables = jax.eval_shape(lambda: cpm.CPM6().init(
      jax.random.key(0), jnp.zeros((1, 368, 368, 3)), jnp.zeros((1, 368, 368, 1))))
  params = variables["params"]
  assert set(params) == {"trunk2"} | {f"stage{t}" for t in range(1, 7)}
  assert set(params["stage1"]) == {f"conv{i}" for i in range(1, 8)}
  assert set(params["trunk2"]) == {"conv1", "conv2", "conv3"}
  assert set(params["stage4"]) == {"conv"} | {f"mconv{i}" for i in range(1, 6)}
  assert params["stage1"]["conv1"]["kernel"].shape == (9, 9, 3, 128)
  assert params["stage1"]["conv5"]["kernel"].shape == (9, 9, 32, 512)
  assert params["stage1"]["conv7"]["dense"]["kernel"].shape == (512, 15)
  assert params["stage3"]["conv"]["kernel"].shape == (5, 5, 128, 32)
  assert params["stage3"]["mconv1"]["kernel"].shape == (11, 11, 32 + 15 + 1, 128)
  assert params["stage6"]["mconv5"]["dense"]["kernel"].shape == (128, 15)


def test_release_initialisation_gaussian_std_001_bias_zero():
  model = cpm.CPMTiny(num_parts=3, trunk_features=16, head_features=32)
  images, centers = _inputs(1, 32)
  # An RBG key compiles faster than threefry here; the initialisers are what is under test.
  params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), images, centers)["params"]
  flat = flax.traverse_util.flatten_dict(params)
  kernels = np.concatenate([np.ravel(v) for k, v in flat.items() if k[-1] == "kernel"])
  biases = [v for k, v in flat.items() if k[-1] == "bias"]
  assert kernels.size > 10_000
  assert abs(kernels.std() - 0.01) < 0.0005 and abs(kernels.mean()) < 0.0005
  assert np.abs(kernels).max() > 0.035  # A plain Gaussian, not truncated at 2 std.
  assert all(not np.any(b) for b in biases)
  # 1x1 layers get the same filler.
  assert abs(np.std(params["stage1"]["conv6"]["dense"]["kernel"]) - 0.01) < 0.002


def test_ceil_pooling_sizes_at_odd_multiples():
  model = _tiny()
  for size, out in [(40, 5), (56, 7), (32, 4)]:  # 40 -> 20 -> 10 -> 5; floor gives 4.
    images, centers = _inputs(1, size)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, centers))
    outputs = jax.eval_shape(lambda v: model.apply(v, images, centers), variables)
    assert all(o.shape == (1, out, out, 3) for o in outputs)


def test_center_map_pooling_divides_by_valid_pixels():
  pooled = cpm.pool_center_map(jnp.ones((1, 368, 368, 1)))
  assert pooled.shape == (1, 46, 46, 1)
  # The last window covers rows 360..367 only: 8 valid rows. Counting the pad would give 8/9.
  np.testing.assert_allclose(pooled, 1.0, rtol=1e-6)
  ramp = jnp.broadcast_to(jnp.arange(368.0)[:, None, None], (368, 368, 1))[None]
  pooled = cpm.pool_center_map(ramp)
  np.testing.assert_allclose(pooled[0, -1, :, 0], np.mean(np.arange(360, 368)), rtol=1e-6)
  np.testing.assert_allclose(pooled[0, -2, :, 0], np.mean(np.arange(352, 361)), rtol=1e-6)


def test_center_map_gaussian_peak_one_at_the_centre():
  maps = cpm.center_map((368, 300), jnp.array([[183.5, 183.5], [40.0, 10.0]]))
  assert maps.shape == (2, 368, 300, 1) and maps.dtype == jnp.float32
  assert float(maps[1, 10, 40, 0]) == 1.0
  np.testing.assert_allclose(maps[1, 10, 40 + 21, 0], np.exp(-0.5), rtol=1e-6)  # sigma 21 px
  # Half-pixel centre: the four middle pixels tie, symmetric about the centre.
  m = np.asarray(maps[0, :, :, 0])
  assert m[183, 183] == m[184, 184] == m[183, 184] == m.max() < 1.0
  np.testing.assert_allclose(m, m[::-1, :], rtol=1e-6)


def test_stage1_ignores_centre_map_and_concat_order_is_features_beliefs_centre():
  model = _tiny()
  images, centers = _inputs(2, 32)
  params = _random_params(model, images, centers)
  moved = cpm.center_map(32, jnp.full((2, 2), 5.0), sigma=4.0)
  assert not np.allclose(centers, moved)

  @jax.jit
  def stage_outputs(p, c):
    return model.apply({"params": p}, images, c)

  a, b = stage_outputs(params, centers), stage_outputs(params, moved)
  np.testing.assert_array_equal(a[0], b[0])  # Stage 1 never sees the centre map.
  assert not np.allclose(a[1], b[1])
  # Zero every input channel of stage 2's Mconv1 except one slice of the concat, then see which
  # inputs still reach stage 2: a new stage-1 bias moves only the beliefs, a new centre map only
  # the centre channel; the image features are neither.
  c_feat = model.stage_features
  kernel = params["stage2"]["mconv1"]["kernel"]
  assert kernel.shape[2] == c_feat + 3 + 1

  def keep(lo, hi, stage1_bias=0.0):
    mask = jnp.zeros(kernel.shape[2]).at[lo:hi].set(1.0)
    p = jax.tree.map(lambda x: x, params)  # New dicts; the arrays are shared.
    p["stage2"]["mconv1"]["kernel"] = kernel * mask[None, None, :, None]
    p["stage1"]["conv7"]["dense"]["bias"] = params["stage1"]["conv7"]["dense"]["bias"] + stage1_bias
    return p

  def reacts(lo, hi):  # (to the stage-1 beliefs, to the centre map)
    base = stage_outputs(keep(lo, hi), centers)[1]
    beliefs = stage_outputs(keep(lo, hi, stage1_bias=1.0), centers)[1]
    centre = stage_outputs(keep(lo, hi), moved)[1]
    return not np.allclose(base, beliefs), not np.allclose(base, centre)

  assert reacts(0, c_feat) == (False, False)
  assert reacts(c_feat, c_feat + 3) == (True, False)
  assert reacts(c_feat + 3, c_feat + 4) == (False, True)


def test_dropout_only_in_training():
  model = _tiny()
  images, centers = _inputs(2, 32)
  variables = {"params": _random_params(model, images, centers)}
  eval1 = model.apply(variables, images, centers)
  eval2 = model.apply(variables, images, centers, train=False)
  np.testing.assert_array_equal(eval1[0], eval2[0])

  def train(seed):
    return model.apply(variables, images, centers, train=True,
                       rngs={"dropout": jax.random.key(seed)})

  t1, t1_again, t2 = train(1), train(1), train(2)
  np.testing.assert_array_equal(t1[-1], t1_again[-1])
  assert not np.allclose(t1[0], t2[0])
  assert not np.allclose(t1[0], eval1[0])
  with pytest.raises(flax.errors.InvalidRngError):
    model.apply(variables, images, centers, train=True)  # Training needs a dropout rng.


def test_tiny_forward_and_one_gradient_step():
  model = _tiny(num_stages=3)
  images, centers = _inputs(2, 32)
  variables = {"params": _random_params(model, images, centers)}
  targets = jax.random.uniform(jax.random.key(3), (2, 4, 4, 3))

  def loss_fn(params):
    outs = model.apply({"params": params}, images, centers, train=True,
                       rngs={"dropout": jax.random.key(4, impl="rbg")})
    return sum(0.5 * jnp.sum(jnp.square(o - targets)) / 2 for o in outs)  # Caffe Euclidean.

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"])
  assert np.isfinite(float(loss))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  for stage in ("stage1", "trunk2", "stage2", "stage3"):
    assert any(np.any(g) for g in jax.tree.leaves(grads[stage]))
  params = optax.apply_updates(variables["params"], jax.tree.map(lambda g: -1e-3 * g, grads))
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))
  assert float(jax.jit(loss_fn)(params)) < float(loss)


def test_bfloat16_computation_returns_float32():
  model = _tiny()
  images, centers = _inputs(1, 32)
  variables = {"params": _random_params(model, images, centers)}
  out16 = jax.jit(_tiny(dtype=jnp.bfloat16).apply)(variables, images, centers)
  out32 = jax.jit(model.apply)(variables, images, centers)
  assert all(o.dtype == jnp.float32 for o in out16)
  np.testing.assert_allclose(out16[-1], out32[-1], atol=0.1, rtol=0.1)


def test_bad_centre_map_shape_is_named():
  model = _tiny()
  images, _ = _inputs(1, 32)
  with pytest.raises(ValueError, match=r"center_map shape \(1, 32, 32\)"):
    model.init(jax.random.key(0), images, jnp.zeros((1, 32, 32)))
  with pytest.raises(ValueError, match="divisible by 8"):
    model.init(jax.random.key(0), jnp.zeros((1, 36, 36, 3)), jnp.zeros((1, 36, 36, 1)))


def test_two_pools_give_stride_4_with_the_same_parameters():
  """The CPU option: the same layers (so the same count) at stride 4; the centre map pools
  5x5/4 dividing by valid pixels."""
  images, centers = _inputs(1, 32)
  shapes = {}
  for pools in (3, 2):
    model = _tiny(num_pools=pools)
    variables = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), images, centers))
    outputs = jax.eval_shape(lambda v, m=model: m.apply(v, images, centers), variables)
    shapes[pools] = (_count(variables), outputs[-1].shape)
  assert shapes[3] == (shapes[2][0], (1, 4, 4, 3))
  assert shapes[2][1] == (1, 8, 8, 3)
  np.testing.assert_allclose(cpm.pool_center_map(jnp.ones((1, 32, 32, 1)), 4), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="divisible by 4"):
    _tiny(num_pools=2).init(jax.random.key(0), jnp.zeros((1, 30, 30, 3)),
                            jnp.zeros((1, 30, 30, 1)))


def test_init_schemes():
  images, centers = _inputs(1, 32)
  for scheme, std in (("release", 0.01), ("he", np.sqrt(2 / (3 * 3 * 3)))):
    params = _tiny(init_scheme=scheme).init(jax.random.key(0), images, centers)["params"]
    kernel = params["stage1"]["conv1"]["kernel"]  # 3x3x3 -> 8: fan-in 27.
    assert abs(float(jnp.std(kernel)) / std - 1) < 0.25, (scheme, float(jnp.std(kernel)))
  with pytest.raises(ValueError, match="init_scheme='xavier'"):
    _tiny(init_scheme="xavier").init(jax.random.key(0), images, centers)


def _tiny_vgg(**kw):
  return cpm.CPMVGG(num_stages=2, num_parts=3, vgg_features=((4,), (4,), (6,), (6,)),
                    cpm_features=(5,), head_features=8, mconv_features=4, num_mconv=1,
                    stage_kernel=3, **kw)


def test_vgg_variant_release_count_and_shapes():
  model = cpm.CPMVGG6()
  images, centers = jnp.zeros((1, 368, 368, 3)), jnp.zeros((1, 368, 368, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, centers))
  assert _count(variables) == 29_852_058  # FAMILIES.md, pose_deploy_resize.
  params = variables["params"]
  assert params["Mconv1_stage2"]["kernel"].shape == (7, 7, 15 + 128 + 1, 128)
  assert params["conv4_7_CPM"]["kernel"].shape == (3, 3, 256, 128)
  outputs = jax.eval_shape(lambda v: model.apply(v, images, centers), variables)
  assert len(outputs) == 6 and all(o.shape == (1, 46, 46, 15) for o in outputs)


def test_vgg_variant_concat_order_is_beliefs_features_centre():
  """With Mconv1's weights on the last input channel zeroed, stage 2 no longer depends on the
  centre map: the centre map is that channel (the VGG release's order, FAMILIES.md G5)."""
  model = _tiny_vgg()
  images, centers = _inputs(1, 32)
  params = _random_params(model, images, centers)
  kernel = params["Mconv1_stage2"]["kernel"]
  assert kernel.shape[2] == 3 + 5 + 1
  stage2_vs_centre = lambda p, c: model.apply({"params": p}, images, c)[1].sum()  # noqa: E731
  assert np.abs(jax.grad(stage2_vs_centre, argnums=1)(params, centers)).max() > 0
  zeroed = dict(params, Mconv1_stage2=dict(params["Mconv1_stage2"],
                                           kernel=kernel.at[:, :, -1].set(0.0)))
  np.testing.assert_array_equal(jax.grad(stage2_vs_centre, argnums=1)(zeroed, centers), 0.0)


def test_vgg_variant_batch_norm_and_the_family_option():
  model = _tiny_vgg(batch_norm=True, init_scheme="he")
  images, centers = _inputs(2, 32)
  variables = model.init(jax.random.key(0), images, centers)
  assert "bias" not in variables["params"]["conv1_1"]
  assert "bias" in variables["params"]["conv5_2_CPM"]["dense"]  # Belief outputs keep their bias.
  _, state = model.apply(variables, images, centers, train=True, mutable=["batch_stats"])
  assert "conv1_1_bn" in state["batch_stats"]
