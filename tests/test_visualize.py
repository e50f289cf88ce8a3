"""Tests for the drawing helpers."""

import numpy as np
from PIL import Image
import pytest

from jaxpose import skeletons
from jaxpose import visualize

MPII = skeletons.MPII


def _joints():
  """Joints spread over a 100 x 120 canvas, away from each other."""
  joints = np.zeros((MPII.num_joints, 2), np.float32)
  for k in range(MPII.num_joints):
    joints[k] = (10 + 20 * (k % 4), 10 + 25 * (k // 4))
  return joints


def test_draw_skeleton_draws_a_copy():
  image = np.zeros((120, 100, 3), np.uint8)
  joints = _joints()
  visible = np.ones(MPII.num_joints, np.float32)
  drawn = visualize.draw_skeleton(image, joints, visible)
  assert drawn.shape == image.shape and drawn.dtype == np.uint8
  assert not image.any()  # The input is untouched.
  left, right = MPII.index("l_wrist"), MPII.index("r_wrist")
  x, y = joints[left].astype(int)
  assert tuple(drawn[y, x]) == visualize.LEFT_COLOUR
  x, y = joints[right].astype(int)
  assert tuple(drawn[y, x]) == visualize.RIGHT_COLOUR
  x, y = joints[MPII.index("pelvis")].astype(int)
  assert tuple(drawn[y, x]) == visualize.CENTRE_COLOUR


def test_draw_skeleton_hidden_and_occluded_joints():
  image = np.zeros((120, 100, 3), np.uint8)
  joints = _joints()
  visible = np.zeros(MPII.num_joints, np.float32)
  occluded = np.zeros(MPII.num_joints, np.float32)
  wrist, ankle = MPII.index("l_wrist"), MPII.index("r_ankle")
  visible[wrist] = 1.0
  occluded[wrist] = 1.0
  drawn = visualize.draw_skeleton(image, joints, visible, occluded=occluded)
  x, y = joints[wrist].astype(int)
  assert not drawn[y, x].any()  # Hollow ring: the centre stays clear ...
  assert drawn[y - 4:y + 5, x - 4:x + 5].any()  # ... the ring is drawn.
  x, y = joints[ankle].astype(int)
  assert not drawn[y - 3:y + 4, x - 3:x + 4].any()  # Not annotated: not drawn.


def test_draw_skeleton_head_box_and_float_input():
  image = np.full((60, 80, 3), 0.5, np.float32)
  drawn = visualize.draw_skeleton(image, _joints() * 0.5, np.zeros(MPII.num_joints),
                                  head_box=np.array([10, 12, 40, 50], np.float32))
  assert drawn.dtype == np.uint8 and drawn.shape == (60, 80, 3)
  assert tuple(drawn[12, 25]) == visualize.HEAD_BOX_COLOUR
  assert tuple(drawn[30, 60]) == (128, 128, 128)


def test_image_grid_pads_different_sizes():
  a = np.full((10, 20, 3), 50, np.uint8)
  b = np.full((30, 15, 3), 200, np.uint8)
  c = np.full((5, 5), 100, np.uint8)
  grid = visualize.image_grid([a, b, c], ncols=2, pad=4)
  assert grid.dtype == np.uint8
  assert grid.shape == (2 * (30 + 4) + 4, 2 * (20 + 4) + 4, 3)
  np.testing.assert_array_equal(grid[4:14, 4:24], a)
  np.testing.assert_array_equal(grid[4:34, 28:43], b)
  assert np.all(grid[38:43, 4:9] == 100)
  assert np.all(grid[14:34, 4:24] == 255)  # Padding below the smaller image.


def test_image_grid_titles():
  images = [np.zeros((16, 16, 3), np.uint8)] * 3
  plain = visualize.image_grid(images, ncols=3)
  titled = visualize.image_grid(images, ncols=3, titles=["a", "b", "c"])
  assert titled.shape[1] == plain.shape[1]
  assert titled.shape[0] > plain.shape[0]
  with pytest.raises(ValueError):
    visualize.image_grid(images, ncols=3, titles=["a"])


def test_save_png_round_trip(tmp_path):
  array = np.random.default_rng(0).integers(0, 256, (12, 17, 3), dtype=np.uint8)
  path = tmp_path / "sub" / "image.png"
  visualize.save_png(array, str(path))
  with Image.open(path) as image:
    assert image.format == "PNG"
    np.testing.assert_array_equal(np.asarray(image), array)


def test_plot_pck_curves(tmp_path):
  thresholds = np.linspace(0, 0.5, 11)
  curves = {name: np.clip(thresholds * (2 + i), 0, 1) for i, name in enumerate(
      skeletons.TABLE_COLUMNS)}
  path = tmp_path / "pck.png"
  visualize.plot_pck_curves(thresholds, curves, str(path), "PCKh on synthetic")
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert image.size == (600, 450)
  with pytest.raises(ValueError):
    visualize.plot_pck_curves(thresholds, {"Head": np.ones(3)}, str(path), "bad")
