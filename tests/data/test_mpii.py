"""MPII builder: split lists, the three annotation layouts, and the TFDS build path.

The official release file is not available here. Its parser runs on Tompson's
`detections_annolist.mat` (the 2958 validation people in the release's annolist layout), and
the build test writes a small release-layout file: the real annorects of the validation people
of a few images at their real RELEASE indices, plus generated people for a few train images of
the standard split.
"""

import json
import os
import shutil

import h5py
import ml_collections
import numpy as np
import pytest
import scipy.io

from jaxpose import skeletons
from jaxpose.data import builder_lib
from jaxpose.data import datasets
from jaxpose.data import mpii

MPII = skeletons.MPII
NUM_VALID_IMAGES = 5  # Validation images in the build subset (those of the JSON sample).
NUM_TRAIN_IMAGES = 3  # Train images in the build subset.
# (person, joint) of the validation people whose detections_our_format.mat coordinates are
# zeroed although the joint is annotated (the annolist and valid.h5 have the real values).
ZEROED_IN_DETECTIONS = {(682, 0), (786, 5), (1081, 9), (1897, 11), (2636, 9), (2739, 0),
                        (2763, 0), (2763, 1), (2763, 4), (2763, 5), (2775, 9), (2897, 9),
                        (2921, 9)}


@pytest.fixture(name="valid", scope="module")
def _valid(shared):
  """The validation people parsed from detections_annolist.mat (release layout)."""
  m = scipy.io.loadmat(shared / "mpii" / "detections_annolist.mat")
  rows = [rects[0] for rects in mpii.parse_annolist(m["annolist"])]
  assert all(r is not None for r in rows)
  names = list(mpii.standard_split().valid_images)
  return mpii.rows_to_people(names, rows)


def test_split_lists_match_the_shared_files(shared, tmp_path):
  split = mpii.make_split_file(shared / "mpii" / "train_images.txt",
                               shared / "mpii" / "valid_images.txt",
                               shared / "mpii" / "detections_annolist.mat",
                               tmp_path / "mpii.npz")
  shipped = mpii.standard_split()
  for field in ("train_images", "train_counts", "valid_images", "valid_image_index",
                "valid_person_index"):
    np.testing.assert_array_equal(getattr(split, field), getattr(shipped, field), field)
  assert mpii.split_sizes() == mpii.NUM_PEOPLE == {"train": 22246, "validation": 2958}
  with open(shared / "mpii" / "train_images.txt") as f:
    assert sum(1 for line in f if line.strip()) == 22246
  assert not set(shipped.train_images) & set(shipped.valid_images)


def test_release_parser_on_the_tompson_annolist(shared, valid):
  assert len(valid) == 2958
  with h5py.File(shared / "mpii" / "valid.h5", "r") as f:
    h5 = {k: f[k][()] for k in ("part", "visible", "center", "scale", "normalize")}
  gt = scipy.io.loadmat(shared / "mpii" / "detections_our_format.mat")
  annotated = gt["jnt_missing"].T == 0
  np.testing.assert_array_equal(valid.visible > 0, annotated)
  # Centre and scale: the hourglass convention, and valid.h5 is 1-based.
  np.testing.assert_allclose(valid.center, h5["center"] - 1.0, atol=1e-3)
  np.testing.assert_allclose(valid.scale, h5["scale"], rtol=1e-6)
  # Joints: 0-based; valid.h5 truncates the 1-based values to integers.
  one_based = valid.joints.astype(np.float64) + 1.0
  np.testing.assert_array_equal(np.trunc(one_based[annotated]), h5["part"][annotated])
  assert (h5["part"][~annotated] == 0).all() and (valid.joints[~annotated] == 0).all()
  pos = gt["pos_gt_src"].transpose(2, 0, 1)
  differ = np.abs(one_based - pos).max(-1) > 1e-3
  assert {tuple(ij) for ij in np.argwhere(differ & annotated)} == ZEROED_IN_DETECTIONS
  assert all((pos[i, j] == 0).any() for i, j in ZEROED_IN_DETECTIONS)
  # occluded = MPII is_visible == 0 (what valid.h5 calls `visible`).
  np.testing.assert_array_equal(valid.occluded > 0, annotated & (h5["visible"] == 0))
  assert valid.occluded.sum() == 10243
  # Head boxes and the PCKh normaliser.
  boxes = gt["headboxes_src"].transpose(2, 0, 1).reshape(-1, 4) - 1.0
  np.testing.assert_allclose(valid.head_box, boxes, atol=1e-3)
  np.testing.assert_allclose(valid.norm_size, h5["normalize"], rtol=1e-6)


