"""Input pipeline: affine crop consistency, flips, determinism, sharding, eval padding."""

import dataclasses
import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from jaxpose import skeletons
from jaxpose.data import pipeline


def _jpeg(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")  # Lossless, so pixel positions are exact.
  return buf.getvalue()


def _source(n=10, k=16, size=(96, 120), seed=0):
  rng = np.random.default_rng(seed)
  images, joints = [], []
  for _ in range(n):
    img = np.zeros(size + (3,), np.uint8)
    pts = np.stack([rng.uniform(30, size[1] - 30, k), rng.uniform(30, size[0] - 30, k)], -1)
    images.append(_jpeg(img))
    joints.append(pts)
  ann = {
      "joints": np.asarray(joints, np.float32),
      "visible": np.ones((n, k), np.float32),
      "occluded": np.zeros((n, k), np.float32),
      "center": np.tile(np.array([[size[1] / 2, size[0] / 2]], np.float32), (n, 1)),
      "scale": np.full((n,), 0.4, np.float32),
      "head_box": np.zeros((n, 4), np.float32),
      "norm_size": np.ones((n,), np.float32),
      "id": np.arange(n, dtype=np.int64),
  }
  return pipeline.Source("fake", tf.constant(images), ann, skeletons.MPII)


@pytest.mark.parametrize("rot,flip", [(0.0, False), (23.0, False), (-30.0, True)])
def test_affine_maps_joints_and_pixels_consistently(rot, flip):
  # A round blob centred on a point of the original image lands where the matrix sends it.
  point = np.array([63.3, 41.6], np.float32)
  yy, xx = np.mgrid[:90, :110]
  blob = np.exp(-((xx - point[0])**2 + (yy - point[1])**2) / (2 * 3.0**2))
  img = np.repeat(blob[..., None], 3, -1).astype(np.float32)
  matrix = pipeline.crop_transform([55.0, 45.0], 0.5, rot, 64, flip)
  crop = pipeline.warp_image(tf.constant(img), matrix, 64).numpy()[..., 0]
  mapped = pipeline.transform_points(matrix, tf.constant(point[None])).numpy()[0]
  ys, xs = np.mgrid[:64, :64]
  centroid = np.array([np.sum(xs * crop), np.sum(ys * crop)]) / np.sum(crop)
  np.testing.assert_allclose(centroid, mapped, atol=0.05)


def test_crop_covers_the_box_with_pixel_centres_aligned():
  m = pipeline.crop_transform([50.0, 60.0], 0.32, 0.0, 64, False).numpy()
  # Box side 64 px -> crop 64 px: identity up to the translation.
  corner = m[:2, :2] @ np.array([50 - 31.5, 60 - 31.5]) + m[:2, 2]
  np.testing.assert_allclose(corner, [0, 0], atol=1e-5)
  flipped = pipeline.crop_transform([50.0, 60.0], 0.32, 0.0, 64, True).numpy()
  np.testing.assert_allclose(flipped[:2, :2] @ np.array([50 - 31.5, 60]) + flipped[:2, 2],
                             [63, 31.5], atol=1e-5)


def _targets(joints, visible, size):
  return {"count": tf.reduce_sum(visible)}


def test_flip_swaps_left_and_right_joints():
  src = _source(n=1)
  ann = {k: v[0] for k, v in src.annotations.items()}
  aug = pipeline.Augment(rotation=0.0, scale=0.0, flip=True, color=0.0)
  outs = [pipeline.process_example(src.images[0], ann, input_size=64, skeleton=skeletons.MPII,
                                   target_fn=None, augment=aug,
                                   seed=tf.constant([0, s], tf.int64)) for s in range(12)]
  plain = pipeline.process_example(src.images[0], ann, input_size=64, skeleton=skeletons.MPII,
                                   target_fn=None, augment=None)
  flipped = [o for o in outs if o["transform"].numpy()[0, 0] < 0]
  assert flipped, "no flip in 12 draws"
  f = flipped[0]["joints"].numpy()
  p = plain["joints"].numpy()
  perm = skeletons.MPII.flip_permutation
  np.testing.assert_allclose(f, np.stack([63 - p[perm, 0], p[perm, 1]], -1), atol=1e-4)


def test_training_batches_are_a_pure_function_of_seed_and_step_and_shards_are_disjoint():
  src = _source(n=10)
  kw = dict(input_size=32, target_fn=_targets, augment=pipeline.Augment(),
            global_batch_size=4, seed=3)
  full = list(pipeline.train_dataset(src, **kw).take(6).as_numpy_iterator())
  resumed = list(pipeline.train_dataset(src, start_step=4, **kw).take(2).as_numpy_iterator())
  for a, b in zip(full[4:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  halves = [list(pipeline.train_dataset(src, process_index=p, process_count=2, **kw)
                 .take(5).as_numpy_iterator()) for p in range(2)]
  for step in range(5):  # Bit-identical global batches, however many processes share them.
    for k in full[step]:
      stitched = np.concatenate([halves[0][step][k], halves[1][step][k]])
      np.testing.assert_array_equal(stitched, full[step][k], err_msg=k)


@pytest.mark.parametrize("on_device", [False, True])
def test_training_batches_say_their_shapes_before_the_first(on_device):
  """The trainer compiles its step for the dataset's element_spec before any batch exists
  (train._compile_ahead): every dimension known, and the batches' own."""
  ds = pipeline.train_dataset(_source(n=10), input_size=32, target_fn=_targets,
                              augment=pipeline.Augment(), global_batch_size=4, seed=3,
                              process_index=1, process_count=2, on_device=on_device)
  batch = next(ds.as_numpy_iterator())
  assert ds.element_spec.keys() == batch.keys()
  for k, spec in ds.element_spec.items():
    assert spec.shape.is_fully_defined(), (k, spec.shape)
    assert (tuple(spec.shape), spec.dtype.as_numpy_dtype) == (batch[k].shape, batch[k].dtype), k


def _example_of(src, joints, matrix):
  """The source example whose joints a training example's (warped, maybe flipped) joints are."""
  if matrix[0, 0] < 0:  # Flipped: undo the left/right swap (an involution).
    joints = joints[skeletons.MPII.flip_permutation]
  original = pipeline.transform_points(np.linalg.inv(matrix), joints).numpy()
  match = np.flatnonzero(np.all(np.abs(src.annotations["joints"] - original) < 1e-2, (1, 2)))
  assert len(match) == 1, match
  return int(match[0])


@pytest.mark.parametrize("procs", [1, 2])
def test_every_epoch_reads_every_example_exactly_once_over_all_processes(procs):
  """Which example each process reads, recovered from its joints: the global positions
  step * B + p * B/P + b of epoch e, [e * N, (e + 1) * N), hold each example once."""
  n, global_batch, steps = 10, 4, 5  # 20 positions: 2 epochs, boundaries inside a batch.
  src = _source(n=n)
  seen = {}  # Global position -> example index.
  for p in range(procs):
    ds = pipeline.train_dataset(src, input_size=32, target_fn=_targets,
                                augment=pipeline.Augment(), global_batch_size=global_batch,
                                seed=3, process_index=p, process_count=procs)
    local = global_batch // procs
    for step, batch in enumerate(ds.take(steps).as_numpy_iterator()):
      for b in range(local):
        position = step * global_batch + p * local + b
        seen[position] = _example_of(src, batch["joints"][b], batch["transform"][b])
  assert sorted(seen) == list(range(steps * global_batch))
  for epoch in range(2):
    assert sorted(seen[q] for q in range(epoch * n, (epoch + 1) * n)) == list(range(n))
  assert [seen[q] for q in range(n)] != [seen[q] for q in range(n, 2 * n)]  # Reshuffled.


def test_runs_with_neighbouring_seeds_share_no_random_stream():
  """Seeds k and k + 1 once shared streams (seed + 1 for the steps, + 1 again for the gains);
  now every (seed, purpose, step or epoch) draws its own numbers."""
  draws = {}
  for seed in range(3):
    for stream in pipeline.Stream:
      for index in range(8):
        key = pipeline.stream_seed(seed, stream, index)
        draws[seed, stream, index] = tuple(tf.random.stateless_uniform([4], seed=key).numpy())
  assert len(set(draws.values())) == len(draws)
  # E.g. no step's gains of seed 1 replay any step's geometry of seed 0.
  gains_1 = {draws[1, pipeline.Stream.GAINS, s] for s in range(8)}
  assert not gains_1 & {draws[0, pipeline.Stream.GEOMETRY, s] for s in range(8)}
  # And so the batches of seeds 0 and 1 differ at every step, shifted or not.
  kw = dict(input_size=32, target_fn=_targets, augment=pipeline.Augment(), global_batch_size=4)
  runs = [list(pipeline.train_dataset(_source(n=10), seed=seed, **kw).take(4)
               .as_numpy_iterator()) for seed in (0, 1)]
  for s in range(4):
    for t in range(4):
      assert not np.allclose(runs[0][s]["transform"], runs[1][t]["transform"]), (s, t)


def _draws(aug, n=20000):
  seeds = [pipeline.stream_seed(7, stream, 0)
           for stream in (pipeline.Stream.GEOMETRY, pipeline.Stream.GAINS)]
  return [np.asarray(x) for x in pipeline.augment_params(aug, *seeds, [n])]


def test_normal_clipped_draws_match_the_reference_distribution():
  aug = pipeline.Augment(rotation=30.0, rotation_prob=0.6, scale=0.25,
                         distribution="normal_clipped")
  rot, scale, flip, gains = _draws(aug)
  assert np.mean(rot != 0) == pytest.approx(0.6, abs=0.015)
  rot = rot[rot != 0]
  # Rotation: 30 N(0, 1) clipped to +-60; about 68% within one sigma, 4.6% at the clip.
  assert np.abs(rot).max() == pytest.approx(60.0)
  assert np.mean(np.abs(rot) < 30.0) == pytest.approx(0.6827, abs=0.015)
  assert np.mean(np.abs(rot) >= 60.0) == pytest.approx(0.0455, abs=0.006)
  assert np.mean(rot > 0) == pytest.approx(0.5, abs=0.015)
  # Scale: 1 + 0.25 N(0, 1) clipped to [0.75, 1.25]: 31.7% at the bounds.
  assert scale.min() == pytest.approx(0.75) and scale.max() == pytest.approx(1.25)
  assert np.mean((scale > 0.75) & (scale < 1.25)) == pytest.approx(0.6827, abs=0.015)
  assert np.mean(np.abs(scale - 1) < 0.125) == pytest.approx(0.3829, abs=0.015)
  assert np.mean(flip) == pytest.approx(0.5, abs=0.015)
  assert gains.min() >= 0.8 and gains.max() <= 1.2


def test_uniform_draws_and_bad_distribution():
  rot, scale, _, _ = _draws(pipeline.Augment(rotation=30.0, rotation_prob=1.0, scale=0.25))
  assert np.abs(rot).max() <= 30.0 and np.abs(rot).max() > 29.9
  assert np.mean(np.abs(rot) < 15.0) == pytest.approx(0.5, abs=0.015)
  assert scale.min() >= 0.75 and scale.max() <= 1.25
  assert np.mean(np.abs(scale - 1) < 0.125) == pytest.approx(0.5, abs=0.015)
  with pytest.raises(ValueError, match="'gaussian'"):
    pipeline.Augment(distribution="gaussian")


def test_reach_covers_the_largest_rotation_of_the_distribution():
  uniform = pipeline.Augment(rotation=20.0, rotation_prob=0.6, scale=0.25)
  normal = dataclasses.replace(uniform, distribution="normal_clipped")
  assert uniform.max_rotation == 20.0 and normal.max_rotation == 40.0
  a = np.radians(40.0)
  assert pipeline.reach(normal) == pytest.approx(1.25 * (np.cos(a) + np.sin(a)))
  assert pipeline.reach(normal) > pipeline.reach(uniform)
  assert pipeline.reach(dataclasses.replace(normal, rotation_prob=0.0)) == pytest.approx(1.25)


@pytest.mark.parametrize("n,batch,procs", [(10, 4, 1), (10, 4, 3), (7, 8, 2), (1, 2, 2)])
def test_eval_layout_counts_every_example_exactly_once(n, batch, procs):
  seen = []
  lengths = set()
  for p in range(procs):
    idx, mask = pipeline.eval_layout(n, batch, p, procs)
    assert len(idx) % batch == 0
    lengths.add(len(idx))
    seen.extend(idx[mask].tolist())
  assert len(lengths) == 1  # Same number of batches on every process.
  assert sorted(seen) == list(range(n))


def test_eval_dataset_batches_carry_index_and_mask():
  src = _source(n=5)
  batches = list(pipeline.eval_dataset(src, input_size=32, local_batch_size=4)
                 .as_numpy_iterator())
  assert len(batches) == 2
  assert batches[1]["mask"].tolist() == [True, False, False, False]
  assert batches[0]["index"].tolist() == [0, 1, 2, 3]
  assert batches[0]["image"].shape == (4, 32, 32, 3)


def _smooth_source(n=3, size=(300, 400)):
  """Bright, smooth PNGs (so resampling barely changes pixels) with people near the middle."""
  yy, xx = np.mgrid[:size[0], :size[1]] / 40.0
  images, k = [], skeletons.MPII.num_joints
  for i in range(n):
    img = 0.5 + 0.2 * np.stack([np.sin(xx + i), np.cos(yy - i), np.sin(xx + yy)], -1)
    images.append(_jpeg((255 * img).astype(np.uint8)))
  rng = np.random.default_rng(0)
  centers = np.array([[200.0, 150.0], [120.5, 170.25], [330.0, 60.0]])[:n]
  scales = np.array([1.2, 0.9, 0.5])[:n]
  ann = {
      "joints": (centers[:, None] + rng.uniform(-80, 80, (n, k, 2)) * scales[:, None, None]),
      "visible": np.ones((n, k)), "occluded": np.zeros((n, k)), "center": centers,
      "scale": scales, "head_box": np.tile([[10.0, 20.0, 40.0, 60.0]], (n, 1)),
      "norm_size": np.full((n,), 30.0), "id": np.arange(n)}
  ann = {key: v.astype(np.int64 if key == "id" else np.float32) for key, v in ann.items()}
  return pipeline.Source("smooth", tf.constant(images), ann, skeletons.MPII)


@pytest.mark.parametrize("rotation,distribution", [(0.0, "uniform"), (30.0, "uniform"),
                                                   (60.0, "uniform"), (20.0, "normal_clipped"),
                                                   (30.0, "normal_clipped")])
def test_precrop_holds_every_reachable_crop(rotation, distribution):
  """The most zoomed-out, most rotated training crop (and its bilinear neighbours) stays
  inside the stored square."""
  aug = pipeline.Augment(rotation=rotation, rotation_prob=1.0, scale=0.25,
                         distribution=distribution)
  center, scale, size = np.array([[200.0, 150.0]]), np.array([2.3]), 64
  sides, matrices = pipeline.precrop_geometry(center, scale, input_size=size, augment=aug)
  last = size - 1.0
  corners = np.array([[0, 0], [last, 0], [0, last], [last, last]], np.float32)
  for rot in np.linspace(-aug.max_rotation, aug.max_rotation, 9):
    for s in (1 - aug.scale, 1 + aug.scale):
      crop = pipeline.crop_transform(center[0], scale[0] * s, rot, size).numpy()
      stored = matrices[0] @ np.linalg.inv(crop)  # crop pixels -> stored pixels.
      reached = corners @ stored[:2, :2].T + stored[:2, 2]
      assert reached.min() >= 1.0 and reached.max() <= sides[0] - 2.0, (rot, s, reached)
  # The density never exceeds the most zoomed-in crop's, nor the original's.
  assert matrices[0, 0, 0] == pytest.approx(size / (200 * 2.3 * 0.75))
  assert pipeline.precrop_geometry(center, np.array([0.1]), input_size=size,
                                   augment=aug)[1][0, 0, 0] == 1.0


def test_precrop_gives_the_same_examples():
  source = _smooth_source()
  aug = pipeline.Augment(rotation=30.0, rotation_prob=1.0, scale=0.25)
  cropped = pipeline.precrop(source, input_size=64, augment=aug)
  sizes = [tf.io.extract_jpeg_shape(x).numpy()[:2] for x in cropped.images]
  assert all(h == w and h < 300 for h, w in sizes), sizes
  for i in range(source.num_examples):
    for seed in range(4):
      kwargs = dict(input_size=64, skeleton=skeletons.MPII, augment=aug,
                    target_fn=lambda j, v, s: {"sum": tf.reduce_sum(j)},
                    seed=tf.constant([seed, i], tf.int64))
      a = pipeline.process_example(source.images[i],
                                   {k: v[i] for k, v in source.annotations.items()}, **kwargs)
      b = pipeline.process_example(cropped.images[i],
                                   {k: v[i] for k, v in cropped.annotations.items()}, **kwargs)
      np.testing.assert_allclose(a["joints"], b["joints"], atol=2e-3)
      np.testing.assert_allclose(a["sum"], b["sum"], rtol=1e-5)
      # One more bilinear resampling and a JPEG round trip: small differences, larger only
      # along the original image's border (ringing at the black fill).
      diff = np.abs(a["image"].numpy() - b["image"].numpy())
      assert diff.mean() < 0.015 and np.percentile(diff, 99) < 0.06, (i, seed, diff.mean())
  np.testing.assert_allclose(cropped.annotations["norm_size"] / source.annotations["norm_size"],
                             cropped.annotations["scale"] / source.annotations["scale"])


def test_raw_images_round_trip_and_a_damaged_one_is_named():
  pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  data = pipeline.encode_raw(pixels)
  np.testing.assert_array_equal(pipeline.decode_raw_numpy(data), pixels)
  np.testing.assert_array_equal(pipeline.decode_raw_numpy(memoryview(data)), pixels)
  np.testing.assert_array_equal(pipeline.decode_pixels(tf.constant(data)).numpy(), pixels)
  jpeg = tf.io.encode_jpeg(pixels).numpy()
  assert pipeline.decode_raw_numpy(jpeg) is None  # Another format: left to the decoders.
  assert pipeline.decode_pixels(tf.constant(jpeg)).numpy().shape == (5, 7, 3)
  with pytest.raises(ValueError, match=r"5x7 pixels has 100 bytes, expected 121"):
    pipeline.decode_raw_numpy(data[:100])
  with pytest.raises(ValueError, match=r"\[H, W, 3\] pixels"):
    pipeline.encode_raw(pixels[..., 0])
  source = _smooth_source(n=2)
  images = np.array([data, data[:100]], dtype=object)
  bad = pipeline.Source("raw", tf.constant(images), source.annotations, skeletons.MPII)
  with pytest.raises(ValueError, match=r"raw.*index 1 \(id 1\)"):
    pipeline.check_decodable(bad, [0, 1])


def test_raw_precrop_stores_the_pixels_a_jpeg_precrop_encodes():
  source = _smooth_source(n=3)
  aug = pipeline.Augment(rotation=30.0, rotation_prob=1.0, scale=0.25)
  jpeg = pipeline.precrop(source, input_size=64, augment=aug)
  raw = pipeline.precrop(source, input_size=64, augment=aug, image_format="raw")
  for k, v in jpeg.annotations.items():
    np.testing.assert_array_equal(raw.annotations[k], v, k)
  assert raw.side == jpeg.side
  sides, matrices = pipeline.precrop_geometry(source.annotations["center"],
                                              source.annotations["scale"], input_size=64,
                                              augment=aug)
  for i in range(3):
    want = pipeline.warp_image(pipeline.decode_pixels(source.images[i]),
                               matrices[i].astype(np.float32),
                               int(sides[i])).numpy()
    np.testing.assert_array_equal(pipeline.decode_pixels(raw.images[i]).numpy(), want)
    got = pipeline.decode_pixels(jpeg.images[i]).numpy().astype(np.float32)
    assert np.abs(got - want).mean() < 2.0  # The JPEG's loss, on a 0-255 scale.
  with pytest.raises(ValueError, match=r"precrop_format.*'jpeg', 'raw'"):
    pipeline.precrop(source, input_size=64, augment=aug, image_format="png")


def test_precrop_names_an_undecodable_image():
  source = _smooth_source(n=2)
  images = source.images.numpy()
  images[1] = images[1][:50]
  bad = pipeline.Source("smooth", tf.constant(images), source.annotations, skeletons.MPII)
  with pytest.raises(ValueError, match=r"smooth.*index 1 \(id 1\)"):
    pipeline.precrop(bad, input_size=64, augment=pipeline.Augment())


def test_training_batches_agree_with_the_per_example_reference():
  """train_dataset (vectorised geometry and targets) gives what process_example gives for the
  same example and crop: joints through the batch's matrix with the flip swap, the image,
  and the targets."""
  src = _smooth_source(n=3)
  aug = pipeline.Augment(rotation=30.0, rotation_prob=0.5, scale=0.25)

  def targets(joints, visible, size):
    return {"t": tf.reduce_sum(joints, -1) * visible + size}

  batches = list(pipeline.train_dataset(src, input_size=64, target_fn=targets, augment=aug,
                                        global_batch_size=6, seed=5).take(3)
                 .as_numpy_iterator())
  flips = 0
  for step, batch in enumerate(batches):
    indices = pipeline.train_step_indices(src, step=step, global_batch_size=6, seed=5)
    for b, i in enumerate(indices):
      matrix = batch["transform"][b]
      flipped = matrix[0, 0] < 0
      flips += flipped
      joints = pipeline.transform_points(matrix, src.annotations["joints"][i]).numpy()
      if flipped:
        joints = joints[skeletons.MPII.flip_permutation]
      np.testing.assert_allclose(batch["joints"][b], joints, atol=1e-4)
      image = pipeline.warp_image(pipeline.decode_image(src.images[i]), matrix, 64).numpy()
      gain_free = (batch["image"][b] + 0.5) / np.maximum(image, 1e-3)
      assert np.std(gain_free.reshape(-1, 3)[image.reshape(-1, 3).min(1) > 0.2], 0).max() < 1e-3
      np.testing.assert_allclose(
          batch["t"][b], targets(batch["joints"][b], batch["visible"][b], 64)["t"], rtol=1e-6)
  assert 0 < flips < 18
