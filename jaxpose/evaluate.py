"""Predict over a split (flip test, decode, back to original pixels) and score it."""

import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from jaxpose import checkpoints
from jaxpose import families
from jaxpose import metrics
from jaxpose import parallel
from jaxpose import prediction_files
from jaxpose import progress
from jaxpose import visualize
from jaxpose.data import datasets
from jaxpose.data import device_augment
from jaxpose.data import pipeline
from jaxpose.families import Family

EVAL_KEYS = ("image", "transform")
MULTISCALE_KEYS = ("scaled_images", "scaled_transforms")


class Interrupted(Exception):
  """Evaluation stopped between batches because `should_stop` said so (a preemption)."""


def make_predict_step(family: Family, mesh, flip_test: bool, frame: str = "image",
                      scales: tuple[float, ...] = ()):
  """Jitted (variables, batch) -> (joints, scores [B,K]), replicated.

  joints: [B,K,2], or [B,T,K,2] for families that report every stage; in original-image
  pixels (`frame="image"`, through the inverse of each example's crop warp) or crop pixels
  (`frame="crop"`). With `scales` (heat-map families), the heat maps of the crops at every
  scale factor are resampled into the unscaled crop's heat-map frame, averaged, then decoded.
  """
  if frame not in ("image", "crop"):
    raise ValueError(f"frame={frame!r}; expected 'image' or 'crop'.")
  if scales and family.heatmaps is None:
    raise ValueError(f"Multi-scale testing (scales {list(scales)}) averages heat maps; the "
                     f"{family.name!r} family regresses coordinates.")

  def predict(variables, batch):
    if scales:
      joints, scores = family.codec.decode(_multiscale_maps(family, variables, batch, flip_test))
    else:
      joints, scores = family.predict(variables, batch, flip_test)
    if frame == "image":
      inv = jnp.linalg.inv(batch["transform"])  # Crop pixels -> original pixels.
      extra = joints.ndim - 3  # A stage axis between batch and joints, if any.
      inv = inv.reshape(inv.shape[:1] + (1,) * extra + (3, 3))
      joints = (jnp.einsum("...kj,...ij->...ki", joints, inv[..., :2, :2])
                + inv[..., None, :2, 2])
    return joints, scores

  return jax.jit(predict, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                 out_shardings=parallel.replicated(mesh))


def _multiscale_maps(family: Family, variables, batch, flip_test: bool):
  """The mean over scales of each scale's heat maps, resampled into the heat-map frame of the
  unscaled crop (`batch["transform"]`): [B, h, w, K]. Where a scale's crop does not reach,
  each map reads its own minimum (not 0: a family's maps may be log beliefs, all negative,
  whose argmax would then land there)."""
  codec = family.codec
  s = codec.stride
  to_crop = jnp.array([[s, 0, s / 2 - 0.5], [0, s, s / 2 - 0.5], [0, 0, 1]], jnp.float32)
  to_map = jnp.linalg.inv(to_crop)
  reference_inv = jnp.linalg.inv(batch["transform"])  # Unscaled crop px -> original px.
  total = 0.0
  for i in range(batch["scaled_images"].shape[1]):
    maps = family.heatmaps(variables, batch["scaled_images"][:, i], flip_test)
    # Reference heat-map px -> reference crop px -> original px -> scale-i crop -> its map.
    m = to_map @ batch["scaled_transforms"][:, i] @ reference_inv @ to_crop  # [B, 3, 3]
    floor = jnp.min(maps, axis=(1, 2), keepdims=True).astype(jnp.float32)  # [B, 1, 1, K]
    total = total + floor + jax.vmap(device_augment.warp_bilinear, in_axes=(0, 0, None))(
        maps - floor, m[:, :2], codec.output_size)
  return total / batch["scaled_images"].shape[1]


