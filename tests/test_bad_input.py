"""Bad input, one test per row of README's "Bad input" table: a clear error naming the culprit
(or the documented behaviour), and nothing already written is lost."""

import io
import json
import os

import jax
import numpy as np
from PIL import Image
import h5py
import pytest
import scipy.io
import tensorflow as tf

import helpers
from jaxpose import checkpoints
from jaxpose import families
from jaxpose import metrics
from jaxpose import parallel
from jaxpose import prediction_files
from jaxpose import evaluate
from jaxpose import skeletons
from jaxpose import train
from jaxpose.data import datasets
from jaxpose.data import pipeline


def _config(tmp_path, **overrides):
  return helpers.tiny_config(tmp_path / "tfds", **overrides)


def _encode(img: Image.Image, fmt: str) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format=fmt)
  return buf.getvalue()


def _source(images, n_joints=16, joints=None, visible=None, skeleton=skeletons.MPII):
  n, size = len(images), 48
  rng = np.random.default_rng(0)
  if joints is None:
    joints = rng.uniform(8, size - 8, (n, n_joints, 2)).astype(np.float32)
  ann = {"joints": np.asarray(joints, np.float32),
         "visible": np.ones((n, n_joints), np.float32) if visible is None else visible,
         "occluded": np.zeros((n, n_joints), np.float32),
         "center": np.full((n, 2), size / 2, np.float32),
         "scale": np.full((n,), size / 200, np.float32),
         "head_box": np.zeros((n, 4), np.float32), "norm_size": np.full((n,), 5.0, np.float32),
         "id": np.arange(n, dtype=np.int64)}
  return pipeline.Source("bad", tf.constant(images), ann, skeleton)


def _rgb(n=4, size=48):
  rng = np.random.default_rng(1)
  return [_encode(Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)), "JPEG")
          for _ in range(n)]


def _family_batch(tmp_path, source, batch_size=4, on_device=False):
  config = _config(tmp_path, batch_size=batch_size)
  family = families.create_family(config)
  ds = pipeline.train_dataset(source, input_size=family.input_size, target_fn=family.target_fn,
                              augment=pipeline.Augment(), global_batch_size=batch_size, seed=0,
                              on_device=on_device)
  return config, family, helpers.with_heatmap_targets(config, next(ds.as_numpy_iterator()))


def _run_eval_py(*flags):
  return helpers.run_script("eval.py", *flags)


def _run_train_py(tmp_path, *flags, config="configs/quickstart.py:tiny", workdir=None):
  return helpers.run_script("train.py", "--config", config, "--workdir",
                            workdir or tmp_path / "w", *flags)


# ---------------------------------------------------------------------------------------------
# Images and annotations.


def test_truncated_jpeg_is_named():
  images = _rgb()
  images[2] = images[2][:len(images[2]) // 3]
  with pytest.raises(ValueError, match=r"index 2 \(id 2\)"):
    pipeline.check_decodable(_source(images), range(4))


def test_grayscale_and_cmyk_images_train_and_evaluate(tmp_path):
  rng = np.random.default_rng(2)
  gray = Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8), "L")
  cmyk = Image.fromarray(rng.integers(0, 255, (48, 48, 4), dtype=np.uint8), "CMYK")
  images = [_encode(gray, "JPEG"), _encode(gray, "PNG"), _encode(cmyk, "JPEG"), _rgb(1)[0]]
  source = _source(images)
  pipeline.check_decodable(source, range(4))
  config, family, batch = _family_batch(tmp_path, source)
  assert batch["image"].shape == (4, 64, 64, 3) and np.isfinite(batch["image"]).all()
  mesh = parallel.make_mesh()
  state = train.create_train_state(family, train.create_optimizer(config, 100),
                                   jax.random.key(0), mesh)
  state, m = train.make_train_step(family, mesh)(state, parallel.global_batch(batch, mesh),
                                                 jax.random.key(0))
  assert np.isfinite(float(m["loss"]))
  preds, _ = evaluate.predict_split({"params": state.params, **state.model_state},
                                 family, source, mesh, local_batch_size=4)
  assert preds.shape == (4, 16, 2) and np.isfinite(preds).all()
  # The uint8 crops (config.augment_on_device: OpenCV decodes) are RGB crops of the same.
  _, _, uint8 = _family_batch(tmp_path, source, on_device=True)
  crops = uint8[pipeline.CROP].astype(np.float32) / 255 * uint8[pipeline.GAINS][:, None, None]
  host = batch["image"] + 0.5  # normalize's inverse.
  assert crops.shape == host.shape
  np.testing.assert_allclose(np.clip(crops, 0, 1).mean((1, 2)), host.mean((1, 2)), atol=0.02)
  state, m = train.make_train_step(family, mesh)(state, parallel.global_batch(uint8, mesh),
                                                 jax.random.key(0))
  assert np.isfinite(float(m["loss"]))


