"""FLIC (Frames Labeled In Cinema) as a TFDS builder over the official files (manual download).

Splits by `examples.mat`'s flags: "train" (istrain, 3987 people) and "test" (istest, 1016),
in file order; 10 joints in the order of the published FLIC results (`skeletons.FLIC`):
the `coords` slots named in `annotation_io.FLIC_SLOTS`, and the neck, which FLIC does not
label, as the midpoint of the shoulders.

Labels are made observer-centric as the FLIC evaluation does: people seen from the back
(right shoulder's x > left shoulder's x; 199 train and 48 test people) have left and right
swapped (`annotation_io.observer_centric`). Every one of these slots is labelled in every example,
so visible = 1 and occluded = 0. FLIC has no person centre, scale or head box: centre = middle
of the joints' bounding box, scale = 1.6 x its longer side / 200 (more margin than LSP's 1.25
because the joints stop at the nose and the hips), head_box = 0, norm_size = torso size
||l-shoulder - r-hip|| after the swap (the FLIC PCK normaliser). Each image must have the size
`imgdims` states.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from jaxpose import annotation_io
from jaxpose import skeletons
from jaxpose.data import builder_lib
from jaxpose.data.builder_lib import AnnotationError, People

NAME = "flic"
SKELETON = skeletons.FLIC
NUM_JOINTS = SKELETON.num_joints
NUM_PEOPLE = {"train": 3987, "test": 1016}
BOX_MARGIN = 1.6  # Crop side / longer side of the joints' box.
NECK_SLOTS = (0, 3)  # The neck is the midpoint of these `coords` slots (the shoulders).

EXAMPLES_FILE = "examples.mat"
IMAGES_DIR = "images"
_SITE = "https://bensapp.github.io/flic-dataset.html"
_HOWTO = (f"Download FLIC.zip (not FLIC-full) from {_SITE} and extract it into the manual "
          f"folder ({EXAMPLES_FILE} and {IMAGES_DIR}/).")
MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Into the manual folder (default DATA_DIR/downloads/manual/flic):
  * {_HOWTO}
"""


@dataclasses.dataclass(frozen=True)
class Annotations:
  """Everything the builder takes from examples.mat, for all examples in file order."""

  people: People  # Observer-centric, 0-based.
  image_sizes: np.ndarray  # [N, 2] (height, width) from imgdims.
  is_train: np.ndarray  # [N] bool
  is_test: np.ndarray  # [N] bool
  swapped: np.ndarray  # [N] bool: back-facing, left and right swapped.


def read_examples(path: str) -> Annotations:
  """Reads FLIC's examples.mat (coords 2 x 29, filepath, imgdims, istrain, istest)."""
  m = scipy.io.loadmat(path)
  if "examples" not in m:
    raise AnnotationError(f"{path} holds no 'examples'; expected FLIC's {EXAMPLES_FILE}.")
  examples = m["examples"].ravel()

  def scalar(e, key):
    return np.asarray(e[key]).ravel()[0]

  coords = np.stack([np.asarray(e["coords"], np.float64).T for e in examples])  # [N, 29, 2]
  raw = np.empty((len(examples), NUM_JOINTS, 2))
  for name, slot in annotation_io.FLIC_SLOTS.items():
    raw[:, SKELETON.index(name)] = coords[:, slot]
  raw[:, SKELETON.index("neck")] = coords[:, list(NECK_SLOTS)].mean(1)
  joints, _, swapped = annotation_io.observer_centric(annotation_io.from_matlab_pixels(raw),
                                                SKELETON)
  visible = np.isfinite(joints).all(-1)
  joints = np.where(visible[..., None], joints, 0.0)
  center, scale = builder_lib.box_center_scale(joints, visible, BOX_MARGIN)
  n = len(examples)
  people = People(
      images=[str(scalar(e, "filepath")) for e in examples], joints=joints, visible=visible,
      occluded=np.zeros((n, NUM_JOINTS)), center=center, scale=scale,
      head_box=np.zeros((n, 4)), norm_size=annotation_io.torso_size(joints, SKELETON))
  sizes = np.stack([np.asarray(e["imgdims"]).ravel()[:2] for e in examples]).astype(np.int64)
  is_train = np.array([int(scalar(e, "istrain")) == 1 for e in examples])
  is_test = np.array([int(scalar(e, "istest")) == 1 for e in examples])
  return Annotations(people, sizes, is_train, is_test, swapped)


def read_people(manual_dir: str, images: Sequence[str] | None = None
                ) -> dict[str, tuple[People, np.ndarray]]:
  """{split: (people, image sizes [N, 2])} of train and test; images relative to images/.

  Raises:
    AnnotationError: the split sizes are not FLIC's 3987 / 1016 (FLIC-full's examples.mat?).
  """
  path = builder_lib.find_file(manual_dir, (EXAMPLES_FILE,), _HOWTO)
  ann = read_examples(path)
  counts = {"train": int(ann.is_train.sum()), "test": int(ann.is_test.sum())}
  if counts != NUM_PEOPLE:
    raise AnnotationError(f"{path}: {counts} people flagged istrain / istest; FLIC has "
                          f"{NUM_PEOPLE} (is this FLIC-full's examples.mat?).")
  keep = np.ones(len(ann.people), bool)
  if images is not None:
    wanted = set(images)
    keep = np.array([name in wanted for name in ann.people.images])
  out = {}
  for split, flag in (("train", ann.is_train), ("test", ann.is_test)):
    index = np.flatnonzero(flag & keep)
    out[split] = (ann.people.take(index), ann.image_sizes[index])
  return out


class FlicPose(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == "__main__"):
  """FLIC: 3987 train and 1016 test people, 10 upper-body joints, observer-centric."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [builder_lib.ManualConfig(
      name="default", description="FLIC, observer-centric; 3987 / 1016.")]
  DEFAULT_CONFIG_NAME = "default"

  def __init__(self, *, manual_dir: str | None = None, **kwargs):
    """`manual_dir`: the downloaded files (default DATA_DIR/downloads/manual/flic)."""
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
    splits = read_people(manual_dir, config.images)
    image_dir = builder_lib.find_file(manual_dir, (IMAGES_DIR,), _HOWTO)
    for split, (people, _) in splits.items():
      if not len(people):
        raise ValueError(f"FLIC {split}: no people (images={config.images}).")
    return {split: self._generate_examples(people, image_dir, sizes)
            for split, (people, sizes) in splits.items()}

  def _generate_examples(self, people: builder_lib.People, image_dir: str,
                         expected_sizes=None):
    """Yields (id, example) for every person; stops on a bad image or annotation."""
    return builder_lib.generate_examples(people, image_dir, expected_sizes)
