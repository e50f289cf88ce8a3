"""Tests for jaxpose.metrics: published numbers, convention differences and properties."""

import pathlib
import subprocess
import sys

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest
import scipy.io

import helpers
from jaxpose import metrics
from jaxpose import skeletons

MPII = skeletons.MPII
LSP = skeletons.LSP
FLIC = skeletons.FLIC


DATA = helpers.shared_data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="shared/data reference files not found")


def _close(table, expected):
  for column, value in expected.items():
    assert table[column] == pytest.approx(value, abs=0.005 + 1e-9), column


# ---------------------------------------------------------------------------------------------
# Published numbers, straight from the raw files (both in MATLAB's 1-based pixels).


@pytest.fixture(scope="module")
def tompson():
  m = scipy.io.loadmat(DATA / "mpii" / "detections_our_format.mat")
  return dict(pred=m["pos_pred_src"].transpose(2, 0, 1), gt=m["pos_gt_src"].transpose(2, 0, 1),
              visible=m["jnt_missing"].T == 0,
              norm=metrics.mpii_head_size(m["headboxes_src"].transpose(2, 0, 1)))


@needs_data
def test_mpii_tompson_official(tompson):
  args = (tompson["pred"], tompson["gt"], tompson["visible"], tompson["norm"], MPII)
  table = metrics.pck_table(*args)
  _close(table, {"Head": 96.66, "Shoulder": 92.71, "Elbow": 83.36, "Wrist": 76.74,
                 "Hip": 81.93, "Knee": 73.36, "Ankle": 65.45, "Total": 82.34})
  assert metrics.auc(*args) == pytest.approx(55.78, abs=0.005)
  assert set(table) == set(metrics.pck_columns(MPII))


@needs_data
def test_mpii_columns_average_joints_total_pools(tompson):
  """Wrist 76.74 needs mean(left, right); pooling the two gives 76.73."""
  c = metrics.joint_correctness(tompson["pred"], tompson["gt"], tompson["visible"],
                                tompson["norm"], 0.5, scored=MPII.scored_joints)
  wrists = [MPII.index("r_wrist"), MPII.index("l_wrist")]
  pooled = 100 * c.correct[:, wrists].sum() / c.counted[:, wrists].sum()
  assert round(pooled, 2) == 76.73
  scored = list(MPII.scored_joints)
  total = 100 * c.correct[:, scored].sum() / c.counted[:, scored].sum()
  table = metrics.pck_table(tompson["pred"], tompson["gt"], tompson["visible"],
                            tompson["norm"], MPII)
  assert table["Total"] == pytest.approx(total)
  assert c.num_nonfinite == 0


@needs_data
def test_mpii_tompson_conventions(tompson):
  """The pytorch-pose and mmpose formulas, recomputed directly from their definitions."""
  pred, gt, vis, norm = tompson["pred"], tompson["gt"], tompson["visible"], tompson["norm"]
  scored = list(MPII.scored_joints)
  for name, offset in (("pytorch-pose", 0.0), ("mmpose", 1.0)):
    err = np.linalg.norm(pred + offset - gt, axis=-1) / norm[:, None]
    per_joint = 100 * ((err < 0.5) & vis).sum(0) / vis.sum(0)
    table = metrics.pck_table(pred, gt, vis, norm, MPII, convention=name)
    assert table["Head"] == pytest.approx(per_joint[MPII.index("head_top")])
    assert table["Wrist"] == pytest.approx(per_joint[[10, 15]].mean())
    if name == "pytorch-pose":
      assert table["Total"] == pytest.approx(per_joint[scored].mean())
    else:
      pooled = 100 * ((err < 0.5) & vis)[:, scored].sum() / vis[:, scored].sum()
      assert table["Total"] == pytest.approx(pooled)
  assert metrics.pck_table(pred, gt, vis, norm, MPII, convention="pytorch-pose")["Total"] \
      == pytest.approx(81.46, abs=0.005)