def predict_split(variables, family: Family, source: pipeline.Source, mesh, *,
                  local_batch_size: int, flip_test: bool = True, predict_step=None,
                  frame: str = "image", should_stop=None, scales: tuple[float, ...] = ()):
  """Predictions for every example of `source`, in source order: (joints [N,K,2] or
  [N,T,K,2], scores [N,K]). `should_stop()` is asked between batches (on every process in
  the same order); when it says True this raises `Interrupted`."""
  predict_step = predict_step or make_predict_step(family, mesh, flip_test, frame, scales)
  n = source.num_examples
  preds, scores = None, None
  seen = np.zeros(n, bool)
  pc, pi = jax.process_count(), jax.process_index()
  ds = pipeline.eval_dataset(source, input_size=family.input_size,
                             local_batch_size=local_batch_size, process_index=pi,
                             process_count=pc, scales=scales)
  # The layout is a pure function of the process index, so every process knows where each
  # row of the replicated predictions goes without communicating: global batch b is the
  # processes' b-th local batches, in process order.
  layouts = [pipeline.eval_layout(n, local_batch_size, p, pc) for p in range(pc)]
  shown = progress.bar(n, f"evaluate {source.name}", min_total=local_batch_size * pc + 1)
  with shown:
    for b, batch in enumerate(_batches(ds, source)):
      if should_stop is not None and should_stop():
        raise Interrupted(f"Evaluation of {source.name} stopped after {b} batches.")
      rows = slice(b * local_batch_size, (b + 1) * local_batch_size)
      index = np.concatenate([idx[rows] for idx, _ in layouts])
      mask = np.concatenate([m[rows] for _, m in layouts])
      keys = EVAL_KEYS + (MULTISCALE_KEYS if scales else ())
      inputs = parallel.global_batch({k_: batch[k_] for k_ in keys}, mesh)
      joints, score = jax.device_get(predict_step(variables, inputs))
      if preds is None:
        preds = np.full((n,) + joints.shape[1:], np.nan, np.float32)
        scores = np.zeros((n,) + score.shape[1:], np.float32)
      preds[index[mask]] = joints[mask]
      scores[index[mask]] = score[mask]
      seen[index[mask]] = True
      shown.update(int(mask.sum()))
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


def report_text(table: dict[str, float], stages: list[dict] | None, source: pipeline.Source,
                title: str, stage_name: str = "stage") -> str:
  """The printed report: a table after each stage / iteration but the last, then `table`
  (the final one) under `title`."""
  last = format_table(table, source, title)
  if not stages:
    return last
  return "\n".join([format_table(t, source, f"after {stage_name} {i + 1} of {len(stages)}")
                    for i, t in enumerate(stages[:-1])] + [last])


def evaluate(variables, family: Family, source: pipeline.Source, mesh, *,
             local_batch_size: int, flip_test: bool = True, predict_step=None,
             convention: str = "official", should_stop=None, scales: tuple[float, ...] = ()):
  """Predicts (at `scales` x the person's box, averaged, if given) and scores a split. Returns (table, final preds [N,K,2], per-stage tables or
  None): families that report stages or iterations get a table after each."""
  start = time.time()
  preds, _ = predict_split(variables, family, source, mesh, local_batch_size=local_batch_size,
                           flip_test=flip_test, predict_step=predict_step,
                           should_stop=should_stop, scales=scales)
  stages = None
  if preds.ndim == 4:  # [N, T, K, 2]
    stages = [score(preds[:, t], source, convention) for t in range(preds.shape[1])]
    preds = preds[:, -1]
  table = score(preds, source, convention)
  name, threshold = HEADLINE[source.skeleton.name]
  logging.info("Evaluated %d examples of %s in %.1fs: %s@%s %.2f", source.num_examples,
               source.name, time.time() - start, name, threshold, table["Total"])
  return table, preds, stages


def load_checkpoint(path: str, mesh):
  """A workdir or checkpoint step folder -> (config, family, variables, step).

  The model is rebuilt from the config stored with the checkpoint; only its variables
  (parameters and model state, no optimiser, none of the family's `train_only` collections)
  are restored, onto `mesh` (any size, resharded).
  """
  directory, step = checkpoints.resolve(path)
  manager = checkpoints.manager(directory, read_only=True)
  step = manager.latest_step() if step is None else step
  meta = checkpoints.read_meta(manager, step)
  config = ml_collections.ConfigDict(meta["config"])
  family = families.create_family(config)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated(mesh)),
      families.eval_shape_variables(family, training=False))
  variables = checkpoints.restore_variables(directory, step, abstract)
  return config, family, variables, step


