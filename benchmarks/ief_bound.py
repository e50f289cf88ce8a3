r"""How far IEF's bounded steps can go: an oracle that always steps toward the truth.

  python benchmarks/ief_bound.py                                   # configs/quickstart.py:ief
  python benchmarks/ief_bound.py --config configs/quickstart.py:ief --steps 6

IEF moves every joint by at most L per iteration (`config.model.max_step`, normalised to the
crop; the paper's 20 px at 224 px by default), starting from the training set's mean pose. This
scores, on the config's evaluation split, the poses of a perfect network: y_0 = the mean pose
in each person's un-augmented crop, y_{t+1} = y_t + the bounded correction toward the truth
(`jaxpose.models.ief.bounded_correction`, the training target). A trained model's iteration t
cannot beat the oracle's; the gap is what the network has not learnt. Prints a markdown table.
"""

import os
import sys

from absl import app
from absl import flags
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags

from jaxpose import evaluate
from jaxpose.codecs import coordinate
from jaxpose.data import datasets
from jaxpose.data import pipeline
from jaxpose.families import regression
from jaxpose.models import ief


def max_step_pixels(config) -> float:
  """The config's bound L on one step, in crop pixels (as `regression.ief_family` reads it)."""
  return regression.ief_max_step(config) * config.input_size


def oracle_tables(config, steps: int) -> list[dict[str, float]]:
  """The headline table of the oracle's pose after each of `steps` bounded steps."""
  size, max_step = config.input_size, max_step_pixels(config)
  train_src = datasets.load_source(config.dataset, config.dataset.train_split)
  eval_src = datasets.load_source(config.dataset, config.dataset.eval_split)
  mean = coordinate.mean_pose(pipeline.crop_joints(train_src, size)[0],
                              train_src.annotations["visible"])  # IEF's y_0.
  truth, mats = pipeline.crop_joints(eval_src, size)
  inv = np.linalg.inv(mats)  # Crop pixels -> original pixels.
  y = np.broadcast_to(mean, truth.shape).astype(np.float32)
  tables = []
  for _ in range(steps):
    y = y + np.asarray(ief.bounded_correction(jnp.asarray(y), jnp.asarray(truth), max_step))
    tables.append(evaluate.score(pipeline.transform_points(inv, y).numpy(), eval_src))
  return tables


def main(argv):
  del argv
  config = _CONFIG.value
  if config.model.name != "ief":
    raise app.UsageError(f"--config is a {config.model.name!r} config; need an 'ief' one.")
  tables = oracle_tables(config, _STEPS.value)
  print(f"Oracle IEF on {config.dataset.name}/{config.dataset.eval_split}: bounded steps of "
        f"{max_step_pixels(config):.1f} px at {config.input_size} px from the mean pose")
  print("| iterations | PCKh@0.5 Total | PCKh@0.1 |")
  print("|---:|---:|---:|")
  for t, table in enumerate(tables, start=1):
    print(f"| {t} | {table['Total']:.2f} | {table.get('PCKh@0.1', float('nan')):.2f} |")


if __name__ == "__main__":
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/quickstart.py:ief",
                                            "An IEF config.", lock_config=True)
  _STEPS = flags.DEFINE_integer("steps", 6, "Oracle iterations to score.")
  app.run(main)
