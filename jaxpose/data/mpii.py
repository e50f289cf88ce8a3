"""MPII Human Pose as a TFDS builder over the official files (manual download).

Splits: "train" (22246 people) and "validation" (the 2958 people of Tompson et al.'s CVPR'15
validation set, which every MPII paper reports on), the split of the Stacked Hourglass code and
of mmpose/HRNet. Each person is one example of the feature dict of `jaxpose.data`, 16 joints
in MPII order (`skeletons.MPII`).

Three annotation layouts give the same people (BuilderConfigs):

  "default"    the official release `mpii_human_pose_v1_u12_1.mat` (RELEASE: annolist,
               img_train, single_person). The split comes from the lists shipped in
               `jaxpose/data/splits/mpii.npz`: the validation people by (RELEASE image index,
               person index), the train people by image name and count; within a train image
               the people are its `single_person` rectangles that have joints (all its
               rectangles with joints if only those match the count; neither is an error).
  "hourglass"  pose-hg-train's `train.h5` / `valid.h5` (joints integer-truncated there, up to
               1 px off; no head boxes: `head_box` is 0, `norm_size` is the file's `normalize`).
  "mmpose"     mmpose/HRNet JSON (`mpii_train.json` / `mpii_val.json`, or `train.json` /
               `valid.json`); no occlusion flags (`occluded` is 0); head boxes of validation
               people come from the ground-truth .mat shipped next to the JSON (`mpii_gt_val.mat`
               / `gt_valid.mat`); train people get `head_box` 0 and `norm_size` NaN.

Conventions (all layouts): joints 0-based (`annotation_io.from_matlab_pixels`); visible =
the joint is annotated (a point present and not (-1, -1)); occluded = MPII's is_visible == 0;
centre = objpos with y + 15 x MPII scale, scale = 1.25 x MPII scale (the hourglass
convention, so `valid.h5`'s centre is ours + 1 px); head_box = x1, y1, x2, y2; norm_size =
0.6 x head-box diagonal.

  builder = mpii.MpiiPose(data_dir="/data/tfds", manual_dir="/data/downloads/mpii")
  builder.download_and_prepare()
"""

import dataclasses
import functools
import json
import os
from collections.abc import Sequence

import h5py
import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from jaxpose import annotation_io
from jaxpose import skeletons
from jaxpose.data import builder_lib
from jaxpose.data.builder_lib import AnnotationError, People

NAME = "mpii"
NUM_JOINTS = skeletons.MPII.num_joints
SPLITS = ("train", "validation")
NUM_PEOPLE = {"train": 22246, "validation": 2958}
SPLITS_FILE = os.path.join(os.path.dirname(__file__), "splits", "mpii.npz")
CENTER_SHIFT_Y = 15.0  # Hourglass convention: centre y += 15 x MPII scale ...
SCALE_FACTOR = 1.25  # ... and scale x 1.25.
MISSING_POINT = -1.0  # mmpose/HRNet JSON: (-1, -1) = not annotated.

RELEASE_FILE = "mpii_human_pose_v1_u12_1.mat"
IMAGES_DIR = "images"
_RELEASE_FILES = (RELEASE_FILE, f"mpii_human_pose_v1_u12_2/{RELEASE_FILE}",
                  f"annot/{RELEASE_FILE}")
_H5_FILES = {"train": ("train.h5", "annot/train.h5"), "validation": ("valid.h5", "annot/valid.h5")}
_JSON_FILES = {
    "train": ("mpii_train.json", "train.json", "annotations/mpii_train.json", "annot/train.json"),
    "validation": ("mpii_val.json", "valid.json", "annotations/mpii_val.json",
                   "annot/valid.json"),
}
_GT_FILES = ("mpii_gt_val.mat", "gt_valid.mat", "detections_our_format.mat",
             "annotations/mpii_gt_val.mat", "annot/gt_valid.mat")