def evaluate_checkpoint(path: str, *, split: str | None = None, flip_test: bool = True,
                        batch_size: int | None = None, convention: str = "official",
                        write_outputs: bool = True, scales: tuple[float, ...] = (),
                        decode_upsample: int | None = None) -> dict:
  """eval.py --ckpt: restores, predicts the split (multi-scale with `scales`; heat maps
  decoded as `decode_upsample` says, default the config's), scores. Returns a JSON-able dict
  with "table" ({column: percent, ..., "AUC": ...}), "text" (the printable table) and
  "outputs" (files written into WORKDIR/eval/<split>_step<step>/ when `write_outputs`)."""
  mesh = parallel.make_mesh()
  config, family, variables, step = load_checkpoint(path, mesh)
  if decode_upsample is not None and family.heatmaps is None:
    raise ValueError(f"decode_upsample={decode_upsample} decodes heat maps; the "
                     f"{family.name!r} family regresses coordinates.")
  if decode_upsample is not None and decode_upsample != config.get("decode_upsample", 0):
    config.decode_upsample = decode_upsample
    family = families.create_family(config)
  split = split or config.dataset.eval_split
  batch_size = batch_size or config.eval_batch_size
  parallel.check_batch_size(batch_size, mesh, what="--batch_size")
  source = datasets.load_source(config.dataset, split)
  table, preds, stages = evaluate(variables, family, source, mesh,
                                  local_batch_size=batch_size // jax.process_count(),
                                  flip_test=flip_test, convention=convention, scales=scales)
  name, threshold = HEADLINE[source.skeleton.name]
  how = [convention] + (["flip test"] if flip_test else []) + (
      [f"scales {','.join(f'{f:g}' for f in scales)}"] if scales else []) + (
      [f"maps upsampled x{config.decode_upsample}"] if config.get("decode_upsample") else [])
  title = (f"{config.model.name} step {step} on {source.name} ({source.num_examples} people), "
           f"{name}@{threshold} ({', '.join(how)})")
  text = report_text(table, stages, source, title, family.stage_name)
  outputs = []
  if write_outputs and jax.process_index() == 0:
    workdir = checkpoints.resolve(path)[0].absolute().parent
    out_dir = workdir / "eval" / f"{split}_step{step}"
    outputs = write_eval_outputs(str(out_dir), preds, source, config, convention)
  result = {"table": table, "text": text, "step": int(step), "checkpoint": str(path),
            "dataset": source.name, "num_examples": source.num_examples,
            "flip_test": flip_test, "convention": convention, "scales": list(scales),
            "outputs": outputs}
  if stages:
    result["stages"] = stages
  return result


def write_eval_outputs(out_dir: str, preds: np.ndarray, source: pipeline.Source, config,
                       convention: str = "official", num_overlays: int = 8) -> list[str]:
  """Writes what a user inspects after an evaluation; returns the paths.

  predictions.npz (0-based pixels, with ids), pck_curves.png (PCK(h) vs threshold per joint
  group), overlays_best_worst.png (skeletons of the best and worst people by mean normalised
  error), and for MPII validation pred_keypoints_mpii.mat in the benchmark's annolist format.
  """
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
  ann = source.annotations
  image = pipeline.decode_image(source.encoded(i)).numpy()
  drawn = visualize.draw_skeleton(image, pred, ann["visible"][i], source.skeleton)
  matrix = pipeline.crop_transform(ann["center"][i], ann["scale"][i], 0.0, size)
  crop = pipeline.warp_image(tf.constant(visualize.to_uint8(drawn), tf.float32), matrix, size)
  return np.clip(crop.numpy(), 0, 255).astype(np.uint8)