def test_joints_outside_the_image_get_zero_weight(tmp_path):
  joints = np.random.default_rng(0).uniform(8, 40, (4, 16, 2)).astype(np.float32)
  joints[:, 9] = [-500.0, 900.0]  # Head top: not swapped by flips.
  config, _, batch = _family_batch(tmp_path, _source(_rgb(), joints=joints))
  assert (batch["target_weight"][:, 9] == 0).all() and (batch["target_weight"][:, 0] > 0).all()
  loss, _ = families.heatmap_losses((batch["targets"],), batch, config.loss)
  assert np.isfinite(loss)


def test_all_joints_missing_weight_zero_no_nan(tmp_path):
  visible = np.zeros((4, 16), np.float32)
  _, family, batch = _family_batch(tmp_path, _source(_rgb(), visible=visible))
  assert (batch["target_weight"] == 0).all()
  for kind in ("mse", "softmax_ce"):
    loss, _ = families.heatmap_losses((batch["targets"] + 1.0,), batch, kind)
    assert np.isfinite(loss) and float(loss) == 0.0


def test_zero_size_head_box_names_the_person():
  gt = np.random.default_rng(0).uniform(0, 100, (3, 16, 2))
  head = np.array([10.0, 0.0, 12.0])
  with pytest.raises(ValueError, match=r"normaliser for person index\(es\) 1"):
    metrics.joint_correctness(gt, gt, np.ones((3, 16)), head, 0.5)


def test_wrong_number_of_joints_for_the_model_is_named(tmp_path):
  source = _source(_rgb(), n_joints=14)  # LSP-sized annotations, MPII (16-joint) skeleton.
  with pytest.raises(ValueError, match="14 joints.*16"):
    _family_batch(tmp_path, source)


# ---------------------------------------------------------------------------------------------
# Configs and flags.


def _one_line_error(proc, *names):
  """A failed run whose stderr is one error line (and absl's help hint), naming `names`."""
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert len(lines) <= 2 and all(name in lines[0] for name in names), proc.stderr[-2000:]


def test_unknown_config_key_and_wrong_type_are_named(tmp_path):
  _one_line_error(_run_train_py(tmp_path, "--config.batch_size=abc"), "batch_size", "abc")
  _one_line_error(_run_train_py(tmp_path, "--config.optimizer.learning_rat=0.1"),
                  "learning_rat", "learning_rate")  # ml_collections' "did you mean".
  _one_line_error(_run_train_py(tmp_path, "--config.bogus=1"), "'bogus'", "--config.bogus")
  assert not (tmp_path / "w").exists()


def test_config_file_that_does_not_load_is_named_before_the_workdir_is_made(tmp_path):
  for config, names in (("configs/nope.py", ("configs/nope.py", "No such file")),
                        ("configs/quickstart.py:bogus", ("'bogus'",))):
    _one_line_error(_run_train_py(tmp_path, config=config), *names)
    assert not (tmp_path / "w").exists()
  (tmp_path / "file").write_text("not a directory")  # A workdir below a file.
  _one_line_error(_run_train_py(tmp_path, workdir=tmp_path / "file" / "w"),
                  "NotADirectoryError", str(tmp_path / "file"))
  assert (tmp_path / "file").read_text() == "not a directory"


