"""LSP builder: the real joints.mat files, generated JPEGs, the TFDS build path, failures."""

import os
import shutil

import numpy as np
import pytest
import scipy.io

from jaxpose import prediction_files
from jaxpose import skeletons
from jaxpose.data import builder_lib
from jaxpose.data import lsp
from jaxpose.data import prepare

LSP = skeletons.LSP
TRAIN_IMAGES = ("images/im0001.jpg", "images/im0002.jpg", "images/im0999.jpg")
TEST_IMAGES = ("images/im1001.jpg", "images/im1002.jpg", "images/im2000.jpg")
SUBSET = TRAIN_IMAGES + TEST_IMAGES


@pytest.fixture(name="manual")
def _manual(tmp_path, shared, jpegs_for):
  """A manual folder: the real joints.mat files and JPEGs of SUBSET at their implied sizes."""
  manual = tmp_path / "manual"
  manual.mkdir()
  shutil.copy(shared / "lsp" / "joints.mat", manual / "joints.mat")
  shutil.copy(shared / "lsp" / "joints_observer_centric.mat", manual / "lsp-joints-OC.mat")
  people = lsp.read_people(os.fspath(manual), images=SUBSET)
  for split in ("train", "test"):
    jpegs_for(people[split], manual, typical=(160, 120))
  return manual


def _subset(**kwargs) -> lsp.LspConfig:
  """A config restricted to SUBSET (the real configs build all 2000 images)."""
  name = "subset" + "".join(f"_{k}" for k in sorted(kwargs))
  return lsp.LspConfig(name=name, images=SUBSET, **kwargs)


def _builder(tmp_path, manual, **kwargs):
  return lsp.LspPose(config=_subset(**kwargs), data_dir=os.fspath(tmp_path / "tfds"),
                     manual_dir=os.fspath(manual))


def _build(tmp_path, manual, no_stats, **kwargs):
  builder = _builder(tmp_path, manual, **kwargs)
  builder.download_and_prepare(download_config=no_stats(manual))
  return builder


def test_counts_and_test_split_match_the_evaluator(shared):
  people = lsp.read_people(os.fspath(shared / "lsp"))
  assert {split: len(p) for split, p in people.items()} == lsp.NUM_PEOPLE == {"train": 1000,
                                                                              "test": 1000}
  assert people["train"].images[0] == "images/im0001.jpg"
  assert people["test"].images[0] == "images/im1001.jpg"
  # The test split is what the evaluator scores against (0-based, same order, same normaliser).
  gt = prediction_files.load_ground_truth("lsp_test", shared / "lsp" / "joints.mat")
  test = people["test"]
  np.testing.assert_allclose(test.joints, gt.joints, atol=1e-4)
  np.testing.assert_array_equal(test.occluded > 0, gt.occluded)
  np.testing.assert_allclose(test.norm_size, gt.norm, rtol=1e-5)
  assert test.visible.all() and not test.head_box.any()
  raw = scipy.io.loadmat(shared / "lsp" / "joints.mat")["joints"]
  np.testing.assert_allclose(people["train"].joints[5], raw[:2, :, 5].T - 1.0, atol=1e-4)


def test_centre_and_scale_come_from_the_joint_box(shared):
  people = lsp.read_people(os.fspath(shared / "lsp"))["train"]
  lo, hi = people.joints.min(1), people.joints.max(1)
  np.testing.assert_allclose(people.center, (lo + hi) / 2, atol=1e-3)
  np.testing.assert_allclose(people.scale, 1.25 * (hi - lo).max(-1) / 200, rtol=1e-5)


def test_observer_centric_labels(shared):
  pc = lsp.read_people(os.fspath(shared / "lsp"))
  oc = lsp.read_people(os.fspath(shared / "lsp"), observer_centric=True)
  assert {split: len(p) for split, p in oc.items()} == lsp.NUM_PEOPLE
  joints_oc = np.concatenate([oc["train"].joints, oc["test"].joints])
  both = np.concatenate([pc["train"].joints, pc["test"].joints])
  differ = np.any(np.abs(both - joints_oc) > 1e-6, axis=(1, 2))
  assert differ.sum() == 756
  # Every difference is a left/right swap of some limbs: the joint sets agree as sets.
  perm = LSP.flip_permutation
  swapped = np.where(np.abs(both - joints_oc).max(-1, keepdims=True) > 1e-6, both[:, perm],
                     both)
  np.testing.assert_allclose(swapped, joints_oc, atol=1e-6)


def test_extended_adds_lspet_to_train(tmp_path, shared):
  manual = tmp_path / "manual"
  manual.mkdir()
  shutil.copy(shared / "lsp" / "joints.mat", manual / "joints.mat")
  rng = np.random.default_rng(0)
  lspet = np.concatenate([rng.uniform(1, 150, (14, 2, lsp.NUM_EXTENDED)),
                          rng.integers(0, 2, (14, 1, lsp.NUM_EXTENDED))], 1)
  lspet[3, :2, 7] = 0  # Not annotated.
  os.makedirs(manual / "lspet")
  scipy.io.savemat(manual / "lspet" / "joints.mat", {"joints": lspet})
  people = lsp.read_people(os.fspath(manual), extended=True)
  assert len(people["train"]) == 11000 and len(people["test"]) == 1000
  extra = people["train"].take(np.arange(1000, 11000))
  assert extra.images[0] == "lspet/images/im00001.jpg"
  np.testing.assert_allclose(extra.joints[0], lspet[:, :2, 0] - 1.0, atol=1e-4)
  np.testing.assert_array_equal(extra.occluded[0], lspet[:, 2, 0] == 0)
  assert extra.visible[7, 3] == 0 and extra.visible[7].sum() == 13
  assert not np.isnan(extra.norm_size[7])  # l-shoulder and r-hip are there.


