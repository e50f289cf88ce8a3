"""Helpers shared by the trainer tests (imported as `helpers`; tests/ is on sys.path)."""

import io
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import tensorflow as tf

from configs import quickstart
from jaxpose import family
from jaxpose import skeletons
from jaxpose.data import pipeline


REPO = pathlib.Path(__file__).resolve().parents[1]


def run_script(script: str, *args, timeout: float = 120,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  """`python script args` from the repository's root, as a user runs it: TensorFlow quiet, no
  GPU, JAXPOSE_TRACEBACK unset (one-line errors), `env` added; stdout and stderr captured as
  text."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **(env or {}))
  env.pop("JAXPOSE_TRACEBACK", None)
  return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout, env=env)


def tiny_config(data_dir, **overrides):
  """configs/quickstart.py:tiny with its TFDS data in `data_dir`, top-level fields overridden."""
  c = quickstart.get_config("tiny")
  c.dataset.data_dir = str(data_dir)
  for k, v in overrides.items():
    c[k] = v
  return c


def dots_source(n=12, size=48, seed=0) -> pipeline.Source:
  """Random images with the joints at bright dots: enough signal to lower the loss."""
  rng = np.random.default_rng(seed)
  images, joints = [], []
  for _ in range(n):
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    pts = rng.uniform(8, size - 8, (16, 2)).astype(np.float32)
    for x, y in pts:
      img[int(y), int(x)] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    images.append(buf.getvalue())
    joints.append(pts)
  ann = {"joints": np.asarray(joints), "visible": np.ones((n, 16), np.float32),
         "occluded": np.zeros((n, 16), np.float32),
         "center": np.full((n, 2), size / 2, np.float32),
         "scale": np.full((n,), size / 200, np.float32),
         "head_box": np.zeros((n, 4), np.float32), "norm_size": np.full((n,), 5.0, np.float32),
         "id": np.arange(n, dtype=np.int64)}
  return pipeline.Source("dots", tf.constant(images), ann, skeletons.MPII)


def shared_data_dir(subdirs=("mpii",)) -> pathlib.Path | None:
  """The read-only reference annotation files: $JAXPOSE_SHARED_DATA, then <repo>/shared/data,
  then <repo>/../shared/data (where CI puts them); None when none holds `subdirs`."""
  for c in (os.environ.get("JAXPOSE_SHARED_DATA"), REPO / "shared" / "data",
            REPO.parent / "shared" / "data"):
    if c and all((pathlib.Path(c) / d).is_dir() for d in subdirs):
      return pathlib.Path(c)
  return None


def with_heatmap_targets(config, batch: dict) -> dict:
  """The heat-map targets a heat-map family's loss renders on the device, as numpy."""
  codec = family.heatmap_codec(config)
  return dict(batch, **jax.device_get(codec.render_targets(batch["joints"], batch["visible"])))


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def fake_init(model, *args, **kwargs):
  """Variables of `model.init`'s shapes drawn by numpy (kernels N(0, 1/fan_in), other leaves
  near 0, or near 1 for BatchNorm scales and variances): XLA on CPU takes seconds per shape
  to compile jax.random's samplers, which would dominate these tests."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    if leaf.ndim > 1:
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    else:
      value = float(path[-1].key in ("scale", "var")) + 0.1 * rng.normal(size=leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def tiny_checkpoint(workdir) -> pathlib.Path:
  """A quickstart:tiny hourglass checkpoint with random weights, written as the converter
  writes one (what eval.py, predict.py and the exporter read)."""
  from jaxpose import convert  # pylint: disable=g-import-not-at-top
  from jaxpose import families  # pylint: disable=g-import-not-at-top
  variables = families.init_variables(families.create_family(quickstart.get_config("tiny")),
                                       jax.random.key(0))
  convert.write_checkpoint(variables, dict(num_stacks=1, num_joints=16, features=16, depth=2),
                           "configs/quickstart.py:tiny", str(workdir))
  return pathlib.Path(workdir)
