r"""PCKh vs minutes of training for a finished run, beside the mean-pose baseline.

  python benchmarks/quickstart_curve.py --workdir runs/quickstart [--png docs/quickstart_curve.png]

Reads the run's TensorBoard summaries (eval/pckh_Total against eval/train_minutes, the
wall-clock spent in training steps, evaluations excluded), and scores the mean-pose baseline on
the same validation split: every person gets the average training pose, placed in their crop
(centre and scale) exactly as the model's predictions are. Prints a markdown table.
"""

import glob
import os
import sys

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxpose import checkpoints  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxpose import evaluate  # pylint: disable=wrong-import-position
from jaxpose import visualize  # pylint: disable=wrong-import-position
from jaxpose.codecs import coordinate  # pylint: disable=wrong-import-position
from jaxpose.data import datasets  # pylint: disable=wrong-import-position
from jaxpose.data import pipeline  # pylint: disable=wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Workdir of a finished run.")
_PNG = flags.DEFINE_string("png", None, "Also plot the curve to this PNG.")


def read_scalars(workdir: str) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} from the run's event files (later runs overwrite earlier steps)."""
  out: dict[str, dict[int, float]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      event = tf.compat.v1.Event.FromString(record)
      for v in event.summary.value:
        value = tf.make_ndarray(v.tensor) if v.HasField("tensor") else np.array(v.simple_value)
        if value.size == 1 and value.dtype.kind == "f":  # Scalars only (not hparams, text).
          out.setdefault(v.tag, {})[event.step] = float(value)
  return out


def mean_pose_baseline(config) -> dict[str, float]:
  """Scores the average training pose (per joint, over annotated joints) on the eval split."""
  size = config.input_size
  train_src = datasets.load_source(config.dataset, config.dataset.train_split)
  eval_src = datasets.load_source(config.dataset, config.dataset.eval_split)
  mean = coordinate.mean_pose(pipeline.crop_joints(train_src, size)[0],
                              train_src.annotations["visible"])  # [K, 2], as IEF's y_0.
  _, mats = pipeline.crop_joints(eval_src, size)
  inv = np.linalg.inv(mats)  # Crop pixels -> original pixels.
  preds = pipeline.transform_points(inv, np.broadcast_to(mean, (len(inv),) + mean.shape)
                                    .astype(np.float32))
  return evaluate.score(preds.numpy(), eval_src)


def main(argv):
  del argv
  import ml_collections  # pylint: disable=g-import-not-at-top
  directory, _ = checkpoints.resolve(_WORKDIR.value)
  manager = checkpoints.manager(directory, read_only=True)
  config = ml_collections.ConfigDict(
      checkpoints.read_meta(manager, manager.latest_step())["config"])
  scalars = read_scalars(_WORKDIR.value)
  minutes = scalars.get("eval/train_minutes", {})
  pckh = scalars.get("eval/pckh_Total", {})
  baseline = mean_pose_baseline(config)
  print("| step | minutes of training | PCKh@0.5 Total | AUC |")
  print("|---:|---:|---:|---:|")
  for step in sorted(pckh):
    auc = scalars.get("eval/pckh_AUC", {}).get(step, float("nan"))
    print(f"| {step} | {minutes.get(step, float('nan')):.1f} | {pckh[step]:.2f} | {auc:.2f} |")
  print(f"| mean pose | - | {baseline['Total']:.2f} | {baseline['AUC']:.2f} |")
  if _PNG.value:
    steps = sorted(s for s in pckh if s in minutes)
    curves = {"hourglass (quickstart)": np.array([pckh[s] for s in steps]),
              "mean pose": np.full(len(steps), baseline["Total"])}
    visualize.plot_pck_curves(np.array([minutes[s] for s in steps]), curves, _PNG.value,
                              title="Synthetic validation PCKh@0.5 vs minutes of training",
                              xlabel="minutes of training (2-core CPU)")
    print(f"wrote {_PNG.value}")


if __name__ == "__main__":
  app.run(main)
