"""predict.py and jaxpose.predict.Predictor: keypoints in the photo's pixels, bad files skipped."""

import json
import os

import numpy as np
from PIL import Image
import pytest

import helpers
from jaxpose import predict


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return helpers.tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "work")


def _photo(h=90, w=140, seed=0):
  return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_predictor_returns_joints_in_the_photos_pixels(workdir):
  predictor = predict.Predictor(str(workdir), batch_size=2)
  joints, scores = predictor.predict(_photo())
  assert joints.shape == (16, 2) and scores.shape == (16,)
  # The whole image is the box: every prediction lies in the crop, i.e. near the image.
  assert np.all(joints > -30) and np.all(joints[:, 0] < 170) and np.all(joints[:, 1] < 170)
  boxed, _ = predictor.predict(_photo(), box=(10, 20, 50, 80))
  # A person box 40 x 60 px -> a 75 px crop around (30, 50): predictions stay near it.
  assert np.all(np.abs(boxed - [30, 50]) <= 38)
  many, _ = predictor.predict_many([_photo(seed=i) for i in range(3)],
                                   [predict.Person.whole_image(90, 140)] * 3)
  np.testing.assert_allclose(many[0], joints, atol=1e-4)  # Batching does not change results.


def test_person_geometry_and_bad_boxes():
  p = predict.Person.from_box((0, 0, 100, 200))
  assert p.center == (50, 100) and p.scale == pytest.approx(1.25)
  assert predict.Person.whole_image(100, 300).scale == pytest.approx(1.5)
  with pytest.raises(ValueError, match="x1 > x0"):
    predict.Person.from_box((10, 10, 5, 20))


def _run_cli(workdir, *args, env=None):
  return helpers.run_script("predict.py", "--ckpt", workdir, *args, timeout=300, env=env)


def test_cli_writes_json_and_png_and_skips_unreadable_files(workdir, tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  for i in range(2):
    Image.fromarray(_photo(seed=i)).save(photos / f"p{i}.jpg")
  (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  (photos / "scan.tiff").write_bytes(b"II*\x00")  # Not decoded by TensorFlow: named, not read.
  (photos / "sub").mkdir()
  out = tmp_path / "out"
  proc = _run_cli(workdir, str(photos), "--out", str(out))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "broken.jpg" in proc.stderr and "skipped 1 unreadable" in proc.stdout
  assert "skipped 1 file(s) without an image suffix" in proc.stderr and "scan.tiff" in proc.stderr
  assert "function_node" not in proc.stderr and "[Op:" not in proc.stderr  # The reason alone.
  assert sorted(os.listdir(out)) == ["p0.json", "p0.png", "p1.json", "p1.png"]
  record = json.loads((out / "p0.json").read_text())
  assert record["width"] == 140 and len(record["keypoints"]) == 16
  assert set(record["keypoints"][0]) == {"name", "x", "y", "score"}
  assert Image.open(out / "p0.png").size == (140, 90)


def test_cli_refuses_to_overwrite_before_any_work(workdir, tmp_path):
  """Two photos that would write the same outputs, outputs that would replace the photos, a
  malformed or inverted --box, a bad --scale and a folder without images: one line each,
  nothing written or changed."""
  photos = tmp_path / "photos"
  photos.mkdir()
  Image.fromarray(_photo(seed=0)).save(photos / "p.jpg")
  Image.fromarray(_photo(seed=1)).save(photos / "p.png")
  before = (photos / "p.png").read_bytes()

  def run(*args, env=None):
    proc = _run_cli(workdir, *args, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[-1]  # A usage error prints the help first.

  line = run(str(photos), "--out", str(tmp_path / "out"))
  assert "p.jpg" in line and "p.png" in line and "--out" in line
  assert not (tmp_path / "out").exists()
  line = run(str(photos / "p.png"), "--out", str(photos))
  assert "would overwrite the input" in line and "p.png" in line
  assert (photos / "p.png").read_bytes() == before and sorted(os.listdir(photos)) == [
      "p.jpg", "p.png"]
  # The person's flags are checked before the libraries load: with a TensorFlow that cannot be
  # imported, their errors are still the usage lines.
  no_tf = tmp_path / "no_tf" / "tensorflow"
  no_tf.mkdir(parents=True)
  (no_tf / "__init__.py").write_text("raise ImportError('TensorFlow imported before the flags')")
  flags_only = {"PYTHONPATH": str(no_tf.parent)}
  assert "--box=1,2,3:" in run(str(photos / "p.jpg"), "--box", "1,2,3", env=flags_only)
  assert "--box=9,2,3,4:" in run(str(photos / "p.jpg"), "--box", "9,2,3,4", env=flags_only)
  assert "--scale=-1" in run(str(photos / "p.jpg"), "--center", "10,10", "--scale", "-1",
                             env=flags_only)
  (tmp_path / "empty").mkdir()
  assert "No images" in run(str(tmp_path / "empty"))
