"""Pose-estimation metrics in pure numpy: PCKh, PCK, strict PCP, PDJ curves and AUC.

Everything is vectorised over people, joints and thresholds; computing is kept separate from
printing (`format_table`). Arrays: predictions and ground truth [N, K, 2] (x, y) in one and the
same pixel convention, `visible` [N, K] (non-zero = annotated), `norm` [N] (the per-person
normaliser: MPII head size, LSP/FLIC torso size).

Semantics of the official evaluators (the default), which reproduce the published numbers:

* A joint is *counted* when it is annotated and belongs to some table column (MPII leaves pelvis
  and thorax out). It is *correct* when ||pred - gt|| / norm <= threshold. A NaN or infinite
  prediction is counted and wrong; how many there were is reported.
* A column (Head, Shoulder, ...) is the unweighted mean of the per-joint PCKs of its joints
  (MPII evalMPII: Head = mean(upper neck, head top), the others mean(left, right)). Pooling the
  two joints instead differs in the second decimal: Tompson's MPII Wrist pools to 76.73, while
  the published (and reproduced) value is the mean, 76.74.
* "Total" is pooled over every counted joint of every scored joint type, not the mean of the
  columns; MPII's "UBody" is pooled the same way over the Head..Wrist joints.
* AUC is the area under the Total curve over thresholds 0, 0.01, ..., 0.5 divided by the width
  of that range (so the x axis runs over [0, 1]); the result is in percent.

Conventions of other codebases for MPII PCKh (`pck_table(..., convention=...)`), each read off
that codebase's evaluation code:

  ==================  =========  ===========  ================  ==================  ==========
  convention          correct    pred offset  Head column       L/R columns         Total
  ==================  =========  ===========  ================  ==================  ==========
  "official"          d <= t     0            mean(neck, top)   mean(left, right)   pooled
  "pytorch-pose"      d <  t     0            head top only     mean(left, right)   mean of
                                                                                    the 14
                                                                                    per-joint
                                                                                    PCKs
  "mmpose"            d <  t     +1 px        head top only     mean(left, right)   pooled
  ==================  =========  ===========  ================  ==================  ==========

* pytorch-pose = bearpaw/pytorch-pose `evaluation/eval_PCKh.py`: `scaled_uv_err < threshold`;
  prints PCKh[head] (the head top); `np.mean(PCKh)` over the 16 per-joint PCKhs with pelvis and
  thorax masked, i.e. an unweighted mean over 14 joints that includes the upper neck (it is not
  the mean of the 7 printed columns). The script adds nothing to the predictions. (Its data
  loader, in the version read, makes joints 0-based with `pts -= 1` and nothing converts the
  saved predictions back,
  so pytorch-pose's own predictions are compared 0-based against 1-based ground truth; to
  emulate that on consistent coordinates use `dataclasses.replace(CONVENTIONS["pytorch-pose"],
  pred_offset=-1.0)`. The task brief listed a +1 shift for pytorch-pose; the script itself has
  none, so the default here follows the script.) Its threshold curve is 0:0.01:0.49; AUC here
  still uses `AUC_THRESHOLDS`.
* mmpose = open-mmlab/mmpose `MpiiPCKAccuracy`: `pred_coords + 1.0` ("convert 0-based to
  1-based") before comparing with the 1-based ground truth, `distance < thr`, Head = PCKh[9]
  (head top), L/R columns 0.5 * (left + right), "PCKh" = sum(PCKh * jnt_ratio) (= pooled over the
  14 scored joints). Not emulated: mmpose computes distances in float32 and silently drops
  people whose head size is 0 (here that raises).
* Columns other than Head and Total and the UBody column follow the same rules in every
  convention. LSP, FLIC, PCP and PDJ always use the official rules.

Non-MPII metrics: LSP PCK@0.2 and FLIC PCK@0.2 normalise by the torso size ||GT left shoulder -
GT right hip|| (`torso_size`); FLIC ground truth is first made observer-centric
(`observer_centric`). Strict PCP@0.5 (`pcp_table`): a stick is correct when both predicted end
points lie within 0.5 x the GT stick length of their GT end points. PDJ (`pdj_curve`): the
per-column detection rate against the normalised distance threshold.
"""

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from jaxpose import annotation_io
from jaxpose import skeletons as skeletons_lib
from jaxpose.skeletons import Skeleton