@needs_data
def test_lsp_yang():
  gt = scipy.io.loadmat(DATA / "lsp" / "joints.mat")["joints"][:, :, 1000:].transpose(2, 1, 0)
  pred = scipy.io.loadmat(DATA / "lsp" / "yang_cvpr16_pred_keypoints_lsp_pc.mat")["pred"]
  table = metrics.lsp_pck_table(pred.transpose(2, 1, 0), gt[..., :2])
  _close(table, {"Head": 90.60, "Shoulder": 78.05, "Elbow": 73.85, "Wrist": 68.75,
                 "Hip": 74.75, "Knee": 69.95, "Ankle": 58.95, "Total": 73.56})


@needs_data
def test_flic_yang_swaps_back_facing_people():
  examples = scipy.io.loadmat(DATA / "flic" / "examples.mat")["examples"].ravel()
  coords = np.stack([e["coords"].T for e in examples if int(e["istest"].ravel()[0]) == 1])
  slots = [16, None, 3, 4, 5, 9, 0, 1, 2, 6]  # FLIC order; None = neck (mid-shoulders).
  gt = np.stack([coords[:, s] if s is not None else coords[:, [0, 3]].mean(1)
                 for s in slots], axis=1)
  pred = scipy.io.loadmat(DATA / "flic" / "yang_cvpr16_pred_keypoints_flic_oc.mat")["pred"]
  pred = pred.transpose(2, 1, 0)
  assert metrics.observer_centric(gt, FLIC)[2].sum() == 48
  table = metrics.flic_pck_table(pred, gt)
  _close(table, {"Elbow": 96.75, "Wrist": 94.24})
  # Without the swap the numbers are far off: the swap is what makes them come out.
  raw = metrics.pck_table(pred, gt, None, metrics.torso_size(gt, FLIC), FLIC, 0.2)
  assert raw["Elbow"] < 93


# ---------------------------------------------------------------------------------------------
# The differences between conventions, on hand-made cases.


def _one_person(pred, gt=None, norm=1.0, skeleton=MPII, visible=None):
  gt = np.zeros((1, skeleton.num_joints, 2)) if gt is None else gt
  return (np.asarray(pred, float), gt, visible, np.array([norm]), skeleton)


def test_threshold_inclusive_vs_strict():
  pred = np.zeros((1, 16, 2))
  pred[0, :, 0] = 0.5  # Every joint exactly at the threshold.
  args = _one_person(pred)
  assert metrics.pck_table(*args)["Total"] == 100.0
  assert metrics.pck_table(*args, convention="pytorch-pose")["Total"] == 0.0
  c = metrics.joint_correctness(pred, args[1], None, args[3], 0.5, inclusive=False)
  assert not c.correct.any()


def test_mmpose_adds_one_pixel_to_predictions():
  gt = np.full((1, 16, 2), 10.0)
  args = _one_person(gt - 1.0, gt, norm=1.0)  # 0-based predictions vs 1-based GT.
  assert metrics.pck_table(*args, threshold=0.1, convention="mmpose")["Total"] == 100.0
  assert metrics.pck_table(*args, threshold=0.1)["Total"] == 0.0


def test_head_column_and_total_per_convention():
  pred = np.zeros((1, 16, 2))
  pred[0, MPII.index("upper_neck")] = 5.0  # Only the neck is wrong.
  args = _one_person(pred)
  official = metrics.pck_table(*args)
  assert official["Head"] == 50.0
  assert official["Total"] == pytest.approx(100 * 13 / 14)
  torch = metrics.pck_table(*args, convention="pytorch-pose")
  assert torch["Head"] == 100.0  # Head top only.
  assert torch["Total"] == pytest.approx(100 * 13 / 14)


def test_total_pooled_vs_joint_mean():
  # Two people; the r-ankle of person 1 is not annotated and person 0's r-ankle is wrong.
  gt = np.zeros((2, 16, 2))
  pred = gt.copy()
  pred[0, 0] = 9.0
  visible = np.ones((2, 16))
  visible[1, 0] = 0
  args = (pred, gt, visible, np.ones(2), MPII)
  pooled = metrics.pck_table(*args)["Total"]
  mean = metrics.pck_table(*args, convention="pytorch-pose")["Total"]
  assert pooled == pytest.approx(100 * 26 / 27)
  assert mean == pytest.approx(100 * 13 / 14)  # One joint at 0 %, 13 at 100 %.
  assert metrics.pck_table(*args)["Ankle"] == pytest.approx(50.0)  # mean(0, 100).


