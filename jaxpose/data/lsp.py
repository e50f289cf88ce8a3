"""Leeds Sports Pose (LSP) as a TFDS builder over the official files (manual download).

Splits: "train" = images 1-1000, "test" = images 1001-2000 of `joints.mat` (one person per
image), 14 joints in LSP order (`skeletons.LSP`). BuilderConfigs:

  "default"           the original person-centric labels (`joints.mat` of lsp_dataset.zip).
  "observer_centric"  the observer-centric relabelling of the same images (eval_pose's
                      `lsp-joints-OC.mat`; it swaps arms and legs of 756 people separately,
                      so it cannot be derived from `joints.mat` by a rule).
  "extended"          train = LSP train + the 10000 people of LSP-extended (lspet_dataset.zip,
                      its own `joints.mat`, 14 x 3 x 10000); test unchanged.

LSP has no person centre, scale or head box: centre = middle of the visible joints' bounding
box, scale = 1.25 x its longer side / 200 (`builder_lib.box_center_scale`), head_box = 0, and
norm_size = torso size ||l-shoulder - r-hip|| as the official LSP PCK uses (NaN where either
joint is missing). The flag row of the original `joints.mat` is 1 for occluded joints (every
joint is annotated, so visible = 1); LSP-extended's third row is 1 for visible joints, and a
joint at (0, 0) counts as not annotated there.
"""

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from jaxpose import annotation_io
from jaxpose import skeletons
from jaxpose.data import builder_lib
from jaxpose.data.builder_lib import AnnotationError, People

NAME = "lsp"
SKELETON = skeletons.LSP
NUM_JOINTS = SKELETON.num_joints
NUM_IMAGES = 2000
NUM_EXTENDED = 10000
TEST = annotation_io.LSP_TEST  # Images 1001-2000.
NUM_PEOPLE = {"train": 1000, "test": 1000}
BOX_MARGIN = 1.25  # Crop side / longer side of the joints' box.

JOINTS_FILE = "joints.mat"
IMAGES_DIR = "images"
_OC_FILES = ("lsp-joints-OC.mat", "joints_observer_centric.mat")
_LSPET_FILES = ("lspet/joints.mat", "lspet_dataset/joints.mat")

_SITE = "http://sam.johnson.io/research/lsp.html"
_HOWTO = {
    "lsp": (f"Download lsp_dataset.zip (not lsp_dataset_original.zip: other image sizes and "
            f"coordinates) from {_SITE} and extract it into the manual folder ({JOINTS_FILE} "
            f"and {IMAGES_DIR}/im0001.jpg ... im2000.jpg)."),
    "oc": ("Download gt/lsp-joints-OC.mat from github.com/bearpaw/eval_pose into the manual "
           "folder."),
    "lspet": ("Download lspet_dataset.zip from http://sam.johnson.io/research/lspet.html and "
              "extract it into the folder 'lspet' of the manual folder (lspet/joints.mat and "
              "lspet/images/im00001.jpg ... im10000.jpg)."),
}
MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Into the manual folder (default DATA_DIR/downloads/manual/lsp):
  * {_HOWTO["lsp"]}
  * config "observer_centric", also: {_HOWTO["oc"]}
  * config "extended", also: {_HOWTO["lspet"]}
"""


def image_name(index: int, extended: bool = False) -> str:
  """File name of 0-based image `index`: im0001.jpg (LSP) or im00001.jpg (LSP-extended)."""
  return f"im{index + 1:05d}.jpg" if extended else f"im{index + 1:04d}.jpg"


def read_joints(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """An LSP-style joints.mat -> (joints [N, 14, 2] 0-based, visible [N, 14], occluded [N, 14]).

  Layouts: 3 x 14 x N (the original LSP and its relabellings; row 3: 1 = occluded) and
  14 x 3 x N (LSP-extended; column 3: 1 = visible, and (0, 0) = not annotated).
  """
  raw = np.asarray(scipy.io.loadmat(path)["joints"], np.float64)
  if raw.ndim == 3 and raw.shape[:2] == (3, NUM_JOINTS):
    xyf = raw.transpose(2, 1, 0)  # [N, 14, 3]
    visible = np.isfinite(xyf[..., :2]).all(-1)
    occluded = visible & (xyf[..., 2] == 1)
  elif raw.ndim == 3 and raw.shape[:2] == (NUM_JOINTS, 3):
    xyf = raw.transpose(2, 0, 1)
    visible = np.isfinite(xyf[..., :2]).all(-1) & ~np.all(xyf[..., :2] == 0, axis=-1)
    occluded = visible & (xyf[..., 2] == 0)
  else:
    raise AnnotationError(f"{path}: 'joints' has shape {raw.shape}; expected 3 x 14 x N "
                          f"(LSP) or 14 x 3 x N (LSP-extended).")
  joints = np.where(visible[..., None], annotation_io.from_matlab_pixels(xyf[..., :2]), 0.0)
  return joints, visible, occluded


def make_people(joints: np.ndarray, visible: np.ndarray, occluded: np.ndarray,
                images: Sequence[str]) -> People:
  """People with centre/scale from the joints' box and the torso normaliser."""
  center, scale = builder_lib.box_center_scale(joints, visible, BOX_MARGIN)
  torso = annotation_io.torso_size(joints, SKELETON)
  has_torso = visible[:, [SKELETON.index("l_shoulder"), SKELETON.index("r_hip")]].all(-1)
  n = len(images)
  return People(images=list(images), joints=joints, visible=visible, occluded=occluded,
                center=center, scale=scale, head_box=np.zeros((n, 4)),
                norm_size=np.where(has_torso, torso, np.nan))


