"""PyTorch -> jaxpose weight import: the converted Stacked Hourglass computes what PyTorch did.

Without torch: the golden checkpoints in tests/golden (tests/golden/make_hourglass_golden.py)
against their stored outputs. With torch: fresh random models, live.
"""

import collections
import pathlib
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import helpers
from jaxpose import convert
from jaxpose.models import hourglass

# As written by tests/golden/make_hourglass_golden.py (which needs torch).
GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
FILES = {"hg_s1_zip.pth.tar": 1, "hg_s2_legacy.pth.tar": 2, "hg_s2_module.pth.tar": 2}
SMALL = dict(num_joints=5, features=16, depth=2)
TOL = 1e-4  # Max abs error allowed on the heat maps; float32 reorderings give ~1e-6.


def _reference():
  with np.load(GOLDEN / "torch_reference.npz") as f:
    return dict(f)


def _golden_script():
  """tests/golden/make_hourglass_golden.py, or a skip where torch is missing."""
  pytest.importorskip("torch")
  from golden import make_hourglass_golden  # pylint: disable=g-import-not-at-top
  assert {k: v[0] for k, v in make_hourglass_golden.FILES.items()} == FILES
  assert make_hourglass_golden.SMALL == SMALL
  return make_hourglass_golden


def _apply(variables, kwargs, x):
  return hourglass.StackedHourglass(**kwargs).apply(variables, jnp.asarray(x))


@pytest.mark.parametrize("name", sorted(FILES))
def test_golden_checkpoint_reproduces_pytorch_outputs(name):
  num_stacks = FILES[name]
  ref = _reference()
  variables, kwargs = convert.read_pytorch_pose(str(GOLDEN / name), num_stacks=num_stacks)
  assert kwargs == dict(num_stacks=num_stacks, num_blocks=1, **SMALL)
  outputs = _apply(variables, kwargs, ref["x"])
  assert len(outputs) == num_stacks
  for i, out in enumerate(outputs):
    np.testing.assert_allclose(out, ref[f"s{num_stacks}_out{i}"], atol=TOL, rtol=0)


def test_golden_checkpoint_layout_and_values():
  sd = convert.load_torch_state_dict(str(GOLDEN / "hg_s2_module.pth.tar"))
  assert not any(k.startswith("module.") for k in sd)  # DataParallel's prefix is dropped.
  assert sd["hg.1.hg.0.3.0.bn1.num_batches_tracked"].dtype == np.int64
  variables = convert.from_pytorch_pose(str(GOLDEN / "hg_s2_legacy.pth.tar"))
  p, s = variables["params"], variables["batch_stats"]
  # OIHW -> HWIO for the 7x7 stem; (O, I, 1, 1) -> (I, O) for 1x1 convolutions.
  np.testing.assert_array_equal(p["stem_conv"]["conv"]["kernel"],
                                sd["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p["stack0"]["score_back"]["dense"]["kernel"],
                                sd["score_.0.weight"][:, :, 0, 0].T)
  # The outermost level of the depth-2 hourglass is pytorch-pose's hg[1]; its bottom is hg[0][3].
  inner = p["stack1"]["hourglass"]["inner"]
  np.testing.assert_array_equal(inner["bottom"]["block0"]["conv2"]["bias"],
                                sd["hg.1.hg.0.3.0.conv2.bias"])
  np.testing.assert_array_equal(s["stack1"]["hourglass"]["low"]["block0"]["bn3"]["var"],
                                sd["hg.1.hg.1.2.0.bn3.running_var"])
  np.testing.assert_array_equal(p["stack0"]["fc"]["bn"]["scale"], sd["fc.0.1.weight"])


def test_tree_matches_the_model_and_cli_writes_it(tmp_path):
  path = str(GOLDEN / "hg_s1_zip.pth.tar")
  variables = convert.from_pytorch_pose(path)
  model = hourglass.StackedHourglass(num_stacks=1, **SMALL)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  assert jax.tree.structure(variables) == jax.tree.structure(shapes)
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape, variables, shapes)))
  out = tmp_path / "hg.npz"
  convert.main(["pytorch-pose", path, "--num_stacks", "1", "--out_npz", str(out)])
  with np.load(out) as f:
    restored = traverse_util.unflatten_dict(dict(f), sep="/")
  jax.tree.map(np.testing.assert_array_equal, restored, variables)


def _write(path, obj):
  with open(path, "wb") as f:
    pickle.dump(obj, f)
  return str(path)


def test_not_a_checkpoint_names_the_file(tmp_path):
  text = tmp_path / "notes.pth.tar"
  text.write_text("hello")
  with pytest.raises(ValueError, match=r"notes\.pth\.tar: .*not a torch checkpoint"):
    convert.from_pytorch_pose(str(text))
  with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
    zf.writestr("a/b.txt", "x")
  with pytest.raises(ValueError, match=r"other\.zip: .*data\.pkl"):
    convert.from_pytorch_pose(str(tmp_path / "other.zip"))
  plain = _write(tmp_path / "plain.pkl", {"state_dict": {}})
  with pytest.raises(ValueError, match=r"plain\.pkl: "):
    convert.from_pytorch_pose(plain)


def test_pickled_code_is_never_run(tmp_path):
  # A legacy-format header followed by a pickle that would call os.system on a plain load.
  path = tmp_path / "evil.pth.tar"
  with open(path, "wb") as f:
    for obj in (0x1950a86a20f9469cfc6c, 1001, {"little_endian": True}):  # Magic, version, info.
      pickle.dump(obj, f)
    f.write(b"cos\nsystem\n(Vtouch " + str(tmp_path / "ran").encode() + b"\ntR.")
  with pytest.raises(ValueError, match=r"evil\.pth\.tar: "):
    convert.from_pytorch_pose(str(path))
  assert not (tmp_path / "ran").exists()