# The normalisers and FLIC's observer-centric swap live with the annotation conventions (the
# data builders compute them too); they are part of the metrics' interface as well.
MPII_HEAD_SIZE_FACTOR = annotation_io.MPII_HEAD_SIZE_FACTOR
mpii_head_size = annotation_io.mpii_head_size
torso_size = annotation_io.torso_size
observer_centric = annotation_io.observer_centric

TOTAL = "Total"
UBODY = "UBody"
UBODY_COLUMNS = ("Head", "Shoulder", "Elbow", "Wrist")
# MATLAB's 0:0.01:0.5, as exact decimals.
AUC_THRESHOLDS = np.arange(51) / 100
PDJ_THRESHOLDS = AUC_THRESHOLDS
PCP_COLUMNS = ("Torso", "Upper leg", "Lower leg", "Upper arm", "Forearm", "Head")

# Sticks for strict PCP: (column, end point a, end point b); an end point is the mean of the
# listed joints. LSP follows bearpaw/eval_pose `keypoints2sticks.m` (torso = mid-hip to
# mid-shoulder, head = neck to head top); FLIC: torso = neck to mid-hip, head = nose to neck.
PCP_STICKS: dict[str, tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]] = {
    "lsp": (("Torso", (2, 3), (8, 9)),
            ("Upper leg", (2,), (1,)), ("Upper leg", (3,), (4,)),
            ("Lower leg", (1,), (0,)), ("Lower leg", (4,), (5,)),
            ("Upper arm", (8,), (7,)), ("Upper arm", (9,), (10,)),
            ("Forearm", (7,), (6,)), ("Forearm", (10,), (11,)),
            ("Head", (12,), (13,))),
    "flic": (("Torso", (1,), (5, 9)), ("Head", (0,), (1,)),
             ("Upper arm", (2,), (3,)), ("Upper arm", (6,), (7,)),
             ("Forearm", (3,), (4,)), ("Forearm", (7,), (8,))),
}


@dataclasses.dataclass(frozen=True)
class Convention:
  """How a codebase turns normalised distances into a PCK table (see the module docstring)."""

  name: str
  inclusive: bool = True  # Correct when d <= t (True) or when d < t (False).
  pred_offset: float = 0.0  # Pixels added to both coordinates of every prediction first.
  head_top_only: bool = False  # Head column = the head-top joint alone.
  total: str = "pooled"  # "pooled" over counted joints, or "joint_mean" of per-joint PCKs.


CONVENTIONS: dict[str, Convention] = {
    "official": Convention("official"),
    "pytorch-pose": Convention("pytorch-pose", inclusive=False, head_top_only=True,
                               total="joint_mean"),
    "mmpose": Convention("mmpose", inclusive=False, pred_offset=1.0, head_top_only=True),
}


def get_convention(convention: str | Convention) -> Convention:
  """Looks up a convention by name (a `Convention` passes through)."""
  if isinstance(convention, Convention):
    return convention
  try:
    return CONVENTIONS[convention]
  except KeyError:
    raise ValueError(
        f"Unknown convention {convention!r}; known: {sorted(CONVENTIONS)}") from None


@dataclasses.dataclass(frozen=True)
class JointDistances:
  """Normalised distances. `distances` is inf where a joint is not counted or not finite."""

  distances: np.ndarray  # float64 [N, K]: ||pred - gt|| / norm.
  counted: np.ndarray  # bool [N, K]: annotated and scored.
  num_nonfinite: int  # Counted joints whose prediction is NaN or infinite (scored wrong).


@dataclasses.dataclass(frozen=True)
class JointCorrectness:
  """Per-joint outcome at one threshold (or [T, N, K] for T thresholds)."""

  correct: np.ndarray  # bool [N, K]; always False where not counted.
  counted: np.ndarray  # bool [N, K]: annotated and scored.
  num_nonfinite: int  # Counted joints with a NaN/inf prediction (they are wrong).


def _describe_people(index: np.ndarray, limit: int = 10) -> str:
  shown = ", ".join(str(i) for i in index[:limit])
  more = f" and {len(index) - limit} more" if len(index) > limit else ""
  return f"person index(es) {shown}{more}"