def test_ubody_pools_upper_body_joints():
  pred = np.zeros((1, 16, 2))
  pred[0, MPII.index("l_wrist")] = 3.0
  pred[0, MPII.index("l_ankle")] = 3.0
  table = metrics.pck_table(*_one_person(pred))
  assert table["UBody"] == pytest.approx(100 * 7 / 8)
  assert "UBody" not in metrics.pck_table(*_one_person(np.zeros((1, 14, 2)), skeleton=LSP))


def test_skeleton_must_match_the_arrays():
  with pytest.raises(ValueError, match=r"'mpii' has 16 joints.*\(1, 14, 2\)"):
    metrics.pck_table(np.zeros((1, 14, 2)), np.zeros((1, 14, 2)), None, np.ones(1), MPII)


def test_unknown_convention():
  with pytest.raises(ValueError, match="known"):
    metrics.pck_table(*_one_person(np.zeros((1, 16, 2))), convention="coco")


# ---------------------------------------------------------------------------------------------
# Errors and non-finite values.


def test_mismatched_person_counts_name_both():
  with pytest.raises(ValueError, match=r"3 people.*5"):
    metrics.pck_table(np.zeros((3, 16, 2)), np.zeros((5, 16, 2)), None, np.ones(5), MPII)
  with pytest.raises(ValueError, match=r"5 people"):
    metrics.pck_table(np.zeros((5, 16, 2)), np.zeros((5, 16, 2)), None, np.ones(4), MPII)


def test_zero_normaliser_names_people():
  norm = np.array([1.0, 0.0, np.nan, 2.0])
  with pytest.raises(ValueError, match=r"index\(es\) 1, 2\b"):
    metrics.pck_table(np.zeros((4, 16, 2)), np.zeros((4, 16, 2)), None, norm, MPII)
  # A person without counted joints may have any normaliser.
  visible = np.ones((4, 16))
  visible[1:3] = 0
  assert metrics.pck_table(np.zeros((4, 16, 2)), np.zeros((4, 16, 2)), visible, norm,
                           MPII)["Total"] == 100.0


def test_nonfinite_predictions_are_wrong_and_reported():
  pred = np.zeros((2, 16, 2))
  pred[0, 0, 0] = np.nan
  pred[1, 3, 1] = np.inf
  pred[1, 6] = np.nan  # Pelvis: not scored, so not reported.
  c = metrics.joint_correctness(pred, np.zeros((2, 16, 2)), None, np.ones(2),
                                scored=MPII.scored_joints)
  assert c.num_nonfinite == 2
  assert not c.correct[0, 0] and not c.correct[1, 3] and c.counted[0, 0]
  table = metrics.pck_table(pred, np.zeros((2, 16, 2)), None, np.ones(2), MPII)
  assert table["Total"] == pytest.approx(100 * 26 / 28)


# ---------------------------------------------------------------------------------------------
# Properties.


@st.composite
def _problems(draw, skeleton=MPII):
  n = draw(st.integers(1, 6))
  k = skeleton.num_joints
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  gt = rng.uniform(0, 200, (n, k, 2)).round(1)
  pred = gt + rng.normal(0, draw(st.sampled_from([1.0, 10.0, 40.0])), (n, k, 2))
  visible = rng.random((n, k)) > draw(st.sampled_from([0.0, 0.3]))
  norm = rng.uniform(5, 60, n)
  return pred, gt, visible, norm


def _equal_tables(a, b):
  assert a.keys() == b.keys()
  for key in a:
    assert a[key] == pytest.approx(b[key], nan_ok=True), key


@settings(max_examples=40, deadline=None)
@given(_problems(), st.sampled_from(["official", "pytorch-pose", "mmpose"]))
def test_perfect_predictions_score_100(problem, convention):
  _, gt, visible, norm = problem
  pred = gt - metrics.get_convention(convention).pred_offset
  # At threshold 0 only `<=` can be right: with `<` nothing is correct at 0.
  for threshold in (0.0, 0.5) if convention == "official" else (0.5,):
    table = metrics.pck_table(pred, gt, visible, norm, MPII, threshold, convention)
    assert all(v == 100.0 for v in table.values() if np.isfinite(v))
  assert metrics.auc(gt, gt, visible, norm, MPII) == pytest.approx(100.0)


