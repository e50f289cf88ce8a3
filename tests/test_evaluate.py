"""Evaluation oracle: perfect heat maps through the real predict path, inverse warp and metric."""

import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from jaxpose import evaluate
from jaxpose import families
from jaxpose import parallel
from jaxpose import skeletons
from jaxpose.codecs import heatmap
from jaxpose.data import pipeline

SIZE, OUT = 64, 16  # Crop side and heat-map side: stride 4.
SKELETON = skeletons.MPII


def _source(n=10, seed=0) -> pipeline.Source:
  """People of different sizes at different places of 160x120 photos."""
  rng = np.random.default_rng(seed)
  images, joints, centers, scales = [], [], [], []
  for _ in range(n):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(buf, "PNG")
    images.append(buf.getvalue())
    scale = rng.uniform(0.25, 0.5)
    center = rng.uniform((50, 40), (110, 80))
    joints.append(center + rng.uniform(-70, 70, (16, 2)) * scale)
    centers.append(center)
    scales.append(scale)
  visible = np.ones((n, 16), np.float32)
  ann = {"joints": np.asarray(joints, np.float32), "visible": visible,
         "occluded": np.zeros_like(visible), "center": np.asarray(centers, np.float32),
         "scale": np.asarray(scales, np.float32), "head_box": np.zeros((n, 4), np.float32),
         "norm_size": np.asarray(scales, np.float32) * 12.0, "id": np.arange(n)}
  return pipeline.Source("oracle", tf.constant(images), ann, SKELETON)


CODEC = heatmap.HeatmapCodec(SIZE, OUT, sigma=1.0)


def _render(joints_px):
  """Gaussian heat maps at crop-pixel joints [B,K,2] -> [B,OUT,OUT,K] (the codec's)."""
  return CODEC.render_targets(joints_px, jnp.ones(joints_px.shape[:-1]))["targets"]


def _crop_truth(params, transform):
  """The true joints [B,K,2] in the crop pixels of the examples whose warps are `transform`."""
  gt, warps = params["gt"], params["warps"]
  n = jnp.argmin(jnp.sum(jnp.abs(transform[:, None] - warps[None]), axis=(-1, -2)), axis=1)
  m = transform[:, None, :2, :2]
  crop = jnp.einsum("bkij,bkj->bki", jnp.broadcast_to(m, gt[n].shape[:2] + (2, 2)), gt[n])
  return crop + transform[:, None, :2, 2]


def _oracle_family(source) -> families.Family:
  """Predicts from the ground truth: finds each example by its crop warp, renders its joints
  in the crop (and, for the flip test, in the mirrored crop with left/right swapped) and hands
  the maps to the heat-map families' real decoding."""
  ann = source.annotations
  perm = SKELETON.flip_permutation

  def predict(variables, batch, flip_test):
    crop = _crop_truth(variables["params"], batch["transform"])
    flipped = None
    if flip_test:
      mirrored = crop.at[..., 0].set(SIZE - 1 - crop[..., 0])[:, perm]
      flipped = _render(mirrored)
    return families.heatmap_predict(_render(crop), flipped, codec=CODEC,
                                    flip_permutation=perm)

  warps = np.stack([pipeline.crop_transform(c, s, 0.0, SIZE).numpy()
                    for c, s in zip(ann["center"], ann["scale"])])
  variables = {"params": {"gt": jnp.asarray(ann["joints"]), "warps": jnp.asarray(warps)}}
  family = families.Family("oracle", SKELETON, SIZE, init=lambda rng: variables,
                           loss=None, predict=predict)
  return family, variables


