"""Resampling on the accelerator gives the host pipeline's inputs; the train step accepts it."""

import jax
import numpy as np
import pytest

import helpers
from jaxpose import families
from jaxpose import parallel
from jaxpose import train
from jaxpose.data import device_augment
from jaxpose.data import pipeline


def _batches(source, family, on_device, step=0, batch_size=4):
  ds = pipeline.train_dataset(source, input_size=family.input_size, target_fn=family.target_fn,
                              augment=pipeline.Augment(), global_batch_size=batch_size, seed=3,
                              start_step=step, on_device=on_device)
  return next(ds.as_numpy_iterator())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config = helpers.tiny_config(tmp_path_factory.mktemp("tfds"))
  family = families.create_family(config)
  source = pipeline.precrop(helpers.dots_source(n=8, size=96), input_size=family.input_size,
                            augment=pipeline.Augment())
  return config, family, source


def test_device_images_equal_host_images(setup):
  _, family, source = setup
  assert source.side > 0
  for step in (0, 1):
    host = _batches(source, family, on_device=False, step=step)
    device = _batches(source, family, on_device=True, step=step)
    assert "image" not in device and device[pipeline.PIXELS].dtype == np.uint8
    assert device[pipeline.PIXELS].shape[1:] == (source.side, source.side, 3)
    images = jax.jit(device_augment.input_images, static_argnums=1)(device, family.input_size)
    np.testing.assert_allclose(images, host["image"], atol=2e-5)
    for key in ("joints", "visible", "transform"):  # Targets are made in the step itself.
      np.testing.assert_array_equal(device[key], host[key])


def test_warp_fills_zeros_outside_and_keeps_sub_pixel_shifts():
  pixels = np.arange(5 * 6 * 1, dtype=np.float32).reshape(5, 6, 1)
  shift = np.array([[1.0, 0.0, 0.25], [0.0, 1.0, -1.0]], np.float32)  # out -> in
  out = np.asarray(device_augment.warp_bilinear(pixels, shift, 6))[..., 0]
  np.testing.assert_allclose(out[0], 0.0)  # Row -1 of the input: outside.
  np.testing.assert_allclose(out[1, :5], pixels[0, :5, 0] + 0.25)
  np.testing.assert_allclose(out[1, 5], 0.75 * pixels[0, 5, 0])  # Half outside the right edge.


def test_train_step_on_device_matches_host(setup):
  config, family, source = setup
  mesh = parallel.make_mesh()
  tx = train.create_optimizer(config, 100)
  step = train.make_train_step(family, mesh)
  metrics = []
  for on_device in (False, True):
    state = train.create_train_state(family, tx, jax.random.key(0), mesh)
    batch = parallel.global_batch(_batches(source, family, on_device), mesh)
    metrics.append(step(state, batch, jax.random.key(0))[1])
  np.testing.assert_allclose(metrics[0]["loss"], metrics[1]["loss"], rtol=1e-4)


def test_on_device_needs_a_precropped_source(setup):
  _, family, _ = setup
  with pytest.raises(ValueError, match="precrop"):
    _batches(helpers.dots_source(n=4), family, on_device=True)
