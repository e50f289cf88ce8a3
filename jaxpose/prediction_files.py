"""Prediction files, the official ground-truth files of the evaluation splits, and scoring them.

Pixel convention: the official ground-truth files and the published result files (Tompson's
`pos_pred_src`, Yang's `pred`, pytorch-pose's `preds_valid.mat`, ...) all use MATLAB's 1-based
pixels. jaxpose works in 0-based pixels (see `jaxpose.skeletons`). `from_matlab_pixels` (from
`jaxpose.annotation_io`, which the data builders share) is the one place where 1-based
coordinates become 0-based, and `to_matlab_pixels` the one place where they go back (MPII
submission files). `evaluate_file` treats a prediction file as being in the same convention as
the ground truth it is scored against (1-based, like every published file) unless told
otherwise, so the official numbers come out exactly.

Typical use (what `eval.py --preds FILE --dataset mpii_val --gt PATH` does):

  result = prediction_files.evaluate_file("preds_valid.mat", "mpii_val",
                                          "data/mpii/detections_our_format.mat")
  print(result.text)
"""

import dataclasses
import json
import os
from typing import Sequence

import h5py
import numpy as np
import scipy.io

from jaxpose import annotation_io
from jaxpose import metrics
from jaxpose import skeletons
from jaxpose.skeletons import Skeleton

# Keys under which prediction files store the [N, K, 2] array, in order of preference.
PREDICTION_KEYS = ("preds", "pred", "prediction_all", "pos_pred_src")
# Data set -> ground-truth file name looked up when `gt_path` is a folder.
GT_FILES = {"mpii_val": "detections_our_format.mat", "lsp_test": "joints.mat",
            "flic_test": "examples.mat"}
DATASETS = tuple(GT_FILES)
# The official files' conventions (`jaxpose.annotation_io`, which the data builders share).
MATLAB_PIXEL_OFFSET = annotation_io.MATLAB_PIXEL_OFFSET
LSP_TEST = annotation_io.LSP_TEST
FLIC_SLOTS = annotation_io.FLIC_SLOTS
from_matlab_pixels = annotation_io.from_matlab_pixels
to_matlab_pixels = annotation_io.to_matlab_pixels
PDJ_REPORT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4)

# Layout name -> transpose that turns it into N x K x C.
_LAYOUTS = (("N x K x 2", (0, 1, 2)), ("K x 2 x N", (2, 0, 1)), ("2 x K x N", (2, 1, 0)))


# ----------------------------------------------------------------------------------------------
# Prediction files.


def _is_matlab_73(path: str) -> bool:
  return path.lower().endswith(".mat") and h5py.is_hdf5(path)


