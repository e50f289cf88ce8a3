"""IEF: the paper-sized GoogLeNet count (eval_shape), the scanned loop, maps, bounded steps."""

import functools
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from jaxpose.models import ief


@pytest.mark.parametrize("lrn", [True, False])
def test_paper_parameter_count_at_224(lrn):
  model = ief.IEF(16, lrn=lrn)
  images, y0 = jnp.zeros((2, 224, 224, 3)), jnp.zeros((16, 2))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, y0))
  assert helpers.count(variables) == 6_059_664  # LRN has no parameters: the count holds either way.
  net = variables["params"]["net"]
  assert net["conv1"]["kernel"].shape == (7, 7, 3 + 16 + 1, 64)
  assert net["fc"]["kernel"].shape == (1024, 32)  # From the 1024-d pool of inception 5b.
  assert sum(name.startswith("inception_") for name in net) == 9
  out = jax.eval_shape(lambda v: model.apply(v, images, y0), variables)
  assert out.shape == (4, 2, 16, 2) and out.dtype == jnp.float32


def _tiny(**kw):
  model = ief.IEFTiny(4, **kw)
  images = jax.random.normal(jax.random.key(1), (2, 48, 48, 3))
  y0 = jax.random.uniform(jax.random.key(2), (4, 2), minval=-0.3, maxval=0.3)
  return model, images, y0, helpers.fake_init(model, images, y0)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_scan_equals_explicit_applications_of_f(batch_norm):
  model, images, y0, variables = _tiny(batch_norm=batch_norm)
  run = jax.jit(lambda v, y: model.apply(v, images, y, num_iterations=3))
  iterates = run(variables, y0)
  assert iterates.shape == (3, 2, 4, 2)
  f = jax.jit(lambda v, y: model.apply(v, images, y, method="correction"))
  y = jnp.broadcast_to(y0, (2, 4, 2))
  for t in range(3):
    y = y + f(variables, y)
    np.testing.assert_allclose(iterates[t], y, rtol=1e-5, atol=1e-6)
  assert np.abs(iterates[2] - iterates[0]).max() > 1e-3  # The loop moves the pose.
  per_example = run(variables, jnp.broadcast_to(y0, (2, 4, 2)))  # y0 per example, same values.
  np.testing.assert_allclose(per_example, iterates, rtol=1e-6)


def test_dropout_only_in_training():
  model, images, y0, variables = _tiny()
  run = jax.jit(lambda v, train, rng: model.apply(v, images, y0, train=train,
                                                  rngs={"dropout": rng}), static_argnums=1)
  eval_out = run(variables, False, jax.random.key(3))
  np.testing.assert_array_equal(eval_out, run(variables, False, jax.random.key(4)))
  train_out = run(variables, True, jax.random.key(3))
  assert train_out.shape == eval_out.shape == (4, 2, 4, 2)
  assert not np.allclose(train_out, eval_out)
  with pytest.raises(ValueError, match="num_iterations=0"):
    jax.eval_shape(lambda v: model.apply(v, images, y0, num_iterations=0), variables)


def test_program_size_and_compile_time_do_not_grow_with_iterations():
  model, images, y0, variables = _tiny()
  # A fresh constant in every program, so that compile() compiles rather than hitting the test
  # suite's persistent cache (its switch is read once per process).
  salt = float(time.time_ns() % 1_000_003)

  def run(v, x, y, t):
    return model.apply(v, x, y + 0 * (x[0, 0, 0, 0] + salt), num_iterations=t)

  lowered = {t: jax.jit(run, static_argnums=3).lower(variables, images, y0, t) for t in (2, 8)}
  sizes = {t: len(low.as_text()) for t, low in lowered.items()}
  assert abs(sizes[8] - sizes[2]) < 0.01 * sizes[2], sizes
  seconds = {}
  for t, low in lowered.items():
    start = time.process_time()
    low.compile()
    seconds[t] = time.process_time() - start
  assert seconds[8] < 1.5 * seconds[2] + 0.5, seconds  # Unrolled would be ~4x.


def test_rendered_maps_peak_at_joints_and_the_marking_point():
  poses = jnp.array([[[-0.25, 0.125], [0.375, -0.5]]])  # Pixels (7.5, 19.5) and (27.5, -0.5).
  maps = ief.render_pose_maps(poses, 32, 32, sigma=0.125, value_range=(-1.0, 3.0))
  assert maps.shape == (1, 32, 32, 3)
  ys, xs = np.mgrid[0:32, 0:32]
  for c, (px, py) in enumerate([(7.5, 19.5), (27.5, -0.5), (15.5, 15.5)]):  # Last: centre.
    want = -1.0 + 4.0 * np.exp(-((xs - px)**2 + (ys - py)**2) / (2 * 4.0**2))
    np.testing.assert_allclose(maps[0, ..., c], want, rtol=1e-5, atol=1e-5)
  assert float(maps.min()) >= -1.0 and float(maps.max()) <= 3.0


