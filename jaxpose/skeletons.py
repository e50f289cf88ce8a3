"""Joint sets: names, left/right flip pairs, limbs and the columns of the papers' tables.

Every data set is served in one of these joint orders; joint arrays are always K x 2 in
0-based pixel coordinates (x, y), pixel centres at integers.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Skeleton:
  """A joint set. `flip_pairs` are (left, right) index pairs swapped by a horizontal flip."""

  name: str
  joints: tuple[str, ...]
  flip_pairs: tuple[tuple[int, int], ...]
  limbs: tuple[tuple[int, int], ...]  # Stick pairs for drawing.
  # Table columns: name -> joint indices pooled into that column.
  groups: tuple[tuple[str, tuple[int, ...]], ...]

  @property
  def num_joints(self) -> int:
    return len(self.joints)

  @property
  def flip_permutation(self) -> np.ndarray:
    """Index array p such that flipped_joints = joints[p] after mirroring x."""
    perm = np.arange(self.num_joints)
    for a, b in self.flip_pairs:
      perm[a], perm[b] = b, a
    return perm

  @property
  def scored_joints(self) -> tuple[int, ...]:
    """Joints that appear in some table column (MPII leaves pelvis and thorax out)."""
    return tuple(sorted({j for _, idx in self.groups for j in idx}))

  def index(self, name: str) -> int:
    return self.joints.index(name)


# MPII order (the official release and every MPII evaluator use it).
MPII = Skeleton(
    name="mpii",
    joints=("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis",
            "thorax", "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder",
            "l_shoulder", "l_elbow", "l_wrist"),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    limbs=((0, 1), (1, 2), (2, 6), (3, 6), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
           (10, 11), (11, 12), (12, 7), (13, 7), (13, 14), (14, 15)),
    groups=(("Head", (8, 9)), ("Shoulder", (12, 13)), ("Elbow", (11, 14)),
            ("Wrist", (10, 15)), ("Hip", (2, 3)), ("Knee", (1, 4)), ("Ankle", (0, 5))),
)

# The columns of every PCKh/PCK table, in the papers' order.
TABLE_COLUMNS = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle")

# Leeds Sports Pose order (`joints.mat`); also the order of every published LSP result file.
LSP = Skeleton(
    name="lsp",
    joints=("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "r_wrist",
            "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist", "neck", "head_top"),
    flip_pairs=((0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9)),
    limbs=((0, 1), (1, 2), (3, 4), (4, 5), (6, 7), (7, 8), (9, 10), (10, 11), (8, 12),
           (9, 12), (12, 13), (2, 8), (3, 9), (2, 3)),
    groups=(("Head", (12, 13)), ("Shoulder", (8, 9)), ("Elbow", (7, 10)), ("Wrist", (6, 11)),
            ("Hip", (2, 3)), ("Knee", (1, 4)), ("Ankle", (0, 5))),
)

# FLIC, in the order of the published FLIC result files (bearpaw/eval_pose
# `flic-joints-test-oc.mat`). The neck is not labelled in FLIC: it is the midpoint of the
# shoulders. FLIC is labelled observer-centric ("r_" = the shoulder on the image's left for a
# person facing the camera).
FLIC = Skeleton(
    name="flic",
    joints=("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "r_hip", "l_shoulder",
            "l_elbow", "l_wrist", "l_hip"),
    flip_pairs=((2, 6), (3, 7), (4, 8), (5, 9)),
    limbs=((0, 1), (1, 2), (2, 3), (3, 4), (1, 6), (6, 7), (7, 8), (2, 5), (6, 9), (5, 9)),
    groups=(("Head", (0, 1)), ("Shoulder", (2, 6)), ("Elbow", (3, 7)), ("Wrist", (4, 8)),
            ("Hip", (5, 9))),
)

# The 9 FLIC joints of the released CPM FLIC model, in its output order (its tenth map is the
# background): FLIC without the neck, which FLIC does not label. Served from FLIC by name.
FLIC9 = Skeleton(
    name="flic9",
    joints=("l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist", "l_hip",
            "r_hip", "nose"),
    flip_pairs=((0, 3), (1, 4), (2, 5), (6, 7)),
    limbs=((0, 1), (1, 2), (3, 4), (4, 5), (0, 3), (0, 6), (3, 7), (6, 7)),
    groups=(("Head", (8,)), ("Shoulder", (0, 3)), ("Elbow", (1, 4)), ("Wrist", (2, 5)),
            ("Hip", (6, 7))),
)

SKELETONS = {"mpii": MPII, "lsp": LSP, "flic": FLIC, "flic9": FLIC9}


def get(name: str) -> Skeleton:
  try:
    return SKELETONS[name]
  except KeyError:
    raise ValueError(f"Unknown skeleton {name!r}; known: {sorted(SKELETONS)}") from None


def joint_subset(skeleton: Skeleton, native: Skeleton) -> np.ndarray:
  """Indices into `native`'s joints of `skeleton`'s joints (matched by name).

  Raises ValueError naming the joints `native` lacks.
  """
  missing = [j for j in skeleton.joints if j not in native.joints]
  if missing:
    raise ValueError(f"Skeleton {skeleton.name!r} needs joints {missing}, which the data set's "
                     f"skeleton {native.name!r} does not have.")
  return np.asarray([native.index(j) for j in skeleton.joints])
