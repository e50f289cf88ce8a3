r"""Does a trained IEF read the pose it is fed back? Probes of its correction f(x, y).

  python benchmarks/ief_feedback.py --ckpt WORKDIR                 # e.g. the IEF quickstart's
  python benchmarks/ief_feedback.py --ckpt WORKDIR --radius 0.5 --num_people 1000

IEF's premise is that f corrects the pose it is shown: the image and the maps of the current
pose y go in, the step toward the truth comes out (bounded by L, `config.model.max_step`). On
people of the checkpoint's evaluation split (their un-augmented crops), per PCK column:

- "from y_0": at the training set's mean pose (what iteration 1 sees), the cosine between f and
  the direction to the truth, and |f| / L (the bounded target's length is ~1 for most joints);
- "at the truth": |f| / L (a network that reads the feedback stays put: 0);
- "truth + d": at the truth displaced by |d| = radius x L in a uniformly random direction per
  joint, the share of d that f undoes (its projection on -d over |d|: the bounded target gives
  min(1, 1 / radius)) and the cosine between f and -d.

A network that regresses the pose from the image alone and ignores the maps scores ~0 on the
last probe: its iterations then repeat one step instead of correcting the last. Prints a
markdown table.
"""

import functools
import os
import sys

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxpose import evaluate
from jaxpose import metrics
from jaxpose import parallel
from jaxpose import runtime
from jaxpose.codecs import coordinate
from jaxpose.data import datasets
from jaxpose.data import pipeline
from jaxpose.families import regression
from jaxpose.models import ief

PROBES = ("from y_0: cosine", "from y_0: |f|/L", "at the truth: |f|/L", "truth + d: undone",
          "truth + d: cosine")


def _cosine(a, b):
  """Per vector [..., 2]: cos(a, b) (0 where either is zero)."""
  norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
  return np.where(norms > 0, np.sum(a * b, axis=-1) / np.maximum(norms, 1e-30), 0.0)


def feedback_probes(correct, images, truth, mean_pose, max_step: float, radius: float, rng):
  """The probes of one batch, each [N, K] (see the module docstring).

  correct: (images, poses [N, K, 2]) -> corrections [N, K, 2], all normalised to the crop;
  truth [N, K, 2] normalised; mean_pose [K, 2]; rng a numpy Generator (d's directions)."""
  y0 = np.broadcast_to(mean_pose, truth.shape).astype(np.float32)
  f0 = np.asarray(correct(images, y0))
  at_truth = np.asarray(correct(images, truth.astype(np.float32)))
  angle = rng.uniform(0.0, 2 * np.pi, truth.shape[:-1])
  d = radius * max_step * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
  fd = np.asarray(correct(images, (truth + d).astype(np.float32)))
  return {PROBES[0]: _cosine(f0, truth - y0),
          PROBES[1]: np.linalg.norm(f0, axis=-1) / max_step,
          PROBES[2]: np.linalg.norm(at_truth, axis=-1) / max_step,
          PROBES[3]: np.sum(fd * -d, axis=-1) / np.square(radius * max_step),
          PROBES[4]: _cosine(fd, -d)}


def probe_checkpoint(path: str, num_people: int, radius: float, seed: int = 0):
  """{probe: {column: mean over annotated joints of the first `num_people` people}}."""
  mesh = parallel.make_mesh()
  config, family, variables, _ = evaluate.load_checkpoint(path, mesh)
  if config.model.name != "ief":
    raise app.UsageError(f"--ckpt {path} holds a {config.model.name!r} model; need an IEF one.")
  size = config.input_size
  max_step = regression.ief_max_step(config)
  source = datasets.load_source(config.dataset, config.dataset.eval_split)
  truth_px, _ = pipeline.crop_joints(source, size)
  truth = np.asarray(coordinate.normalize(truth_px, coordinate.CoordinateCodec(size).center, size))
  visible = source.annotations["visible"] > 0
  correct = jax.jit(lambda v, x, y: family.model.apply(v, x, y, method=ief.IEF.correction))
  apply = functools.partial(correct, variables)
  mean_pose = np.asarray(variables["ief"]["mean_pose"])
  rng = np.random.default_rng(seed)
  sums, counts = {p: 0.0 for p in PROBES}, 0.0
  batches = pipeline.eval_dataset(source, input_size=size, local_batch_size=50)
  for batch in batches.as_numpy_iterator():
    keep = (batch["mask"] > 0) & (batch["index"] < num_people)
    if not keep.any():
      break  # The batches come in index order (one process).
    index = batch["index"][keep]
    probes = feedback_probes(apply, batch["image"][keep], truth[index], mean_pose, max_step,
                             radius, rng)
    w = visible[index]
    sums = {p: sums[p] + np.sum(np.where(w, v, 0.0), axis=0) for p, v in probes.items()}
    counts = counts + np.sum(w, axis=0)
  columns = {name: list(joints) for name, joints in source.skeleton.groups}
  columns[metrics.TOTAL] = list(source.skeleton.scored_joints)
  return {p: {c: float(np.sum(s[j]) / max(np.sum(counts[j]), 1.0)) for c, j in columns.items()}
          for p, s in sums.items()}


def main(argv):
  del argv
  if _RADIUS.value <= 0:
    raise app.UsageError(f"--radius={_RADIUS.value}: must be > 0 (|d| in units of L).")
  table = probe_checkpoint(_CKPT.value, _NUM.value, _RADIUS.value)
  columns = list(next(iter(table.values())))
  print(f"IEF feedback probes of {_CKPT.value} (|d| = {_RADIUS.value:g} L)")
  print("| probe | " + " | ".join(columns) + " |")
  print("|---|" + "---:|" * len(columns))
  for probe, row in table.items():
    print(f"| {probe} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |")


if __name__ == "__main__":
  _CKPT = flags.DEFINE_string("ckpt", None, "IEF workdir or checkpoint step folder.",
                              required=True)
  _NUM = flags.DEFINE_integer("num_people", 400, "People of the evaluation split to probe.",
                              lower_bound=1)
  _RADIUS = flags.DEFINE_float("radius", 1.0, "|d| of the displaced truth, in units of L.")
  app.run(runtime.clean_errors(main, "ief_feedback.py"))