def test_hourglass_h5_reader(shared, valid):
  people = mpii.read_hourglass(os.fspath(shared / "mpii" / "valid.h5"))
  assert people.images == valid.images
  for field in ("visible", "occluded", "center", "scale", "norm_size"):
    np.testing.assert_allclose(getattr(people, field), getattr(valid, field), rtol=1e-6,
                               atol=1e-3, err_msg=field)
  assert np.abs(people.joints - valid.joints).max() < 1.0
  assert not people.head_box.any()


def test_mmpose_json_reader(shared, valid):
  people = mpii.read_mmpose(os.fspath(shared / "mpii" / "sample_mmpose_format.json"))
  first = valid.take(np.arange(len(people)))
  assert people.images == first.images
  for field in ("joints", "visible", "center", "scale"):
    np.testing.assert_allclose(getattr(people, field), getattr(first, field), atol=1e-3,
                               err_msg=field)
  assert np.isnan(people.norm_size).all() and not people.occluded.any()
  people = mpii.attach_head_boxes(people, shared / "mpii" / "detections_our_format.mat")
  np.testing.assert_allclose(people.head_box, first.head_box, atol=1e-3)
  np.testing.assert_allclose(people.norm_size, first.norm_size, rtol=1e-5)


def test_flip_pairs(valid, check_flip_pairs):
  check_flip_pairs(valid.joints, 1280.0, MPII)


# ----------------------------------------------------------------------------------------
# A release-layout file and a manual folder for the build tests.


def _struct(fields: dict) -> np.ndarray:
  s = np.empty((1, 1), dtype=[(k, object) for k in fields])
  s[0, 0] = tuple(fields.values())
  return s


def _struct_array(rows: list[dict], fields: list[str]) -> np.ndarray:
  out = np.empty((1, len(rows)), dtype=[(k, object) for k in fields])
  for i, row in enumerate(rows):
    out[0, i] = tuple(row[k] for k in fields)
  return out


_RECT_FIELDS = ["x1", "y1", "x2", "y2", "annopoints", "scale", "objpos"]
_EMPTY = np.zeros((0, 0))


def _fake_rect(rng, with_points: bool = True) -> tuple[dict, dict]:
  """A generated train person as a release annorect, and what the builder should make of it."""
  x, y = rng.uniform(300, 900), rng.uniform(200, 500)
  scale = rng.uniform(1.0, 2.5)
  rect = {k: _EMPTY for k in _RECT_FIELDS}
  rect["scale"] = np.array([[scale]])
  rect["objpos"] = _struct({"x": np.array([[x]]), "y": np.array([[y]])})
  if not with_points:
    return rect, {}
  joints = np.stack([x + rng.uniform(-100, 100, 16), y + rng.uniform(-150, 150, 16)], -1)
  flags = [np.array([[1]], np.uint8), np.array([[0]], np.uint8), np.array(["0"]),
           np.array(["1"]), _EMPTY]
  points = [{"x": np.array([[joints[j, 0]]]), "y": np.array([[joints[j, 1]]]),
             "id": np.array([[j]], np.uint8), "is_visible": flags[j % len(flags)]}
            for j in range(16) if j != 3]  # Joint 3 (l-hip) is not annotated.
  rect["annopoints"] = _struct({"point": _struct_array(points,
                                                       ["x", "y", "id", "is_visible"])})
  box = [x - 20, y - 200, x + 20, y - 150]
  for k, v in zip(("x1", "y1", "x2", "y2"), box):
    rect[k] = np.array([[v]])
  visible = np.ones(16)
  visible[3] = 0
  expected = {"joints": np.where(visible[:, None] > 0, joints - 1.0, 0.0), "visible": visible,
              "occluded": np.array([j % 5 in (1, 2) for j in range(16)], float) * visible,
              "center": np.array([x - 1.0, y - 1.0 + 15 * scale]), "scale": 1.25 * scale,
              "head_box": np.array(box) - 1.0,
              "norm_size": 0.6 * np.hypot(box[2] - box[0], box[3] - box[1])}
  return rect, expected