def _as_inputs(pred, gt, visible, norm):
  """Checks shapes and converts to float64 / bool arrays."""
  pred = np.asarray(pred, np.float64)
  gt = np.asarray(gt, np.float64)
  for name, a in (("pred", pred), ("gt", gt)):
    if a.ndim != 3 or a.shape[-1] != 2:
      raise ValueError(f"{name} must be [N, K, 2]; got shape {a.shape}.")
  if pred.shape[0] != gt.shape[0]:
    raise ValueError(f"pred has {pred.shape[0]} people but gt has {gt.shape[0]}.")
  if pred.shape[1] != gt.shape[1]:
    raise ValueError(f"pred has {pred.shape[1]} joints but gt has {gt.shape[1]}.")
  n, k = gt.shape[:2]
  visible = np.ones((n, k), bool) if visible is None else np.asarray(visible) > 0
  if visible.shape != (n, k):
    raise ValueError(f"visible must be [N, K] = {(n, k)}; got {visible.shape} "
                     f"({visible.shape[0] if visible.ndim else 0} people vs {n} in gt).")
  norm = np.asarray(norm, np.float64)
  if norm.shape != (n,):
    raise ValueError(f"norm must have one value per person: {n} people in gt but norm has "
                     f"shape {norm.shape}.")
  return pred, gt, visible, norm


def _scored_mask(num_joints: int, scored: Sequence[int] | None) -> np.ndarray:
  mask = np.zeros(num_joints, bool)
  mask[list(range(num_joints)) if scored is None else list(scored)] = True
  return mask


def normalized_distances(pred, gt, visible, norm, *, scored: Sequence[int] | None = None,
                         pred_offset: float = 0.0) -> JointDistances:
  """||pred + pred_offset - gt|| / norm for every counted joint.

  Args:
    pred: [N, K, 2] predictions; NaN/inf allowed (counted as wrong).
    gt: [N, K, 2] ground truth, same pixel convention as `pred`.
    visible: [N, K], non-zero = annotated; None = all annotated.
    norm: [N] per-person normaliser.
    scored: joint indices that are scored (None = all).
    pred_offset: pixels added to both coordinates of the predictions.

  Returns:
    `JointDistances`.

  Raises:
    ValueError: on mismatched shapes or person counts, an annotated ground-truth joint that is
      not finite, or a zero/non-finite normaliser for a person with counted joints.
  """
  pred, gt, visible, norm = _as_inputs(pred, gt, visible, norm)
  counted = visible & _scored_mask(gt.shape[1], scored)[None, :]
  bad_gt = np.flatnonzero((counted & ~np.isfinite(gt).all(-1)).any(-1))
  if bad_gt.size:
    raise ValueError(f"Non-finite ground truth for annotated joints of "
                     f"{_describe_people(bad_gt)}.")
  valid_norm = np.isfinite(norm) & (norm > 0)
  bad_norm = np.flatnonzero(counted.any(-1) & ~valid_norm)
  if bad_norm.size:
    raise ValueError(f"Zero or non-finite normaliser for {_describe_people(bad_norm)} "
                     f"(values {norm[bad_norm[:10]].tolist()}).")
  finite = np.isfinite(pred).all(-1)
  safe_pred = np.where(finite[..., None], pred, 0.0) + pred_offset
  dist = np.linalg.norm(safe_pred - gt, axis=-1) / np.where(valid_norm, norm, 1.0)[:, None]
  ok = counted & finite
  return JointDistances(distances=np.where(ok, dist, np.inf), counted=counted,
                        num_nonfinite=int(np.sum(counted & ~finite)))


def _compare(distances: np.ndarray, thresholds, inclusive: bool) -> np.ndarray:
  t = np.asarray(thresholds, np.float64)
  t = t.reshape(t.shape + (1,) * distances.ndim)
  return distances <= t if inclusive else distances < t


def joint_correctness(pred, gt, visible, norm, threshold: float = 0.5, *,
                      scored: Sequence[int] | None = None, inclusive: bool = True,
                      pred_offset: float = 0.0) -> JointCorrectness:
  """Which joints are correct: ||pred - gt|| / norm <= threshold (`<` if not inclusive).

  `threshold` may also be an array of T thresholds; `correct` is then [T, N, K]. See
  `normalized_distances` for the arguments and errors.
  """
  d = normalized_distances(pred, gt, visible, norm, scored=scored, pred_offset=pred_offset)
  return JointCorrectness(correct=_compare(d.distances, threshold, inclusive),
                          counted=d.counted, num_nonfinite=d.num_nonfinite)


