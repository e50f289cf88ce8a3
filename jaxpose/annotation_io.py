"""The official annotation files' conventions, and the per-person quantities read off them.

Shared by the data builders (`jaxpose.data.mpii`, `.lsp`, `.flic`), the ground-truth readers
(`jaxpose.prediction_files`) and the metrics, and below all of them: it imports only
`jaxpose.skeletons`.

Pixel convention: the official ground-truth files and the published result files all use
MATLAB's 1-based pixels; jaxpose works in 0-based pixels (see `jaxpose.skeletons`).
`from_matlab_pixels` is the one place where 1-based coordinates become 0-based, and
`to_matlab_pixels` the one place where they go back.
"""

import numpy as np
import scipy.io

from jaxpose.skeletons import Skeleton

MATLAB_PIXEL_OFFSET = 1.0  # MATLAB pixel (1, 1) is jaxpose pixel (0, 0).
LSP_TEST = slice(1000, 2000)  # Images 1001-2000 of joints.mat.
# FLIC `examples.mat` `coords` slots (0-based) of the FLIC joint set; the neck is the
# midpoint of the shoulders (slots 0 and 3).
FLIC_SLOTS = {"nose": 16, "r_shoulder": 3, "r_elbow": 4, "r_wrist": 5, "r_hip": 9,
              "l_shoulder": 0, "l_elbow": 1, "l_wrist": 2, "l_hip": 6}
MPII_HEAD_SIZE_FACTOR = 0.6  # evalMPII's SC_BIAS: head size = 0.6 x head-box diagonal.


def from_matlab_pixels(xy) -> np.ndarray:
  """1-based MATLAB pixel coordinates -> jaxpose's 0-based pixels."""
  return np.asarray(xy, np.float64) - MATLAB_PIXEL_OFFSET


def to_matlab_pixels(xy) -> np.ndarray:
  """jaxpose's 0-based pixels -> 1-based MATLAB pixel coordinates."""
  return np.asarray(xy, np.float64) + MATLAB_PIXEL_OFFSET


def read_mpii_ground_truth(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """MPII validation ground truth (`detections_our_format.mat`, `mpii_gt_val.mat`, ...).

  Args:
    path: a .mat with pos_gt_src (16 x 2 x N), jnt_missing (16 x N) and headboxes_src
      (2 x 2 x N), 1-based pixels.

  Returns:
    (joints [N, 16, 2] 0-based, visible [N, 16] bool (jnt_missing == 0),
    head_boxes [N, 4] x1, y1, x2, y2 0-based).

  Raises:
    ValueError: a key is missing; the message names the file and the keys it has.
  """
  m = scipy.io.loadmat(path)
  missing = [k for k in ("pos_gt_src", "jnt_missing", "headboxes_src") if k not in m]
  if missing:
    raise ValueError(f"{path}: no {missing}; expected the MPII validation ground truth "
                     f"(found keys {sorted(k for k in m if not k.startswith('__'))}).")
  joints = from_matlab_pixels(m["pos_gt_src"].transpose(2, 0, 1))  # 16x2xN -> Nx16x2.
  visible = m["jnt_missing"].T == 0
  head_boxes = from_matlab_pixels(m["headboxes_src"].transpose(2, 0, 1)).reshape(-1, 4)
  return joints, visible, head_boxes


def mpii_head_size(head_boxes) -> np.ndarray:
  """0.6 x the head-box diagonal; `head_boxes` is [N, 4] (x1, y1, x2, y2) or [N, 2, 2]."""
  boxes = np.asarray(head_boxes, np.float64).reshape(-1, 2, 2)
  return MPII_HEAD_SIZE_FACTOR * np.linalg.norm(boxes[:, 1] - boxes[:, 0], axis=-1)


def torso_size(gt, skeleton: Skeleton) -> np.ndarray:
  """||GT left shoulder - GT right hip|| per person (the LSP and FLIC PCK normaliser)."""
  gt = np.asarray(gt, np.float64)
  return np.linalg.norm(gt[:, skeleton.index("l_shoulder")] - gt[:, skeleton.index("r_hip")],
                        axis=-1)


def observer_centric(gt, skeleton: Skeleton, visible=None):
  """Swaps left and right of people seen from the back (right shoulder x > left shoulder x).

  FLIC's labels are observer-centric except for the back-facing people; its evaluation swaps
  those before scoring. Idempotent.

  Returns:
    (gt [N, K, 2], visible [N, K] or None, swapped [N] bool).
  """
  gt = np.asarray(gt, np.float64)
  swapped = gt[:, skeleton.index("r_shoulder"), 0] > gt[:, skeleton.index("l_shoulder"), 0]
  perm = skeleton.flip_permutation
  out = np.where(swapped[:, None, None], gt[:, perm], gt)
  if visible is not None:
    visible = np.asarray(visible)
    visible = np.where(swapped[:, None], visible[:, perm], visible)
  return out, visible, swapped