@pytest.mark.parametrize("kernel,stride,padding", [(7, 2, 3), (3, 1, 1), (5, 2, 0), (4, 3, 2)])
def test_maps_convolved_in_closed_form_equal_the_rendered_maps_convolved(kernel, stride, padding):
  """conv_pose_maps never renders the maps; its result and kernel gradient are the dense
  convolution's, for non-square maps, any stride and padding, points outside the crop."""
  poses = jax.random.uniform(jax.random.key(5), (2, 3, 2), minval=-0.7, maxval=0.7)
  maps = ief.pose_maps(poses, 20, 26, sigma=0.15, value_range=(-0.4, 0.9))
  assert maps.gy.shape == (2, 20, 4) and maps.gx.shape == (2, 26, 4)
  w = jax.random.normal(jax.random.key(6), (kernel, kernel, 4, 5))
  dense = lambda w: jax.lax.conv_general_dilated(  # noqa: E731
      maps.render(), w, (stride, stride), [(padding, padding)] * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  closed = lambda w: ief.conv_pose_maps(maps, w, stride, padding)  # noqa: E731
  want, got = dense(w), closed(w)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
  probe = jax.random.normal(jax.random.key(7), want.shape)
  grad = lambda f: jax.grad(lambda w: jnp.sum(f(w) * probe))(w)  # noqa: E731
  want_grad = grad(dense)
  np.testing.assert_allclose(grad(closed), want_grad, rtol=1e-5,
                             atol=1e-5 * float(jnp.abs(want_grad).max()))


def test_first_layer_sees_the_maps_as_channels_after_the_image():
  """The network behaves as the release's layout, maps rendered and concatenated to the image
  (`render_maps=True`): the same variables (initialised alike), corrections and gradients."""
  kwargs = dict(width_divisor=16, inception=ief.INCEPTION_V1[:1], batch_norm=True,
                map_sigma=0.05, dropout_rate=0.0)  # One Inception module: conv1 is the point.
  model, reference = ief.IEF(4, **kwargs), ief.IEF(4, render_maps=True, **kwargs)
  images = jax.random.normal(jax.random.key(1), (2, 40, 48, 3))
  poses = jax.random.uniform(jax.random.key(2), (2, 4, 2), minval=-0.4, maxval=0.4)
  # Jitted: op by op, this network's first init and gradient took ~45 s of compiling here.
  variables = jax.jit(model.init)(jax.random.key(0), images, poses[0])
  jax.tree.map(np.testing.assert_array_equal, variables,
               jax.jit(reference.init)(jax.random.key(0), images, poses[0]))
  assert variables["params"]["net"]["conv1"]["kernel"].shape == (7, 7, 3 + 4 + 1, 4)
  for bn in (False, True):  # Without BatchNorm, conv1 has nn.Conv's bias, both ways.
    models = [ief.IEF(4, **dict(kwargs, batch_norm=bn), render_maps=r) for r in (False, True)]
    shapes = [jax.eval_shape(lambda m=m: m.init(jax.random.key(0), images, poses[0]))
              for m in models]
    assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
    assert ("bias" in shapes[0]["params"]["net"]["conv1"]) != bn

  weights = jax.random.normal(jax.random.key(3), (2, 4, 2))

  def loss(m, params):
    pred, _ = m.apply({**variables, "params": params}, images, poses, train=True,
                      method="correction", mutable=["batch_stats"])
    return jnp.sum(pred * weights), pred

  (_, got), got_grad = jax.jit(jax.value_and_grad(functools.partial(loss, model), has_aux=True))(
      variables["params"])
  (_, want), want_grad = jax.jit(
      jax.value_and_grad(functools.partial(loss, reference), has_aux=True))(variables["params"])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(jnp.abs(want).max()))
  overall = max(float(jnp.abs(w).max()) for w in jax.tree.leaves(want_grad))
  for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):  # Some are ~0.
    np.testing.assert_allclose(g, w, rtol=1e-3,
                               atol=max(1e-3 * float(jnp.abs(w).max()), 1e-6 * overall))


_points = hnp.arrays(np.float32, (3, 2), elements=st.floats(-100, 100, width=32))


@settings(max_examples=60, deadline=None)
@given(y=_points, y_true=_points, max_step=st.floats(0.01, 50))
def test_bounded_correction_steps_toward_the_truth_at_most_max_step(y, y_true, max_step):
  e = np.asarray(ief.bounded_correction(jnp.asarray(y), jnp.asarray(y_true), max_step))
  u = (y_true.astype(np.float64) - y)
  dist = np.linalg.norm(u, axis=-1)
  step = np.linalg.norm(e, axis=-1)
  np.testing.assert_allclose(step, np.minimum(dist, max_step), rtol=1e-4, atol=1e-4)
  # Along u: the cross product vanishes and the dot product is |e| |u|.
  cross = e[:, 0] * u[:, 1] - e[:, 1] * u[:, 0]
  assert np.all(np.abs(cross) <= 1e-4 * (1 + step * dist)), cross
  np.testing.assert_allclose(np.sum(e * u, -1), step * dist, rtol=1e-4, atol=1e-3)
  # Short errors are corrected fully.
  short = dist <= max_step
  np.testing.assert_allclose(e[short], u[short], rtol=1e-4, atol=1e-4)


def test_batch_norm_option_without_lrn_or_biases_and_training_through_the_scan():
  """BN-Inception's layers (the CPU quickstart trains from scratch): statistics in
  "batch_stats", no convolution biases; __call__ in training carries the statistics through
  the iterations (each updates them in turn), inference only reads them."""
  model, images, y0, variables = _tiny(batch_norm=True)
  net = variables["params"]["net"]
  assert "bias" not in net["conv1"] and "conv1_bn" in net
  assert set(variables["batch_stats"]["net"]["conv1_bn"]) == {"mean", "var"}
  out, state = model.apply(variables, images, y0, train=True, num_iterations=2,
                           mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
  assert out.shape == (2, 2, 4, 2)
  before = variables["batch_stats"]["net"]["conv1_bn"]["mean"]
  after = state["batch_stats"]["net"]["conv1_bn"]["mean"]
  assert not np.allclose(before, after)