@pytest.mark.parametrize("flip_test", [False, True])
def test_perfect_heatmaps_score_100(flip_test):
  source = _source()
  family, variables = _oracle_family(source)
  table, preds, stages = evaluate.evaluate(variables, family, source, parallel.make_mesh(),
                                           local_batch_size=4, flip_test=flip_test)
  assert stages is None
  assert table["Total"] == pytest.approx(100.0)
  # Decoding to a quarter heat-map pixel: within one heat-map pixel of the truth, in original
  # pixels (a heat-map pixel is 4 crop px = 4 * 200 * scale / 64 original px).
  err = np.linalg.norm(preds - source.annotations["joints"], axis=-1)
  assert np.all(err <= 4 * 200 * source.annotations["scale"][:, None] / SIZE)


def test_every_stage_gets_a_table_and_the_last_is_the_answer():
  """A family whose predict returns [B,T,K,2] (cascade stages, IEF iterations): one table per
  step along T, each scored in the original pixels, the last one the answer, and the report
  names the steps as the family does."""
  source = _source()
  oracle, variables = _oracle_family(source)

  def predict(variables, batch, flip_test):
    del flip_test
    crop = _crop_truth(variables["params"], batch["transform"])
    # 16 crop px off (~70 x scale original px, the threshold 6 x scale), then half a pixel off.
    steps = jnp.stack([crop + SIZE / 4, crop + 0.5, crop], axis=1)
    return steps, jnp.ones(crop.shape[:2])

  family = dataclasses.replace(oracle, predict=predict, stage_name="iteration")
  table, preds, stages = evaluate.evaluate(variables, family, source, parallel.make_mesh(),
                                           local_batch_size=4, flip_test=False)
  assert [t["Total"] for t in stages] == pytest.approx([0.0, 100.0, 100.0])
  assert stages[-1] == table
  np.testing.assert_allclose(preds, source.annotations["joints"], atol=1e-2)
  text = evaluate.report_text(table, stages, source, "the answer", family.stage_name)
  titles = [line for line in text.splitlines() if not line.lstrip()[:1].isdigit()
            and "Head" not in line]
  assert titles == ["after iteration 1 of 3", "after iteration 2 of 3", "the answer"]


def test_a_forgotten_left_right_swap_would_be_caught(monkeypatch):
  """The oracle whose flip test does not swap left and right back scores far below 100."""
  source = _source()
  family, variables = _oracle_family(source)
  original = families.heatmap_predict

  def no_swap(maps, flipped, *, codec, flip_permutation):
    del flip_permutation
    return original(maps, flipped, codec=codec, flip_permutation=np.arange(16))

  monkeypatch.setattr(families, "heatmap_predict", no_swap)
  table, _, _ = evaluate.evaluate(variables, family, source, parallel.make_mesh(),
                                  local_batch_size=4, flip_test=True)
  assert table["Total"] < 80


def test_rotated_and_scaled_crops_map_back_to_the_original_pixels():
  """The predict step's inverse warp, on warps with rotation, scale and flip."""
  source = _source(n=4)
  family, variables = _oracle_family(source)
  ann = source.annotations
  mesh = parallel.make_mesh()
  step = evaluate.make_predict_step(family, mesh, flip_test=False)
  rng = np.random.default_rng(1)
  warps = np.stack([pipeline.crop_transform(c, s * rng.uniform(0.8, 1.2), rng.uniform(-40, 40),
                                            SIZE).numpy()
                    for c, s in zip(ann["center"], ann["scale"])])
  variables = {"params": dict(variables["params"], warps=jnp.asarray(warps))}
  batch = {"image": np.zeros((4, SIZE, SIZE, 3), np.float32), "transform": warps}
  joints, _ = jax.device_get(step(variables, parallel.global_batch(batch, mesh)))
  err = np.linalg.norm(joints - ann["joints"], axis=-1)
  assert np.all(err <= 4 * 200 * 1.2 * ann["scale"][:, None] / SIZE)
  assert np.median(err) < np.median(4 * 200 * ann["scale"]) / SIZE  # Mostly sub-pixel.


