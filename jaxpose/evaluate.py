"""Predict over a split (flip test, decode, back to original pixels) and score it."""

import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from jaxpose import metrics
from jaxpose import parallel
from jaxpose.data import pipeline
from jaxpose.families import Family

EVAL_KEYS = ("image", "transform")


def make_predict_step(family: Family, mesh, flip_test: bool):
  """Jitted (variables, batch) -> (joints [B,K,2] original px, scores [B,K]), replicated."""

  def predict(variables, batch):
    images = batch["image"]
    outputs = family.model.apply(variables, images, train=False)
    flipped = None
    if flip_test:
      flipped = family.model.apply(variables, images[:, :, ::-1, :], train=False)
    joints, scores = family.predict_fn(outputs, flipped)
    inv = jnp.linalg.inv(batch["transform"])  # Crop pixels -> original pixels.
    joints = jnp.einsum("bkj,bij->bki", joints, inv[:, :2, :2]) + inv[:, None, :2, 2]
    return joints, scores

  return jax.jit(predict, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                 out_shardings=parallel.replicated(mesh))


def predict_split(variables, family: Family, source: pipeline.Source, mesh, *,
                  local_batch_size: int, flip_test: bool = True, predict_step=None):
  """Predictions for every example of `source`, in source order: ([N,K,2], [N,K])."""
  predict_step = predict_step or make_predict_step(family, mesh, flip_test)
  n, k = source.num_examples, source.skeleton.num_joints
  preds = np.full((n, k, 2), np.nan, np.float32)
  scores = np.zeros((n, k), np.float32)
  seen = np.zeros(n, bool)
  pc, pi = jax.process_count(), jax.process_index()
  ds = pipeline.eval_dataset(source, input_size=family.input_size,
                             local_batch_size=local_batch_size, process_index=pi,
                             process_count=pc)
  # The layout is a pure function of the process index, so every process knows where each
  # row of the replicated predictions goes without communicating: global batch b is the
  # processes' b-th local batches, in process order.
  layouts = [pipeline.eval_layout(n, local_batch_size, p, pc) for p in range(pc)]
  for b, batch in enumerate(_batches(ds, source)):
    rows = slice(b * local_batch_size, (b + 1) * local_batch_size)
    index = np.concatenate([idx[rows] for idx, _ in layouts])
    mask = np.concatenate([m[rows] for _, m in layouts])
    inputs = parallel.global_batch({k_: batch[k_] for k_ in EVAL_KEYS}, mesh)
    joints, score = jax.device_get(predict_step(variables, inputs))
    preds[index[mask]] = joints[mask]
    scores[index[mask]] = score[mask]
    seen[index[mask]] = True
  if not seen.all():
    raise RuntimeError(f"Evaluation missed {np.sum(~seen)} examples of {source.name}.")
  return preds, scores


def _batches(ds, source):
  """Iterates `ds`; an image that fails to decode is reported by example."""
  it = ds.as_numpy_iterator()
  while True:
    try:
      yield next(it)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      pipeline.check_decodable(source, range(source.num_examples))
      raise RuntimeError(f"Evaluation input pipeline failed on {source.name}: {e}") from e


# The headline metric per joint set: (name, threshold); see `metrics.HEADLINE`.
HEADLINE = metrics.HEADLINE


def score(preds: np.ndarray, source: pipeline.Source,
          convention: str = "official") -> dict[str, float]:
  """The data set's headline table (official semantics by default), in percent.

  MPII: PCKh@0.5 per column, Total, UBody, PCKh@0.1 Total and AUC (thresholds 0..0.5).
  LSP/FLIC: PCK@0.2 per column, Total and AUC over the same normalised thresholds.
  See `metrics.headline_table`.
  """
  ann = source.annotations
  return metrics.headline_table(preds, ann["joints"], ann["visible"], ann["norm_size"],
                                source.skeleton, convention)


def format_table(table: dict[str, float], source: pipeline.Source, title: str) -> str:
  extra = [c for c in ("PCKh@0.1", "AUC") if c in table]
  columns = list(metrics.pck_columns(source.skeleton)) + extra
  return metrics.format_table(table, columns, title=title)


def evaluate(variables, family: Family, source: pipeline.Source, mesh, *,
             local_batch_size: int, flip_test: bool = True, predict_step=None,
             convention: str = "official"):
  """Predicts and scores a split. Returns (table dict, preds [N,K,2])."""
  start = time.time()
  preds, _ = predict_split(variables, family, source, mesh, local_batch_size=local_batch_size,
                           flip_test=flip_test, predict_step=predict_step)
  table = score(preds, source, convention)
  name, threshold = HEADLINE[source.skeleton.name]
  logging.info("Evaluated %d examples of %s in %.1fs: %s@%s %.2f", source.num_examples,
               source.name, time.time() - start, name, threshold, table["Total"])
  return table, preds