def _check_skeleton(gt, skeleton: Skeleton) -> None:
  k = np.shape(gt)[1] if np.ndim(gt) == 3 else None
  if k != skeleton.num_joints:
    raise ValueError(f"Skeleton {skeleton.name!r} has {skeleton.num_joints} joints but gt has "
                     f"shape {np.shape(gt)}.")


def _column_groups(skeleton: Skeleton, convention: Convention):
  groups = []
  for name, idx in skeleton.groups:
    if name == "Head" and convention.head_top_only and "head_top" in skeleton.joints:
      idx = (skeleton.index("head_top"),)
    groups.append((name, tuple(idx)))
  return groups


def _mean_of_joints(per_joint: np.ndarray, has_count: np.ndarray) -> np.ndarray:
  """Unweighted mean over the last axis of the joints that have annotations (NaN if none)."""
  num = has_count.sum()
  if num == 0:
    return np.full(per_joint.shape[:-1], np.nan)
  return np.where(has_count, per_joint, 0.0).sum(-1) / num


def _pooled(hits: np.ndarray, counts: np.ndarray) -> np.ndarray:
  total = counts.sum()
  return 100.0 * hits.sum(-1) / total if total else np.full(hits.shape[:-1], np.nan)


def _reduce(correct: np.ndarray, counted: np.ndarray, skeleton: Skeleton,
            convention: Convention) -> dict[str, np.ndarray]:
  """Table columns from correct [..., N, K] and counted [N, K]."""
  hits = correct.sum(-2).astype(np.float64)  # [..., K]
  counts = counted.sum(0)  # [K]
  with np.errstate(invalid="ignore", divide="ignore"):
    per_joint = 100.0 * hits / counts
  table = {}
  groups = _column_groups(skeleton, convention)
  for name, idx in groups:
    table[name] = _mean_of_joints(per_joint[..., idx], counts[list(idx)] > 0)
  scored = list(skeleton.scored_joints)
  if convention.total == "pooled":
    table[TOTAL] = _pooled(hits[..., scored], counts[scored])
  elif convention.total == "joint_mean":
    table[TOTAL] = _mean_of_joints(per_joint[..., scored], counts[scored] > 0)
  else:
    raise ValueError(f"Unknown Convention.total {convention.total!r}.")
  if skeleton.name == "mpii":
    upper = sorted({j for name, idx in groups if name in UBODY_COLUMNS for j in idx})
    table[UBODY] = _pooled(hits[..., upper], counts[upper])
  return table


def pck_columns(skeleton: Skeleton) -> tuple[str, ...]:
  """The columns `pck_table` returns for `skeleton`, in table order."""
  cols = tuple(name for name, _ in skeleton.groups) + (TOTAL,)
  return cols + ((UBODY,) if skeleton.name == "mpii" else ())


def pck_table(pred, gt, visible, norm, skeleton: Skeleton, threshold: float = 0.5,
              convention: str | Convention = "official") -> dict[str, float]:
  """PCK (PCKh with head-size `norm`) in percent per table column, plus Total (and UBody).

  Args:
    pred: [N, K, 2] predictions (NaN/inf = wrong).
    gt: [N, K, 2] ground truth in the same pixel convention.
    visible: [N, K] non-zero = annotated (None = all).
    norm: [N] normaliser (MPII: 0.6 x head-box diagonal; LSP/FLIC: torso size).
    skeleton: the joint set; its `groups` are the columns.
    threshold: fraction of `norm`.
    convention: "official" (default), "pytorch-pose", "mmpose" or a `Convention`.

  Returns:
    {column: percent} for each of skeleton.groups, "Total" and, for MPII, "UBody".
  """
  conv = get_convention(convention)
  _check_skeleton(gt, skeleton)
  c = joint_correctness(pred, gt, visible, norm, threshold, scored=skeleton.scored_joints,
                        inclusive=conv.inclusive, pred_offset=conv.pred_offset)
  return {k: float(v) for k, v in _reduce(c.correct, c.counted, skeleton, conv).items()}


def pck_curve(pred, gt, visible, norm, skeleton: Skeleton,
              thresholds: Sequence[float] = AUC_THRESHOLDS,
              convention: str | Convention = "official") -> dict[str, np.ndarray]:
  """`pck_table` at every threshold: {column: [T] percent}. Distances are computed once."""
  conv = get_convention(convention)
  _check_skeleton(gt, skeleton)
  d = normalized_distances(pred, gt, visible, norm, scored=skeleton.scored_joints,
                           pred_offset=conv.pred_offset)
  correct = _compare(d.distances, np.asarray(thresholds, np.float64).reshape(-1),
                     conv.inclusive)
  return _reduce(correct, d.counted, skeleton, conv)