@settings(max_examples=40, deadline=None)
@given(_problems(), st.randoms(use_true_random=False))
def test_permuting_people_changes_nothing(problem, random):
  pred, gt, visible, norm = problem
  perm = list(range(len(gt)))
  random.shuffle(perm)
  for convention in ("official", "pytorch-pose"):
    _equal_tables(metrics.pck_table(pred, gt, visible, norm, MPII, convention=convention),
                  metrics.pck_table(pred[perm], gt[perm], visible[perm], norm[perm], MPII,
                                    convention=convention))


@settings(max_examples=40, deadline=None)
@given(_problems(), st.floats(-1e6, 1e6), st.floats(-1e6, 1e6))
def test_missing_joints_never_count(problem, x, y):
  pred, gt, visible, norm = problem
  moved = pred.copy()
  moved[~visible] = (x, y)
  moved_nan = pred.copy()
  moved_nan[~visible] = np.nan
  base = metrics.pck_table(pred, gt, visible, norm, MPII)
  _equal_tables(base, metrics.pck_table(moved, gt, visible, norm, MPII))
  _equal_tables(base, metrics.pck_table(moved_nan, gt, visible, norm, MPII))
  assert metrics.joint_correctness(moved_nan, gt, visible, norm).num_nonfinite == 0


@settings(max_examples=40, deadline=None)
@given(_problems(), st.sampled_from([0.125, 0.5, 2.0, 4.0, 64.0]),
       st.sampled_from([0.1, 0.2, 0.5]))
def test_scaling_image_and_predictions_leaves_pckh_unchanged(problem, scale, threshold):
  # Powers of two scale exactly, so joints sitting on the threshold stay on it.
  pred, gt, visible, norm = problem
  _equal_tables(metrics.pck_table(pred, gt, visible, norm, MPII, threshold),
                metrics.pck_table(pred * scale, gt * scale, visible, norm * scale, MPII,
                                  threshold))