def load_checkpoint(path: str, mesh):
  """A workdir or checkpoint step folder -> (config, family, variables, step).

  The model is rebuilt from the config stored with the checkpoint; parameters are restored onto
  `mesh` (any size, resharded).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jaxpose import checkpoints, families, train  # pylint: disable=g-import-not-at-top
  directory, step = checkpoints.resolve(path)
  manager = checkpoints.manager(directory, read_only=True)
  step = manager.latest_step() if step is None else step
  meta = checkpoints.read_meta(manager, step)
  config = ml_collections.ConfigDict(meta["config"])
  family = families.create_family(config)
  tx = train.create_optimizer(config, num_train_examples=1)  # Only the state's shapes matter.
  abstract = train.create_train_state(family, tx, jax.random.key(0), mesh, abstract=True)
  state = checkpoints.restore_state(manager, step, abstract)
  return config, family, {"params": state.params, "batch_stats": state.batch_stats}, step


def evaluate_checkpoint(path: str, *, split: str | None = None, flip_test: bool = True,
                        batch_size: int | None = None, convention: str = "official",
                        write_outputs: bool = True) -> dict:
  """eval.py --ckpt: restores, predicts the split, scores. Returns a JSON-able dict with
  "table" ({column: percent, ..., "AUC": ...}), "text" (the printable table) and "outputs"
  (files written into WORKDIR/eval/<split>_step<step>/ when `write_outputs`)."""
  from jaxpose import checkpoints  # pylint: disable=g-import-not-at-top
  from jaxpose.data import datasets  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh()
  config, family, variables, step = load_checkpoint(path, mesh)
  split = split or config.dataset.eval_split
  source = datasets.load_source(config.dataset, split)
  batch_size = batch_size or config.eval_batch_size
  parallel.check_batch_size(batch_size, mesh)
  table, preds = evaluate(variables, family, source, mesh,
                          local_batch_size=batch_size // jax.process_count(),
                          flip_test=flip_test, convention=convention)
  name, threshold = HEADLINE[source.skeleton.name]
  title = (f"{config.model.name} step {step} on {source.name} ({source.num_examples} people), "
           f"{name}@{threshold} ({convention}{', flip test' if flip_test else ''})")
  outputs = []
  if write_outputs and jax.process_index() == 0:
    workdir = checkpoints.resolve(path)[0].absolute().parent
    out_dir = workdir / "eval" / f"{split}_step{step}"
    outputs = write_eval_outputs(str(out_dir), preds, source, config, convention)
  return {"table": table, "text": format_table(table, source, title), "step": int(step),
          "checkpoint": str(path), "dataset": source.name, "num_examples": source.num_examples,
          "flip_test": flip_test, "convention": convention, "outputs": outputs}


def write_eval_outputs(out_dir: str, preds: np.ndarray, source: pipeline.Source, config,
                       convention: str = "official", num_overlays: int = 8) -> list[str]:
  """Writes what a user inspects after an evaluation; returns the paths.

  predictions.npz (0-based pixels, with ids), pck_curves.png (PCK(h) vs threshold per joint
  group), overlays_best_worst.png (skeletons of the best and worst people by mean normalised
  error), and for MPII validation pred_keypoints_mpii.mat in the benchmark's annolist format.
  """
  import os  # pylint: disable=g-import-not-at-top
  from jaxpose import prediction_files, visualize  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  ann = source.annotations
  paths = []
  path = os.path.join(out_dir, "predictions.npz")
  np.savez_compressed(path, preds=preds, id=ann["id"])
  paths.append(path)

  thresholds = metrics.AUC_THRESHOLDS
  args = (preds, ann["joints"], ann["visible"], ann["norm_size"], source.skeleton)
  curves = metrics.pck_curve(*args, thresholds=thresholds, convention=convention)
  name, _ = HEADLINE[source.skeleton.name]
  path = os.path.join(out_dir, "pck_curves.png")
  visualize.plot_pck_curves(np.asarray(thresholds), curves, path,
                            title=f"{name} vs threshold, {source.name}")
  paths.append(path)

  dist = metrics.normalized_distances(*args[:4], scored=source.skeleton.scored_joints)
  d = np.where(dist.counted, np.nan_to_num(dist.distances, nan=10.0), np.nan)
  err = np.nanmean(d, axis=1)
  order = np.argsort(np.where(np.isfinite(err), err, np.inf))
  order = order[np.isfinite(err[order])]
  chosen = list(order[:num_overlays]) + list(order[::-1][:num_overlays])
  tiles, titles = [], []
  for rank, i in enumerate(chosen):
    tiles.append(_person_tile(source, int(i), preds[i]))
    titles.append(f"{'best' if rank < num_overlays else 'worst'} id {int(ann['id'][i])} "
                  f"err {err[i]:.2f}")
  if tiles:
    path = os.path.join(out_dir, "overlays_best_worst.png")
    visualize.save_png(visualize.image_grid(tiles, ncols=num_overlays, titles=titles), path)
    paths.append(path)

  if config.dataset.name == "mpii" and source.name.endswith("/validation"):
    from jaxpose.data import mpii  # pylint: disable=g-import-not-at-top
    split = mpii.standard_split()
    path = os.path.join(out_dir, "pred_keypoints_mpii.mat")
    ids = ann["id"].astype(int)
    prediction_files.write_mpii_submission(
        path, preds, np.asarray(split.valid_image_index)[ids],
        np.asarray(split.valid_person_index)[ids])
    paths.append(path)
  return paths


def _person_tile(source: pipeline.Source, i: int, pred: np.ndarray, size: int = 160):
  """The person's box (200 x scale around the centre) with the predicted skeleton, resized."""
  from jaxpose import visualize  # pylint: disable=g-import-not-at-top
  ann = source.annotations
  image = pipeline.decode_image(source.images[i]).numpy()
  drawn = visualize.draw_skeleton(image, pred, ann["visible"][i], source.skeleton)
  matrix = pipeline.crop_transform(ann["center"][i], ann["scale"][i], 0.0, size)
  crop = pipeline.warp_image(tf.constant(visualize.to_uint8(drawn), tf.float32), matrix, size)
  return np.clip(crop.numpy(), 0, 255).astype(np.uint8)