def write_release(path, shared, drop_train_person: bool = False) -> dict:
  """A release-layout .mat with the people of the build subset; returns what it holds."""
  split = mpii.standard_split()
  det = scipy.io.loadmat(shared / "mpii" / "detections_annolist.mat")["annolist"].ravel()
  valid_images = list(dict.fromkeys(split.valid_images))[:NUM_VALID_IMAGES]
  entries = {}  # annolist index -> (name, {rect index: rect dict}, single rect indices)
  for k, name in enumerate(split.valid_images):
    if name in valid_images:
      i, p = int(split.valid_image_index[k]) - 1, int(split.valid_person_index[k]) - 1
      rect = det[k]["annorect"][0, 0]
      entries.setdefault(i, (name, {}, []))[1][p] = {f: rect[f] for f in _RECT_FIELDS}
  rng = np.random.default_rng(0)
  train_images = list(split.train_images[:NUM_TRAIN_IMAGES])
  expected_train = []
  i = max(entries) + 1
  for t, name in enumerate(train_images):
    rects, singles = {}, []
    for r in range(int(split.train_counts[t])):
      rects[r], expected = _fake_rect(rng)
      singles.append(r)
      expected_train.append(expected)
    if t == 0:  # An annotated person who is not a single person, and one without joints.
      rects[len(rects)], _ = _fake_rect(rng)
      rects[len(rects)], _ = _fake_rect(rng, with_points=False)
    if drop_train_person and t == NUM_TRAIN_IMAGES - 1:
      rects[0], _ = _fake_rect(rng, with_points=False)
    entries[i + 2 * t] = (name, rects, singles)
  length = max(entries) + 1
  annolist = []
  for i in range(length):
    name, rects, _ = entries.get(i, (f"filler{i:05d}.jpg", {}, []))
    filler, _ = _fake_rect(rng, with_points=False)
    rows = [rects.get(r, filler) for r in range(max(rects, default=-1) + 1)]
    annolist.append({"image": _struct({"name": name}),
                     "annorect": _struct_array(rows, _RECT_FIELDS) if rows else _EMPTY})
  single = np.empty((length, 1), dtype=object)
  for i in range(length):
    singles = entries.get(i, ("", {}, []))[2]
    single[i, 0] = np.array(singles, float)[:, None] + 1 if singles else _EMPTY
  release = _struct({"annolist": _struct_array(annolist, ["image", "annorect"]),
                     "img_train": np.ones((1, length)), "version": "test",
                     "single_person": single})
  scipy.io.savemat(path, {"RELEASE": release})
  return {"valid_images": valid_images, "train_images": train_images,
          "train": expected_train}


@pytest.fixture(name="manual", scope="module")
def _manual(tmp_path_factory, shared, jpegs_for):
  """A manual folder with all three layouts and JPEGs of the subset's images."""
  manual = tmp_path_factory.mktemp("mpii_manual")
  content = write_release(manual / mpii.RELEASE_FILE, shared)
  subset = tuple(content["valid_images"] + content["train_images"])
  people = mpii.read_release(os.fspath(manual / mpii.RELEASE_FILE), images=subset)
  for split in mpii.SPLITS:
    jpegs_for(people[split], manual / "images", typical=(720, 1280))
  # Hourglass layout: the real valid.h5, a train.h5 written from the generated train people.
  shutil.copy(shared / "mpii" / "valid.h5", manual / "valid.h5")
  train = people["train"]
  with h5py.File(manual / "train.h5", "w") as f:
    f["imgname"] = np.array([n.encode() for n in train.images])
    f["part"] = np.where(train.visible[..., None] > 0, np.trunc(train.joints + 1.0), 0.0)
    f["visible"] = 1.0 - train.occluded
    f["center"] = train.center + 1.0
    f["scale"] = train.scale
    f["normalize"] = train.norm_size
  # mmpose layout: the real sample (the first validation people), train entries generated.
  shutil.copy(shared / "mpii" / "sample_mmpose_format.json", manual / "mpii_val.json")
  shutil.copy(shared / "mpii" / "detections_our_format.mat", manual / "mpii_gt_val.mat")
  entries = [{"image": name, "center": (train.center[i] + 1 - [0, 15 * train.scale[i] / 1.25]
                                        ).tolist(),
              "scale": float(train.scale[i] / 1.25),
              "joints": np.where(train.visible[i][:, None] > 0, train.joints[i] + 1, -1).tolist(),
              "joints_vis": train.visible[i].tolist()} for i, name in enumerate(train.images)]
  with open(manual / "mpii_train.json", "w") as f:
    json.dump(entries, f)
  return manual, subset, content


def _build(tmp_path, manual, subset, no_stats, annotations="release"):
  config = mpii.MpiiConfig(name=f"subset_{annotations}", annotations=annotations,
                           images=subset)
  builder = mpii.MpiiPose(config=config, data_dir=os.fspath(tmp_path / "tfds"),
                          manual_dir=os.fspath(manual))
  builder.download_and_prepare(download_config=no_stats(manual))
  return builder