def auc_from_curve(thresholds: Sequence[float], values: Sequence[float]) -> float:
  """Trapezoidal area under `values` over `thresholds`, divided by the threshold range."""
  t = np.asarray(thresholds, np.float64)
  v = np.asarray(values, np.float64)
  if t.ndim != 1 or t.shape != v.shape or t.size < 2 or t[-1] <= t[0]:
    raise ValueError(f"Need >= 2 increasing thresholds and as many values; got {t.shape} "
                     f"thresholds and {v.shape} values.")
  return float(np.sum((v[1:] + v[:-1]) * np.diff(t)) / 2.0 / (t[-1] - t[0]))


def auc(pred, gt, visible, norm, skeleton: Skeleton,
        thresholds: Sequence[float] = AUC_THRESHOLDS,
        convention: str | Convention = "official") -> float:
  """Area under the Total PCK(h) curve over `thresholds`, x normalised to [0, 1]; percent."""
  curve = pck_curve(pred, gt, visible, norm, skeleton, thresholds, convention)
  return auc_from_curve(thresholds, curve[TOTAL])


# The headline metric per joint set: (name, threshold). MPII: PCKh@0.5 (head size); LSP and
# FLIC: PCK@0.2 (torso size). `norm_size` in the feature dict is the matching normaliser.
HEADLINE = {"mpii": ("PCKh", 0.5), "lsp": ("PCK", 0.2), "flic": ("PCK", 0.2),
            "flic9": ("PCK", 0.2)}
PCKH01_COLUMN = "PCKh@0.1"  # Extra columns of the headline table.
AUC_COLUMN = "AUC"


def _headline(skeleton: Skeleton) -> tuple[str, float]:
  if skeleton.name not in HEADLINE:
    raise ValueError(f"No headline metric for skeleton {skeleton.name!r}; known: "
                     f"{sorted(HEADLINE)}.")
  return HEADLINE[skeleton.name]


def headline_name(skeleton: Skeleton) -> str:
  """The headline table's name: "PCKh@0.5" (MPII) or "PCK@0.2" (LSP, FLIC)."""
  name, threshold = _headline(skeleton)
  return f"{name}@{threshold}"


def headline_columns(skeleton: Skeleton) -> tuple[str, ...]:
  """The columns `headline_table` returns for `skeleton`, in table order."""
  extra = (PCKH01_COLUMN,) if _headline(skeleton)[0] == "PCKh" else ()
  return pck_columns(skeleton) + extra + (AUC_COLUMN,)


def headline_table(pred, gt, visible, norm, skeleton: Skeleton,
                   convention: str | Convention = "official") -> dict[str, float]:
  """The data set's headline table in percent: what the papers report and evaluation prints.

  MPII: PCKh@0.5 per column, Total and UBody, plus "PCKh@0.1" (its Total) and "AUC" (of the
  Total curve over thresholds 0..0.5). LSP and FLIC: PCK@0.2 per column and Total, plus "AUC"
  over the same normalised thresholds.

  Args:
    pred: [N, K, 2] predictions (NaN/inf = wrong).
    gt: [N, K, 2] ground truth in the same pixel convention (FLIC: observer-centric).
    visible: [N, K] non-zero = annotated (None = all).
    norm: [N] normaliser (MPII: head size; LSP/FLIC: torso size).
    skeleton: MPII, LSP or FLIC (`HEADLINE` says which metric).
    convention: MPII PCKh convention ("official" by default); see `pck_table`.

  Returns:
    {column: percent} with the keys of `headline_columns(skeleton)`.
  """
  name, threshold = _headline(skeleton)
  args = (pred, gt, visible, norm, skeleton)
  table = pck_table(*args, threshold=threshold, convention=convention)
  if name == "PCKh":
    table[PCKH01_COLUMN] = pck_table(*args, threshold=0.1, convention=convention)[TOTAL]
  table[AUC_COLUMN] = auc(*args, convention=convention)
  return table


def pdj_curve(pred, gt, visible, norm, skeleton: Skeleton,
              thresholds: Sequence[float] = PDJ_THRESHOLDS) -> dict[str, np.ndarray]:
  """Percentage of detected joints per column against the normalised distance threshold.

  PDJ uses the data set's normaliser (torso size for LSP and FLIC, as in bearpaw/eval_pose;
  for MPII the head size, which makes it the PCKh curve) and the official rules (`<=`).
  """
  return pck_curve(pred, gt, visible, norm, skeleton, thresholds, "official")