def _check_readable(path: str, what: str) -> None:
  """Refuses a missing, non-regular or empty file with a one-line error naming it."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such {what}.")
  if not os.path.isfile(path):
    raise ValueError(f"{path}: expected a {what}; this is a directory or special file.")
  if os.path.getsize(path) == 0:
    raise ValueError(f"{path}: the {what} is empty (0 bytes); it was not fully written "
                     f"or copied.")


def _parse(path: str, fmt: str, read_fn):
  """Runs a file parser; any failure becomes a one-line ValueError naming the file.

  The parsers (scipy.io, h5py, numpy's zip and .npy readers, zlib, json) raise a dozen
  unrelated exception types on truncated or damaged bytes (OSError, EOFError, MatReadError,
  BadZipFile, zlib.error, KeyError, ...); a caller cannot act on the difference. The original
  exception stays chained (JAXPOSE_TRACEBACK=1 shows it).
  """
  try:
    return read_fn()
  except Exception as e:  # pylint: disable=broad-exception-caught
    first = (str(e).strip().splitlines() or [""])[0] or type(e).__name__
    raise ValueError(f"{path}: cannot read this {fmt} file ({type(e).__name__}: {first}); "
                     f"it is truncated, corrupt or not in {fmt} format.") from e


def _read_hdf5(path: str, matlab: bool) -> dict:
  """Top-level datasets; MATLAB v7.3 stores arrays with their axes reversed."""
  def read():
    out = {}
    with h5py.File(path, "r") as f:
      for key, item in f.items():
        if key.startswith("#") or not isinstance(item, h5py.Dataset):
          continue
        out[key] = np.asarray(item[()]).T if matlab else np.asarray(item[()])
    return out
  return _parse(path, "MATLAB v7.3 .mat" if matlab else "HDF5", read)


def _read_npz(path: str) -> dict:
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def _read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _read_entries(path: str) -> tuple[dict, str]:
  """{key: value} of a supported file, and a short name of its format.

  Raises:
    FileNotFoundError: no such file.
    ValueError: an empty, truncated or corrupt file, or an unsupported type (naming the file).
  """
  lower = path.lower()
  if not lower.endswith((".npy", ".npz", ".json", ".mat", ".h5", ".hdf5")):
    raise ValueError(f"{path}: unsupported prediction file type; expected .mat, .h5, .npy, "
                     f".npz or .json.")
  _check_readable(path, "prediction file")
  if lower.endswith(".npy"):
    return {None: _parse(path, ".npy", lambda: np.load(path, allow_pickle=False))}, "npy"
  if lower.endswith(".npz"):
    return _parse(path, ".npz", lambda: _read_npz(path)), "npz"
  if lower.endswith(".json"):
    obj = _parse(path, "JSON", lambda: _read_json(path))
    if isinstance(obj, list):
      return {None: obj}, "json"
    if isinstance(obj, dict):
      return dict(obj), "json"
    raise ValueError(f"{path}: JSON must be a list or an object; got {type(obj).__name__}.")
  if _is_matlab_73(path):
    return _read_hdf5(path, matlab=True), "MATLAB v7.3 mat"
  if lower.endswith(".mat"):
    m = _parse(path, ".mat", lambda: scipy.io.loadmat(path))
    return {k: v for k, v in m.items() if not k.startswith("__")}, "mat"
  return _read_hdf5(path, matlab=False), "h5"


def _expected(num_people, num_joints) -> str:
  n = "?" if num_people is None else num_people
  k = "?" if num_joints is None else num_joints
  return f"(N={n}, K={k})"


def _resolve_layout(array: np.ndarray, num_people, num_joints, where: str):
  """Maps a 3-D array onto N x K x 2 unambiguously; returns (array, layout name)."""
  layouts = ", ".join(name for name, _ in _LAYOUTS)
  if array.ndim != 3:
    raise ValueError(f"{where} has shape {array.shape}; expected a 3-D array {layouts} "
                     f"(or 3 channels with a score) with {_expected(num_people, num_joints)}.")
  fits = []
  for name, perm in _LAYOUTS:
    n, k, c = (array.shape[p] for p in perm)
    if c in (2, 3) and num_people in (None, n) and num_joints in (None, k):
      fits.append((name, perm, c))
  if not fits:
    raise ValueError(f"{where} has shape {array.shape}, which fits none of the layouts "
                     f"{layouts} (or 3 channels with a score) with "
                     f"{_expected(num_people, num_joints)}.")
  if len(fits) > 1:
    names = " / ".join(name if c == 2 else name.replace("2", "3") for name, _, c in fits)
    raise ValueError(f"{where} has shape {array.shape}, which is ambiguous: it fits {names}; "
                     f"expected {_expected(num_people, num_joints)}. Pass num_people and "
                     f"num_joints, or save it as N x K x 2.")
  name, perm, c = fits[0]
  out = array.transpose(perm)
  if c == 3:
    name = name.replace("2", "3") + ", score channel dropped"
  return np.ascontiguousarray(out[..., :2], np.float64), name


def load_predictions(path: str, num_people: int | None = None,
                     num_joints: int | None = None) -> tuple[np.ndarray, str]:
  """Reads predictions [N, K, 2] (float64, as stored: no pixel shift) from a file.

  Supported: .mat (MATLAB v5 via scipy, v7.3 via h5py), .h5/.hdf5, .npy, .npz and .json
  (a top-level list or an object). The array is the single one in .npy / a top-level JSON list,
  else the one under `PREDICTION_KEYS` (preds, pred, prediction_all, pos_pred_src). Layouts:
  N x K x 2, K x 2 x N, 2 x K x N, or the same with 3 channels (x, y, score; the score is
  dropped). `num_people` / `num_joints` select the layout; a file that does not map onto
  exactly one layout is refused.

  Returns:
    (predictions [N, K, 2], a description of the key and layout that were read).

  Raises:
    FileNotFoundError: no such file.
    ValueError: an empty, truncated or corrupt file; no or several prediction keys; an empty or
      non-numeric array; or a shape that fits no layout or several layouts. The one-line
      message names the file and says what was expected and what was found.
  """
  path = os.fspath(path)
  entries, fmt = _read_entries(path)
  if None in entries:
    key = None
  else:
    found = [k for k in PREDICTION_KEYS if k in entries]
    if not found:
      raise ValueError(f"{path} ({fmt}): no predictions found; expected one of the keys "
                       f"{list(PREDICTION_KEYS)} holding {_expected(num_people, num_joints)} "
                       f"x 2 coordinates; found keys {sorted(entries)}.")
    if len(found) > 1:
      raise ValueError(f"{path} ({fmt}): several prediction keys {found}; keep exactly one "
                       f"of {list(PREDICTION_KEYS)}.")
    key = found[0]
  where = f"{path} ({fmt}) " + ("array" if key is None else f"key {key!r}")
  try:
    array = np.asarray(entries[key], np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where} is not a numeric array ({e}); expected "
                     f"{_expected(num_people, num_joints)} x 2 coordinates.") from None
  if array.size == 0:
    raise ValueError(f"{where} is empty (shape {array.shape}); expected "
                     f"{_expected(num_people, num_joints)} x 2 coordinates.")
  preds, layout = _resolve_layout(array, num_people, num_joints, where)
  n, k = preds.shape[:2]
  return preds, f"{where}, shape {array.shape} read as {layout} (N={n} people, K={k} joints)"


# ----------------------------------------------------------------------------------------------
# Ground truth of the evaluation splits.


@dataclasses.dataclass(frozen=True)
class GroundTruth:
  """Ground truth of an evaluation split, in jaxpose's 0-based pixels."""

  dataset: str
  skeleton: Skeleton
  joints: np.ndarray  # float64 [N, K, 2].
  visible: np.ndarray  # bool [N, K]: annotated, i.e. scored.
  norm: np.ndarray  # float64 [N]: MPII head size, LSP/FLIC torso size.
  threshold: float  # The headline threshold: 0.5 (PCKh) or 0.2 (PCK).
  description: str
  head_boxes: np.ndarray | None = None  # float64 [N, 4] x1, y1, x2, y2 (MPII).
  occluded: np.ndarray | None = None  # bool [N, K]: LSP's flag column (informative only).

  @property
  def num_people(self) -> int:
    return self.joints.shape[0]


# What each split's ground-truth file must hold (for messages).
GT_CONTENTS = {
    "mpii_val": "detections_our_format.mat with pos_gt_src 16 x 2 x N, jnt_missing 16 x N and "
                "headboxes_src 2 x 2 x N",
    "lsp_test": "LSP's original joints.mat with joints 3 x 14 x 2000",
    "flic_test": "FLIC's examples.mat (examples) or a 2 x 10 x N 'joints' array "
                 "(flic-joints-test-oc.mat)",
}


def _shape_text(shape) -> str:
  return " x ".join(str(d) for d in shape) if shape else "scalar"


def _looks_like(shapes: dict[str, tuple]) -> tuple[str | None, str | None]:
  """(data set, description) of a file recognised from its variables' shapes, else Nones."""
  joints = shapes.get("joints", ())
  if {"pos_gt_src", "jnt_missing", "headboxes_src"} <= set(shapes):
    return "mpii_val", "the MPII validation ground truth (--dataset mpii_val)"
  if len(joints) == 3 and joints[:2] == (3, 14):
    return "lsp_test", "LSP's joints.mat (--dataset lsp_test)"
  if len(joints) == 3 and joints[:2] == (2, 10):
    return "flic_test", "FLIC's test ground truth, 2 x 10 x N (--dataset flic_test)"
  if "examples" in shapes:
    return "flic_test", "FLIC's examples.mat (--dataset flic_test)"
  if "annolist" in shapes or "RELEASE" in shapes:
    return None, ("an MPII annolist (the release file or detections.mat); mpii_val is scored "
                  "from detections_our_format.mat")
  part = shapes.get("part", ())
  if "normalize" in shapes and len(part) == 3:
    name = {16: "MPII", 11: "FLIC"}.get(part[1], f"{part[1]}-joint")
    return None, (f"hourglass-style annot/valid.h5 annotations ({name}), not an official "
                  f"ground-truth file")
  found = [k for k in PREDICTION_KEYS if k in shapes]
  if found:
    return None, f"a prediction file (key {found[0]!r}), not ground truth: pass it to --preds"
  return None, None


def _wrong_gt_file(path: str, dataset: str, shapes: dict[str, tuple], problem: str):
  """A one-line ValueError: the file, the data set asked for, what it holds, what it looks
  like (when recognised) and what was expected."""
  found = ", ".join(f"{k} {_shape_text(v)}" for k, v in sorted(shapes.items())) or "nothing"
  guessed, looks = _looks_like(shapes)
  hint = f" It looks like {looks}." if looks and guessed != dataset else ""
  return ValueError(f"{path} is not the {dataset} ground truth: {problem}; it holds {found}."
                    f"{hint} Expected {GT_CONTENTS[dataset]}.")


def _hdf5_shapes(path: str) -> dict[str, tuple]:
  with h5py.File(path, "r") as f:
    return {k: v.shape for k, v in f.items() if isinstance(v, h5py.Dataset)}


def _read_gt_mat(path: str, dataset: str) -> dict:
  """The variables of a MATLAB v5 ground-truth file; refuses a missing, damaged or HDF5 file."""
  _check_readable(path, f"{dataset} ground-truth file")
  if h5py.is_hdf5(path):
    shapes = _parse(path, "HDF5", lambda: _hdf5_shapes(path))
    raise _wrong_gt_file(path, dataset, shapes, "it is an HDF5 file")
  m = _parse(path, ".mat", lambda: scipy.io.loadmat(path))
  return {k: v for k, v in m.items() if not k.startswith("__")}


def _check_gt_shapes(path: str, dataset: str, m: dict, want: dict[str, tuple]) -> None:
  """`want`: variable -> shape, None for "any N" (the same N for every variable)."""
  shapes = {k: np.shape(v) for k, v in m.items()}
  missing = [k for k in want if k not in m]
  if missing:
    raise _wrong_gt_file(path, dataset, shapes, f"no {', '.join(missing)}")
  for k, w in want.items():
    got = shapes[k]
    if len(got) != len(w) or any(a is not None and a != b for a, b in zip(w, got)):
      w_text = _shape_text(["N" if d is None else d for d in w])
      raise _wrong_gt_file(path, dataset, shapes,
                           f"{k} is {_shape_text(got)}, expected {w_text}")
  counts = {k: shapes[k][-1] for k, w in want.items() if w[-1] is None}
  if len(set(counts.values())) > 1:
    raise _wrong_gt_file(path, dataset, shapes, f"the numbers of people differ: {counts}")


def _load_mpii_val(path: str) -> GroundTruth:
  m = _read_gt_mat(path, "mpii_val")
  _check_gt_shapes(path, "mpii_val", m, {"pos_gt_src": (16, 2, None),
                                         "jnt_missing": (16, None),
                                         "headboxes_src": (2, 2, None)})
  joints = from_matlab_pixels(m["pos_gt_src"].transpose(2, 0, 1))  # 16x2xN -> Nx16x2.
  visible = m["jnt_missing"].T == 0
  corners = from_matlab_pixels(m["headboxes_src"].transpose(2, 0, 1))  # [N, corner, xy].
  head_boxes = corners.reshape(-1, 4)
  return GroundTruth(
      dataset="mpii_val", skeleton=skeletons.MPII, joints=joints, visible=visible,
      norm=metrics.mpii_head_size(head_boxes), threshold=0.5, head_boxes=head_boxes,
      description=(f"{path}: pos_gt_src, {len(joints)} people, jnt_missing = 1 not scored, "
                   f"head size 0.6 x headboxes_src diagonal"))


def _load_lsp_test(path: str) -> GroundTruth:
  m = _read_gt_mat(path, "lsp_test")
  _check_gt_shapes(path, "lsp_test", m, {"joints": (3, 14, 2000)})
  test = m["joints"][:, :, LSP_TEST].transpose(2, 1, 0)  # [1000, 14, 3].
  joints = from_matlab_pixels(test[..., :2])
  skeleton = skeletons.LSP
  return GroundTruth(
      dataset="lsp_test", skeleton=skeleton, joints=joints,
      visible=np.ones(joints.shape[:2], bool), norm=metrics.torso_size(joints, skeleton),
      threshold=0.2, occluded=test[..., 2] == 1,
      description=(f"{path}: joints, test images 1001-2000, all 14 joints scored (the flag "
                   f"row is ignored), torso = ||l-shoulder - r-hip||"))


def _flic_from_examples(path: str, m: dict) -> tuple[np.ndarray, str]:
  examples = m["examples"].ravel()
  fields = examples.dtype.names or ()
  if "coords" not in fields or "istest" not in fields:
    raise _wrong_gt_file(path, "flic_test", {k: np.shape(v) for k, v in m.items()},
                         f"examples has fields {list(fields)}, not coords and istest")
  test = [e for e in examples if int(np.ravel(e["istest"])[0]) == 1]
  coords = np.stack([np.asarray(e["coords"], np.float64).T for e in test])  # [N, 29, 2].
  joints = np.empty((len(test), skeletons.FLIC.num_joints, 2))
  for name, slot in FLIC_SLOTS.items():
    joints[:, skeletons.FLIC.index(name)] = coords[:, slot]
  joints[:, skeletons.FLIC.index("neck")] = coords[:, [0, 3]].mean(1)
  return joints, f"{path}: examples with istest, {len(test)} people, 29 slots -> 10 joints"


def _load_flic_test(path: str) -> GroundTruth:
  m = _read_gt_mat(path, "flic_test")
  if "examples" in m:
    joints, description = _flic_from_examples(path, m)
  elif "joints" in m and np.ndim(m["joints"]) == 3 and m["joints"].shape[:2] == (2, 10):
    joints = m["joints"].transpose(2, 1, 0).astype(np.float64)
    description = f"{path}: joints 2 x 10 x {joints.shape[0]} (eval_pose order)"
  else:
    raise _wrong_gt_file(path, "flic_test", {k: np.shape(v) for k, v in m.items()},
                         "no examples and no 2 x 10 x N joints")
  skeleton = skeletons.FLIC
  joints, _, swapped = metrics.observer_centric(from_matlab_pixels(joints), skeleton)
  return GroundTruth(
      dataset="flic_test", skeleton=skeleton, joints=joints,
      visible=np.isfinite(joints).all(-1), norm=metrics.torso_size(joints, skeleton),
      threshold=0.2,
      description=(f"{description}; {int(swapped.sum())} back-facing people swapped to "
                   f"observer-centric; torso = ||l-shoulder - r-hip||"))


_GT_LOADERS = {"mpii_val": _load_mpii_val, "lsp_test": _load_lsp_test,
               "flic_test": _load_flic_test}


def load_ground_truth(dataset: str, gt_path: str) -> GroundTruth:
  """Loads an evaluation split from its official file (or a folder holding `GT_FILES`).

  * "mpii_val": `detections_our_format.mat` (pos_gt_src, jnt_missing, headboxes_src); the
    normaliser is the head size 0.6 x head-box diagonal; jnt_missing joints are not scored.
  * "lsp_test": the original `joints.mat` (3 x 14 x 2000), images 1001-2000. All 14 joints
    are scored, as in the official LSP PCK; the third row (1 on 7.5% of test joints, where
    predictions are far worse: an occlusion flag, despite being called "visibility") is kept
    as `occluded`. Normaliser: torso ||l-shoulder - r-hip||.
  * "flic_test": FLIC's `examples.mat` (the 1016 `istest` examples; coords slots mapped to
    the FLIC joint set, neck = mid-shoulders) or `flic-joints-test-oc.mat`. Back-facing people
    are swapped to observer-centric; normaliser: torso ||l-shoulder - r-hip|| after the swap.

  Coordinates come back 0-based (`from_matlab_pixels`).

  Raises:
    FileNotFoundError: no such file.
    ValueError: an empty, damaged or HDF5 file, or one without the variables `GT_CONTENTS`
      lists; the one-line message names the file, the data set, the variables found and, when
      recognised, which file it looks like.
  """
  if dataset not in _GT_LOADERS:
    raise ValueError(f"Unknown evaluation data set {dataset!r}; known: {list(DATASETS)}.")
  gt_path = os.fspath(gt_path)
  if os.path.isdir(gt_path):
    gt_path = os.path.join(gt_path, GT_FILES[dataset])
  return _GT_LOADERS[dataset](gt_path)


# ----------------------------------------------------------------------------------------------
# Scoring a prediction file.


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Everything `evaluate_file` computed, plus the printable text."""

  dataset: str
  convention: str
  # "PCKh@0.5" (MPII; with UBody, "PCKh@0.1" and "AUC" columns) or "PCK@0.2" (LSP, FLIC; with
  # "AUC"): `metrics.headline_table`; "PCP@0.5" (LSP). Values in percent.
  tables: dict[str, dict[str, float]]
  pdj: dict[str, np.ndarray]  # Column -> [T] percent at `pdj_thresholds`.
  pdj_thresholds: np.ndarray
  num_nonfinite: int  # Scored joints whose prediction was NaN/inf (scored wrong).
  description: str  # What was read: prediction key and layout, ground-truth file.
  text: str  # Printable report.

  @property
  def table(self) -> dict[str, float]:
    """The headline table (PCKh@0.5 or PCK@0.2)."""
    return next(iter(self.tables.values()))


def _pdj_text(pdj: dict[str, np.ndarray], thresholds: np.ndarray, columns, title) -> str:
  rows = {}
  for t in PDJ_REPORT_THRESHOLDS:
    i = int(np.argmin(np.abs(thresholds - t)))
    rows[f"PDJ@{thresholds[i]:.2f}"] = {c: float(pdj[c][i]) for c in columns}
  return metrics.format_rows(rows, columns, title)


def evaluate_predictions(preds: np.ndarray, gt: GroundTruth,
                         convention: str | metrics.Convention = "official",
                         description: str = "") -> Evaluation:
  """Scores predictions [N, K, 2] (0-based, like `gt`) against a loaded `GroundTruth`."""
  conv = metrics.get_convention(convention)
  if gt.dataset != "mpii_val" and conv.name != "official":
    raise ValueError(f"Convention {conv.name!r} is an MPII PCKh convention; {gt.dataset} is "
                     f"scored with the official rules only.")
  skeleton = gt.skeleton
  args = (preds, gt.joints, gt.visible, gt.norm, skeleton)
  dist = metrics.normalized_distances(preds, gt.joints, gt.visible, gt.norm,
                                      scored=skeleton.scored_joints)
  # The ground truth is already observer-centric (FLIC) with the data set's normaliser.
  name = metrics.headline_name(skeleton)
  table = metrics.headline_table(*args, convention=conv)
  tables = {name: table}
  texts = [f"{gt.dataset}: {description}" if description else gt.dataset,
           metrics.format_table(table, metrics.headline_columns(skeleton),
                                title=f"{name} ({conv.name})")]
  if gt.dataset == "lsp_test":
    pcp = metrics.pcp_table(preds, gt.joints, skeleton, gt.visible, threshold=0.5)
    tables["PCP@0.5"] = pcp
    texts.append(metrics.format_table(pcp, list(metrics.PCP_COLUMNS) + [metrics.TOTAL],
                                      title="strict PCP@0.5"))
  pdj = metrics.pdj_curve(*args)
  norm_name = "head size" if gt.dataset == "mpii_val" else "torso size"
  texts.append(_pdj_text(pdj, metrics.PDJ_THRESHOLDS, metrics.pck_columns(skeleton),
                         f"PDJ (distance / {norm_name})"))
  if dist.num_nonfinite:
    texts.append(f"warning: {dist.num_nonfinite} scored joints have NaN/inf predictions "
                 f"(counted as wrong)")
  return Evaluation(dataset=gt.dataset, convention=conv.name, tables=tables, pdj=pdj,
                    pdj_thresholds=metrics.PDJ_THRESHOLDS, num_nonfinite=dist.num_nonfinite,
                    description=description, text="\n\n".join(texts))


def joint_subset(gt: GroundTruth, skeleton: Skeleton) -> GroundTruth:
  """The same people scored on `skeleton`'s joints (picked by name); normalisers unchanged."""
  index = skeletons.joint_subset(skeleton, gt.skeleton)
  occluded = None if gt.occluded is None else gt.occluded[:, index]
  return dataclasses.replace(gt, skeleton=skeleton, joints=gt.joints[:, index],
                             visible=gt.visible[:, index], occluded=occluded)


def evaluate_file(preds_path: str, dataset: str, gt_path: str,
                  convention: str | metrics.Convention = "official", *,
                  preds_one_based: bool = True) -> Evaluation:
  """Scores a prediction file against an evaluation split's official ground truth.

  Args:
    preds_path: predictions in any format `load_predictions` reads.
    dataset: "mpii_val", "lsp_test" or "flic_test".
    gt_path: the official ground-truth file (or a folder holding `GT_FILES[dataset]`).
    convention: MPII PCKh convention (see `jaxpose.metrics`); LSP/FLIC: "official" only.
    preds_one_based: the file is in MATLAB's 1-based pixels, like every published result and
      the ground truth (default); False for files of 0-based jaxpose predictions.

  Returns:
    An `Evaluation`: tables (MPII: PCKh@0.5 with UBody, PCKh@0.1 and AUC; LSP: PCK@0.2 with
    AUC, and strict PCP@0.5; FLIC: PCK@0.2 with AUC), PDJ curves, the count of NaN/inf
    predictions, the load description and the printable text.
  """
  gt = load_ground_truth(dataset, gt_path)
  try:
    raw, description = load_predictions(preds_path, gt.num_people, gt.skeleton.num_joints)
  except ValueError as error:
    if dataset != "flic_test":
      raise
    try:  # The released CPM FLIC model's 9 joints (its order: skeletons.FLIC9)?
      raw, description = load_predictions(preds_path, gt.num_people, skeletons.FLIC9.num_joints)
    except ValueError:
      raise error from None
    gt = joint_subset(gt, skeletons.FLIC9)
    description += " (the 9 joints of the released CPM FLIC model)"
  preds = from_matlab_pixels(raw) if preds_one_based else raw
  description += (" (1-based pixels)" if preds_one_based else " (0-based pixels)")
  description += f"; ground truth {gt.description}"
  return evaluate_predictions(preds, gt, convention, description)


# ----------------------------------------------------------------------------------------------
# MPII benchmark submission.


def _struct(fields: dict) -> np.ndarray:
  """A 1 x 1 MATLAB struct."""
  s = np.empty((1, 1), dtype=[(k, object) for k in fields])
  for k, v in fields.items():
    s[0, 0][k] = v
  return s


def write_mpii_submission(path: str, preds, image_indices: Sequence[int],
                          rect_indices: Sequence[int], *,
                          image_names: Sequence[str] | None = None,
                          num_images: int | None = None, preds_one_based: bool = False,
                          variable: str = "pred") -> None:
  """Writes single-person predictions as the MPII benchmark's `pred_keypoints_mpii.mat`.

  The file holds `pred`, an annolist struct array (1 x num_images, aligned with the test
  annolist `RELEASE.annolist(RELEASE.img_train == 0)`): pred(i).annorect(r).annopoints.point
  is a struct array of {x, y, id} with 1-based pixel x, y and the MPII joint id 0..15, as the
  benchmark's `evaluatePCKh.m` expects. Joints with a NaN/inf prediction are left out.
  Rectangles without a prediction get an empty annopoints.

  Args:
    path: output .mat file.
    preds: [N, 16, 2] predictions, 0-based pixels (1-based if `preds_one_based`).
    image_indices: [N] 1-based index of each person's image in the annolist written.
    rect_indices: [N] 1-based annorect index of each person in its image
      (`RELEASE.single_person`).
    image_names: optional [N] image file names, written as pred(i).image.name.
    num_images: annolist length (default: the largest image index).
    preds_one_based: `preds` are already 1-based MATLAB pixels.
    variable: the MATLAB variable name ("pred" for the benchmark).
  """
  preds = np.asarray(preds, np.float64)
  if preds.ndim != 3 or preds.shape[1:] != (skeletons.MPII.num_joints, 2):
    raise ValueError(f"preds must be [N, 16, 2]; got {preds.shape}.")
  images = np.asarray(image_indices, np.int64).reshape(-1)
  rects = np.asarray(rect_indices, np.int64).reshape(-1)
  n = preds.shape[0]
  if images.size != n or rects.size != n:
    raise ValueError(f"{n} people in preds but {images.size} image indices and {rects.size} "
                     f"rect indices.")
  if n and (images.min() < 1 or rects.min() < 1):
    raise ValueError("image_indices and rect_indices are 1-based (MATLAB) and must be >= 1.")
  pairs = set(zip(images.tolist(), rects.tolist()))
  if len(pairs) != n:
    raise ValueError("Several people share the same (image index, rect index).")
  num_images = int(images.max(initial=0)) if num_images is None else num_images
  if n and images.max() > num_images:
    raise ValueError(f"image index {images.max()} > num_images {num_images}.")
  xy = preds if preds_one_based else to_matlab_pixels(preds)
  names = [None] * (num_images + 1)
  if image_names is not None:
    if len(image_names) != n:
      raise ValueError(f"{n} people but {len(image_names)} image names.")
    for i, name in zip(images.tolist(), image_names):
      if names[i] is not None and names[i] != name:
        raise ValueError(f"Image {i} is given two names: {names[i]!r} and {name!r}.")
      names[i] = name

  fields = ([("image", object)] if image_names is not None else []) + [("annorect", object)]
  annolist = np.empty((1, num_images), dtype=fields)
  by_image: dict[int, dict[int, int]] = {}
  for p, (i, r) in enumerate(zip(images.tolist(), rects.tolist())):
    by_image.setdefault(i, {})[r] = p
  for i in range(1, num_images + 1):
    people = by_image.get(i, {})
    annorect = np.empty((1, max(people, default=0)), dtype=[("annopoints", object)])
    for r in range(1, annorect.shape[1] + 1):
      if r not in people:
        annorect[0, r - 1]["annopoints"] = np.zeros((0, 0))
        continue
      joints = xy[people[r]]
      ids = [j for j in range(len(joints)) if np.isfinite(joints[j]).all()]
      point = np.empty((1, len(ids)), dtype=[("x", object), ("y", object), ("id", object)])
      for col, j in enumerate(ids):
        point[0, col] = (float(joints[j, 0]), float(joints[j, 1]), j)
      annorect[0, r - 1]["annopoints"] = _struct({"point": point})
    annolist[0, i - 1]["annorect"] = annorect
    if image_names is not None:
      annolist[0, i - 1]["image"] = _struct({"name": names[i] or ""})
  scipy.io.savemat(os.fspath(path), {variable: annolist})


def read_mpii_submission(path: str, variable: str = "pred"):
  """Reads a file written in the MPII submission layout back.

  Returns:
    (preds [N, 16, 2] 0-based pixels with NaN for missing joints, image_indices [N] and
    rect_indices [N], both 1-based), one row per annorect that has annopoints.
  """
  annolist = scipy.io.loadmat(os.fspath(path))[variable]
  preds, images, rects = [], [], []
  for i, entry in enumerate(annolist.ravel(), start=1):
    annorect = entry["annorect"]
    for r, rect in enumerate(np.asarray(annorect).ravel(), start=1):
      annopoints = rect["annopoints"]
      if annopoints.size == 0:
        continue
      joints = np.full((skeletons.MPII.num_joints, 2), np.nan)
      for pt in annopoints[0, 0]["point"].ravel():
        joints[int(np.ravel(pt["id"])[0])] = (float(np.ravel(pt["x"])[0]),
                                               float(np.ravel(pt["y"])[0]))
      preds.append(from_matlab_pixels(joints))
      images.append(i)
      rects.append(r)
  preds = np.stack(preds) if preds else np.zeros((0, skeletons.MPII.num_joints, 2))
  return preds, np.asarray(images, np.int64), np.asarray(rects, np.int64)