_SITE = "http://human-pose.mpi-inf.mpg.de/#download"
_IMAGES_HOWTO = (f"Download the images, mpii_human_pose_v1.tar.gz, from {_SITE} and extract "
                 f"it there (it unpacks to '{IMAGES_DIR}/').")
_HOWTO = {
    "release": (f"Download the annotations, mpii_human_pose_v1_u12_2.zip, from {_SITE} and "
                f"put {RELEASE_FILE} from it into the manual folder."),
    "hourglass": ("Download train.h5 and valid.h5 from github.com/princeton-vl/pose-hg-train, "
                  "folder data/mpii/annot/, into the manual folder."),
    "mmpose": ("Download the MPII annotations of mmpose (download.openmmlab.com/mmpose/"
               "datasets/mpii_annotations.tar: mpii_train.json, mpii_val.json, "
               "mpii_gt_val.mat) or HRNet (train.json, valid.json, gt_valid.mat) into the "
               "manual folder."),
}
MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Into the manual folder (default DATA_DIR/downloads/manual/mpii):
  * {_IMAGES_HOWTO}
  * config "default": {_HOWTO["release"]}
  * config "hourglass": {_HOWTO["hourglass"]}
  * config "mmpose": {_HOWTO["mmpose"]}
"""


# ----------------------------------------------------------------------------------------
# The standard split, shipped with the package.


@dataclasses.dataclass(frozen=True)
class StandardSplit:
  """Who is in train and validation, independent of the annotation layout."""

  train_images: np.ndarray  # [I] image names of the train people, in split order ...
  train_counts: np.ndarray  # [I] ... and the number of train people in each.
  valid_images: np.ndarray  # [2958] image name of each validation person, in split order.
  valid_image_index: np.ndarray  # [2958] 1-based index into RELEASE.annolist.
  valid_person_index: np.ndarray  # [2958] 1-based index into its annorect.

  def sizes(self) -> dict[str, int]:
    return {"train": int(self.train_counts.sum()), "validation": len(self.valid_images)}


@functools.lru_cache(maxsize=None)
def standard_split(path: str = SPLITS_FILE) -> StandardSplit:
  """The Tompson/hourglass split lists shipped in `jaxpose/data/splits/mpii.npz`."""
  with np.load(path, allow_pickle=False) as z:
    return StandardSplit(**{f.name: z[f.name] for f in dataclasses.fields(StandardSplit)})


def split_sizes() -> dict[str, int]:
  """People per split of the standard split: {"train": 22246, "validation": 2958}."""
  return standard_split().sizes()


def make_split_file(train_images_txt: str, valid_images_txt: str, detections_annolist: str,
                    out: str = SPLITS_FILE) -> StandardSplit:
  """Writes the split lists from pose-hg-train's image lists and Tompson's `detections.mat`.

  Args:
    train_images_txt: one image name per train person (train people of an image adjacent).
    valid_images_txt: one image name per validation person, in the order of
      `detections_annolist` (= `detections.mat` = `valid.h5`).
    detections_annolist: Tompson's validation annolist with RELEASE_img_index and
      RELEASE_person_index.
    out: the .npz written.
  """
  def lines(path):
    with open(path) as f:
      return [line.strip() for line in f if line.strip()]

  train = lines(train_images_txt)
  names, counts = [], []
  for name in train:
    if names and names[-1] == name:
      counts[-1] += 1
    else:
      names.append(name)
      counts.append(1)
  if len(set(names)) != len(names):
    raise ValueError(f"{train_images_txt}: the people of an image are not adjacent.")
  m = scipy.io.loadmat(detections_annolist)
  split = StandardSplit(
      train_images=np.array(names), train_counts=np.array(counts, np.int32),
      valid_images=np.array(lines(valid_images_txt)),
      valid_image_index=m["RELEASE_img_index"].ravel().astype(np.int32),
      valid_person_index=m["RELEASE_person_index"].ravel().astype(np.int32))
  if len(split.valid_images) != len(split.valid_image_index):
    raise ValueError(f"{valid_images_txt} has {len(split.valid_images)} people but "
                     f"{detections_annolist} {len(split.valid_image_index)}.")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  np.savez_compressed(out, **dataclasses.asdict(split))
  return split


# ----------------------------------------------------------------------------------------
# The official release file (MATLAB struct arrays as scipy.io.loadmat returns them).


def _field(record, name: str):
  """`record[name]`, or None when the struct has no such field or it is empty."""
  if record is None or record.dtype.names is None or name not in record.dtype.names:
    return None
  value = record[name]
  if isinstance(value, np.ndarray) and value.size == 0:
    return None
  return value


def _number(value) -> float:
  """A MATLAB scalar (numeric, logical, or a string such as '1' or 'true') as a float."""
  item = np.asarray(value).ravel()[0]
  if isinstance(item, str):
    item = item.strip().lower()
    item = {"true": 1.0, "false": 0.0}.get(item, item)
  return float(item)


def _structs(value) -> list:
  """The elements of a MATLAB struct array (an empty list for [] or None)."""
  if value is None or not isinstance(value, np.ndarray) or value.dtype.names is None:
    return []
  return list(value.ravel())


def parse_annorect(rect) -> dict[str, np.ndarray] | None:
  """One MPII `annorect` -> feature-dict arrays, or None if it has no joints or no box.

  A person needs annopoints with at least one point, objpos and scale. Coordinates come back
  0-based; centre and scale in the hourglass convention.
  """
  annopoints, objpos, scale = (_field(rect, k) for k in ("annopoints", "objpos", "scale"))
  if annopoints is None or objpos is None or scale is None:
    return None
  points = _structs(_field(annopoints.ravel()[0], "point"))
  if not points:
    return None
  joints = np.zeros((NUM_JOINTS, 2))
  visible = np.zeros(NUM_JOINTS)
  occluded = np.zeros(NUM_JOINTS)
  for point in points:
    j = int(_number(point["id"]))
    xy = np.array([_number(point["x"]), _number(point["y"])])
    if not 0 <= j < NUM_JOINTS:
      raise AnnotationError(f"MPII joint id {j} outside 0..{NUM_JOINTS - 1}.")
    if np.all(xy == MISSING_POINT):
      continue
    joints[j] = annotation_io.from_matlab_pixels(xy)
    visible[j] = 1.0
    flag = _field(point, "is_visible")
    occluded[j] = float(flag is not None and _number(flag) == 0)
  s = _number(scale)
  objpos = objpos.ravel()[0]
  center = annotation_io.from_matlab_pixels([_number(objpos["x"]), _number(objpos["y"])])
  corners = [_field(rect, k) for k in ("x1", "y1", "x2", "y2")]
  if any(c is None for c in corners):
    head_box, norm_size = np.zeros(4), np.nan
  else:
    head_box = annotation_io.from_matlab_pixels([_number(c) for c in corners])
    norm_size = annotation_io.mpii_head_size(head_box[None])[0]
  return {"joints": joints, "visible": visible, "occluded": occluded,
          "center": center + [0.0, CENTER_SHIFT_Y * s], "scale": SCALE_FACTOR * s,
          "head_box": head_box, "norm_size": norm_size}


_SHAPES = {"joints": (NUM_JOINTS, 2), "visible": (NUM_JOINTS,), "occluded": (NUM_JOINTS,),
           "center": (2,), "scale": (), "head_box": (4,), "norm_size": ()}


def rows_to_people(images: list[str], rows: list[dict]) -> People:
  """`parse_annorect` results (one per image name) -> People."""
  return People(images=images, **{f: np.stack([np.asarray(r[f]) for r in rows]) if rows
                                  else np.zeros((0,) + _SHAPES[f])
                                  for f in builder_lib.ARRAY_FIELDS})


def parse_annolist(annolist) -> list[list[dict | None]]:
  """Every annorect of every annolist entry, parsed (`parse_annorect`; None = no person)."""
  return [[parse_annorect(r) for r in _structs(_field(entry, "annorect"))]
          for entry in np.asarray(annolist).ravel()]


def read_release(path: str, images: Sequence[str] | None = None,
                 split: StandardSplit | None = None) -> dict[str, People]:
  """Train and validation people of the official release file (`RELEASE`).

  Args:
    path: mpii_human_pose_v1_u12_1.mat.
    images: only the people in these image files (None: all).
    split: the split lists (default: the shipped standard split).

  Raises:
    AnnotationError: the file does not hold a person the split lists name, or a train image
      does not hold as many annotated single people as the lists say.
  """
  split = split or standard_split()
  m = scipy.io.loadmat(path)
  if "RELEASE" not in m:
    raise AnnotationError(f"{path} holds no RELEASE struct; expected the official "
                          f"{RELEASE_FILE}.")
  release = m["RELEASE"].ravel()[0]
  annolist = release["annolist"].ravel()
  img_train = release["img_train"].ravel()
  single = _field(release, "single_person")
  single = None if single is None else single.ravel()
  names = [str(_field(entry, "image").ravel()[0]["name"].ravel()[0]) for entry in annolist]
  keep = None if images is None else set(images)

  def rects(i):
    return _structs(_field(annolist[i], "annorect"))

  def where(i):
    return f"{path}: RELEASE.annolist({i + 1}) ({names[i]})"

  # Validation: by RELEASE index.
  valid_names, valid_rows = [], []
  for name, i, p in zip(split.valid_images, split.valid_image_index, split.valid_person_index):
    if keep is not None and name not in keep:
      continue
    i, p = int(i) - 1, int(p) - 1
    if i >= len(annolist) or names[i] != name:
      found = names[i] if i < len(annolist) else "nothing"
      raise AnnotationError(f"{path}: the validation person in {name} should be "
                            f"RELEASE.annolist({i + 1}) but that is {found}; is this the "
                            f"official {RELEASE_FILE}?")
    row = parse_annorect(rects(i)[p]) if p < len(rects(i)) else None
    if row is None:
      raise AnnotationError(f"{where(i)}: annorect({p + 1}), a validation person, has no "
                            f"joints.")
    valid_names.append(name)
    valid_rows.append(row)

  # Train: by image name and count.
  index = {name: i for i, name in enumerate(names)}
  train_names, train_rows = [], []
  for name, count in zip(split.train_images, split.train_counts):
    if keep is not None and name not in keep:
      continue
    if name not in index:
      raise AnnotationError(f"{path}: train image {name} is not in RELEASE.annolist.")
    i = index[name]
    if int(_number(img_train[i])) != 1:
      raise AnnotationError(f"{where(i)} is a test image (img_train = 0).")
    annotated = [(r, row) for r, row in enumerate(map(parse_annorect, rects(i)))
                 if row is not None]
    singles = annotated
    if single is not None:
      wanted = {int(v) - 1 for v in np.asarray(single[i]).ravel()}
      singles = [(r, row) for r, row in annotated if r in wanted]
    # The single people with joints; all people with joints if that is what the count says.
    chosen = singles if len(singles) == count else annotated
    if len(chosen) != count:
      raise AnnotationError(f"{where(i)} holds {len(annotated)} annotated people "
                            f"({len(singles)} single) but the standard split has {count} train "
                            f"people there.")
    train_names += [name] * count
    train_rows += [row for _, row in chosen]
  return {"train": rows_to_people(train_names, train_rows),
          "validation": rows_to_people(valid_names, valid_rows)}


# ----------------------------------------------------------------------------------------
# pose-hg-train .h5 and mmpose/HRNet .json.


def read_hourglass(path: str) -> People:
  """People of a pose-hg-train `train.h5` / `valid.h5` (imgname, part, visible, center,
  scale, normalize); part (0, 0) = not annotated."""
  with h5py.File(path, "r") as f:
    missing = [k for k in ("imgname", "part", "visible", "center", "scale", "normalize")
               if k not in f]
    if missing:
      raise AnnotationError(f"{path}: not a pose-hg-train annotation file (no {missing}).")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["imgname"][()]]
    part = np.asarray(f["part"][()], np.float64)
    flag = np.asarray(f["visible"][()], np.float64)
    center = np.asarray(f["center"][()], np.float64)
    scale = np.asarray(f["scale"][()], np.float64)
    normalize = np.asarray(f["normalize"][()], np.float64)
  annotated = ~np.all(part == 0, axis=-1)
  return People(
      images=names,
      joints=np.where(annotated[..., None], annotation_io.from_matlab_pixels(part), 0.0),
      visible=annotated, occluded=annotated & (flag == 0),
      center=annotation_io.from_matlab_pixels(center), scale=scale,
      head_box=np.zeros((len(names), 4)), norm_size=normalize)


def read_mmpose(path: str) -> People:
  """People of an mmpose/HRNet MPII JSON (image, center, scale, joints, joints_vis): raw MPII
  objpos and scale, 1-based joints with (-1, -1) = not annotated. No head boxes (norm NaN)."""
  with open(path) as f:
    entries = json.load(f)
  if not isinstance(entries, list) or (entries and "joints" not in entries[0]):
    raise AnnotationError(f"{path}: expected a list of {{image, center, scale, joints, "
                          f"joints_vis}}.")
  n = len(entries)
  raw = np.array([e["joints"] for e in entries], np.float64).reshape(n, NUM_JOINTS, 2)
  vis = np.array([e["joints_vis"] for e in entries], np.float64).reshape(n, NUM_JOINTS)
  visible = (vis > 0) & ~np.all(raw == MISSING_POINT, axis=-1)
  s = np.array([float(e["scale"]) for e in entries])
  center = annotation_io.from_matlab_pixels([e["center"] for e in entries]).reshape(n, 2)
  return People(
      images=[e["image"] for e in entries],
      joints=np.where(visible[..., None], annotation_io.from_matlab_pixels(raw), 0.0),
      visible=visible, occluded=np.zeros((n, NUM_JOINTS)),
      center=center + np.stack([np.zeros(n), CENTER_SHIFT_Y * s], -1), scale=SCALE_FACTOR * s,
      head_box=np.zeros((n, 4)), norm_size=np.full(n, np.nan))


def attach_head_boxes(people: People, gt_path: str, split: StandardSplit | None = None) -> People:
  """Head boxes (and norm_size) of validation people from the evaluation ground truth.

  `gt_path` is the .mat every MPII validation evaluator reads (mpii_gt_val.mat, gt_valid.mat,
  detections_our_format.mat: pos_gt_src, jnt_missing, headboxes_src, in the order of the
  standard split). Each person is matched by image name and joints.

  Raises:
    AnnotationError: a person matches no ground-truth person, or several.
  """
  split = split or standard_split()
  try:
    gt_joints, gt_visible, gt_head_boxes = annotation_io.read_mpii_ground_truth(gt_path)
  except ValueError as e:
    raise AnnotationError(str(e)) from None
  gt_norm = annotation_io.mpii_head_size(gt_head_boxes)
  if len(gt_joints) != len(split.valid_images):
    raise AnnotationError(f"{gt_path} has {len(gt_joints)} people; the validation split has "
                          f"{len(split.valid_images)}.")
  by_image: dict[str, list[int]] = {}
  for g, name in enumerate(split.valid_images):
    by_image.setdefault(str(name), []).append(g)
  head_box = people.head_box.copy()
  norm_size = people.norm_size.copy()
  for i, name in enumerate(people.images):
    matches = []
    for g in by_image.get(name, []):
      both = (people.visible[i] > 0) & gt_visible[g]
      # detections_our_format.mat has a few coordinates zeroed; compare the others.
      known = both[:, None] & (gt_joints[g] != -annotation_io.MATLAB_PIXEL_OFFSET)
      if np.array_equal(people.visible[i] > 0, gt_visible[g]) and np.all(
          np.abs(people.joints[i] - gt_joints[g])[known] < 1.0):
        matches.append(g)
    if len(matches) != 1:
      raise AnnotationError(f"Validation person {i} ({name}) matches {len(matches)} people of "
                            f"{gt_path}; expected exactly one.")
    head_box[i] = gt_head_boxes[matches[0]]
    norm_size[i] = gt_norm[matches[0]]
  return dataclasses.replace(people, head_box=head_box, norm_size=norm_size)


def read_people(annotations: str, manual_dir: str,
                images: Sequence[str] | None = None) -> dict[str, People]:
  """The people of both splits from the files of one layout in `manual_dir`.

  Args:
    annotations: "release", "hourglass" or "mmpose".
    manual_dir: folder with the downloaded annotation files.
    images: only the people in these image files (None: all).
  """
  if annotations == "release":
    path = builder_lib.find_file(manual_dir, _RELEASE_FILES, _HOWTO["release"])
    return read_release(path, images)
  if annotations == "hourglass":
    return {split: read_hourglass(builder_lib.find_file(manual_dir, _H5_FILES[split],
                                                    _HOWTO["hourglass"])).only_images(images)
            for split in SPLITS}
  if annotations == "mmpose":
    out = {split: read_mmpose(builder_lib.find_file(manual_dir, _JSON_FILES[split],
                                                _HOWTO["mmpose"])).only_images(images)
           for split in SPLITS}
    gt = builder_lib.find_file(manual_dir, _GT_FILES, _HOWTO["mmpose"])
    out["validation"] = attach_head_boxes(out["validation"], gt)
    return out
  raise ValueError(f"Unknown MPII annotation layout {annotations!r}; known: 'release', "
                   f"'hourglass', 'mmpose'.")


# ----------------------------------------------------------------------------------------
# TFDS.


@dataclasses.dataclass(eq=False)
class MpiiConfig(builder_lib.ManualConfig):
  """Which annotation layout to read ("release", "hourglass" or "mmpose")."""

  annotations: str = "release"


class MpiiPose(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == "__main__"):
  """MPII Human Pose, single people, the standard train / validation split (16 joints)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      MpiiConfig(name="default", annotations="release",
                 description=f"From the official {RELEASE_FILE}."),
      MpiiConfig(name="hourglass", annotations="hourglass",
                 description="From pose-hg-train's train.h5 / valid.h5."),
      MpiiConfig(name="mmpose", annotations="mmpose",
                 description="From mmpose/HRNet's JSON files (+ ground-truth .mat)."),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def __init__(self, *, manual_dir: str | None = None, **kwargs):
    """`manual_dir`: the downloaded files (default DATA_DIR/downloads/manual/mpii)."""
    super().__init__(**kwargs)
    self._manual_dir = manual_dir

  def _info(self) -> tfds.core.DatasetInfo:
    return builder_lib.DatasetInfo(builder=self, description=__doc__,
                                   features=builder_lib.features(NUM_JOINTS),
                                   homepage="http://human-pose.mpi-inf.mpg.de/",
                                   disable_shuffling=True)  # Keep examples in id order.

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The files are read from the manual folder directly.
    manual_dir = builder_lib.builder_manual_dir(self, self._manual_dir, NAME)
    config = self.builder_config
    people = read_people(config.annotations, manual_dir, config.images)
    image_dir = builder_lib.find_file(manual_dir, (IMAGES_DIR,), _IMAGES_HOWTO)
    for split, p in people.items():
      if not len(p):
        raise ValueError(f"MPII {split}: no people (images={config.images}).")
    return {split: self._generate_examples(p, image_dir) for split, p in people.items()}

  def _generate_examples(self, people: builder_lib.People, image_dir: str,
                         expected_sizes=None):
    """Yields (id, example) for every person; stops on a bad image or annotation."""
    return builder_lib.generate_examples(people, image_dir, expected_sizes)