def test_a_preemption_notice_stops_the_evaluation_between_batches():
  source = _source()
  family, variables = _oracle_family(source)
  asked = []

  def should_stop():
    asked.append(1)
    return len(asked) > 2  # Noticed before the third batch.

  with pytest.raises(evaluate.Interrupted, match="after 2 batches"):
    evaluate.predict_split(variables, family, source, parallel.make_mesh(), local_batch_size=2,
                           should_stop=should_stop)
  assert len(asked) == 3


def _dot_source(n=6, seed=2) -> pipeline.Source:
  """Each photo shows one bright dot, where all 16 joints are."""
  rng = np.random.default_rng(seed)
  images, joints, centers, scales = [], [], [], []
  for _ in range(n):
    img = rng.integers(0, 40, (120, 160, 3), dtype=np.uint8)
    dot = rng.uniform((40, 30), (120, 90))
    x, y = np.rint(dot).astype(int)
    img[y - 1:y + 2, x - 1:x + 2] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    images.append(buf.getvalue())
    joints.append(np.tile([x, y], (16, 1)))
    centers.append(dot + rng.uniform(-10, 10, 2))
    scales.append(rng.uniform(0.3, 0.45))
  visible = np.ones((n, 16), np.float32)
  scales = np.asarray(scales, np.float32)
  ann = {"joints": np.asarray(joints, np.float32), "visible": visible,
         "occluded": np.zeros_like(visible), "center": np.asarray(centers, np.float32),
         "scale": scales, "head_box": np.zeros((n, 4), np.float32),
         "norm_size": scales * 200 / SIZE * 8, "id": np.arange(n)}  # 0.5 x: a map pixel.
  return pipeline.Source("dots", tf.constant(images), ann, SKELETON)


def _dot_family(offset: float = 0.0):
  """A 'model' whose heat maps are the crop's brightness pooled to the map grid, plus `offset`
  (negative: all below zero, as log beliefs are): its maxima sit on the dot, at every scale."""

  def heatmaps(variables, images, flip_test):
    del variables, flip_test
    red = images[..., :1] + 0.5
    pooled = red.reshape(red.shape[0], OUT, SIZE // OUT, OUT, SIZE // OUT, 1).mean((2, 4))
    return jnp.broadcast_to(pooled, pooled.shape[:3] + (16,)) + offset

  def predict(variables, batch, flip_test):
    return CODEC.decode(heatmaps(variables, batch["image"], flip_test))

  return families.Family("dots", SKELETON, SIZE, init=lambda rng: {"params": {}}, loss=None,
                         predict=predict, heatmaps=heatmaps, codec=CODEC)


@pytest.mark.parametrize("offset", [0.0, -100.0])  # -100: maps all negative (Tompson's).
def test_multiscale_heatmaps_are_averaged_in_the_unscaled_frame(offset):
  source, family, mesh = _dot_source(), _dot_family(offset), parallel.make_mesh()
  variables = {"params": {}}
  single, _ = evaluate.predict_split(variables, family, source, mesh, local_batch_size=2,
                                     flip_test=False)
  one, _ = evaluate.predict_split(variables, family, source, mesh, local_batch_size=2,
                                  flip_test=False, scales=(1.0,))
  np.testing.assert_allclose(one, single, atol=1e-3)  # One scale: the plain prediction.
  table, multi, _ = evaluate.evaluate(variables, family, source, mesh, local_batch_size=2,
                                      flip_test=False, scales=(0.8, 1.0, 1.25))
  assert table["Total"] == pytest.approx(100.0)
  err = np.linalg.norm(multi - source.annotations["joints"], axis=-1)
  assert np.all(err <= 200 * source.annotations["scale"][:, None] / OUT)  # One map pixel.


def test_multiscale_needs_heatmaps():
  source = _source(n=2)
  family, _ = _oracle_family(source)
  with pytest.raises(ValueError, match="Multi-scale.*'oracle'"):
    evaluate.make_predict_step(family, parallel.make_mesh(), False, scales=(0.9, 1.1))