def read_people(manual_dir: str, observer_centric: bool = False, extended: bool = False,
                images: Sequence[str] | None = None) -> dict[str, People]:
  """Train and test people; image paths relative to `manual_dir`.

  Args:
    manual_dir: folder with joints.mat and images/ (and lspet/ for `extended`).
    observer_centric: read the observer-centric labels instead of joints.mat.
    extended: add LSP-extended to train.
    images: only the people in these image files (paths relative to `manual_dir`).
  """
  if observer_centric:
    path = builder_lib.find_file(manual_dir, _OC_FILES, _HOWTO["oc"])
  else:
    path = builder_lib.find_file(manual_dir, (JOINTS_FILE,), _HOWTO["lsp"])
  joints, visible, occluded = read_joints(path)
  if len(joints) != NUM_IMAGES:
    raise AnnotationError(f"{path} has {len(joints)} people; LSP has {NUM_IMAGES} (is this "
                          f"LSP-extended's joints.mat? That one goes into lspet/).")
  names = [f"{IMAGES_DIR}/{image_name(i)}" for i in range(NUM_IMAGES)]
  everyone = make_people(joints, visible, occluded, names)
  test = np.arange(NUM_IMAGES)[TEST]
  train = np.setdiff1d(np.arange(NUM_IMAGES), test)
  out = {"train": everyone.take(train), "test": everyone.take(test)}
  if extended:
    path = builder_lib.find_file(manual_dir, _LSPET_FILES, _HOWTO["lspet"])
    joints, visible, occluded = read_joints(path)
    if len(joints) != NUM_EXTENDED:
      raise AnnotationError(f"{path} has {len(joints)} people; LSP-extended has "
                            f"{NUM_EXTENDED}.")
    folder = os.path.relpath(os.path.dirname(path), manual_dir)
    names = [f"{folder}/{IMAGES_DIR}/{image_name(i, extended=True)}" for i in range(len(joints))]
    out["train"] = builder_lib.concatenate([out["train"],
                                            make_people(joints, visible, occluded, names)])
  return {split: p.only_images(images) for split, p in out.items()}


@dataclasses.dataclass(eq=False)
class LspConfig(builder_lib.ManualConfig):
  """Label convention and whether LSP-extended joins the train split."""

  observer_centric: bool = False
  extended: bool = False


class LspPose(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == "__main__"):
  """Leeds Sports Pose: 1000 train and 1000 test people, 14 joints."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      LspConfig(name="default", description="Person-centric joints.mat; 1000 / 1000."),
      LspConfig(name="observer_centric", observer_centric=True,
                description="Observer-centric labels (lsp-joints-OC.mat); 1000 / 1000."),
      LspConfig(name="extended", extended=True,
                description="Train + LSP-extended (11000 people); test 1000."),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def __init__(self, *, manual_dir: str | None = None, **kwargs):
    """`manual_dir`: the downloaded files (default DATA_DIR/downloads/manual/lsp)."""
    super().__init__(**kwargs)
    self._manual_dir = manual_dir

  def _info(self) -> tfds.core.DatasetInfo:
    return builder_lib.DatasetInfo(builder=self, description=__doc__,
                                   features=builder_lib.features(NUM_JOINTS), homepage=_SITE,
                                   disable_shuffling=True)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The files are read from the manual folder directly.
    manual_dir = builder_lib.builder_manual_dir(self, self._manual_dir, NAME)
    config = self.builder_config
    people = read_people(manual_dir, config.observer_centric, config.extended, config.images)
    builder_lib.find_file(manual_dir, (IMAGES_DIR,), _HOWTO["lsp"])
    if config.extended:
      builder_lib.find_file(manual_dir, tuple(os.path.join(os.path.dirname(f), IMAGES_DIR)
                                              for f in _LSPET_FILES), _HOWTO["lspet"])
    for split, p in people.items():
      if not len(p):
        raise ValueError(f"LSP {split}: no people (images={config.images}).")
    return {split: self._generate_examples(p, manual_dir) for split, p in people.items()}

  def _generate_examples(self, people: builder_lib.People, image_dir: str,
                         expected_sizes=None):
    """Yields (id, example) for every person; stops on a bad image or annotation."""
    return builder_lib.generate_examples(people, image_dir, expected_sizes)