def test_release_file_round_trip(manual, valid):
  folder, subset, content = manual
  people = mpii.read_release(os.fspath(folder / mpii.RELEASE_FILE), images=subset)
  assert set(people["validation"].images) == set(content["valid_images"])
  index = [i for i, name in enumerate(valid.images) if name in content["valid_images"]]
  expected = valid.take(index)
  for field in builder_lib.ARRAY_FIELDS:
    np.testing.assert_allclose(getattr(people["validation"], field),
                               getattr(expected, field), rtol=1e-6, err_msg=field)
  train = people["train"]
  counts = dict(zip(mpii.standard_split().train_images, mpii.standard_split().train_counts))
  assert len(train) == sum(counts[name] for name in content["train_images"])
  for i, want in enumerate(content["train"]):
    for field, value in want.items():
      np.testing.assert_allclose(getattr(train, field)[i], value, rtol=1e-5, atol=1e-3,
                                 err_msg=f"train person {i} {field}")


def test_release_file_must_hold_every_listed_person(manual, tmp_path, shared):
  folder, _, content = manual
  with pytest.raises(builder_lib.AnnotationError, match="validation person"):
    mpii.read_release(os.fspath(folder / mpii.RELEASE_FILE))
  broken = tmp_path / mpii.RELEASE_FILE
  write_release(broken, shared, drop_train_person=True)
  name = content["train_images"][-1]
  with pytest.raises(builder_lib.AnnotationError, match=f"{name}.*standard split has"):
    mpii.read_release(os.fspath(broken), images=(name,))


def test_build_round_trip_and_load_source(manual, tmp_path, no_stats, read_split,
                                          check_features):
  folder, subset, _ = manual
  builder = _build(tmp_path, folder, subset, no_stats)
  check_features(builder, MPII.num_joints)
  people = mpii.read_release(os.fspath(folder / mpii.RELEASE_FILE), images=subset)
  for split in mpii.SPLITS:
    examples = read_split(builder, split)
    assert len(examples) == len(people[split]) == builder.info.splits[split].num_examples
    for i, example in enumerate(examples):
      assert example["id"] == i
      for field in builder_lib.ARRAY_FIELDS:
        np.testing.assert_allclose(example[field], getattr(people[split], field)[i],
                                   rtol=1e-6, err_msg=field)
  # datasets.load_source reads it like the synthetic set.
  dataset = ml_collections.ConfigDict(dict(
      name="mpii", config=builder.builder_config, data_dir=os.fspath(tmp_path / "tfds"),
      manual_dir=os.fspath(folder), skeleton="mpii"))
  source = datasets.load_source(dataset, "validation")
  assert source.num_examples == len(people["validation"])
  np.testing.assert_allclose(source.annotations["norm_size"], people["validation"].norm_size,
                             rtol=1e-6)


def test_the_three_layouts_build_the_same_validation_people(manual, tmp_path, no_stats,
                                                            read_split):
  folder, subset, content = manual
  built = {a: read_split(_build(tmp_path, folder, subset, no_stats, a), "validation")
           for a in ("release", "hourglass", "mmpose")}
  # The JSON sample holds only the first validation people.
  n = len(built["mmpose"])
  assert n == 5 and len(built["hourglass"]) == len(built["release"]) >= n
  for a in ("hourglass", "mmpose"):
    for want, got in zip(built["release"], built[a]):
      for field in ("visible", "center", "scale", "norm_size"):
        np.testing.assert_allclose(got[field], want[field], rtol=1e-5, atol=1e-3,
                                   err_msg=f"{a} {field}")
      assert np.abs(got["joints"] - want["joints"]).max() < 1.0
      np.testing.assert_array_equal(got["image"], want["image"])
  assert not any(e["head_box"].any() for e in built["hourglass"])
  for want, got in zip(built["release"], built["mmpose"]):
    np.testing.assert_allclose(got["head_box"], want["head_box"], atol=1e-3)
  train = read_split(_build(tmp_path, folder, subset, no_stats, "mmpose"), "train")
  assert len(train) == len(content["train"]) and np.isnan(train[0]["norm_size"])


def test_missing_files_say_what_to_download(tmp_path, manual, no_stats):
  folder, subset, _ = manual
  empty = tmp_path / "empty"
  empty.mkdir()
  messages = {"release": ("mpii_human_pose_v1_u12_1.mat", "mpii_human_pose_v1_u12_2.zip",
                          "human-pose.mpi-inf.mpg.de"),
              "hourglass": ("train.h5", "pose-hg-train"),
              "mmpose": ("mpii_train.json", "mmpose")}
  for annotations, words in messages.items():
    with pytest.raises(FileNotFoundError) as e:
      _build(tmp_path, empty, subset, no_stats, annotations)
    assert all(w in str(e.value) for w in words + (os.fspath(empty),)), str(e.value)
  shutil.copy(folder / mpii.RELEASE_FILE, empty / mpii.RELEASE_FILE)
  with pytest.raises(FileNotFoundError, match="'images'.*mpii_human_pose_v1.tar.gz"):
    _build(tmp_path, empty, subset, no_stats)