def lsp_pck_table(pred, gt, visible=None, threshold: float = 0.2) -> dict[str, float]:
  """LSP PCK@0.2: torso normaliser, `<=`, all 14 joints (LSP's flag column is not a mask)."""
  skeleton = skeletons_lib.LSP
  return pck_table(pred, gt, visible, torso_size(gt, skeleton), skeleton, threshold)


def flic_pck_table(pred, gt, visible=None, threshold: float = 0.2) -> dict[str, float]:
  """FLIC PCK@0.2: ground truth made observer-centric first, then the torso normaliser."""
  skeleton = skeletons_lib.FLIC
  gt, visible, _ = observer_centric(gt, skeleton, visible)
  return pck_table(pred, gt, visible, torso_size(gt, skeleton), skeleton, threshold)


def pcp_table(pred, gt, skeleton: Skeleton, visible=None,
              threshold: float = 0.5) -> dict[str, float]:
  """Strict PCP in percent per limb column (`PCP_COLUMNS` present in the skeleton) + Total.

  A stick is correct when both predicted end points lie within threshold x the GT stick
  length of their GT end points (`<=`; a zero-length GT stick needs exact end points). A
  stick counts when all its joints are annotated. Columns average their sticks' PCPs (left and
  right); Total is pooled over all sticks.
  """
  if skeleton.name not in PCP_STICKS:
    raise ValueError(f"No PCP sticks for skeleton {skeleton.name!r}; known: "
                     f"{sorted(PCP_STICKS)}.")
  _check_skeleton(gt, skeleton)
  pred, gt, visible, _ = _as_inputs(pred, gt, visible, np.ones(np.shape(gt)[0]))
  sticks = PCP_STICKS[skeleton.name]
  hits, counts, columns = [], [], []
  for column, a, b in sticks:
    ga, gb = gt[:, list(a)].mean(1), gt[:, list(b)].mean(1)
    pa, pb = pred[:, list(a)].mean(1), pred[:, list(b)].mean(1)
    limit = threshold * np.linalg.norm(ga - gb, axis=-1)
    with np.errstate(invalid="ignore"):
      ok = ((np.linalg.norm(pa - ga, axis=-1) <= limit)
            & (np.linalg.norm(pb - gb, axis=-1) <= limit))
    counted = visible[:, list(a) + list(b)].all(-1)
    hits.append(np.sum(ok & counted))
    counts.append(np.sum(counted))
    columns.append(column)
  hits, counts = np.asarray(hits, np.float64), np.asarray(counts)
  with np.errstate(invalid="ignore", divide="ignore"):
    per_stick = 100.0 * hits / counts
  table = {}
  for column in PCP_COLUMNS:
    idx = [i for i, c in enumerate(columns) if c == column]
    if idx:
      table[column] = float(_mean_of_joints(per_stick[idx], counts[idx] > 0))
  table[TOTAL] = float(_pooled(hits, counts))
  return table


def _cell(value, digits: int) -> str:
  return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def format_rows(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str],
                title: str | None = None, digits: int = 2) -> str:
  """Several labelled rows under one header (e.g. PDJ at a few thresholds); "-" = missing."""
  columns = list(columns)
  labels = list(rows)
  cells = [[_cell(rows[r].get(c), digits) for c in columns] for r in labels]
  widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
  lw = max((len(r) for r in labels), default=0)
  lines = [title] if title else []
  lines.append(" " * lw + (" " if lw else "") + " ".join(
      c.rjust(w) for c, w in zip(columns, widths)))
  for label, row in zip(labels, cells):
    lines.append(label.ljust(lw) + (" " if lw else "") + " ".join(
        s.rjust(w) for s, w in zip(row, widths)))
  return "\n".join(lines)


def format_table(table: Mapping[str, float], columns: Sequence[str] | None = None,
                 title: str | None = None, digits: int = 2) -> str:
  """A paper-layout table: optional title line, a header of column names, one row of numbers.

  Args:
    table: {column: value in percent}.
    columns: columns in order (default: the table's keys); missing ones print as "-".
    title: first line, if given.
    digits: decimals.
  """
  columns = list(table) if columns is None else list(columns)
  return format_rows({"": table}, columns, title, digits)
