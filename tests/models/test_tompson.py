"""Tompson et al. (NIPS'14): paper-sized counts and shapes (eval_shape); the spatial model's
convolution, priors and histograms on small maps; tiny variants run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpose.models import tompson


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _random_params(model, images, seed=0):
  """Lecun-normal detector kernels drawn in numpy (no random-number program to compile, slow on a
  loaded CPU) and the spatial model's own data-free initialisation."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
  rng = np.random.default_rng(seed)

  def draw(path, s):
    names = [p.key for p in path]
    if names[0] == "spatial":
      if names[-1] == "priors":
        return tompson.default_priors(None, s.shape)
      return tompson.priors_from_histograms(np.full(s.shape, 1e-5))
    if names[-1] == "kernel":
      return jnp.asarray(rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape), jnp.float32)
    return jnp.zeros(s.shape, jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("spatial,params", [(True, 20_744_226), (False, 18_614_026)])
def test_flic_setting_parameter_count_and_shapes(spatial, params):
  model = tompson.TompsonFlic(spatial_model=spatial)
  images = jnp.zeros((2, 240, 360, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  assert set(variables) == {"params"}
  assert set(variables["params"]) == ({"detector", "spatial"} if spatial else {"detector"})
  assert _count(variables["params"]) == params
  if spatial:
    assert params == tompson.paper_parameter_count(10, (60, 90))  # The docstring's number.
    assert variables["params"]["spatial"]["priors"].shape == (10, 10, 119, 179)
  detector = variables["params"]["detector"]
  assert set(detector) == {"bank0", "bank1", "bank2", "fc1", "fc2", "out"}
  assert detector["bank2"]["conv4"]["kernel"].shape == (9, 9, 128, 512)
  assert detector["fc1"]["dense"]["kernel"].shape == (512, 256)
  outputs = jax.eval_shape(model.apply, variables, images)
  assert len(outputs) == (2 if spatial else 1)
  for out in outputs:
    assert out.shape == (2, 60, 90, 10) and out.dtype == jnp.float32


def test_closed_form_count_matches_other_settings():
  model = tompson.Tompson(num_joints=16, spatial_model=True, head_features=(128,))
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 256, 192, 3)))
  assert _count(variables["params"]) == tompson.paper_parameter_count(
      16, (64, 48), head_features=(128,))


@pytest.mark.parametrize("size,stride,out", [((240, 360), 8, (30, 45)),
                                             ((100, 140), 4, (25, 35)),
                                             ((100, 140), 8, (13, 18))])