def test_unknown_dataset_model_precision_optimizer_are_named(tmp_path):
  c = _config(tmp_path)
  c.dataset.name = "coco"
  with pytest.raises(ValueError, match="'coco'"):
    datasets.load_source(c.dataset, "train")
  c = _config(tmp_path)
  c.model.name = "resnet"
  with pytest.raises(ValueError, match="'resnet'"):
    families.create_family(c)
  c = _config(tmp_path, mixed_precision="fp8")
  with pytest.raises(ValueError, match="'fp8'"):
    families.create_family(c)
  c = _config(tmp_path)
  c.optimizer.name = "lamb"
  with pytest.raises(ValueError, match="'lamb'"):
    train.create_optimizer(c, 100)
  c = _config(tmp_path, output_size=15)
  with pytest.raises(ValueError, match="output_size=15"):
    families.create_family(c)


def test_unknown_split_is_named(tmp_path):
  c = _config(tmp_path)
  with pytest.raises(ValueError, match="no split 'nope'"):
    datasets.load_source(c.dataset, "nope")


def test_batch_size_not_divisible_by_devices_or_processes():
  class FakeMesh:
    devices = np.empty(4)
  with pytest.raises(ValueError, match=r"batch_size=6 .*devices \(4\)"):
    parallel.check_batch_size(6, FakeMesh())
  with pytest.raises(ValueError, match="6 is not divisible by the number of processes 4"):
    pipeline.train_dataset(_source(_rgb()), input_size=64, target_fn=None,
                           augment=pipeline.Augment(), global_batch_size=6, seed=0,
                           process_count=4)


# ---------------------------------------------------------------------------------------------
# Files and directories.


def test_missing_manual_files_are_named(tmp_path):
  c = _config(tmp_path)
  c.dataset.name = "lsp"
  c.dataset.skeleton = "lsp"
  c.dataset.config = "default"
  with pytest.raises(FileNotFoundError, match="joints.mat.*downloads/manual/lsp"):
    datasets.load_source(c.dataset, "train")


def test_workdir_that_cannot_be_created_is_named(tmp_path):
  (tmp_path / "file").write_text("not a directory")
  with pytest.raises(Exception, match=r"(?i)not a directory: .*file/work"):
    train.train_and_evaluate(_config(tmp_path), str(tmp_path / "file" / "work"))
  assert (tmp_path / "file").read_text() == "not a directory"


def test_eval_of_an_empty_checkpoint_dir_names_it(tmp_path):
  (tmp_path / "work" / "checkpoints").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="work"):
    evaluate.load_checkpoint(str(tmp_path / "work"), parallel.make_mesh())


def test_prediction_file_with_wrong_n_or_k_is_refused(tmp_path):
  path = tmp_path / "preds.npy"
  np.save(path, np.zeros((5, 14, 2)))
  with pytest.raises(ValueError, match="preds.npy"):
    prediction_files.load_predictions(str(path), num_people=6, num_joints=14)
  with pytest.raises(ValueError, match="preds.npy"):
    prediction_files.load_predictions(str(path), num_people=5, num_joints=16)
  preds, _ = prediction_files.load_predictions(str(path), num_people=5, num_joints=14)
  assert preds.shape == (5, 14, 2)


def test_checkpoint_of_another_model_is_refused_before_writing(tmp_path):
  config = _config(tmp_path)
  mesh = parallel.make_mesh()
  family = families.create_family(config)
  tx = train.create_optimizer(config, 100)
  state = train.create_train_state(family, tx, jax.random.key(0), mesh)
  manager = checkpoints.manager(tmp_path / "work" / "checkpoints", config)
  checkpoints.save(manager, state, config, 2)
  manager.wait_until_finished()
  other = _config(tmp_path)
  other.model.num_stacks = 2
  with pytest.raises(ValueError, match="different model"):
    train.train_and_evaluate(other, str(tmp_path / "work"))
  assert sorted(p.name for p in (tmp_path / "work" / "checkpoints").iterdir()) == ["2"]


def _lsp_gt(tmp_path):
  """A file laid out like LSP's joints.mat (3 x 14 x 2000)."""
  path = tmp_path / "joints.mat"
  scipy.io.savemat(path, {"joints": np.random.default_rng(0).uniform(1, 300, (3, 14, 2000))})
  return path


