"""Tests for jaxpose.prediction_files: formats, layouts, refusals, ground truth, submission."""

import json

import h5py
import numpy as np
import pytest
import scipy.io

import helpers
from jaxpose import metrics
from jaxpose import prediction_files as pf
from jaxpose import skeletons


DATA = helpers.shared_data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="shared/data reference files not found")

N, K = 5, 16


@pytest.fixture(name="preds")
def _preds():
  return np.random.default_rng(0).uniform(1, 500, (N, K, 2))


def _write_matlab_73(path, arrays: dict):
  """An HDF5 file laid out like MATLAB's `save -v7.3` (header block, axes reversed)."""
  with h5py.File(path, "w", userblock_size=512) as f:
    for key, value in arrays.items():
      f.create_dataset(key, data=np.asarray(value).T)
      f[key].attrs["MATLAB_class"] = np.bytes_("double")
  with open(path, "r+b") as f:
    f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")


# ---------------------------------------------------------------------------------------------
# Formats and layouts.

LAYOUTS = {
    "N x K x 2": lambda p: p,
    "K x 2 x N": lambda p: p.transpose(1, 2, 0),
    "2 x K x N": lambda p: p.transpose(2, 1, 0),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("key", pf.PREDICTION_KEYS)
def test_mat_every_key_and_layout(tmp_path, preds, layout, key):
  path = tmp_path / "p.mat"
  scipy.io.savemat(path, {key: LAYOUTS[layout](preds), "other": np.zeros(3)})
  out, description = pf.load_predictions(path, N, K)
  np.testing.assert_array_equal(out, preds)
  assert out.dtype == np.float64
  assert repr(key) in description and layout in description


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_is_found_without_hints(tmp_path, preds, layout):
  path = tmp_path / "p.npy"
  np.save(path, LAYOUTS[layout](preds))
  out, description = pf.load_predictions(path)
  np.testing.assert_array_equal(out, preds)
  assert layout in description


def test_score_channel_is_dropped(tmp_path, preds):
  scores = np.random.default_rng(1).random((N, K, 1))
  with_scores = np.concatenate([preds, scores], -1)  # N x K x 3.
  path = tmp_path / "p.npz"
  np.savez(path, preds=with_scores.transpose(2, 1, 0))  # 3 x K x N.
  out, description = pf.load_predictions(path, N, K)
  np.testing.assert_array_equal(out, preds)
  assert "score channel dropped" in description and "3 x K x N" in description


def test_matlab_73(tmp_path, preds):
  path = tmp_path / "p.mat"
  # MATLAB holds pos_pred_src as 16 x 2 x N; v7.3 stores it reversed on disk.
  _write_matlab_73(path, {"pos_pred_src": preds.transpose(1, 2, 0)})
  assert h5py.File(path, "r")["pos_pred_src"].shape == (N, 2, K)
  out, description = pf.load_predictions(path, N, K)
  np.testing.assert_array_equal(out, preds)
  assert "v7.3" in description and "K x 2 x N" in description


def test_h5_as_stored(tmp_path, preds):
  path = tmp_path / "preds.h5"
  with h5py.File(path, "w") as f:
    f["preds"] = preds  # pose-hg-train writes N x K x 2.
    f["scores"] = np.zeros((N, K))
  out, _ = pf.load_predictions(path, N, K)
  np.testing.assert_array_equal(out, preds)


def test_npz_and_json(tmp_path, preds):
  np.savez(tmp_path / "p.npz", prediction_all=preds, names=np.arange(N))
  np.testing.assert_array_equal(pf.load_predictions(tmp_path / "p.npz", N, K)[0], preds)
  (tmp_path / "list.json").write_text(json.dumps(preds.tolist()))
  out, description = pf.load_predictions(tmp_path / "list.json", N, K)
  np.testing.assert_array_equal(out, preds)
  assert "array" in description
  (tmp_path / "obj.json").write_text(json.dumps({"pred": preds.transpose(1, 2, 0).tolist(),
                                                 "note": "x"}))
  np.testing.assert_array_equal(pf.load_predictions(tmp_path / "obj.json", N, K)[0], preds)


# ---------------------------------------------------------------------------------------------
# Refusals.


def test_refuses_ambiguous_layout(tmp_path):
  path = tmp_path / "p.npy"
  np.save(path, np.zeros((3, 16, 3)))  # N x K x 3 and 3 x K x N with N=3, K=16.
  with pytest.raises(ValueError, match=r"ambiguous.*\(3, 16, 3\).*N=3, K=16"):
    pf.load_predictions(path, 3, 16)
  np.save(path, np.zeros((2, 2, 2)))
  with pytest.raises(ValueError, match=r"ambiguous.*N x K x 2 / K x 2 x N / 2 x K x N"):
    pf.load_predictions(path)
  # (2, 16, 2) stays ambiguous even with both hints (N x K x 2 or 2 x K x N, N=2).
  np.save(path, np.zeros((2, 16, 2)))
  with pytest.raises(ValueError, match="ambiguous"):
    pf.load_predictions(path, 2, 16)
  # Hints resolve what they can: (16, 2, 2) is N=16 x K=2 x 2 or K=16 x 2 x N=2.
  np.save(path, np.arange(64.0).reshape(16, 2, 2))
  with pytest.raises(ValueError, match="ambiguous"):
    pf.load_predictions(path)
  out, description = pf.load_predictions(path, num_joints=16)
  assert out.shape == (2, 16, 2) and "K x 2 x N" in description


def test_refuses_wrong_number_of_people(tmp_path, preds):
  path = tmp_path / "p.mat"
  scipy.io.savemat(path, {"preds": preds.transpose(1, 2, 0)})
  with pytest.raises(ValueError, match=r"'preds'.*\(16, 2, 5\).*fits none.*N=2958, K=16"):
    pf.load_predictions(path, 2958, 16)


def test_refuses_wrong_number_of_joints(tmp_path, preds):
  path = tmp_path / "p.npy"
  np.save(path, preds)
  with pytest.raises(ValueError, match=r"\(5, 16, 2\).*fits none.*N=5, K=14"):
    pf.load_predictions(path, 5, 14)


def test_refuses_missing_or_duplicate_keys(tmp_path, preds):
  path = tmp_path / "p.mat"
  scipy.io.savemat(path, {"joints": preds, "scores": np.zeros(2)})
  with pytest.raises(ValueError, match=r"expected one of the keys.*found keys \['joints', "
                                       r"'scores'\]"):
    pf.load_predictions(path, N, K)
  np.savez(tmp_path / "two.npz", preds=preds, pred=preds)
  with pytest.raises(ValueError, match=r"several prediction keys \['preds', 'pred'\]"):
    pf.load_predictions(tmp_path / "two.npz")


def test_refuses_bad_arrays_and_types(tmp_path):
  np.save(tmp_path / "flat.npy", np.zeros((5, 32)))
  with pytest.raises(ValueError, match=r"shape \(5, 32\).*3-D"):
    pf.load_predictions(tmp_path / "flat.npy", 5, 16)
  (tmp_path / "ragged.json").write_text(json.dumps({"preds": [[1, 2], [3]]}))
  with pytest.raises(ValueError, match="not a numeric array"):
    pf.load_predictions(tmp_path / "ragged.json")
  (tmp_path / "p.txt").write_text("1 2")
  with pytest.raises(ValueError, match="unsupported"):
    pf.load_predictions(tmp_path / "p.txt")


# ---------------------------------------------------------------------------------------------
# Ground truth and whole-file evaluation on the official files.


@needs_data
def test_mpii_ground_truth_is_zero_based():
  gt = pf.load_ground_truth("mpii_val", DATA / "mpii")
  m = scipy.io.loadmat(DATA / "mpii" / "detections_our_format.mat")
  assert gt.joints.shape == (2958, 16, 2) and gt.skeleton is skeletons.MPII
  np.testing.assert_allclose(gt.joints, m["pos_gt_src"].transpose(2, 0, 1) - 1)
  assert gt.visible.sum() == (m["jnt_missing"] == 0).sum()
  np.testing.assert_allclose(gt.head_boxes[0], np.array([914, 79, 1031, 237]) - 1, atol=1e-4)
  np.testing.assert_allclose(gt.norm, metrics.mpii_head_size(gt.head_boxes))


@needs_data
def test_evaluate_mpii_tompson():
  result = pf.evaluate_file(DATA / "mpii" / "detections_our_format.mat", "mpii_val",
                            DATA / "mpii" / "detections_our_format.mat")
  expected = {"Head": 96.66, "Shoulder": 92.71, "Elbow": 83.36, "Wrist": 76.74, "Hip": 81.93,
              "Knee": 73.36, "Ankle": 65.45, "Total": 82.34, "AUC": 55.78}
  table = result.tables["PCKh@0.5"]
  for column, value in expected.items():
    assert table[column] == pytest.approx(value, abs=0.005), column
  assert result.table is table
  assert {"UBody", "PCKh@0.1"} <= set(table) and table["PCKh@0.1"] < table["Total"]
  assert "'pos_pred_src'" in result.description and "K x 2 x N" in result.description
  assert "82.34" in result.text and "55.78" in result.text and "PDJ@0.20" in result.text
  assert result.num_nonfinite == 0
  np.testing.assert_allclose(result.pdj["Total"][50], table["Total"])
  # Another convention changes the table, and says so.
  mm = pf.evaluate_file(DATA / "mpii" / "detections_our_format.mat", "mpii_val", DATA / "mpii",
                        convention="mmpose")
  assert mm.convention == "mmpose" and mm.table["Head"] != table["Head"]


@needs_data
def test_zero_based_prediction_files(tmp_path):
  m = scipy.io.loadmat(DATA / "mpii" / "detections_our_format.mat")
  zero_based = pf.from_matlab_pixels(m["pos_pred_src"].transpose(2, 0, 1))
  zero_based[0, 0] = np.nan
  np.save(tmp_path / "preds.npy", zero_based)
  result = pf.evaluate_file(tmp_path / "preds.npy", "mpii_val", DATA / "mpii",
                            preds_one_based=False)
  assert result.num_nonfinite == 1 and "NaN/inf" in result.text
  assert result.table["Ankle"] < 65.45
  assert result.table["Head"] == pytest.approx(96.66, abs=0.005)


@needs_data
def test_evaluate_lsp_yang():
  result = pf.evaluate_file(DATA / "lsp" / "yang_cvpr16_pred_keypoints_lsp_pc.mat", "lsp_test",
                            DATA / "lsp" / "joints.mat")
  expected = {"Head": 90.60, "Shoulder": 78.05, "Elbow": 73.85, "Wrist": 68.75, "Hip": 74.75,
              "Knee": 69.95, "Ankle": 58.95, "Total": 73.56}
  for column, value in expected.items():
    assert result.tables["PCK@0.2"][column] == pytest.approx(value, abs=0.005), column
  pcp = result.tables["PCP@0.5"]
  assert set(pcp) == set(metrics.PCP_COLUMNS) | {"Total"}
  assert all(0 < v < 100 for v in pcp.values())
  assert "strict PCP@0.5" in result.text
  with pytest.raises(ValueError, match="official rules only"):
    pf.evaluate_file(DATA / "lsp" / "yang_cvpr16_pred_keypoints_lsp_pc.mat", "lsp_test",
                     DATA / "lsp", convention="pytorch-pose")


@needs_data
def test_lsp_ground_truth():
  gt = pf.load_ground_truth("lsp_test", DATA / "lsp" / "joints.mat")
  raw = scipy.io.loadmat(DATA / "lsp" / "joints.mat")["joints"]
  assert gt.joints.shape == (1000, 14, 2) and gt.visible.all()
  np.testing.assert_allclose(gt.joints[0], raw[:2, :, 1000].T - 1)
  assert gt.occluded.sum() == (raw[2, :, 1000:] == 1).sum() == 1054


@needs_data
@pytest.mark.parametrize("gt_file", ["examples.mat", "flic-joints-test-oc.mat"])
def test_evaluate_flic_yang(gt_file):
  result = pf.evaluate_file(DATA / "flic" / "yang_cvpr16_pred_keypoints_flic_oc.mat",
                            "flic_test", DATA / "flic" / gt_file)
  assert result.table["Elbow"] == pytest.approx(96.75, abs=0.005)
  assert result.table["Wrist"] == pytest.approx(94.24, abs=0.005)


@needs_data
def test_flic_files_in_the_cpm_releases_nine_joints_are_recognised(tmp_path):
  """Yang's FLIC predictions reordered to the 9 joints of the released CPM FLIC model (its
  order, no neck) score the same elbows and wrists."""
  pred = scipy.io.loadmat(DATA / "flic" / "yang_cvpr16_pred_keypoints_flic_oc.mat")["pred"]
  order = skeletons.joint_subset(skeletons.FLIC9, skeletons.FLIC)
  path = tmp_path / "cpm_flic_9.mat"
  scipy.io.savemat(path, {"pred": pred[:, order, :]})
  result = pf.evaluate_file(path, "flic_test", DATA / "flic" / "examples.mat")
  assert "9 joints of the released CPM FLIC model" in result.text
  assert result.table["Elbow"] == pytest.approx(96.75, abs=0.005)
  assert result.table["Wrist"] == pytest.approx(94.24, abs=0.005)
  assert "Head" in result.table and len(order) == 9
  scipy.io.savemat(path, {"pred": pred[:, :8, :]})  # 8 joints: still refused, as before.
  with pytest.raises(ValueError, match="K=10"):
    pf.evaluate_file(path, "flic_test", DATA / "flic" / "examples.mat")


@needs_data
def test_flic_ground_truth_matches_observer_centric_file():
  gt = pf.load_ground_truth("flic_test", DATA / "flic")
  oc = scipy.io.loadmat(DATA / "flic" / "flic-joints-test-oc.mat")["joints"].transpose(2, 1, 0)
  assert gt.joints.shape == (1016, 10, 2) and gt.visible.all()
  np.testing.assert_allclose(gt.joints, oc - 1, atol=1e-4)
  assert "48 back-facing" in gt.description


def test_evaluate_predictions_reports_the_headline_table():
  rng = np.random.default_rng(3)
  joints = rng.uniform(0, 100, (8, 14, 2))
  gt = pf.GroundTruth(dataset="lsp_test", skeleton=skeletons.LSP, joints=joints,
                      visible=np.ones((8, 14), bool),
                      norm=metrics.torso_size(joints, skeletons.LSP), threshold=0.2,
                      description="toy")
  preds = joints + rng.normal(0, 4, joints.shape)
  result = pf.evaluate_predictions(preds, gt)
  assert list(result.tables) == ["PCK@0.2", "PCP@0.5"]
  assert result.table == metrics.headline_table(preds, joints, gt.visible, gt.norm,
                                                skeletons.LSP)
  header = result.text.split("PCK@0.2 (official)\n", 1)[1].splitlines()[0]
  assert header.split() == list(metrics.headline_columns(skeletons.LSP))


def test_unknown_dataset():
  with pytest.raises(ValueError, match="mpii_val"):
    pf.load_ground_truth("coco_val", "x.mat")


# ---------------------------------------------------------------------------------------------
# MPII submission files.


def test_mpii_submission_round_trip(tmp_path):
  rng = np.random.default_rng(3)
  preds = rng.uniform(0, 1000, (4, 16, 2))
  preds[2, 5] = np.nan  # Left out of the file.
  images, rects = [1, 1, 3, 4], [1, 3, 2, 1]
  names = ["a.jpg", "a.jpg", "c.jpg", "d.jpg"]
  path = tmp_path / "pred_keypoints_mpii.mat"
  pf.write_mpii_submission(path, preds, images, rects, image_names=names, num_images=5)

  # Read it back with plain scipy, walking the MATLAB structs.
  annolist = scipy.io.loadmat(path)["pred"]
  assert annolist.shape == (1, 5)
  assert str(annolist[0, 2]["image"][0, 0]["name"][0]) == "c.jpg"
  assert annolist[0, 1]["annorect"].size == 0  # Image 2 has nobody.
  rect = annolist[0, 0]["annorect"][0, 2]  # Image 1, rect 3.
  points = rect["annopoints"][0, 0]["point"][0]
  got = {int(p["id"][0, 0]): (p["x"][0, 0], p["y"][0, 0]) for p in points}
  assert sorted(got) == list(range(16))
  np.testing.assert_allclose([got[j] for j in range(16)], preds[1] + 1)  # 1-based.
  assert annolist[0, 0]["annorect"][0, 1]["annopoints"].size == 0  # Rect 2: no prediction.
  ids = [int(p["id"][0, 0]) for p in annolist[0, 2]["annorect"][0, 1]["annopoints"][0, 0][
      "point"][0]]
  assert 5 not in ids and len(ids) == 15

  out, out_images, out_rects = pf.read_mpii_submission(path)
  np.testing.assert_allclose(out, preds, equal_nan=True)
  assert out_images.tolist() == images and out_rects.tolist() == rects


def test_mpii_submission_refusals(tmp_path):
  preds = np.zeros((2, 16, 2))
  with pytest.raises(ValueError, match="same"):
    pf.write_mpii_submission(tmp_path / "p.mat", preds, [1, 1], [2, 2])
  with pytest.raises(ValueError, match="1-based"):
    pf.write_mpii_submission(tmp_path / "p.mat", preds, [0, 1], [1, 1])
  with pytest.raises(ValueError, match=r"\[N, 16, 2\]"):
    pf.write_mpii_submission(tmp_path / "p.mat", np.zeros((2, 14, 2)), [1, 2], [1, 1])
  with pytest.raises(ValueError, match="2 people"):
    pf.write_mpii_submission(tmp_path / "p.mat", preds, [1], [1])


# ---------------------------------------------------------------------------------------------
# Damaged files and the wrong ground-truth file: one-line errors naming the file.


def _write_format(path, preds):
  """`preds` in the format `path`'s extension names (v7.3 for "73.mat")."""
  name = path.name
  if name.endswith("73.mat"):
    _write_matlab_73(path, {"preds": preds})
  elif name.endswith(".mat"):
    scipy.io.savemat(path, {"preds": preds}, do_compression=name.startswith("z"))
  elif name.endswith(".h5"):
    with h5py.File(path, "w") as f:
      f["preds"] = preds
  elif name.endswith(".npy"):
    np.save(path, preds)
  elif name.endswith(".npz"):
    np.savez(path, preds=preds)
  else:
    path.write_text(json.dumps(preds.tolist()))


DAMAGEABLE = ("p.mat", "zp.mat", "p73.mat", "p.h5", "p.npy", "p.npz", "p.json")


@pytest.mark.parametrize("name", DAMAGEABLE)
def test_truncated_files_are_named(tmp_path, preds, name):
  path = tmp_path / name
  _write_format(path, preds)
  data = path.read_bytes()
  assert pf.load_predictions(path, N, K)[0].shape == (N, K, 2)
  for cut in np.linspace(0, len(data) - 1, 12).astype(int):
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError) as e:
      pf.load_predictions(path, N, K)
    message = str(e.value)
    assert str(path) in message and "\n" not in message
    assert ("empty (0 bytes)" in message) == (cut == 0)