def test_output_stride_and_odd_sizes(size, stride, out):
  # 100x140: the quarter bank pools 25x35 -> 13x18 -> 7x9, upsampled x4 and cropped to 25x35.
  model = tompson.Tompson(output_stride=stride, spatial_model=True)
  images = jnp.zeros((1, *size, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  outputs = jax.eval_shape(model.apply, variables, images)
  assert [o.shape for o in outputs] == [(1, *out, 10)] * 2


def _brute_force(maps, kernels):
  n, h, w, k = maps.shape
  out = np.zeros((n, h, w, k, k))
  for y in range(h):
    for x in range(w):
      for yy in range(h):
        for xx in range(w):
          # Displacement (y - yy, x - xx) at kernel index + (h-1, w-1).
          out[:, y, x] += (kernels[:, :, y - yy + h - 1, x - xx + w - 1][None]
                           * maps[:, yy, xx][:, None, :])
  return out


def test_pairwise_convolution_fft_and_conv_match_brute_force():
  rng = np.random.default_rng(0)
  maps = rng.uniform(size=(2, 5, 7, 3)).astype(np.float32)
  kernels = rng.uniform(size=(3, 3, 9, 13)).astype(np.float32)
  expected = _brute_force(maps, kernels)
  for method in ("fft", "conv"):
    got = tompson.pairwise_convolve(jnp.asarray(maps), jnp.asarray(kernels), method)
    assert got.shape == (2, 5, 7, 3, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match=r"prior kernels \(3, 3, 9, 11\)"):
    tompson.pairwise_convolve(jnp.asarray(maps), jnp.asarray(kernels[..., :11]))


def test_displacement_histograms_one_displacement():
  h, w, stride = 10, 12, 4
  rng = np.random.default_rng(0)
  base = rng.uniform(8, 24, (20, 2))
  # Joint 1 sits 12 px right and 8 px above joint 0: (3, -2) heat-map pixels at stride 4.
  joints = np.stack([base, base + [12.0, -8.0], base], axis=1)
  visible = np.ones((20, 3))
  visible[:, 2] = 0  # Joint 2 is never annotated.
  visible[0, 1] = 0
  joints[0, 1] = [1000.0, 1000.0]  # Ignored: not visible.
  hist = tompson.displacement_histograms(joints, visible, (h, w), stride)
  assert hist.shape == (3, 3, 2 * h - 1, 2 * w - 1) and hist.dtype == np.float32
  np.testing.assert_allclose(hist.sum(axis=(2, 3)), 1.0, rtol=1e-6)
  assert hist[1, 0, h - 1 - 2, w - 1 + 3] == 1.0  # A = 1 given v = 0: up 2, right 3.
  assert hist[0, 1, h - 1 + 2, w - 1 - 3] == 1.0
  assert hist[0, 0, h - 1, w - 1] == 1.0  # Self: zero displacement.
  np.testing.assert_allclose(hist[2, 0], 1.0 / hist[2, 0].size)  # Never seen: uniform.
  with pytest.raises(ValueError, match=r"visible \(20,\)"):
    tompson.displacement_histograms(joints, visible[:, 0], (h, w), stride)


def test_priors_from_histograms_move_the_belief_to_the_displaced_joint():
  h, w, stride = 10, 12, 4
  base = np.array([[20.0, 16.0]])
  joints = np.stack([base, base + [12.0, -8.0]], axis=1)  # (3, -2) heat-map pixels.
  hist = tompson.displacement_histograms(joints, np.ones((1, 2)), (h, w), stride)
  spatial = tompson.SpatialModel()
  maps = np.zeros((1, h, w, 2), np.float32)
  maps[0, 6, 4, 0] = 30.0  # Joint 0 detected at (x 4, y 6); joint 1's detector map is flat.
  params = jax.eval_shape(spatial.init, jax.random.key(0), maps)["params"]
  params = {"spatial": {"priors": tompson.default_priors(None, params["priors"].shape),
                        "bias": jnp.full(params["bias"].shape, -11.5)}}
  params = tompson.init_priors(params, hist)
  np.testing.assert_allclose(jax.nn.softplus(params["spatial"]["priors"]),
                             np.maximum(hist, 1e-6), rtol=1e-3)
  log_beliefs = spatial.apply({"params": params["spatial"]}, maps)
  assert log_beliefs.shape == (1, h, w, 2) and log_beliefs.dtype == jnp.float32
  flat = np.asarray(log_beliefs[0]).reshape(h * w, 2).argmax(axis=0)
  assert divmod(int(flat[1]), w) == (6 - 2, 4 + 3)  # Mass moved up 2, right 3.
  assert divmod(int(flat[0]), w) == (6, 4)  # The self-prior keeps joint 0 in place.
  with pytest.raises(ValueError, match=r"histograms \(2, 2, 3, 3\) do not match"):
    tompson.init_priors(params, np.ones((2, 2, 3, 3)))


def test_spatial_model_options():
  maps = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 8, 3)), jnp.float32)
  fft = tompson.SpatialModel(normalise="relu", log_output=False)
  variables = fft.init(jax.random.key(0), maps)
  beliefs = fft.apply(variables, maps)
  assert beliefs.shape == (2, 6, 8, 3) and bool(jnp.all(beliefs > 0))
  conv = tompson.SpatialModel(normalise="relu", method="conv")
  log_conv = conv.apply(variables, maps)
  # float32 FFT round-off is ~1e-7 of the largest message: relative noise only where a message
  # is down at the bias (1e-5); confident beliefs agree closely.
  np.testing.assert_allclose(jnp.log(beliefs), log_conv, atol=0.02)
  high = log_conv > -12.0
  assert high.mean() > 0.3
  np.testing.assert_allclose(jnp.log(beliefs)[high], log_conv[high], atol=2e-4)
  with pytest.raises(ValueError, match="'sigmoid'"):
    tompson.SpatialModel(normalise="sigmoid").init(jax.random.key(0), maps)
  with pytest.raises(ValueError, match="output_stride 16"):
    tompson.TompsonTiny(output_stride=16).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_local_contrast_normalisation_is_gain_and_offset_invariant():
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 24, 20, 3)), jnp.float32)
  y = tompson.local_contrast_normalise(x)
  assert y.shape == x.shape
  np.testing.assert_allclose(tompson.local_contrast_normalise(3.0 * x + 7.0), y, atol=1e-4)
  assert abs(float(jnp.mean(y))) < 0.1 and 0.3 < float(jnp.std(y)) < 3.0
  flat = tompson.local_contrast_normalise(jnp.full_like(x, 5.0))
  np.testing.assert_allclose(flat, 0.0, atol=1e-2)  # Round-off only, divided by the 1e-4 floor.


def test_tiny_forward_and_one_gradient_step_reaches_both_subtrees():
  model = tompson.TompsonTiny(num_joints=3, spatial_model=True)
  images = jax.random.uniform(jax.random.key(1), (2, 32, 40, 3))
  params = _random_params(model, images)
  targets = jax.random.uniform(jax.random.key(2), (2, 8, 10, 3))

  def loss_fn(p):
    detector, spatial = model.apply({"params": p}, images)
    assert detector.shape == spatial.shape == (2, 8, 10, 3)
    log_p = jax.nn.log_softmax(spatial.reshape(2, 80, 3), axis=1)
    return jnp.mean(jnp.square(detector - targets)) - jnp.mean(targets.reshape(2, 80, 3) * log_p)

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  assert np.isfinite(float(loss))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  for part in ("detector", "spatial"):
    assert any(np.any(g) for g in jax.tree.leaves(grads[part]))
  new = jax.tree.map(lambda p, g: p - 1e-2 * g, params, grads)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(new))
  assert float(jax.jit(loss_fn)(new)) < float(loss)


def test_batch_norm_option():
  """The CPU option: BatchNorm after every detector convolution (no conv biases there), its
  statistics in "batch_stats", updated in training only; the spatial model is unchanged."""
  model = tompson.TompsonTiny(num_joints=3, spatial_model=True, batch_norm=True)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), images)
  bank = variables["params"]["detector"]["bank0"]
  assert "bias" not in bank["conv1"] and "bn1" in bank
  assert "fc1_bn" in variables["batch_stats"]["detector"]
  eval_out = model.apply(variables, images)
  train_out, state = model.apply(variables, images, train=True, mutable=["batch_stats"])
  assert len(eval_out) == len(train_out) == 2
  assert not np.allclose(eval_out[0], train_out[0])
  assert not np.allclose(state["batch_stats"]["detector"]["bank0"]["bn1"]["mean"],
                         variables["batch_stats"]["detector"]["bank0"]["bn1"]["mean"])
