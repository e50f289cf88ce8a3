"""FLIC builder: the real examples.mat, generated 720x480 JPEGs, the TFDS build path."""

import os
import shutil

import numpy as np
import pytest
import scipy.io

from jaxpose import prediction_files
from jaxpose import skeletons
from jaxpose.data import builder_lib
from jaxpose.data import flic

FLIC = skeletons.FLIC


@pytest.fixture(name="annotations", scope="module")
def _annotations(shared):
  return flic.read_examples(os.fspath(shared / "flic" / "examples.mat"))


def _subset(annotations) -> tuple[str, ...]:
  """Three train images and three test images, one of them a back-facing person's."""
  people = annotations.people.images
  train = np.flatnonzero(annotations.is_train)[:3]
  test = np.flatnonzero(annotations.is_test)
  back = test[annotations.swapped[test]][0]
  return tuple(people[i] for i in list(train) + list(test[:2]) + [back])


@pytest.fixture(name="manual")
def _manual(tmp_path, shared, annotations, make_jpeg):
  manual = tmp_path / "manual"
  manual.mkdir()
  shutil.copy(shared / "flic" / "examples.mat", manual / "examples.mat")
  for i, name in enumerate(annotations.people.images):
    if name in _subset(annotations):
      height, width = annotations.image_sizes[i]
      make_jpeg(os.fspath(manual / "images" / name), (int(height), int(width)), seed=i)
  return manual


def _builder(tmp_path, manual, annotations):
  config = builder_lib.ManualConfig(name="subset", images=_subset(annotations))
  return flic.FlicPose(config=config, data_dir=os.fspath(tmp_path / "tfds"),
                       manual_dir=os.fspath(manual))


def test_counts_and_test_split_match_the_evaluator(shared, annotations):
  splits = flic.read_people(os.fspath(shared / "flic"))
  assert {s: len(p) for s, (p, _) in splits.items()} == flic.NUM_PEOPLE == {"train": 3987,
                                                                           "test": 1016}
  test, sizes = splits["test"]
  assert (sizes == [480, 720]).all()
  # The test split is exactly what the evaluator scores (examples.mat read its way) and
  # eval_pose's observer-centric test file.
  gt = prediction_files.load_ground_truth("flic_test", shared / "flic" / "examples.mat")
  np.testing.assert_allclose(test.joints, gt.joints, atol=1e-4)
  np.testing.assert_allclose(test.norm_size, gt.norm, rtol=1e-5)
  oc = scipy.io.loadmat(shared / "flic" / "flic-joints-test-oc.mat")["joints"]
  np.testing.assert_allclose(test.joints, oc.transpose(2, 1, 0) - 1.0, atol=1e-4)
  assert test.visible.all() and not test.occluded.any() and not test.head_box.any()
  # 48 back-facing test people and 199 train people were swapped to observer-centric.
  assert annotations.swapped[annotations.is_test].sum() == 48
  assert annotations.swapped[annotations.is_train].sum() == 199


def test_joints_are_the_coords_slots_minus_one(shared, annotations):
  examples = scipy.io.loadmat(shared / "flic" / "examples.mat")["examples"].ravel()
  for i in (0, 1234, 4999):
    coords = np.asarray(examples[i]["coords"], np.float64).T  # [29, 2], 1-based.
    joints = annotations.people.joints[i]
    if annotations.swapped[i]:
      joints = joints[FLIC.flip_permutation]
    for name, slot in prediction_files.FLIC_SLOTS.items():
      np.testing.assert_allclose(joints[FLIC.index(name)], coords[slot] - 1.0, atol=1e-4)
    np.testing.assert_allclose(joints[FLIC.index("neck")], coords[[0, 3]].mean(0) - 1.0,
                               atol=1e-4)


def test_centre_scale_and_flip_pairs(annotations, check_flip_pairs):
  people = annotations.people
  lo, hi = people.joints.min(1), people.joints.max(1)
  np.testing.assert_allclose(people.center, (lo + hi) / 2, atol=1e-3)
  np.testing.assert_allclose(people.scale, 1.6 * (hi - lo).max(-1) / 200, rtol=1e-5)
  # Observer-centric: every person has the right shoulder left of the left one; mirroring the
  # image and swapping the flip pairs keeps that (and the limbs), so flipped training data
  # stays observer-centric.
  r, l = FLIC.index("r_shoulder"), FLIC.index("l_shoulder")
  assert (people.joints[:, r, 0] <= people.joints[:, l, 0]).all()
  mirrored = check_flip_pairs(people.joints, 720.0, FLIC)
  assert (mirrored[:, r, 0] <= mirrored[:, l, 0]).all()


def test_build_round_trip(tmp_path, manual, annotations, no_stats, read_split,
                          check_features):
  builder = _builder(tmp_path, manual, annotations)
  check_features(builder, FLIC.num_joints)
  builder.download_and_prepare(download_config=no_stats(manual))
  subset = set(_subset(annotations))
  people = annotations.people
  for split, flag in (("train", annotations.is_train), ("test", annotations.is_test)):
    index = [i for i in np.flatnonzero(flag) if people.images[i] in subset]
    examples = read_split(builder, split)
    assert len(examples) == len(index) == builder.info.splits[split].num_examples
    for j, (i, example) in enumerate(zip(index, examples)):
      assert example["id"] == j
      assert example["image"].shape == (480, 720, 3)
      for key in builder_lib.ARRAY_FIELDS:
        np.testing.assert_allclose(example[key], getattr(people, key)[i], rtol=1e-6,
                                   err_msg=key)


def test_wrong_image_size_is_reported(tmp_path, manual, annotations, no_stats, make_jpeg):
  name = _subset(annotations)[3]
  make_jpeg(os.fspath(manual / "images" / name), (360, 540))
  builder = _builder(tmp_path, manual, annotations)
  with pytest.raises(builder_lib.AnnotationError, match=f"{name} is 540x360.*says 720x480"):
    builder.download_and_prepare(download_config=no_stats(manual))
  assert not builder.is_prepared()


def test_missing_files_say_what_to_download(tmp_path, shared, annotations, no_stats):
  manual = tmp_path / "manual"
  manual.mkdir()
  builder = _builder(tmp_path, manual, annotations)
  with pytest.raises(FileNotFoundError, match="examples.mat.*FLIC.zip.*bensapp"):
    builder.download_and_prepare(download_config=no_stats(manual))
  shutil.copy(shared / "flic" / "examples.mat", manual / "examples.mat")
  with pytest.raises(FileNotFoundError, match="'images'.*FLIC.zip"):
    builder.download_and_prepare(download_config=no_stats(manual))

