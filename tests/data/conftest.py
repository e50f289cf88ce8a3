"""Fixtures for the real-data-set builders: the shared annotation files and small JPEGs.

The official annotation files (no images) are looked up by tests/helpers.py:
$JAXPOSE_SHARED_DATA, then <repo>/shared/data, then <repo>/../shared/data. Tests that need
them are skipped when none exists.
"""

import math
import os
import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

import helpers
from jaxpose.data import builder_lib



SHARED = helpers.shared_data_dir(("mpii", "lsp", "flic"))


@pytest.fixture(name="shared", scope="session")
def _shared() -> pathlib.Path:
  """The folder with mpii/, lsp/ and flic/ annotation files (the test is skipped without)."""
  if SHARED is None:
    pytest.skip("shared/data annotation files not found (set JAXPOSE_SHARED_DATA)")
  return SHARED


def write_jpeg(path, size: tuple[int, int], seed: int = 0, quality: int = 80) -> None:
  """A smooth JPEG of `size` = (height, width): gradients and a few boxes, fast to encode."""
  height, width = size
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:height, :width].astype(np.float32)
  image = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1),
                    np.full_like(xx, rng.uniform())], -1) * 255
  for _ in range(3):
    x0, y0 = rng.integers(0, width), rng.integers(0, height)
    image[y0:y0 + height // 5, x0:x0 + width // 5] = rng.uniform(0, 255, 3)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image.astype(np.uint8)).save(path, format="JPEG", quality=quality)


def implied_size(joints: np.ndarray, visible: np.ndarray,
                 typical: tuple[int, int]) -> tuple[int, int]:
  """(height, width): `typical` unless a visible 0-based joint lies beyond it."""
  points = np.asarray(joints)[np.asarray(visible) > 0]
  if not len(points):
    return typical
  return (max(typical[0], math.ceil(points[:, 1].max()) + 1),
          max(typical[1], math.ceil(points[:, 0].max()) + 1))


@pytest.fixture(name="make_jpeg", scope="session")
def _make_jpeg():
  """write_jpeg(path, (height, width), seed=0)."""
  return write_jpeg


@pytest.fixture(name="jpegs_for", scope="session")
def _jpegs_for():
  """jpegs_for(people, image_dir, typical) writes one JPEG per image of a `builder_lib.People`
  at its implied size; returns {image: (height, width)}."""

  def write(people: builder_lib.People, image_dir, typical=(720, 1280)):
    sizes = {}
    for i, name in enumerate(people.images):
      mask = np.array([n == name for n in people.images])
      size = implied_size(people.joints[mask].reshape(-1, 2), people.visible[mask].ravel(),
                          typical)
      if name not in sizes:
        sizes[name] = size
        write_jpeg(os.path.join(image_dir, name), size, seed=i)
    return sizes

  return write


@pytest.fixture(name="no_stats", scope="session")
def _no_stats():
  """download_config(manual_dir) that skips TFDS statistics (faster test builds)."""

  def config(manual_dir):
    return tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir),
        compute_stats=tfds.download.ComputeStatsMode.SKIP)

  return config


def read_split(builder, split: str) -> list[dict]:
  """All examples of a built split, as numpy dicts (image decoded)."""
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


@pytest.fixture(name="read_split", scope="session")
def _read_split():
  """read_split(builder, split) -> list of numpy example dicts."""
  return read_split


@pytest.fixture(name="check_features", scope="session")
def _check_features():
  """check_features(builder, k): the feature spec is the synthetic set's with K = k."""
  from jaxpose.data import synthetic  # pylint: disable=g-import-not-at-top

  def check(builder, k: int):
    ours = builder.info.features
    reference = synthetic.SyntheticPose(data_dir="/nonexistent").info.features
    assert sorted(ours.keys()) == sorted(reference.keys())
    for key in reference.keys():
      want = [k if d == 16 else d for d in reference[key].shape]
      assert list(ours[key].shape) == want, key
      assert ours[key].np_dtype == reference[key].np_dtype, key
      assert type(ours[key]) is type(reference[key]), key
    assert ours["image"].encoding_format == reference["image"].encoding_format

  return check


def mirror_and_swap(joints: np.ndarray, width: float, skeleton) -> np.ndarray:
  """Joints of the horizontally mirrored image, left and right relabelled."""
  mirrored = np.array(joints, np.float64)
  mirrored[..., 0] = width - 1 - mirrored[..., 0]
  return mirrored[:, skeleton.flip_permutation]


def check_flip_pairs(joints: np.ndarray, width: float, skeleton) -> np.ndarray:
  """Mirrors people, swaps the flip pairs, compares with the originals; returns the mirrored."""
  perm = skeleton.flip_permutation
  sided = [i for i, n in enumerate(skeleton.joints) if n[:2] in ("l_", "r_")]
  assert sorted(i for pair in skeleton.flip_pairs for i in pair) == sorted(sided)
  for a, b in skeleton.flip_pairs:
    assert {skeleton.joints[a][:2], skeleton.joints[b][:2]} == {"l_", "r_"}
    assert skeleton.joints[a][2:] == skeleton.joints[b][2:]
  limbs = {frozenset(limb) for limb in skeleton.limbs}
  assert {frozenset((perm[a], perm[b])) for a, b in skeleton.limbs} == limbs
  mirrored = mirror_and_swap(joints, width, skeleton)
  np.testing.assert_allclose(mirror_and_swap(mirrored, width, skeleton), joints, atol=1e-3)
  # A person's right limbs become the mirrored person's right limbs: same lengths per side.
  for a, b in skeleton.limbs:
    before = np.linalg.norm(joints[:, a] - joints[:, b], axis=-1)
    after = np.linalg.norm(mirrored[:, perm[a]] - mirrored[:, perm[b]], axis=-1)
    np.testing.assert_allclose(after, before, atol=1e-3)
  # Facing the camera (right shoulder left of the left one) is kept by mirror + swap.
  r, l = skeleton.index("r_shoulder"), skeleton.index("l_shoulder")
  np.testing.assert_array_equal(mirrored[:, r, 0] < mirrored[:, l, 0],
                                joints[:, r, 0] < joints[:, l, 0])
  return mirrored


@pytest.fixture(name="check_flip_pairs", scope="session")
def _check_flip_pairs():
  """check_flip_pairs(joints [N, K, 2], image width, skeleton)."""
  return check_flip_pairs