@pytest.mark.parametrize("name", DAMAGEABLE)
def test_overwritten_bytes_never_escape_as_library_errors(tmp_path, preds, name):
  """A block of the file zeroed (a bad sector): the values may survive, or a one-line
  ValueError names the file; never an OSError, EOFError, BadZipFile, zlib.error, ..."""
  path = tmp_path / name
  _write_format(path, preds)
  data = path.read_bytes()
  for start in np.linspace(0, len(data) - 64, 10).astype(int):
    path.write_bytes(data[:start] + bytes(64) + data[start + 64:])
    try:
      out, _ = pf.load_predictions(path, N, K)
    except ValueError as e:
      assert str(path) in str(e) and "\n" not in str(e)
    else:
      assert out.shape == (N, K, 2)


def test_corrupt_h5_names_the_library_error(tmp_path, preds):
  path = tmp_path / "p.h5"
  _write_format(path, preds)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"p\.h5: cannot read this HDF5 file \(OSError: .*"
                                       r"truncated"):
    pf.load_predictions(path)


def test_empty_files_and_arrays(tmp_path):
  for name in ("p.npy", "p.mat", "p.h5", "p.npz", "p.json"):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{name}: the prediction file is empty \(0 bytes\)"):
      pf.load_predictions(tmp_path / name)
  np.save(tmp_path / "none.npy", np.zeros((0, K, 2)))
  with pytest.raises(ValueError, match=r"none\.npy \(npy\) array is empty \(shape \(0, 16, 2\)"):
    pf.load_predictions(tmp_path / "none.npy")
  scipy.io.savemat(tmp_path / "none.mat", {"pred": np.zeros((0, 0))})
  with pytest.raises(ValueError, match=r"none\.mat \(mat\) key 'pred' is empty"):
    pf.load_predictions(tmp_path / "none.mat")