@settings(max_examples=40, deadline=None)
@given(_problems(), st.integers(0, 2**31 - 1),
       st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nan_predictions_count_as_wrong(problem, seed, bad):
  pred, gt, visible, norm = problem
  broken = np.random.default_rng(seed).random(visible.shape) < 0.3
  with_nan = pred.copy()
  with_nan[broken, 0] = bad
  far = pred.copy()
  far[broken] = 1e9  # Certainly wrong, but finite.
  _equal_tables(metrics.pck_table(with_nan, gt, visible, norm, MPII),
                metrics.pck_table(far, gt, visible, norm, MPII))
  c = metrics.joint_correctness(with_nan, gt, visible, norm, scored=MPII.scored_joints)
  scored = np.zeros(16, bool)
  scored[list(MPII.scored_joints)] = True
  assert c.num_nonfinite == np.sum(broken & visible & scored)
  assert not c.correct[broken].any()


@settings(max_examples=20, deadline=None)
@given(_problems())
def test_curve_matches_tables_and_is_monotone(problem):
  pred, gt, visible, norm = problem
  thresholds = [0.0, 0.1, 0.25, 0.5]
  curve = metrics.pck_curve(pred, gt, visible, norm, MPII, thresholds)
  for i, t in enumerate(thresholds):
    table = metrics.pck_table(pred, gt, visible, norm, MPII, t)
    for column, values in curve.items():
      assert values[i] == pytest.approx(table[column], nan_ok=True)
  total = curve["Total"]
  assert np.all(np.diff(total[np.isfinite(total)]) >= 0)


# ---------------------------------------------------------------------------------------------
# AUC, LSP/FLIC helpers, PCP, formatting.


def test_auc_normalises_the_threshold_range():
  t = metrics.AUC_THRESHOLDS
  assert t[0] == 0.0 and t[-1] == 0.5 and len(t) == 51
  assert metrics.auc_from_curve(t, np.full(51, 80.0)) == pytest.approx(80.0)
  assert metrics.auc_from_curve(t, 200 * t) == pytest.approx(50.0)  # Ramp 0 -> 100.
  with pytest.raises(ValueError):
    metrics.auc_from_curve([0.0], [1.0])


def _toy_problem(skeleton, seed=0, n=6):
  rng = np.random.default_rng(seed)
  gt = rng.uniform(0, 200, (n, skeleton.num_joints, 2))
  pred = gt + rng.normal(0, 8, gt.shape)
  visible = rng.random(gt.shape[:2]) > 0.2
  return pred, gt, visible, rng.uniform(20, 60, n)


@pytest.mark.parametrize("skeleton", [MPII, LSP, FLIC], ids=lambda s: s.name)
def test_headline_table_columns_and_values(skeleton):
  pred, gt, visible, norm = _toy_problem(skeleton)
  table = metrics.headline_table(pred, gt, visible, norm, skeleton)
  assert tuple(table) == metrics.headline_columns(skeleton)
  name, threshold = metrics.HEADLINE[skeleton.name]
  assert metrics.headline_name(skeleton) == {"mpii": "PCKh@0.5"}.get(skeleton.name, "PCK@0.2")
  pck = metrics.pck_table(pred, gt, visible, norm, skeleton, threshold)
  assert {k: table[k] for k in pck} == pck
  assert table["AUC"] == metrics.auc(pred, gt, visible, norm, skeleton)
  assert ("PCKh@0.1" in table) == (name == "PCKh")
  if name == "PCKh":
    assert table["PCKh@0.1"] == metrics.pck_table(pred, gt, visible, norm, skeleton, 0.1)["Total"]
    assert table["PCKh@0.1"] < table["Total"]


def test_headline_table_conventions_and_refusals():
  pred, gt, visible, norm = _toy_problem(MPII, seed=1, n=40)
  official = metrics.headline_table(pred, gt, visible, norm, MPII)
  torch = metrics.headline_table(pred, gt, visible, norm, MPII, "pytorch-pose")
  assert torch["Head"] == metrics.pck_table(pred, gt, visible, norm, MPII, 0.5,
                                            "pytorch-pose")["Head"]
  assert torch["Head"] != official["Head"]
  odd = skeletons.Skeleton(name="odd", joints=("a", "b"), flip_pairs=(), limbs=(),
                           groups=(("Head", (0, 1)),))
  with pytest.raises(ValueError, match="'odd'"):
    metrics.headline_table(pred[:, :2], gt[:, :2], visible[:, :2], norm, odd)


def test_headline_table_matches_the_lsp_and_flic_evaluators():
  """With the evaluators' normaliser (and FLIC's observer-centric ground truth) the headline
  PCK@0.2 columns are what `lsp_pck_table` / `flic_pck_table` compute from scratch."""
  for skeleton, table_fn in ((LSP, metrics.lsp_pck_table), (FLIC, metrics.flic_pck_table)):
    pred, gt, _, _ = _toy_problem(skeleton, seed=2, n=30)
    gt = metrics.observer_centric(gt, skeleton)[0] if skeleton is FLIC else gt
    table = metrics.headline_table(pred, gt, None, metrics.torso_size(gt, skeleton), skeleton)
    reference = table_fn(pred, gt, None, threshold=0.2)
    assert {k: table[k] for k in reference} == reference
    assert set(table) == set(reference) | {"AUC"}


def test_head_size_and_torso():
  assert metrics.mpii_head_size([[0, 0, 30, 40]])[0] == pytest.approx(30.0)
  assert metrics.mpii_head_size(np.array([[[0, 0], [30, 40]]]))[0] == pytest.approx(30.0)
  gt = np.zeros((1, 14, 2))
  gt[0, LSP.index("l_shoulder")] = (3, 4)
  assert metrics.torso_size(gt, LSP)[0] == pytest.approx(5.0)


def test_observer_centric_swaps_back_facing_and_is_idempotent():
  gt = np.zeros((2, 10, 2))
  gt[:, FLIC.index("r_shoulder"), 0] = (10, 50)
  gt[:, FLIC.index("l_shoulder"), 0] = (50, 10)  # Person 1 faces away.
  gt[:, FLIC.index("r_wrist"), 1] = (1, 2)
  visible = np.ones((2, 10), bool)
  visible[1, FLIC.index("l_wrist")] = False
  out, vis, swapped = metrics.observer_centric(gt, FLIC, visible)
  assert swapped.tolist() == [False, True]
  assert out[1, FLIC.index("l_wrist"), 1] == 2 and out[1, FLIC.index("r_shoulder"), 0] == 10
  assert not vis[1, FLIC.index("r_wrist")] and vis[1, FLIC.index("l_wrist")]
  np.testing.assert_array_equal(metrics.observer_centric(out, FLIC)[0], out)
  assert not metrics.observer_centric(out, FLIC)[2].any()


def test_strict_pcp():
  rng = np.random.default_rng(0)
  gt = rng.uniform(0, 100, (3, 14, 2))
  table = metrics.pcp_table(gt, gt, LSP)
  assert set(table) == set(metrics.PCP_COLUMNS) | {"Total"}
  assert all(v == 100.0 for v in table.values())
  # Move one end of person 0's right forearm just beyond half the stick length.
  pred = gt.copy()
  wrist, elbow = LSP.index("r_wrist"), LSP.index("r_elbow")
  stick = gt[0, wrist] - gt[0, elbow]
  pred[0, wrist] = gt[0, wrist] + 0.51 * stick
  table = metrics.pcp_table(pred, gt, LSP)
  assert table["Forearm"] == pytest.approx(100 * (1 - 0.5 / 3))  # mean(2/3, 3/3).
  assert table["Total"] == pytest.approx(100 * 29 / 30)
  pred[0, wrist] = gt[0, wrist] + 0.49 * stick
  assert metrics.pcp_table(pred, gt, LSP)["Forearm"] == 100.0
  assert set(metrics.pcp_table(np.zeros((1, 10, 2)), np.ones((1, 10, 2)), FLIC)) == {
      "Torso", "Upper arm", "Forearm", "Head", "Total"}


def test_pdj_curve_columns():
  gt = np.zeros((2, 14, 2))
  pred = gt + 1.0
  curve = metrics.pdj_curve(pred, gt, None, np.full(2, 10.0), LSP, [0.1, 0.2])
  assert list(curve) == list(metrics.pck_columns(LSP))
  np.testing.assert_allclose(curve["Total"], [0.0, 100.0])  # sqrt(2)/10 = 0.14.


def test_format_table_layout():
  table = {"Head": 96.657, "Shoulder": 92.71, "Elbow": 83.36, "Wrist": 76.74, "Hip": 81.93,
           "Knee": 73.36, "Ankle": 65.45, "Total": 82.34, "UBody": 87.38, "AUC": 55.781}
  columns = list(skeletons.TABLE_COLUMNS) + ["Total", "UBody", "AUC"]
  text = metrics.format_table(table, columns, title="PCKh@0.5")
  title, header, row = text.splitlines()
  assert title == "PCKh@0.5"
  assert header.split() == columns
  assert row.split() == ["96.66", "92.71", "83.36", "76.74", "81.93", "73.36", "65.45",
                         "82.34", "87.38", "55.78"]
  assert len(header) == len(row)
  assert metrics.format_table({"Head": 1.0}, ["Head", "Knee"]).splitlines()[1].split() == [
      "1.00", "-"]


def test_new_skeletons_registered():
  assert skeletons.get("lsp") is LSP and skeletons.get("flic") is FLIC
  assert skeletons.get("mpii") is MPII
  assert LSP.scored_joints == tuple(range(14)) and FLIC.scored_joints == tuple(range(10))
  for sk in (LSP, FLIC):
    perm = sk.flip_permutation
    assert sorted(perm) == list(range(sk.num_joints))
    for a, b in sk.flip_pairs:
      assert sk.joints[a][2:] == sk.joints[b][2:]


def test_metrics_does_not_import_jax():
  code = "import sys, jaxpose.metrics; assert 'jax' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True,
                 cwd=pathlib.Path(__file__).resolve().parents[1])
