"""Tests for jaxpose.annotation_io: pixel conventions and the MPII ground-truth reader."""

import numpy as np
import pytest
import scipy.io

import helpers
from jaxpose import annotation_io
from jaxpose import metrics
from jaxpose import prediction_files

DATA = helpers.shared_data_dir()


def test_matlab_pixels_round_trip():
  xy = np.array([[1.0, 1.0], [10.5, 3.0]])
  np.testing.assert_array_equal(annotation_io.from_matlab_pixels(xy), xy - 1.0)
  np.testing.assert_array_equal(
      annotation_io.to_matlab_pixels(annotation_io.from_matlab_pixels(xy)), xy)
  # The readers and the metrics use these very functions.
  assert prediction_files.from_matlab_pixels is annotation_io.from_matlab_pixels
  assert metrics.torso_size is annotation_io.torso_size


def test_read_mpii_ground_truth(tmp_path):
  n = 3
  rng = np.random.default_rng(0)
  pos = rng.uniform(1, 100, (16, 2, n))
  missing = np.zeros((16, n))
  missing[4, 1] = 1
  boxes = rng.uniform(1, 100, (2, 2, n))
  path = tmp_path / "gt.mat"
  scipy.io.savemat(path, {"pos_gt_src": pos, "jnt_missing": missing, "headboxes_src": boxes})
  joints, visible, head_boxes = annotation_io.read_mpii_ground_truth(str(path))
  np.testing.assert_allclose(joints[1], pos[:, :, 1] - 1)
  assert visible.shape == (n, 16) and not visible[1, 4] and visible.sum() == 16 * n - 1
  np.testing.assert_allclose(head_boxes[2], boxes[:, :, 2].ravel() - 1)
  scipy.io.savemat(path, {"pos_gt_src": pos})
  with pytest.raises(ValueError, match=r"gt\.mat.*'jnt_missing'"):
    annotation_io.read_mpii_ground_truth(str(path))


@pytest.mark.skipif(DATA is None, reason="shared/data reference files not found")
def test_mpii_ground_truth_matches_the_evaluator():
  path = DATA / "mpii" / "detections_our_format.mat"
  joints, visible, head_boxes = annotation_io.read_mpii_ground_truth(str(path))
  gt = prediction_files.load_ground_truth("mpii_val", path)
  np.testing.assert_array_equal(joints, gt.joints)
  np.testing.assert_array_equal(visible, gt.visible)
  np.testing.assert_array_equal(head_boxes, gt.head_boxes)
  np.testing.assert_array_equal(annotation_io.mpii_head_size(head_boxes), gt.norm)
