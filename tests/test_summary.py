"""python -m jaxpose.summary: parameter count and GFLOPs without compiling a train step."""

import os

import jax
import jax.numpy as jnp
import pytest

import helpers
from jaxpose import summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_summarize_two_stack_paper_model():
  s = summary.summarize(summary.load_config(os.path.join(REPO, "configs/hourglass2_mpii.py")))
  assert s["params"] == 6_730_912
  assert s["model_state"] > 0  # BatchNorm statistics.
  assert s["output_shapes"] == [(1, 16, 2), (1, 16)]  # Joints and scores of one image.
  assert 10 < s["gflops"] < 40  # About a quarter of the 8-stack model's 55.6.


def test_cli_prints_params_line_for_the_paper_config():
  proc = helpers.run_script("-m", "jaxpose.summary", "configs/hourglass_mpii.py", timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "params: 25594624" in proc.stdout.splitlines()
  assert "gflops:" in proc.stdout


@pytest.mark.parametrize("spec, culprit", [("configs/nope.py", "configs/nope.py"),
                                            ("configs/quickstart.py:nope", "'nope'")])
def test_cli_names_a_bad_config_in_one_line(spec, culprit):
  proc = helpers.run_script("-m", "jaxpose.summary", spec, timeout=120)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.startswith("jaxpose.summary: error: ") and culprit in proc.stderr


def test_cli_help_and_usage():
  """--help is the usage and the docstring, not a config file's name; no config is a usage
  error."""
  proc = helpers.run_script("-m", "jaxpose.summary", "--help", timeout=120)
  assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m jaxpose.summary")
  assert "CONFIG_FILE[:ARG]" in proc.stdout and "multiply-add" in proc.stdout
  proc = helpers.run_script("-m", "jaxpose.summary", timeout=120)
  assert proc.returncode == 2 and "required: CONFIG_FILE[:ARG]" in proc.stderr


def test_missing_config_file_is_named():
  try:
    summary.load_config("configs/nope.py")
  except FileNotFoundError as e:
    assert "configs/nope.py" in str(e)
  else:
    raise AssertionError("no error")


@pytest.mark.parametrize("config,params,parts", [
    ("cpm_lsp.py", 31_219_866, None), ("cpm_flic.py", 21_323_816, None),
    ("ief_mpii.py", 6_059_664, None),
    ("deeppose_lsp.py", 3 * 58_396_060, {"stage1": 58_396_060, "stage2": 58_396_060,
                                        "stage3": 58_396_060}),
    ("tompson_flic.py", None, {"detector": 18_614_026})])
def test_paper_configs_have_the_papers_sizes(config, params, parts):
  s = summary.summarize(summary.load_config(os.path.join(REPO, "configs", config)))
  if params is not None:
    assert s["params"] == params
  for name, n in (parts or {}).items():
    assert s["params_by_subtree"][name] == n


def test_matmul_flops_counts_products_and_every_iteration():
  """2 per multiply-add of every convolution tap (padding included, as papers count), dense
  products, a scan's body times its length, a cond's costliest branch."""
  x, k = jnp.ones((2, 8, 8, 16)), jnp.ones((3, 3, 8, 32))
  w = jnp.ones((32, 5))

  def net(x, k, w):
    y = jax.lax.conv_general_dilated(x, k, (2, 2), [(1, 1)] * 2, feature_group_count=2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))  # [2,4,4,32]
    z = y.reshape(-1, 32) @ w  # [32, 5]
    z, _ = jax.lax.scan(lambda c, _: (c @ jnp.ones((5, 5)), None), z, None, length=3)
    return jax.lax.cond(z.sum() > 0, lambda z: z @ jnp.ones((5, 7)), lambda z: z[:, :1] * jnp.ones(7), z)

  conv = 2 * (2 * 4 * 4 * 32) * (3 * 3 * 8)  # Groups of 8 input features per output.
  dense = 2 * 32 * 32 * 5
  looped = 3 * 2 * 32 * 5 * 5
  branch = 2 * 32 * 5 * 7
  assert summary.matmul_flops(jax.make_jaxpr(net)(x, k, w)) == conv + dense + looped + branch


def test_ief_flops_count_every_iteration():
  config = summary.load_config(os.path.join(REPO, "configs/ief_mpii.py"))
  iterations = config.model.get("num_iterations", 4)
  total = summary.summarize(config)["gflops"]
  runs = {}
  for t in (1, 2):
    config.model.num_iterations = t
    runs[t] = summary.summarize(config)
  # What the loop repeats; the image's share of the first convolution depends on no pose, and
  # the traced loop computes it once, before the iterations.
  per_iteration = runs[2]["gflops"] - runs[1]["gflops"]
  assert 0.9 * runs[1]["gflops"] < per_iteration < runs[1]["gflops"]
  assert total == pytest.approx(runs[1]["gflops"] + (iterations - 1) * per_iteration, rel=1e-6)
  assert runs[1]["xla_gflops"] <= runs[1]["gflops"]  # XLA leaves out the taps on padding.