def _truncated_mat(tmp_path):
  path = tmp_path / "preds.mat"
  scipy.io.savemat(path, {"preds": np.zeros((1000, 14, 2))})
  path.write_bytes(path.read_bytes()[:5000])
  return path


def _corrupt_h5(tmp_path):
  path = tmp_path / "preds.h5"
  with h5py.File(path, "w") as f:
    f["preds"] = np.zeros((1000, 14, 2))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  return path


def _empty_npy(tmp_path):
  path = tmp_path / "preds.npy"
  path.write_bytes(b"")
  return path


def test_eval_py_flags_of_the_other_mode_are_refused(tmp_path):
  """--dataset / --gt belong to --preds, --split / --scales / ... to --ckpt: named, not ignored;
  --output_json's folder is made (before the evaluation, not after)."""
  shared = helpers.shared_data_dir()
  if shared is None:
    pytest.skip("needs ../shared/data (MPII's validation ground truth)")
  gt = str(shared / "mpii" / "detections_our_format.mat")
  proc = _run_eval_py("--ckpt", str(tmp_path), "--dataset", "lsp_test", "--gt", gt)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("--dataset, --gt apply to --preds")
  proc = _run_eval_py("--preds", gt, "--gt", gt, "--split", "train")
  assert proc.returncode != 0 and "--split applies to --ckpt" in proc.stderr
  out = tmp_path / "new" / "folder" / "o.json"
  proc = _run_eval_py("--preds", gt, "--gt", gt, "--output_json", str(out))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads(out.read_text())["table"]["Total"] == pytest.approx(82.34, abs=0.005)


@pytest.mark.parametrize("make_preds", [_truncated_mat, _corrupt_h5, _empty_npy])
def test_eval_py_damaged_prediction_file_is_one_line(tmp_path, make_preds):
  preds = make_preds(tmp_path)
  proc = _run_eval_py("--preds", str(preds), "--dataset", "lsp_test",
                      "--gt", str(_lsp_gt(tmp_path)))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
  assert len(lines) == 1 and str(preds) in lines[0] and "ValueError" in lines[0], proc.stderr


def test_eval_py_ground_truth_of_another_data_set_is_one_line(tmp_path):
  gt = _lsp_gt(tmp_path)
  preds = tmp_path / "preds.npy"
  np.save(preds, np.zeros((2958, 16, 2)))
  proc = _run_eval_py("--preds", str(preds), "--dataset", "mpii_val", "--gt", str(gt))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
  assert len(lines) == 1, proc.stderr
  assert f"{gt} is not the mpii_val ground truth" in lines[0]
  assert "joints 3 x 14 x 2000" in lines[0] and "LSP's joints.mat" in lines[0]


def test_eval_py_damaged_checkpoint_is_one_line(tmp_path):
  """A half-synced volume: every data file of the step's OCDBT store cut to its first bytes
  (cut in half, the parameters evaluation reads may still lie in the intact part)."""
  config = _config(tmp_path)
  abstract = train.create_train_state(families.create_family(config),
                                      train.create_optimizer(config, 100), jax.random.key(0),
                                      parallel.make_mesh(), abstract=True)
  rng = np.random.default_rng(0)  # Incompressible values: stored in the data files.
  state = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), abstract)
  manager = checkpoints.manager(tmp_path / "work" / "checkpoints", config)
  checkpoints.save(manager, state, config, 2)
  manager.wait_until_finished()
  data_dir = tmp_path / "work" / "checkpoints" / "2" / "state" / "ocdbt.process_0" / "d"
  for path in data_dir.iterdir():
    path.write_bytes(path.read_bytes()[:64])
  proc = _run_eval_py("--ckpt", str(tmp_path / "work" / "checkpoints" / "2"))
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
  assert "Event loop is closed" not in proc.stderr, proc.stderr
  (line,) = [l for l in proc.stderr.splitlines() if l.startswith("eval.py: error")]
  assert "DamagedCheckpointError: checkpoint step 2 in " in line
  assert "is damaged or unreadable: ValueError: OUT_OF_RANGE" in line