def test_missing_file_or_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nope\.mat: no such prediction file"):
    pf.load_predictions(tmp_path / "nope.mat")
  (tmp_path / "dir.npy").mkdir()
  with pytest.raises(ValueError, match=r"dir\.npy: expected a prediction file"):
    pf.load_predictions(tmp_path / "dir.npy")


def _lsp_joints(path, n=2000):
  scipy.io.savemat(path, {"joints": np.random.default_rng(0).uniform(1, 300, (3, 14, n))})
  return path


def _mpii_gt(path, n=6, **replace):
  rng = np.random.default_rng(0)
  m = {"pos_gt_src": rng.uniform(1, 300, (16, 2, n)), "jnt_missing": np.zeros((16, n)),
       "headboxes_src": np.stack([np.full((2, n), 10.0), np.full((2, n), 40.0)], 1),
       "pos_pred_src": rng.uniform(1, 300, (16, 2, n))}
  m.update(replace)
  scipy.io.savemat(path, {k: v for k, v in m.items() if v is not None})
  return path


def test_wrong_ground_truth_file_says_what_it_looks_like(tmp_path):
  lsp = _lsp_joints(tmp_path / "joints.mat")
  with pytest.raises(ValueError) as e:
    pf.load_ground_truth("mpii_val", lsp)
  message = str(e.value)
  assert message.startswith(f"{lsp} is not the mpii_val ground truth: no pos_gt_src")
  assert "it holds joints 3 x 14 x 2000" in message
  assert "looks like LSP's joints.mat (--dataset lsp_test)" in message
  assert "pos_gt_src 16 x 2 x N" in message and "\n" not in message
  mpii = _mpii_gt(tmp_path / "detections_our_format.mat")
  assert pf.load_ground_truth("mpii_val", mpii).num_people == 6
  with pytest.raises(ValueError, match=r"not the lsp_test ground truth: no joints; .*looks like "
                                       r"the MPII validation ground truth"):
    pf.load_ground_truth("lsp_test", mpii)
  with pytest.raises(ValueError, match=r"not the flic_test ground truth.*looks like LSP"):
    pf.load_ground_truth("flic_test", lsp)
  scipy.io.savemat(tmp_path / "yang.mat", {"pred": np.zeros((2, 14, 1000))})
  with pytest.raises(ValueError, match=r"pred 2 x 14 x 1000\. It looks like a prediction file "
                                       r"\(key 'pred'\), not ground truth: pass it to --preds"):
    pf.load_ground_truth("lsp_test", tmp_path / "yang.mat")
  with h5py.File(tmp_path / "valid.h5", "w") as f:
    f["part"] = np.zeros((7, 16, 2))
    f["normalize"] = np.ones(7)
  with pytest.raises(ValueError, match=r"valid\.h5 is not the mpii_val ground truth: it is an "
                                       r"HDF5 file; it holds normalize 7, part 7 x 16 x 2\. It "
                                       r"looks like hourglass-style annot/valid\.h5 .*\(MPII\)"):
    pf.load_ground_truth("mpii_val", tmp_path / "valid.h5")


