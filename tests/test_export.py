"""jaxpose.export: the jax.export file and the SavedModel give the JAX function's keypoints."""

import jax
import numpy as np
import pytest
import tensorflow as tf

import helpers
from jaxpose import evaluate
from jaxpose import export
from jaxpose import parallel
from jaxpose import predict


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("export")
  work = helpers.tiny_checkpoint(tmp / "work")
  paths = export.export(str(work), str(tmp / "out"))
  _, family, variables, _ = evaluate.load_checkpoint(str(work), parallel.make_mesh())
  return paths, jax.jit(export.serving_function(family, variables)), work


def _inputs(n, h, w, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)
  x0, y0 = rng.uniform(0, w / 3, n), rng.uniform(0, h / 3, n)
  boxes = np.stack([x0, y0, x0 + rng.uniform(20, w / 2, n), y0 + rng.uniform(20, h / 2, n)], 1)
  return images, boxes.astype(np.float32)


@pytest.mark.parametrize("n,h,w", [(1, 90, 120), (3, 64, 50)])
def test_both_exports_agree_with_jax(exported, n, h, w):
  paths, serve, _ = exported
  images, boxes = _inputs(n, h, w)
  want = jax.device_get(serve(images, boxes))
  with open(paths["jax"], "rb") as f:
    restored = jax.export.deserialize(f.read())
  got = restored.call(images, boxes)
  loaded = tf.saved_model.load(paths["saved_model"])
  tf_got = loaded.serve(tf.constant(images), tf.constant(boxes))
  for a, b, c in zip(want, got, tf_got):
    assert a.shape == (n, 16, 2) or a.shape == (n, 16)
    np.testing.assert_allclose(np.asarray(b), a, atol=1e-5)
    np.testing.assert_allclose(c.numpy(), a, atol=1e-5)


def test_export_crops_like_the_predictor(exported):
  """Same box, same crop: the device-side bilinear warp against TensorFlow's (within 1e-3 px
  of image coordinates after decoding, unless a maximum flips between near-equal pixels)."""
  _, serve, work = exported
  images, boxes = _inputs(2, 80, 100, seed=1)
  joints, _ = jax.device_get(serve(images, boxes))
  predictor = predict.Predictor(str(work))
  ref, _ = predictor.predict_many(list(images), [predict.Person.from_box(b) for b in boxes])
  close = np.linalg.norm(joints - ref, axis=-1) < 1e-3
  assert close.mean() > 0.9, np.linalg.norm(joints - ref, axis=-1)


def test_help_and_flag_errors_load_no_tensorflow():
  # --help answers without TensorFlow's import (seconds, and its console notices).
  proc = helpers.run_script("-c", "import sys; from jaxpose import export; "
                            "print('tensorflow' in sys.modules)")
  assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]
  proc = helpers.run_script("-m", "jaxpose.export", "--help")
  assert proc.returncode == 0 and "--ckpt" in proc.stdout and proc.stderr == ""
  proc = helpers.run_script("-m", "jaxpose.export", "--ckpt", "/no/such/run", "--out", "/tmp/x")
  assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
      "error: No checkpoint at '/no/such/run': the path does not exist."]


def test_cli_console_says_what_it_wrote_and_nothing_else(exported, tmp_path):
  # Not TensorFlow's start-up notices, not orbax's INFO / WARNING lines.
  proc = helpers.run_script("-m", "jaxpose.export", "--ckpt", exported[2], "--out", tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.splitlines() == [f"wrote {tmp_path}/pose.jax_exported (jax)",
                                      f"wrote {tmp_path}/saved_model (saved_model)"]
  assert proc.stderr == ""
