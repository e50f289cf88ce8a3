"""Colour (and resampling) on the accelerator give the host pipeline's inputs; the train step
accepts both kinds of uint8 batch."""

import jax
import numpy as np
import pytest
import tensorflow as tf

import helpers
from jaxpose import families
from jaxpose import parallel
from jaxpose import train
from jaxpose.data import device_augment
from jaxpose.data import pipeline


# The host's float path, the uint8 crop (colour on the device), the stored pixels (all on it).
MODES = {"host": {}, "crop": dict(on_device=True),
         "pixels": dict(on_device=True, resample_on_device=True)}


def _batches(source, family, mode, step=0, batch_size=4):
  ds = pipeline.train_dataset(source, input_size=family.input_size, target_fn=family.target_fn,
                              augment=pipeline.Augment(), global_batch_size=batch_size, seed=3,
                              start_step=step, **MODES[mode])
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
  size = family.input_size
  for step in (0, 1):
    host = _batches(source, family, "host", step=step)
    pixels = _batches(source, family, "pixels", step=step)
    crop = _batches(source, family, "crop", step=step)
    assert "image" not in pixels and pixels[pipeline.PIXELS].dtype == np.uint8
    assert pixels[pipeline.PIXELS].shape[1:] == (source.side, source.side, 3)
    # The uint8 crop is all that crosses: the input's bytes, not the stored pixels'.
    assert pipeline.PIXELS not in crop and "image" not in crop
    assert crop[pipeline.CROP].dtype == np.uint8 and crop[pipeline.CROP].shape[1:] == (
        size, size, 3)
    from_pixels = jax.jit(device_augment.input_images, static_argnums=1)(pixels, size)
    np.testing.assert_allclose(from_pixels, host["image"], atol=2e-5)
    # Decoded by OpenCV (libjpeg's accurate integer IDCT; TensorFlow's default is the fast
    # one: 0.35/255 apart on these textured JPEGs) and resampled in uint8 (1/32 px positions,
    # rounding): close, not equal (measured: 1.0/255 on average, 6.6 at most).
    error = np.abs(jax.jit(device_augment.input_images, static_argnums=1)(crop, size)
                   - host["image"]) * 255
    assert error.mean() < 1.5 and error.max() < 10, (error.mean(), error.max())
    for batch in (pixels, crop):
      for key in ("joints", "visible", "transform"):  # Targets are made in the step itself.
        np.testing.assert_array_equal(batch[key], host[key])


def test_decode_and_warp_uint8_is_warp_image_in_uint8():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
  image[10:30, 20:35] = 200  # A flat patch: there the two agree to the rounding.
  png = tf.io.encode_png(image)  # Lossless: the two decoders agree exactly.
  matrices = pipeline.crop_transform(np.float32([[27, 20], [20, 15]]), np.float32([0.2, 0.1]),
                                     np.float32([17, 0]), 32, np.bool_([True, False]))
  inverse = tf.linalg.inv(matrices)[:, :2]
  fast = pipeline.decode_and_warp_uint8(tf.stack([png, png]), inverse, 32).numpy()
  assert fast.dtype == np.uint8 and fast.shape == (2, 32, 32, 3)
  for crop, matrix in zip(fast, matrices):
    exact = pipeline.warp_image(image.astype(np.float32), matrix, 32).numpy()
    error = np.abs(crop - exact)
    assert error.mean() < 1.0 and error.max() < 12, (error.mean(), error.max())
    flat = np.abs(exact - 200) < 1e-3  # Output pixels whose four neighbours are all 200.
    assert flat.sum() > 50 and (crop[flat] == 200).all()
  # Zeros outside: a crop far off the image is black.
  away = np.float32([[[1, 0, 500], [0, 1, 500]]])
  assert not pipeline.decode_and_warp_uint8(tf.stack([png]), away, 8).numpy().any()
  with pytest.raises((ValueError, tf.errors.OpError), match="cannot decode image 1"):
    pipeline.decode_and_warp_uint8(tf.constant([png.numpy(), b"not an image"]),
                                   tf.concat([away, away], 0), 8)


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
  for mode in ("host", "pixels", "crop"):
    state = train.create_train_state(family, tx, jax.random.key(0), mesh)
    batch = parallel.global_batch(_batches(source, family, mode), mesh)
    metrics.append(step(state, batch, jax.random.key(0))[1])
  np.testing.assert_allclose(metrics[0]["loss"], metrics[1]["loss"], rtol=1e-4)
  np.testing.assert_allclose(metrics[0]["loss"], metrics[2]["loss"], rtol=1e-2)


def test_resampling_on_device_needs_a_precropped_source(setup):
  _, family, _ = setup
  with pytest.raises(ValueError, match="precrop"):
    _batches(helpers.dots_source(n=4), family, "pixels")
  # The uint8 crop does not: it is resampled on the host from any image.
  batch = _batches(helpers.dots_source(n=4, size=96), family, "crop")
  assert batch[pipeline.CROP].shape == (4, family.input_size, family.input_size, 3)