def test_malformed_ground_truth_names_the_variable(tmp_path):
  bad = _mpii_gt(tmp_path / "a.mat", jnt_missing=np.zeros((14, 6)))
  with pytest.raises(ValueError, match=r"a\.mat is not the mpii_val ground truth: jnt_missing "
                                       r"is 14 x 6, expected 16 x N"):
    pf.load_ground_truth("mpii_val", bad)
  bad = _mpii_gt(tmp_path / "b.mat", headboxes_src=np.zeros((2, 2, 5)))
  with pytest.raises(ValueError, match=r"numbers of people differ: \{'pos_gt_src': 6, "
                                       r"'jnt_missing': 6, 'headboxes_src': 5\}"):
    pf.load_ground_truth("mpii_val", bad)
  with pytest.raises(ValueError, match=r"joints is 3 x 14 x 1999, expected 3 x 14 x 2000"):
    pf.load_ground_truth("lsp_test", _lsp_joints(tmp_path / "short.mat", 1999))
  examples = np.zeros((1, 3), dtype=[("coords", object), ("filepath", object)])
  scipy.io.savemat(tmp_path / "examples.mat", {"examples": examples})
  with pytest.raises(ValueError, match=r"examples has fields \['coords', 'filepath'\], not "
                                       r"coords and istest"):
    pf.load_ground_truth("flic_test", tmp_path / "examples.mat")


def test_damaged_or_missing_ground_truth_is_named(tmp_path):
  lsp = _lsp_joints(tmp_path / "joints.mat")
  data = lsp.read_bytes()
  lsp.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"joints\.mat: cannot read this \.mat file .*truncated"):
    pf.load_ground_truth("lsp_test", lsp)
  lsp.write_bytes(b"")
  with pytest.raises(ValueError, match=r"joints\.mat: the lsp_test ground-truth file is empty"):
    pf.load_ground_truth("lsp_test", lsp)
  with pytest.raises(FileNotFoundError, match=r"detections_our_format\.mat: no such mpii_val "
                                              r"ground-truth file"):
    pf.load_ground_truth("mpii_val", tmp_path)