def test_build_round_trip(tmp_path, manual, no_stats, read_split, check_features):
  builder = _build(tmp_path, manual, no_stats)
  check_features(builder, LSP.num_joints)
  full = lsp.read_people(os.fspath(manual))
  raw = scipy.io.loadmat(manual / "joints.mat")["joints"]  # 1-based, 3 x 14 x 2000
  for split, names in (("train", TRAIN_IMAGES), ("test", TEST_IMAGES)):
    examples = read_split(builder, split)
    assert [int(e["id"]) for e in examples] == list(range(len(names)))
    assert builder.info.splits[split].num_examples == len(names)
    for example, name in zip(examples, names):
      index = int(name[len("images/im"):-len(".jpg")]) - 1
      np.testing.assert_allclose(example["joints"], raw[:2, :, index].T - 1.0, atol=1e-4)
      np.testing.assert_array_equal(example["occluded"], raw[2, :, index])
      assert example["visible"].all()
      person = full[split].images.index(name)
      np.testing.assert_allclose(example["norm_size"], full[split].norm_size[person], rtol=1e-6)
      np.testing.assert_allclose(example["center"], full[split].center[person], rtol=1e-6)
      assert example["image"].shape[2] == 3 and example["image"].dtype == np.uint8


def test_flip_pairs(shared, check_flip_pairs):
  people = lsp.read_people(os.fspath(shared / "lsp"))["test"]
  check_flip_pairs(people.joints, 200.0, LSP)
  # Person-centric LSP: most people face the camera, some do not.
  r, l = LSP.index("r_shoulder"), LSP.index("l_shoulder")
  facing = np.mean(people.joints[:, r, 0] < people.joints[:, l, 0])
  assert 0.5 < facing < 0.95


def test_observer_centric_build(tmp_path, manual, no_stats, read_split):
  builder = _build(tmp_path, manual, no_stats, observer_centric=True)
  oc, _, _ = lsp.read_joints(os.fspath(manual / "lsp-joints-OC.mat"))
  examples = read_split(builder, "test")
  np.testing.assert_allclose(examples[0]["joints"], oc[1000], atol=1e-4)


def test_missing_files_say_what_to_download(tmp_path, no_stats):
  manual = tmp_path / "empty"
  manual.mkdir()
  with pytest.raises(FileNotFoundError) as e:
    _build(tmp_path, manual, no_stats)
  message = str(e.value)
  assert "joints.mat" in message and "lsp_dataset.zip" in message
  assert "sam.johnson.io" in message and os.fspath(manual) in message
  with pytest.raises(FileNotFoundError, match="lsp-joints-OC.mat.*eval_pose"):
    lsp.read_people(os.fspath(manual), observer_centric=True)


def test_corrupt_image_stops_build_and_rebuild_works(tmp_path, manual, no_stats, read_split):
  bad = manual / TEST_IMAGES[1]
  good = bad.read_bytes()
  bad.write_bytes(good[: len(good) // 2])  # Truncated JPEG.
  with pytest.raises(builder_lib.ImageError, match="im1002.jpg"):
    _build(tmp_path, manual, no_stats)
  assert not _builder(tmp_path, manual).is_prepared()
  leftovers = [p for p in (tmp_path / "tfds").rglob("dataset_info.json")]
  assert not leftovers, leftovers
  bad.write_bytes(good)
  builder = _build(tmp_path, manual, no_stats)
  assert builder.is_prepared()
  assert len(read_split(builder, "test")) == len(TEST_IMAGES)


def test_image_too_small_for_its_joints_is_reported(tmp_path, manual, no_stats, make_jpeg):
  make_jpeg(os.fspath(manual / TRAIN_IMAGES[0]), (40, 30))
  with pytest.raises(builder_lib.AnnotationError, match="im0001.jpg.*30x40 image"):
    _build(tmp_path, manual, no_stats)
  assert not _builder(tmp_path, manual).is_prepared()


def test_missing_image_is_an_error_not_a_skip(tmp_path, manual, no_stats):
  os.remove(manual / TEST_IMAGES[2])
  with pytest.raises(builder_lib.ImageError, match="im2000.jpg"):
    _build(tmp_path, manual, no_stats)


def test_command_line_names_the_missing_file(tmp_path):
  with pytest.raises(SystemExit, match="Cannot build lsp: Missing 'joints.mat'.*lsp_dataset.zip"):
    prepare.main(["lsp", "--data_dir", os.fspath(tmp_path)])
  assert builder_lib.default_manual_dir(tmp_path, "lsp") == os.fspath(
      tmp_path / "downloads" / "manual" / "lsp")