def test_missing_key_wrong_shape_extra_key_and_stack_count():
  path = str(GOLDEN / "hg_s1_zip.pth.tar")
  sd = convert.load_torch_state_dict(path)
  kwargs = convert.pytorch_pose_model_kwargs(sd)
  missing = {k: v for k, v in sd.items() if k != "res.0.0.conv2.weight"}
  with pytest.raises(ValueError, match=r"src: missing key 'res\.0\.0\.conv2\.weight'"):
    convert.pytorch_pose_variables(missing, kwargs, "src")
  bad = dict(sd, **{"fc.0.0.weight": sd["fc.0.0.weight"][:, :8]})
  with pytest.raises(ValueError, match=r"src: key 'fc\.0\.0\.weight' has shape \(16, 8, 1, 1\)"):
    convert.pytorch_pose_variables(bad, kwargs, "src")
  extra = dict(sd, **{"fc_.0.weight": sd["fc.0.0.weight"]})
  with pytest.raises(ValueError, match=r"src: unexpected key 'fc_\.0\.weight'"):
    convert.pytorch_pose_variables(extra, kwargs, "src")
  with pytest.raises(ValueError, match=r"src: missing key 'score\.0\.weight'"):
    convert.pytorch_pose_model_kwargs({"conv1.weight": sd["conv1.weight"]}, "src")
  with pytest.raises(ValueError, match=r"hg_s1_zip\.pth\.tar: holds 1 stacks.*num_stacks=2"):
    convert.from_pytorch_pose(path, num_stacks=2)


@pytest.mark.parametrize("num_stacks", [1, 2])
def test_live_random_torch_model_matches(tmp_path, num_stacks):
  golden = _golden_script()
  model = golden.random_hourglass(num_stacks, seed=100 + num_stacks)
  x = np.random.default_rng(num_stacks).standard_normal(golden.INPUT_SHAPE, np.float32)
  expected = golden.heatmaps(model, x)
  path = tmp_path / "live.pth.tar"
  golden.save(model, path, "legacy" if num_stacks == 1 else "module")
  variables, kwargs = convert.read_pytorch_pose(str(path))
  outputs = _apply(variables, kwargs, x.transpose(0, 2, 3, 1))
  for out, ref in zip(outputs, expected, strict=True):
    np.testing.assert_allclose(out, ref, atol=TOL, rtol=0)


def test_paper_sized_8_stacks_through_the_converter():
  torch_models = _golden_script().torch_models
  import torch  # pylint: disable=g-import-not-at-top
  with torch.device("meta"):  # Shapes only: no memory, no random numbers.
    model = torch_models.StackedHourglass(num_stacks=8)
  assert torch_models.num_params(model) == 25_594_624
  sd = collections.OrderedDict((k, np.zeros(v.shape, np.float32))
                               for k, v in model.state_dict().items())
  kwargs = convert.pytorch_pose_model_kwargs(sd)
  assert kwargs == dict(num_stacks=8, num_joints=16, features=256, depth=4, num_blocks=1)
  variables = convert.pytorch_pose_variables(sd, kwargs)
  shapes = jax.eval_shape(lambda: hourglass.StackedHourglass(num_stacks=8).init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert jax.tree.structure(variables) == jax.tree.structure(shapes)
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape, variables, shapes)))
  assert sum(a.size for a in jax.tree.leaves(variables["params"])) == 25_594_624


def _tiny_variables():
  """A quickstart:tiny hourglass's variables and the kwargs a pytorch-pose file would give."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  from jaxpose import families  # pylint: disable=g-import-not-at-top
  family = families.create_family(quickstart.get_config("tiny"))
  variables = families.init_variables(family, jax.random.key(3))
  kwargs = dict(num_stacks=1, num_joints=16, features=16, depth=2, num_blocks=1)
  return variables, kwargs


def test_converted_weights_become_a_checkpoint_eval_reads(tmp_path):
  from jaxpose import evaluate, parallel  # pylint: disable=g-import-not-at-top
  variables, kwargs = _tiny_variables()
  step_dir = convert.write_checkpoint(variables, kwargs, "configs/quickstart.py:tiny",
                                      str(tmp_path / "work"))
  assert step_dir.endswith("checkpoints/0")
  config, family, restored, step = evaluate.load_checkpoint(str(tmp_path / "work"),
                                                            parallel.make_mesh())
  assert step == 0 and family.name == "hourglass" and config.model.features == 16
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables),
               jax.device_get(restored))
  with pytest.raises(ValueError, match="already holds checkpoints"):
    convert.write_checkpoint(variables, kwargs, "configs/quickstart.py:tiny",
                             str(tmp_path / "work"))


def test_a_config_of_another_model_is_refused(tmp_path):
  variables, kwargs = _tiny_variables()
  with pytest.raises(ValueError, match="num_stacks: file 1, config 8"):
    convert.write_checkpoint(variables, kwargs, "configs/hourglass_mpii.py", str(tmp_path))
  with pytest.raises(ValueError, match="'cpm'"):
    convert.write_checkpoint(variables, kwargs, "configs/cpm_lsp.py", str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_cli_writes_a_workdir_from_a_released_style_file(tmp_path):
  """The golden 5-joint file cannot match a 16-joint config: the CLI says so in one line."""
  src = sorted(GOLDEN.glob("*.pth.tar"))[0]
  proc = helpers.run_script("-m", "jaxpose.convert", "pytorch-pose", src, "--config",
                            "configs/quickstart.py:tiny", "--out", tmp_path / "w", timeout=300)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "num_joints: file 5, config 16" in proc.stderr.splitlines()[-1]
